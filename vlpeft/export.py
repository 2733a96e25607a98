"""Deployable export: a trained model's checkpoint without the units its placement skips (issue 10, item 5).

A skipped candidate unit never runs, so its weights (``backbone.<candidate_name(i)>.*``) are dropped — except what
its skip module reads (a skip site's ``meta["input_norm"]``: the LLaMA layer's ``input_layernorm`` under LaVIN-DAS's
skip adapter); of the skip sites only those of skipped units run, so a kept unit's skip module
(``backbone.<skip site>.*``) is dropped too.
The file is a plain ``{"state_dict", "vlpeft_placement", "vlpeft_export"}`` checkpoint: ``load_path=`` (and
``test_only=True``) and ``vlpeft.load`` load it into a model built with the same config and placement, which
predicts identically. Loading a file marked pruned (its ``vlpeft_export`` entry) on the plan it was exported for
also prunes the model (``prune_module``): each dropped module is replaced by an empty ``PrunedUnit`` (holding only
what a skip module still reads), so the model holds exactly the file's tensors.

    python -m vlpeft.export RUN_DIR|CKPT --out FILE [--force]    # RUN_DIR: its best checkpoint, else last.ckpt
    python run.py with … export_pruned=True             # a train/search run also writes <run>/pruned.ckpt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vlpeft._io import DiskFullError
from vlpeft.checkpoint import RESAVE, CheckpointError, read_checkpoint
from vlpeft.lightning import VLPeftModule
from vlpeft.pruning import (EXPORT_KEY, PRUNED_FILE, ExportError, PrunedUnit, check_out,  # noqa: F401  (re-exported)
                            dropped_keys, dropped_prefixes, export_pruned, find_checkpoint, kept_prefixes,
                            prune_if_exported, prune_module, pruned_state_dict)
from vlpeft.search.placement import Placement


def export_checkpoint(source: str | Path, out: str | Path, *, force: bool = False) -> Path:
    """Build the model a Lightning checkpoint of ours was trained as (its saved config and placement), load it
    and export it pruned. ``out`` may not be the source, nor an existing file unless ``force``."""
    ckpt_path = find_checkpoint(source)
    out = check_out(out, ckpt_path, force=force)
    sd, extras = read_checkpoint(ckpt_path)
    config = (extras.get("hyper_parameters") or {}).get("config")
    saved = extras.get("vlpeft_placement")
    if not config or not saved:
        raise ExportError(f"{ckpt_path} has no saved config or placement (hyper_parameters.config, "
                          "vlpeft_placement): export needs a checkpoint written by a vlpeft train or search run")
    placement = Placement.from_dict(saved, source=str(ckpt_path))
    module = VLPeftModule(config, placement=placement)
    result = module.load_state_dict(sd, strict=False)
    if result.missing_keys:
        raise ExportError(f"{ckpt_path} lacks {len(result.missing_keys)} tensors of the model its config builds "
                          f"(first: {result.missing_keys[0]}); export a full Lightning checkpoint of a run")
    return export_pruned(module, out, placement)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlpeft.export", description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="a run folder (its best checkpoint, else last.ckpt) or a .ckpt file")
    ap.add_argument("--out", required=True, help="the pruned checkpoint to write (a new file unless --force)")
    ap.add_argument("--force", action="store_true", help="replace --out if it exists (never the source itself)")
    ap.add_argument("--unsafe-pickle", action="store_true", help=argparse.SUPPRESS)  # removed: refused by name
    args = ap.parse_args(argv)
    if args.unsafe_pickle:
        print(f"error: --unsafe-pickle was removed: vlpeft never unpickles arbitrary objects. {RESAVE}",
              file=sys.stderr)
        return 2
    try:
        export_checkpoint(args.source, args.out, force=args.force)
    except (ExportError, CheckpointError, DiskFullError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["EXPORT_KEY", "PRUNED_FILE", "ExportError", "PrunedUnit", "check_out", "dropped_keys", "dropped_prefixes",
           "export_checkpoint", "export_pruned", "find_checkpoint", "kept_prefixes", "main", "prune_if_exported",
           "prune_module", "pruned_state_dict"]

"""``vlpeft.load``: a trained run's model from its checkpoint alone (see ``vlpeft.api`` for what it answers).

Apart from ``vlpeft.api`` because it builds a ``VLPeftModule``, whose ``predict`` / ``generate`` call into
``vlpeft.api``: one module holding both would import itself back through the Lightning module.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlpeft.api import ApiError
from vlpeft.checkpoint import CheckpointError, load_state
from vlpeft.lightning import ANSWERS_KEY, PLACEMENT_KEY, VLPeftModule
from vlpeft.pruning import EXPORT_KEY, ExportError, dropped_keys, prune_if_exported
from vlpeft.pruning import find_checkpoint as find


def find_checkpoint(source: str | os.PathLike) -> Path:
    """The checkpoint ``load`` reads: ``source`` itself (a ``.ckpt``), or a run folder's ``checkpoints/best*.ckpt``
    (else ``checkpoints/last.ckpt``), the rule ``python -m vlpeft.export`` uses."""
    try:
        return find(source)
    except ExportError as e:
        raise ApiError(f"vlpeft.load: {e}") from None


def load(source: str | os.PathLike, *, placement: Any = None, map_location: str | torch.device = "cpu"):
    """The trained model of ``source`` (a run folder or a ``.ckpt``) in eval mode, on ``map_location``: the
    checkpoint's config and placement, every tensor loaded, its answer vocabulary attached. ``placement``
    (a ``Placement`` or its dict) overrides the stored one. Returns a ``VLPeftModule`` with ``predict`` and
    ``generate``."""
    path = find_checkpoint(source)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - an unreadable or unsafe file means the same thing to the user
        raise CheckpointError(f"{path} is not a checkpoint readable with torch.load(weights_only=True) "
                              f"({type(e).__name__}: {e})") from None
    hp = ckpt.get("hyper_parameters") if isinstance(ckpt, dict) else None
    if not isinstance(hp, dict) or not isinstance(hp.get("config"), dict) or "state_dict" not in ckpt:
        raise CheckpointError(f"{path} is not a vlpeft Lightning checkpoint (no hyper_parameters['config'] or "
                              "state_dict); load weights of other formats with load_path= in a run")
    if placement is None:
        placement = hp.get("placement") or ckpt.get(PLACEMENT_KEY)
    module = VLPeftModule(hp["config"], placement=placement)
    prune_if_exported(module, ckpt.get(EXPORT_KEY), path)  # a pruned export: the model without its dropped units
    report = load_state(module, ckpt["state_dict"], path, "vlpeft checkpoint")

    report.missing = sorted(set(report.missing) - set(dropped_keys(module)))  # a pruned export: never run
    if report.missing or report.unexpected:
        raise CheckpointError(f"{path} does not fit the model its own config builds: "
                              f"{len(report.missing)} tensors missing (first: {report.missing[:3]}), "
                              f"{len(report.unexpected)} unexpected (first: {report.unexpected[:3]})")
    module.answers = dict(ckpt.get(ANSWERS_KEY) or {})
    module.checkpoint_path = str(path)
    return module.to(map_location).eval()


__all__ = ["find_checkpoint", "load"]

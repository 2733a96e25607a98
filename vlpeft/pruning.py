"""Pruning a model to what its placement runs, and the pruned checkpoint's file format (the library under
``python -m vlpeft.export``, which documents the format; ``vlpeft.checkpoint`` and ``vlpeft.load`` read such files
through ``prune_if_exported``). Imports only the contract, so the loaders can use it without importing the export
command (which builds a ``VLPeftModule``)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vlpeft._io import atomic_path
from vlpeft._protocol import LayerPlan

EXPORT_KEY = "vlpeft_export"
PRUNED_FILE = "pruned.ckpt"


class ExportError(ValueError):
    """An export that cannot be made; the message names the file or key and the fix."""


def dropped_prefixes(backbone: nn.Module, plan: LayerPlan, prefix: str = "backbone.") -> list[str]:
    """Key prefixes (with the trailing dot) of what ``plan`` never runs: each skipped unit, each kept unit's skip
    module."""
    if _pruned_for(backbone, plan):
        return [prefix + n + "." for n in backbone._vlpeft_pruned[1]]
    skip_sites = {s.layer: s.name for s in backbone.sites() if s.anchor == "skip"}
    out = []
    for i in range(backbone.candidates().count):
        if i in plan.skip:
            out.append(f"{prefix}{backbone.candidate_name(i)}.")
        elif i in skip_sites:
            out.append(f"{prefix}{skip_sites[i]}.")
    return out


def kept_prefixes(backbone: nn.Module, plan: LayerPlan, prefix: str = "backbone.") -> list[str]:
    """Key prefixes inside a skipped unit that its skip module still runs: a skip site's ``meta["input_norm"]``
    (LaVIN-DAS's skip adapter reads the skipped LLaMA layer's ``attention_norm``, which LaVIN keeps too)."""
    if _pruned_for(backbone, plan):
        return [prefix + n + "." for n in backbone._vlpeft_pruned[2]]
    names = {id(m): n for n, m in backbone.named_modules()}
    out = []
    for s in backbone.sites():
        norm = (s.meta or {}).get("input_norm") if s.anchor == "skip" and s.layer in plan.skip else None
        if norm is not None and id(norm) in names:
            out.append(f"{prefix}{names[id(norm)]}.")
    return out


class PrunedUnit(nn.Module):
    """Stands where a pruned export dropped a unit (or a kept unit's skip module): no parameters of its own, only
    the submodules a skip module still reads (``kept_prefixes``); running it is an error, since the plan the model
    was pruned for never does."""

    def __init__(self, name: str) -> None:
        super().__init__()
        self.pruned_name = name

    def forward(self, *args, **kwargs):
        raise RuntimeError(f"{self.pruned_name} was pruned (a pruned export's model runs only the placement it was "
                           "exported for); load the full checkpoint to run another plan")

    def extra_repr(self) -> str:
        return f"pruned {self.pruned_name}"


def _pruned_for(backbone: nn.Module, plan: LayerPlan) -> bool:
    """True when ``backbone`` was pruned for ``plan`` (its prefixes are then the recorded ones: a pruned backbone's
    sites can no longer be listed); an ExportError for another plan, which the pruned model cannot run."""
    done = getattr(backbone, "_vlpeft_pruned", None)
    if done is None:
        return False
    if sorted(done[0].skip) != sorted(plan.skip):
        raise ExportError(f"this model was built from a pruned export for skip {sorted(done[0].skip)}; it cannot "
                          f"run skip {sorted(plan.skip)}: load the full checkpoint for another plan")
    return True


def _put(root: nn.Module, dotted: str, module: nn.Module) -> None:
    """Register ``module`` at ``dotted`` under ``root``, creating empty containers on the way."""
    *parents, leaf = dotted.split(".")
    for part in parents:
        if part not in root._modules:
            root.add_module(part, nn.Module())
        root = root._modules[part]
    setattr(root, leaf, module)


def prune_module(module: nn.Module, plan: LayerPlan | None = None) -> int:
    """Replace in ``module.backbone`` every module a pruned export drops under ``plan`` (default: the module's
    own): each skipped unit (``candidate_name(i)``, keeping what its skip module reads) and each kept unit's skip
    module, by a ``PrunedUnit``. Works for any backbone through the protocol. Returns the parameters freed."""
    plan = module.plan() if plan is None else plan
    bb = module.backbone
    drop = [p[:-1] for p in dropped_prefixes(bb, plan, prefix="")]
    keep = [p[:-1] for p in kept_prefixes(bb, plan, prefix="")]
    count = lambda: sum(p.numel() for p in module.parameters())  # noqa: E731
    before = count()
    for name in drop:
        if isinstance(bb.get_submodule(name), PrunedUnit):
            continue
        stub = PrunedUnit(name)
        for k in keep:
            if k.startswith(name + "."):
                _put(stub, k[len(name) + 1:], bb.get_submodule(k))
        _put(bb, name, stub)
    bb._vlpeft_pruned = (plan, drop, keep)  # plain attribute (a tuple): not a submodule, not in the state dict
    return before - count()


def prune_if_exported(module: nn.Module, info: dict | None, path: str | Path = "") -> int:
    """``prune_module`` when ``info`` (a checkpoint's ``vlpeft_export`` entry) says the file was exported for the
    plan ``module`` runs (same dropped prefixes); nothing for a search model or another plan (the file then loads
    into the full model, whose missing tensors the caller reports). Returns the parameters freed."""
    if not info or getattr(module, "search", None) is not None:
        return 0
    if list(info.get("dropped_prefixes") or []) != dropped_prefixes(module.backbone, module.plan()):
        return 0
    freed = prune_module(module)
    print(f"[vlpeft] {path}: a pruned export; the model is built without its dropped units "
          f"({freed:,d} parameters fewer)", flush=True)
    return freed


def dropped_keys(module: nn.Module, plan: LayerPlan | None = None) -> list[str]:
    """State-dict keys of a ``VLPeftModule`` that an export under ``plan`` (default: its own) leaves out."""
    plan = module.plan() if plan is None else plan
    pre = tuple(dropped_prefixes(module.backbone, plan))
    keep = tuple(kept_prefixes(module.backbone, plan))
    return [k for k in module.state_dict() if k.startswith(pre) and not (keep and k.startswith(keep))]


def pruned_state_dict(module: nn.Module, plan: LayerPlan | None = None) -> dict[str, torch.Tensor]:
    drop = set(dropped_keys(module, plan))
    return {k: v.detach().cpu().clone() for k, v in module.state_dict().items() if k not in drop}


def export_pruned(module: nn.Module, out: str | Path, placement=None) -> Path:
    """Write ``module``'s weights without the units its placement never runs to ``out`` (atomically); print the
    kept share. ``placement``: default the module's ``current_placement()``."""
    placement = module.current_placement() if placement is None else placement
    plan = placement.plan(module.base_plan)
    full = module.state_dict()
    sd = pruned_state_dict(module, plan)
    numel = lambda d: sum(v.numel() for v in d.values())  # noqa: E731
    info = {"dropped_prefixes": dropped_prefixes(module.backbone, plan), "kept_numel": numel(sd),
            "full_numel": numel(full), "kept_share": numel(sd) / max(1, numel(full))}
    out = Path(out)
    with atomic_path(out, need=sum(v.numel() * v.element_size() for v in sd.values())) as tmp:
        torch.save({"state_dict": sd, "vlpeft_placement": placement.to_dict(), EXPORT_KEY: info,
                    "hyper_parameters": {"config": getattr(module, "config", {})}}, tmp)
    print(f"[vlpeft] pruned export: {out} keeps {info['kept_numel']:,d} of {info['full_numel']:,d} tensor "
          f"elements ({100 * info['kept_share']:.2f} %); dropped {len(full) - len(sd)} tensors", flush=True)
    return out


def find_checkpoint(source: str | Path) -> Path:
    """A run folder's best checkpoint (else last.ckpt), or the file itself."""
    p = Path(source)
    if p.is_file():
        return p
    if p.is_dir():
        ckpts = sorted(p.glob("checkpoints/best*.ckpt")) or sorted(p.glob("checkpoints/last.ckpt"))
        if ckpts:
            return ckpts[-1]
        raise ExportError(f"{p} has no checkpoints/best*.ckpt or checkpoints/last.ckpt; pass a run folder of a "
                          "train run, or the .ckpt file")
    raise ExportError(f"{p} does not exist; pass a run folder (<log_dir>/<name>/version_<n>) or a .ckpt file")


def check_out(out: str | Path, source: Path, *, force: bool = False) -> Path:
    """The output file, refused before anything is built when it is the source, a folder, or (without ``force``)
    an existing file: an export never overwrites what it reads, nor a file (a run's last.ckpt, whose resume state
    would be gone) silently."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"--out {out} is a folder; name the file to write, e.g. --out {out / PRUNED_FILE}")
    if out.exists() and out.resolve() == Path(source).resolve():
        raise ExportError(f"--out {out} is the checkpoint being exported; name another file (the source is never "
                          "overwritten, not even with --force)")
    if out.exists() and not force:
        raise ExportError(f"--out {out} exists; name a new file, or pass --force to replace it")
    if not out.parent.is_dir():
        raise ExportError(f"--out {out}: its folder {out.parent} does not exist; create it or name another file")
    return out


__all__ = ["EXPORT_KEY", "PRUNED_FILE", "ExportError", "PrunedUnit", "check_out", "dropped_keys", "dropped_prefixes", "export_pruned", "find_checkpoint", "kept_prefixes", "prune_if_exported", "prune_module", "pruned_state_dict"]

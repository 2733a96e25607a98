"""Loading and saving weights: original ViLT ``.ckpt`` files, our Lightning checkpoints, trainable-only safetensors.

``load_path`` may name one file or a list applied in order, e.g. the pretrained backbone checkpoint and then
the trainable weights (adapters, heads, search state) a run saved alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from safetensors.torch import load_file, save_file

from vlpeft._io import atomic_path, write_json_atomic

TRAINABLE_FILE = "trainable.safetensors"
TRAINABLE_CONFIG = "trainable.json"
HEAD_PREFIXES = ("vqa_classifier", "nlvr2_classifier", "gqa_classifier", "snli_ve_classifier", "rank_output",
                 "itm_score", "mlm_score", "mpp_score")


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model; the message names the key or file and the fix."""


@dataclass
class LoadReport:
    path: str
    kind: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    placement: dict[str, Any] | None = None

    def summary(self, show: int = 8) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.path} ({self.kind})"]
        for name, keys in (("missing (kept as initialised)", self.missing), ("unexpected (ignored)", self.unexpected)):
            if keys:
                more = f" … and {len(keys) - show} more" if len(keys) > show else ""
                lines.append(f"  {name}: {len(keys)}: {', '.join(keys[:show])}{more}")
        return "\n".join(lines)


def _as_list(load_path: str | Sequence[str] | None) -> list[str]:
    if not load_path:
        return []
    if isinstance(load_path, (str, os.PathLike)):
        return [str(load_path)]
    return [str(p) for p in load_path if p]


def load_weights(module, load_path, *, fresh_heads: bool = False) -> list[LoadReport]:
    """Load every file of ``load_path`` into ``module`` (a VLPeftModule) and return one report per file.

    ``fresh_heads``: drop task-head weights of an *original* ViLT checkpoint, as the original training scripts
    did by building the heads after loading (``itm_score`` is kept: ``rank_output`` is initialised from it).
    """
    reports = []
    for path in _as_list(load_path):
        p = Path(path)
        if not p.is_file():
            raise CheckpointError(f"load_path {path} does not exist; give the path of a .ckpt or .safetensors file")
        if p.suffix == ".safetensors":
            reports.append(_load_trainable(module, p))
        else:
            reports.append(_load_ckpt(module, p, fresh_heads=fresh_heads))
    return reports


def _load_ckpt(module, path: Path, *, fresh_heads: bool) -> LoadReport:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({type(e).__name__}: {e})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd:
        raise CheckpointError(f"{path} holds no state_dict; expected a Lightning/ViLT .ckpt")
    placement = ckpt.get("vlpeft_placement") if isinstance(ckpt, dict) else None
    ours = any(k.startswith(("backbone.", "heads.")) for k in sd)
    if ours:
        report = _load_state(module, sd, path, "vlpeft checkpoint")
    else:
        report = _load_original(module, sd, path, fresh_heads=fresh_heads)
    report.placement = placement
    return report


def _load_original(module, sd: dict[str, torch.Tensor], path: Path, *, fresh_heads: bool) -> LoadReport:
    """An original ViLT/DAS checkpoint: top-level names; the backbone remaps what its architecture needs."""
    head_sd = {k: v for k, v in sd.items() if k.split(".")[0] in HEAD_PREFIXES}
    body_sd = {k: v for k, v in sd.items() if k not in head_sd}
    if fresh_heads:
        head_sd = {k: v for k, v in head_sd.items() if k.startswith("itm_score")}
    body_sd = module.backbone.checkpoint_filter_fn(body_sd) if hasattr(module.backbone, "checkpoint_filter_fn") else body_sd
    ours = {f"backbone.{k}": v for k, v in body_sd.items()}
    ours.update({f"heads.{k}": v for k, v in head_sd.items()})
    report = _load_state(module, ours, path, "original ViLT checkpoint")
    if "rank_output" in module.heads and "itm_score" in module.heads and any(k.startswith("itm_score") for k in head_sd):
        from vlpeft.tasks.heads import init_rank_output_from_itm

        init_rank_output_from_itm(module.heads)
    return report


def _load_state(module, sd: dict[str, torch.Tensor], path: Path, kind: str) -> LoadReport:
    own = module.state_dict()
    for k, v in sd.items():
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(
                f"{path}: tensor {k} has shape {tuple(v.shape)} in the checkpoint but {tuple(own[k].shape)} in this "
                "model; the config (vit / hidden_size / num_layers / label sizes / image_size) does not match the "
                "checkpoint's architecture"
            )
    result = module.load_state_dict(sd, strict=False)
    return LoadReport(path=str(path), kind=kind, loaded=len(set(sd) & set(own)),
                      missing=list(result.missing_keys), unexpected=list(result.unexpected_keys))


def trainable_state(module) -> dict[str, torch.Tensor]:
    """Trainable parameters plus search buffers: everything a run changes, nothing the backbone already has."""
    state = {n: p.detach().cpu().contiguous() for n, p in module.named_parameters() if p.requires_grad}
    for n, b in module.named_buffers():
        if n.startswith("search."):
            state[n] = b.detach().cpu().contiguous()
    return state


def save_trainable(module, run_dir: str | Path, config: dict[str, Any], placement: dict | None) -> Path:
    run_dir = Path(run_dir)
    dst = run_dir / TRAINABLE_FILE
    with atomic_path(dst) as tmp:
        save_file(trainable_state(module), str(tmp), metadata={"format": "pt", "producer": "vlpeft"})
    write_json_atomic(run_dir / TRAINABLE_CONFIG, {"config": _jsonable(config), "placement": placement})
    return dst


def _load_trainable(module, path: Path) -> LoadReport:
    try:
        sd = load_file(str(path))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{path} is not a readable safetensors file ({e})") from None
    report = _load_state(module, sd, path, "trainable weights (safetensors)")
    # a trainable-only file is applied on top of the backbone: "missing" is everything frozen, not worth listing
    report.missing = [k for k in report.missing if k in sd]
    sidecar = path.with_name(TRAINABLE_CONFIG)
    if sidecar.is_file():
        report.placement = json.loads(sidecar.read_text()).get("placement")
    return report


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))

"""Loading and saving weights — one loader (``load_state``) and one report (``LoadReport``) for original ViLT
``.ckpt`` files, transformers state dicts, our Lightning checkpoints and trainable-only safetensors; each backbone
adapts foreign key names and shapes through its ``checkpoint_filter_fn``.

``load_path`` may name one file or a list applied in order, e.g. the pretrained backbone checkpoint and then
the trainable weights (adapters, heads, search state) a run saved alone. An entry may also be a Hugging Face model
folder (``save_pretrained``: ``config.json`` + ``model.safetensors``, sharded safetensors with their index, or
``pytorch_model.bin``): its ``model_type`` must be one the backbone reads (``Backbone.hf_model_types``), and its
names go through the backbone's ``checkpoint_filter_fn`` like any foreign file's.
"""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlpeft._io import atomic_path, write_json_atomic
from vlpeft._protocol import Backbone
from vlpeft.backbones._folders import model_type
from vlpeft.pruning import prune_if_exported
from vlpeft.tasks._base import all_tasks
from vlpeft.tasks.heads import ORIGINAL_HEAD_PREFIXES, init_rank_output_from_itm

TRAINABLE_FILE = "trainable.safetensors"
TRAINABLE_CONFIG = "trainable.json"


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded into this model; the message names the key or file and the fix."""


@dataclass
class LoadReport:
    """What one file did to the model: tensors loaded, converted on the way, missing (kept as initialised) and
    unexpected (ignored); the placement a vlpeft checkpoint carries."""

    path: str
    kind: str
    loaded: int = 0
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    placement: dict[str, Any] | None = None

    def summary(self, show: int = 8) -> str:
        lines = [f"loaded {self.loaded} tensors from {self.path} ({self.kind})"]
        for name, keys in (("adapted", self.adapted), ("missing (kept as initialised)", self.missing),
                           ("unexpected (ignored)", self.unexpected)):
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


# ---------------------------------------------------------------------------------------------- safe unpickling
# Released .ckpt files come from the internet, and unpickling runs whatever callables a file names. Files are read
# with torch's weights_only unpickler; the only globals allowed beyond torch's own are the containers the originals'
# checkpoints hold around their tensors, each replaced by an inert stand-in of our own (a plain dict / list / class
# that runs nothing): sacred's read-only config containers (ViLT / METER save their sacred config as
# hyper_parameters), Lightning's AttributeDict (hparams), and Lightning 1.x callback classes, which key
# checkpoint["callbacks"] (PL < 1.5). Anything else is refused: vlpeft never unpickles arbitrary objects. Running a
# file's code stays the user's own decision, outside vlpeft: the refusal shows how to re-save the tensors.
RESAVE = ("if you trust the file, re-save its tensors yourself and load that instead: python -c \"import torch, "
          "safetensors.torch as st; c = torch.load('FILE', weights_only=False); sd = c.get('state_dict', c); "
          "st.save_file({k: v.contiguous() for k, v in sd.items() if torch.is_tensor(v)}, 'FILE.safetensors')\"")


class _AsDict:
    """Stand-in for a dict subclass in a checkpoint (sacred ReadOnlyDict, Lightning AttributeDict): building one
    gives a plain dict (the unpickler fills only plain dicts), whatever class the file named."""

    def __new__(cls, *args, **kwargs):
        return dict(*args[:1])


class _AsList:
    """Stand-in for sacred's ReadOnlyList: a plain list."""

    def __new__(cls, *args, **kwargs):
        return list(*args[:1])


class _InertKey:
    """Stand-in for a Lightning 1.x callback class (a key of ``checkpoint["callbacks"]``); never used."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        pass


_STAND_INS: dict[str, type] = {
    "sacred.config.custom_containers.ReadOnlyDict": _AsDict,
    "sacred.config.custom_containers.ReadOnlyList": _AsList,
    "pytorch_lightning.utilities.parsing.AttributeDict": _AsDict,
    "lightning_fabric.utilities.data.AttributeDict": _AsDict,
    "lightning.fabric.utilities.data.AttributeDict": _AsDict,
}
_CALLBACK_MODULES = ("pytorch_lightning.callbacks.", "lightning.pytorch.callbacks.")


def _stand_in(name: str) -> type | None:
    if name in _STAND_INS:
        return _STAND_INS[name]
    if name.startswith(_CALLBACK_MODULES) and name.rsplit(".", 1)[-1].isidentifier():
        return type(name.rsplit(".", 1)[-1], (_InertKey,), {"__module__": __name__})
    return None


def safe_globals_for(path: str | os.PathLike) -> list[tuple[type, str]]:
    """Stand-ins for the allowed globals ``path`` names; CheckpointError naming any other global and the opt-in."""
    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
    except Exception:  # noqa: BLE001 - an old (non-zip) file cannot be scanned: allow the fixed stand-ins, and the
        return [(cls, name) for name, cls in _STAND_INS.items()]  # weights_only load refuses anything else
    allowed = [(cls, name) for name in names if (cls := _stand_in(name)) is not None]
    refused = sorted(set(names) - {name for _, name in allowed})
    if refused:
        raise CheckpointError(
            f"{path} holds pickled Python objects that loading would have to run or build: {', '.join(refused)}. "
            f"vlpeft loads checkpoints with torch's weights_only unpickler, which refuses them: a checkpoint from "
            f"the internet can run code this way, so vlpeft never unpickles them. Use .safetensors: {RESAVE}")
    return allowed


def torch_load(path: str | os.PathLike, *, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint file, safely: weights_only with the stand-ins above (the only way vlpeft
    unpickles)."""
    with torch.serialization.safe_globals(safe_globals_for(path)):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
        except pickle.UnpicklingError as e:  # e.g. an old (non-zip) file naming a global: not scanned above
            lines = [ln.strip() for ln in str(e).splitlines()[1:] if ln.strip()
                     and not ln.startswith(("Check the documentation", "Please file an issue"))]
            reason = (lines[0] if lines else str(e)).replace("WeightsUnpickler error: ", "").split(". ")[0]
            raise CheckpointError(
                f"{path} holds something torch's weights_only unpickler refuses ({reason[:300]}); a checkpoint from "
                f"the internet can run code this way, so vlpeft never unpickles it. Use .safetensors: {RESAVE}"
            ) from None


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The state dict of a ``.ckpt`` (Lightning / original ViLT: ``["state_dict"]``), a plain ``.pt``/``.bin`` state
    dict (e.g. transformers') or a ``.safetensors`` file, and the rest of the checkpoint dict (``extras``)."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"load_path {path} does not exist; give the path of a .ckpt, .bin or .safetensors file")
    if p.suffix == ".safetensors":
        try:
            return load_file(str(p)), {}
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{p} is not a readable safetensors file ({e})") from None
    try:
        ckpt = torch_load(p)
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the same thing to the user
        raise CheckpointError(f"{p} is not a readable PyTorch checkpoint ({type(e).__name__}: {str(e)[:500]})") from None
    sd = ckpt.get("state_dict", ckpt) if isinstance(ckpt, dict) else None
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{p} holds no state dict of tensors; expected a Lightning/ViLT .ckpt or a state dict")
    extras = {k: v for k, v in ckpt.items() if k != "state_dict"} if "state_dict" in ckpt else {}
    return sd, extras


_HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def hf_folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` (a folder) is no loadable Hugging Face model folder; None when it is one."""
    p = Path(path)
    if not (p / "config.json").is_file():
        return (f"load_path {p} is a folder without config.json; give a Hugging Face model folder (written by "
                "save_pretrained) or the path of a .ckpt / .bin / .safetensors file")
    if not any((p / n).is_file() for n in _HF_WEIGHTS):
        return (f"load_path {p} holds config.json but none of {', '.join(_HF_WEIGHTS)}; save the model with "
                "save_pretrained, or give the weights file itself")
    return None


def read_hf_folder(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict of a Hugging Face model folder and its ``model_type``: ``model.safetensors`` (or its shards
    through ``model.safetensors.index.json``) preferred, else ``pytorch_model.bin`` (or its shards) through the
    weights_only loader."""
    p = Path(path)
    problem = hf_folder_problem(p)
    if problem:
        raise CheckpointError(problem)
    for single, index in (("model.safetensors", "model.safetensors.index.json"),
                          ("pytorch_model.bin", "pytorch_model.bin.index.json")):
        if (p / single).is_file():
            files = [p / single]
        elif (p / index).is_file():
            try:
                weight_map = json.loads((p / index).read_text(encoding="utf-8"))["weight_map"]
            except (OSError, ValueError, KeyError) as e:
                raise CheckpointError(f"{p / index} is no readable shard index ({type(e).__name__}: {e})") from None
            files = [p / f for f in dict.fromkeys(weight_map.values())]
            absent = [str(f) for f in files if not f.is_file()]
            if absent:
                raise CheckpointError(f"{p / index} names shards that are not there: {', '.join(absent[:3])}")
        else:
            continue
        sd: dict[str, torch.Tensor] = {}
        for f in files:
            sd.update(read_checkpoint(f)[0])
        return sd, model_type(p) or ""
    raise CheckpointError(hf_folder_problem(p) or f"{p}: no weights")  # pragma: no cover - checked above


def check_hf_family(path: str | os.PathLike, kind: str, backbone: nn.Module) -> None:
    """CheckpointError unless the folder's ``model_type`` is one the backbone reads (a wrong family would load a
    few matching names and leave the rest random)."""
    accepted = tuple(getattr(backbone, "hf_model_types", lambda: ())())
    if kind in accepted:
        return
    name = type(backbone).__name__
    reads = (f"reads Hugging Face folders of model_type {' or '.join(map(repr, accepted))}" if accepted
             else "reads no Hugging Face model folder")
    raise CheckpointError(f"load_path {path} is a Hugging Face folder of model_type {kind!r}, but this run's backbone "
                          f"({name}) {reads}; pass a folder of that family, or choose the backbone for it")


def apply_prefix_map(sd: Mapping[str, torch.Tensor], prefix_map: Mapping[str, str] | None) -> dict[str, torch.Tensor]:
    """Rename keys by the longest matching source prefix (``{"": "backbone."}`` prefixes everything)."""
    if not prefix_map:
        return dict(sd)
    srcs = sorted(prefix_map, key=len, reverse=True)
    out = {}
    for k, v in sd.items():
        src = next((s for s in srcs if k.startswith(s)), None)
        out[k if src is None else prefix_map[src] + k[len(src):]] = v
    return out


def load_state(module: nn.Module, sd: Mapping[str, torch.Tensor], path: str | os.PathLike, kind: str,
               prefix_map: Mapping[str, str] | None = None) -> LoadReport:
    """THE loader: rename by ``prefix_map``, adapt every backbone's part with its ``checkpoint_filter_fn``, check
    shapes (naming the config key to change), load non-strictly and report."""
    sd = apply_prefix_map(sd, prefix_map)
    report = LoadReport(path=str(path), kind=kind)
    backbones = [(n + "." if n else "", m) for n, m in module.named_modules() if isinstance(m, Backbone)]
    for prefix, bb in backbones:
        part = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if not part:
            continue
        before = {k: tuple(v.shape) for k, v in part.items()}
        filtered = bb.checkpoint_filter_fn(part)
        if set(filtered) != set(before) and set(filtered) - set(before):
            report.adapted.append(f"({len(set(filtered) - set(before))} keys renamed to {type(bb).__name__} names)")
        report.adapted += [prefix + k for k, v in filtered.items() if k in before and before[k] != tuple(v.shape)]
        sd = {k: v for k, v in sd.items() if not k.startswith(prefix)}
        sd.update({prefix + k: v for k, v in filtered.items()})
    own = module.state_dict()
    for k, v in sd.items():
        owner, _, leaf = k.rpartition(".")
        if leaf in getattr(_submodule(module, owner), "resizable_buffers", ()):
            continue  # grows during a run (a search's history); the module resizes it on load
        if k in own and own[k].shape != v.shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(v.shape)} in the checkpoint but "
                                  f"{tuple(own[k].shape)} in this model: {_shape_hint(module, backbones, k)}")
    result = module.load_state_dict(sd, strict=False)
    report.loaded = len(set(sd) & set(own))
    report.missing, report.unexpected = list(result.missing_keys), list(result.unexpected_keys)
    return report


def _submodule(module: nn.Module, name: str) -> nn.Module | None:
    try:
        return module.get_submodule(name) if name else module
    except AttributeError:
        return None


def _shape_hint(module: nn.Module, backbones: list, key: str) -> str:
    for prefix, bb in backbones:
        if key.startswith(prefix) and hasattr(bb, "shape_fix_hint"):
            return bb.shape_fix_hint(key[len(prefix):])
    head = key.split(".", 1)[-1] if key.startswith("heads.") else key
    for task in all_tasks():  # a head whose width is a task's label-size option names that option
        hint = task.shape_fix_hint(head)
        if hint:
            return hint
    return "the config (backbone size, hidden_size, head_hidden, label counts) does not match the checkpoint's"


def load_weights(module, load_path, *, fresh_heads: bool = False) -> list[LoadReport]:
    """Load every file of ``load_path`` into ``module`` (a VLPeftModule: ``backbone.*``, ``heads.*``), in order.

    A vlpeft checkpoint loads as is; an original ViLT (or transformers ViLT) file gets its top-level names mapped
    (``vqa_classifier.*`` → ``heads.…``, the rest → ``backbone.…``); a ``trainable.safetensors`` goes on top.
    ``fresh_heads``: drop task-head weights of an *original* checkpoint, as the original training scripts did by
    building the heads after loading (``itm_score`` is kept: ``rank_output`` is initialised from it).
    A file none of whose tensors this model has is refused (a wrong file would otherwise train from scratch).
    """
    reports = []
    for path in _as_list(load_path):
        if Path(path).is_dir():
            if hf_folder_problem(path):
                raise CheckpointError(hf_folder_problem(path))
            check_hf_family(path, model_type(path) or "", module.backbone)  # before reading any tensor
            sd, _ = read_hf_folder(path)
            report = _load_original(module, sd, path, fresh_heads=fresh_heads)
            report.kind = "Hugging Face model folder"
            if report.loaded == 0:
                raise CheckpointError(_matches_nothing(path, sd, module))
            reports.append(report)
            continue
        sd, extras = read_checkpoint(path)
        if Path(path).suffix == ".safetensors":
            report = load_state(module, sd, path, "trainable weights (safetensors)")
            # applied on top of the backbone: "missing" is everything frozen, not worth listing
            report.missing = [k for k in report.missing if k in sd]
            sidecar = Path(path).with_name(TRAINABLE_CONFIG)
            if sidecar.is_file():
                report.placement = json.loads(sidecar.read_text()).get("placement")
        elif any(k.startswith(("backbone.", "heads.")) for k in sd):
            if extras.get("vlpeft_export"):  # a pruned export: build the model without what it dropped
                prune_if_exported(module, extras["vlpeft_export"], path)
            report = load_state(module, sd, path, "vlpeft checkpoint")
        else:
            report = _load_original(module, sd, path, fresh_heads=fresh_heads)
        report.placement = extras.get("vlpeft_placement", report.placement)
        if report.loaded == 0:
            raise CheckpointError(_matches_nothing(path, sd, module))
        reports.append(report)
    return reports


def _matches_nothing(path: str, sd: Mapping[str, torch.Tensor], module) -> str:
    keys = sorted(sd)
    ours = [k for k in module.state_dict() if not k.startswith("search.")][:3]
    return (f"load_path {path} matches no tensor of this model: it holds {len(keys)} tensors named like "
            f"{', '.join(keys[:3])}{' …' if len(keys) > 3 else ''}, the model's are named like {', '.join(ours)} …. "
            "Pass the checkpoint of this backbone (a ViLT/METER .ckpt, a transformers state dict, or a vlpeft run's "
            "checkpoint / trainable.safetensors built with the same config), or load_path='' to start from scratch")


def _load_original(module, sd: dict[str, torch.Tensor], path: str, *, fresh_heads: bool) -> LoadReport:
    """Top-level names (ViLT's own, or transformers' ``vilt.*`` / ``classifier.*``): heads → ``heads.``, rest → ``backbone.``."""
    if any(k.startswith("classifier.") for k in sd):  # transformers ViltForQuestionAnswering
        sd = {("vqa_classifier." + k[len("classifier."):] if k.startswith("classifier.") else k): v for k, v in sd.items()}
    heads = ORIGINAL_HEAD_PREFIXES
    if fresh_heads:
        sd = {k: v for k, v in sd.items() if k.split(".")[0] not in heads or k.startswith("itm_score")}
    prefix_map = {"": "backbone.", **{f"{h}.": f"heads.{h}." for h in heads}}
    report = load_state(module, sd, path, "original checkpoint", prefix_map)
    if "rank_output" in module.heads and "itm_score" in module.heads and any(k.startswith("itm_score") for k in sd):
        init_rank_output_from_itm(module.heads)
    return report


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
    state = trainable_state(module)
    with atomic_path(dst, need=sum(t.numel() * t.element_size() for t in state.values())) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt", "producer": "vlpeft"})
    write_json_atomic(run_dir / TRAINABLE_CONFIG, {"config": _jsonable(config), "placement": placement})
    return dst


def _jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def load_checkpoint_file(module: nn.Module, path: str | os.PathLike, prefix_map: Mapping[str, str] | None = None
                         ) -> LoadReport:
    """One file into any module holding backbones (e.g. a backbone with heads beside it), through ``load_state``."""
    sd, extras = read_checkpoint(path)
    report = load_state(module, sd, path, "checkpoint", prefix_map)
    report.placement = extras.get("vlpeft_placement")
    return report

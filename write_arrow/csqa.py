"""CommonsenseQA (the release's JSON lines) → csqa_{train,val}.arrow, text only; and a synthetic CSQA-style set.

Input: ``SRC/train_rand_split.jsonl`` and ``SRC/dev_rand_split.jsonl`` (the public release; also accepted:
``train.jsonl`` / ``dev.jsonl`` / ``validation.jsonl``), one record per line: ``{"id", "answerKey",
"question": {"question_concept", "stem", "choices": [{"label", "text"}, …]}}``. One arrow row per question, in file
order: ``questions`` [stem], ``question_concept``, ``choices`` [[option texts]], ``choice_labels`` [[labels]],
``answers`` [answerKey], ``question_id`` [id]. The test split's answers are not public: LaVIN-DAS evaluates on the
validation set, and vlpeft's test split reads ``csqa_val``.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pyarrow as pa

from ._common import (WriteArrowError, Written, load_json_lines, split_source, write_rows,
                      write_synthetic_splits)

CSQA_SCHEMA = pa.schema([
    ("questions", pa.list_(pa.string())),
    ("question_concept", pa.string()),
    ("choices", pa.list_(pa.list_(pa.string()))),
    ("choice_labels", pa.list_(pa.list_(pa.string()))),
    ("answers", pa.list_(pa.string())),
    ("question_id", pa.list_(pa.string())),
])
SOURCES = {"train": ("train_rand_split", "train"), "val": ("dev_rand_split", "dev", "validation")}
FORMAT = ('JSON lines {"id": str, "answerKey": "A".."E", "question": {"question_concept": str, "stem": str, '
          '"choices": [{"label": str, "text": str}, …]}} (the CommonsenseQA release)')


def _row(path: Path, lineno: int, rec: Any) -> dict[str, Any]:
    q = rec.get("question") if isinstance(rec, dict) else None
    choices = q.get("choices") if isinstance(q, dict) else None
    ok = (isinstance(q, dict) and isinstance(q.get("stem"), str) and isinstance(choices, list) and choices
          and all(isinstance(c, dict) and isinstance(c.get("label"), str) and isinstance(c.get("text"), str)
                  for c in choices))
    if not ok:
        raise WriteArrowError(f"{path}, record {lineno}: no question.stem / question.choices; expected {FORMAT}")
    labels = [c["label"] for c in choices]
    key = rec.get("answerKey")
    if key not in labels:
        raise WriteArrowError(f"{path}, record {lineno}: answerKey {key!r} is not one of the option labels {labels}")
    return {"questions": [q["stem"]], "question_concept": str(q.get("question_concept", "")),
            "choices": [[c["text"] for c in choices]], "choice_labels": [labels], "answers": [key],
            "question_id": [str(rec.get("id", f"{path.stem}-{lineno}"))]}


def write_csqa(src: str | Path, dst: str | Path, *, progress: bool = True) -> dict[str, Written]:
    """Convert the CommonsenseQA release under ``src`` (see the module docstring) into ``dst``."""
    src, dst = Path(src), Path(dst)
    written = {}
    for split, stems in SOURCES.items():
        path = split_source(src, stems, f"CommonsenseQA {split} split", FORMAT)
        rows = [_row(path, i, rec) for i, rec in enumerate(load_json_lines(path, FORMAT))]
        written[f"csqa_{split}"] = write_rows(dst / f"csqa_{split}.arrow", CSQA_SCHEMA, rows, lambda r: r,
                                              progress=progress, desc=f"csqa_{split}")
    return written


# ------------------------------------------------------------------------------------------- synthetic
ANIMALS = {"dog": "bark", "cat": "meow", "cow": "moo", "duck": "quack", "lion": "roar", "sheep": "baa",
           "owl": "hoot", "snake": "hiss"}


def synthetic_records(rng: random.Random, n: int, split: str) -> list[dict[str, Any]]:
    """CSQA-style records in the release's layout: "what sound does a <animal> make?" with five sounds in random
    order, the animal's own among them (the concept is the animal)."""
    out = []
    for k in range(n):
        animal = rng.choice(sorted(ANIMALS))
        sounds = [ANIMALS[animal]] + rng.sample([s for a, s in sorted(ANIMALS.items()) if a != animal], 4)
        rng.shuffle(sounds)
        choices = [{"label": lab, "text": s} for lab, s in zip("ABCDE", sounds)]
        out.append({"id": f"{split}-{k}", "answerKey": "ABCDE"[sounds.index(ANIMALS[animal])],
                    "question": {"question_concept": animal, "stem": f"What sound does a {animal} make?",
                                 "choices": choices}})
    return out


def write_csqa_synthetic(dst: str | Path, *, seed: int = 0, n_train: int = 64, n_val: int = 16,
                         progress: bool = False) -> dict[str, Written]:
    """A synthetic CommonsenseQA-style set (csqa_train / csqa_val) in the converter's layout."""
    return write_synthetic_splits(dst, "csqa", "CSQA", (("train", n_train), ("val", n_val)), seed, CSQA_SCHEMA,
                                  synthetic_records,
                                  lambda split, recs: [_row(Path(f"{split}.jsonl"), i, r) for i, r in enumerate(recs)],
                                  lambda split: (lambda r: r), progress=progress)


__all__ = ["CSQA_SCHEMA", "synthetic_records", "write_csqa", "write_csqa_synthetic"]

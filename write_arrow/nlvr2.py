"""NLVR2 (JSON lines + PNG image pairs) → nlvr2_*.arrow, all seven files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._common import (
    NLVR2_SCHEMA,
    WriteArrowError,
    Written,
    load_json_lines,
    missing_error,
    read_bytes,
    require_keys,
    seeded_order,
    write_rows,
)

# arrow name → annotation file relative to src
FILES: dict[str, str] = {
    "nlvr2_train": "nlvr2/data/train.json",
    "nlvr2_dev": "nlvr2/data/dev.json",
    "nlvr2_test1": "nlvr2/data/test1.json",
    "nlvr2_balanced_dev": "nlvr2/data/balanced/balanced_dev.json",
    "nlvr2_balanced_test1": "nlvr2/data/balanced/balanced_test1.json",
    "nlvr2_unbalanced_dev": "nlvr2/data/unbalanced/unbalanced_dev.json",
    "nlvr2_unbalanced_test1": "nlvr2/data/unbalanced/unbalanced_test1.json",
}
LABELS = ("True", "False")


@dataclass
class _Pair:
    image_0: Path
    image_1: Path
    sentences: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def pair_paths(src: Path, record: dict[str, Any], iden: str) -> tuple[Path, Path]:
    """Train images sit in ``images/train/<directory>/``; dev/test1 ones in ``<dev|test1>/`` (prefix of the id)."""
    if iden.startswith("train"):
        base = src / "images" / "train" / str(record["directory"])
    else:
        base = src / iden.split("-", 1)[0]
    return base / f"{iden}-img0.png", base / f"{iden}-img1.png"


def _group(src: Path, path: Path) -> dict[str, _Pair]:
    records = load_json_lines(path, "NLVR2 annotations: JSON lines of {identifier, sentence, label[, directory]}")
    pairs: dict[str, _Pair] = {}
    for i, r in enumerate(records):
        keys = ["identifier", "sentence", "label"]
        where = f"line {i + 1}"
        require_keys(r, keys, path, where)
        iden = str(r["identifier"]).rsplit("-", 1)[0]  # train-10108-0-0 → train-10108-0 (one image pair)
        if iden.startswith("train"):
            require_keys(r, keys + ["directory"], path, where)
        label = str(r["label"])
        if label not in LABELS:
            raise WriteArrowError(f"{path}, {where}: label {r['label']!r}; expected 'True' or 'False'")
        p = pairs.get(iden)
        if p is None:
            p = pairs[iden] = _Pair(*pair_paths(src, r, iden))
        p.sentences.append(r["sentence"])
        p.labels.append(label)
    absent = [str(q) for p in pairs.values() for q in (p.image_0, p.image_1) if not q.is_file()]
    if absent:
        raise missing_error(absent, src, f"images referenced by {path.name}")
    return pairs


def write_nlvr2(src: str | Path, dst: str | Path, *, seed: int = 0, progress: bool = True) -> dict[str, Written]:
    """Convert the NLVR2 release under ``src`` to one arrow row per image pair (seeded row order)."""
    src, dst = Path(src), Path(dst)
    grouped = {name: _group(src, src / rel) for name, rel in FILES.items()}
    written = {}
    for name, pairs in grouped.items():
        def make(iden: str, pairs=pairs) -> dict[str, Any]:
            p = pairs[iden]
            return {"image_0": read_bytes(p.image_0), "image_1": read_bytes(p.image_1),
                    "questions": p.sentences, "answers": p.labels, "identifier": iden}

        written[name] = write_rows(dst / f"{name}.arrow", NLVR2_SCHEMA, seeded_order(pairs, seed, name), make,
                                   progress=progress)
    return written

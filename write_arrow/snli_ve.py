"""SNLI-VE in OFA's TSV release → snli_ve_{train,dev,test}.arrow (DVP's layout)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ._common import WriteArrowError, Written, require_file, snli_ve_schema, write_rows

SPLITS = ("train", "dev", "test")
LABELS = ("contradiction", "neutral", "entailment")  # dataset ids 0, 1, 2
N_COLUMNS = 6  # uniq-id, image id, base64 image, hypothesis, caption (premise), label


def tsv_path(src: Path, split: str) -> Path:
    return src / f"snli_ve_{split}.tsv"


@dataclass
class _Group:
    offset: int  # byte offset of the group's first line: its image is read back from there when writing
    lineno: int
    hypotheses: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)


def _scan(path: Path) -> dict[str, _Group]:
    """One pass over the TSV: group hypotheses by image id without keeping any base64 image in memory."""
    require_file(path, "OFA's SNLI-VE TSV (tab-separated, no header: uniq-id, image-id, base64 image, "
                       "hypothesis, caption, label)")
    groups: dict[str, _Group] = {}
    with open(path, "rb") as f:
        offset, lineno = 0, 0
        for raw in iter(f.readline, b""):
            lineno += 1
            start, offset = offset, offset + len(raw)
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                continue
            cols = line.split("\t")
            if len(cols) != N_COLUMNS:
                raise WriteArrowError(f"{path}, line {lineno}: {len(cols)} tab-separated columns; expected "
                                      f"{N_COLUMNS} (uniq-id, image-id, base64 image, hypothesis, caption, label)")
            image_id, hypothesis, label = cols[1], cols[3], cols[5].strip()
            if not hypothesis:  # the original drops rows without a hypothesis
                continue
            if label not in LABELS:
                raise WriteArrowError(f"{path}, line {lineno}: label {label!r}; expected one of {list(LABELS)}")
            g = groups.get(image_id)
            if g is None:
                g = groups[image_id] = _Group(start, lineno)
            g.hypotheses.append(hypothesis)
            g.labels.append(label)
    return groups


def _read_image(path: Path, group: _Group) -> bytes:
    with open(path, "rb") as f:
        f.seek(group.offset)
        cols = f.readline().decode("utf-8").rstrip("\r\n").split("\t")
    try:
        return base64.b64decode(cols[2], validate=True)
    except (binascii.Error, ValueError) as e:
        raise WriteArrowError(f"{path}, line {group.lineno}: column 3 is not base64 image data ({e})") from e


def write_snli_ve(src: str | Path, dst: str | Path, *, progress: bool = True) -> dict[str, Written]:
    """Convert ``src/snli_ve_{train,dev,test}.tsv`` to one arrow row per image, in file order of first appearance.

    ``identifier`` is int64 when every image id of a file is an integer (Flickr30K ids), else string — what the
    originals' pandas type inference produced.
    """
    src, dst = Path(src), Path(dst)
    scanned = {s: _scan(tsv_path(src, s)) for s in SPLITS}
    written = {}
    for split, groups in scanned.items():
        path = tsv_path(src, split)
        numeric = bool(groups) and all(k.lstrip("-").isdigit() for k in groups)
        schema = snli_ve_schema(pa.int64() if numeric else pa.string())

        def make(image_id: str, groups=groups, path=path, numeric=numeric) -> dict[str, Any]:
            g = groups[image_id]
            return {"image": _read_image(path, g), "questions": g.hypotheses, "answers": g.labels,
                    "identifier": int(image_id) if numeric else image_id}

        name = f"snli_ve_{split}"
        written[name] = write_rows(dst / f"{name}.arrow", schema, list(groups), make, progress=progress)
    return written

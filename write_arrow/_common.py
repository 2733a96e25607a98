"""Helpers shared by the converters: input validation, seeded ordering, streaming atomic arrow writes."""

from __future__ import annotations

import json
import os
import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
from tqdm.auto import tqdm

from vlpeft._io import atomic_path, parse_json_lines, write_json_atomic

# Flush a record batch once it holds this many rows or this many bytes of image data: keeps memory bounded on
# the full datasets and every binary array far below arrow's 2 GiB per-array offset limit.
BATCH_ROWS = 512
BATCH_BYTES = 128 * 2**20


class WriteArrowError(ValueError):
    """Raw input is missing or not in the expected format; the message names the file and what was expected."""


# ------------------------------------------------------------------------------------------- schemas
VQA_SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.list_(pa.string()))),
    ("answer_labels", pa.list_(pa.list_(pa.int64()))),
    ("answer_scores", pa.list_(pa.list_(pa.float64()))),
    ("image_id", pa.int64()),
    ("question_id", pa.list_(pa.int64())),
    ("split", pa.string()),
])

# GQA: same columns, but image and question ids are strings (e.g. "n161313").
GQA_SCHEMA = pa.schema([
    VQA_SCHEMA.field("image"), VQA_SCHEMA.field("questions"), VQA_SCHEMA.field("answers"),
    VQA_SCHEMA.field("answer_labels"), VQA_SCHEMA.field("answer_scores"),
    ("image_id", pa.string()),
    ("question_id", pa.list_(pa.string())),
    ("split", pa.string()),
])


def snli_ve_schema(identifier_type: pa.DataType) -> pa.Schema:
    return pa.schema([
        ("image", pa.binary()),
        ("questions", pa.list_(pa.string())),
        ("answers", pa.list_(pa.string())),
        ("identifier", identifier_type),
    ])


NLVR2_SCHEMA = pa.schema([
    ("image_0", pa.binary()),
    ("image_1", pa.binary()),
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.string())),
    ("identifier", pa.string()),
])

CAPTION_SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("caption", pa.list_(pa.string())),
    ("image_id", pa.string()),
    ("split", pa.string()),
])

VQA_LABEL_VOCAB = "vqav2_label_vocab.json"


# ------------------------------------------------------------------------------------- input checks
def require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise WriteArrowError(f"{path}: folder not found; expected {what}")
    return path


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise WriteArrowError(f"{path}: file not found; expected {what}")
    return path


def load_json(path: Path, what: str) -> Any:
    require_file(path, what)
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WriteArrowError(f"{path}: not valid JSON ({e}); expected {what}") from e


def load_json_lines(path: Path, what: str) -> list[Any]:
    """JSON lines (one object per non-blank line), as the NLVR2 release ships them."""
    require_file(path, what)
    with open(path, encoding="utf-8") as f:
        return parse_json_lines(f, path, what, WriteArrowError)


def expect_type(value: Any, typ: type | tuple[type, ...], path: Path, where: str, what: str) -> Any:
    if not isinstance(value, typ):
        raise WriteArrowError(f"{path}: {where} is a {type(value).__name__}; expected {what}")
    return value


def require_keys(record: Any, keys: Sequence[str], path: Path, where: str) -> Mapping[str, Any]:
    """A record must be a JSON object holding every key in ``keys``."""
    if not isinstance(record, Mapping):
        raise WriteArrowError(f"{path}: {where} is a {type(record).__name__}; expected an object with keys "
                              f"{list(keys)}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise WriteArrowError(f"{path}: {where} lacks key(s) {missing}; expected an object with keys {list(keys)}")
    return record


def list_images(folder: Path, what: str, suffixes: Sequence[str] = (".jpg", ".jpeg", ".png")) -> dict[str, Path]:
    """File name → path of every image directly inside ``folder`` (one directory listing, no decoding)."""
    require_dir(folder, what)
    return {e.name: Path(e.path) for e in os.scandir(folder)
            if e.is_file() and os.path.splitext(e.name)[1].lower() in suffixes}


def missing_error(missing: Sequence[str], where: Path, what: str) -> WriteArrowError:
    shown = ", ".join(map(str, list(missing)[:5])) + (", …" if len(missing) > 5 else "")
    return WriteArrowError(f"{where}: {len(missing)} {what} not found (e.g. {shown})")


def read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise WriteArrowError(f"{path}: cannot read image ({e})") from e


# ------------------------------------------------------------------------------------------ ordering
def seeded_order(keys: Iterable[Any], seed: int, name: str) -> list[Any]:
    """Sort, then shuffle with a generator seeded by (seed, name): reproducible and independent per file.

    (The originals shuffled directory listings with the global, unseeded ``random``.)
    """
    out = sorted(keys)
    random.Random(f"{seed}:{name}").shuffle(out)
    return out


# --------------------------------------------------------------------------------------------- write
@dataclass(frozen=True)
class Written:
    """One arrow file a converter wrote."""

    path: Path
    rows: int


def write_rows(dst: Path, schema: pa.Schema, items: Sequence[Any], make_row: Callable[[Any], dict[str, Any]], *,
               progress: bool = True, desc: str | None = None) -> Written:
    """Write ``make_row(item)`` for each item as an Arrow IPC file, streaming record batches.

    The file is built under a temporary name and renamed onto ``dst`` only when complete, so an interrupted
    or failed conversion never leaves a truncated file that looks valid.
    """
    dst = Path(dst)
    binary_cols = [f.name for f in schema if pa.types.is_binary(f.type)]
    n = 0
    with atomic_path(dst) as tmp:
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.RecordBatchFileWriter(sink, schema) as writer:
            buf: list[dict[str, Any]] = []
            nbytes = 0
            bar = tqdm(items, desc=desc or dst.name, unit="img", disable=not progress, leave=False)
            for item in bar:
                row = make_row(item)
                buf.append(row)
                nbytes += sum(len(row[c]) for c in binary_cols)
                if len(buf) >= BATCH_ROWS or nbytes >= BATCH_BYTES:
                    writer.write_batch(pa.RecordBatch.from_pylist(buf, schema=schema))
                    n += len(buf)
                    buf, nbytes = [], 0
            if buf:
                writer.write_batch(pa.RecordBatch.from_pylist(buf, schema=schema))
                n += len(buf)
        _default_permissions(tmp)
    return Written(dst, n)


def split_source(src: Path, stems: Sequence[str], what: str, expected: str) -> Path:
    """The first of ``src/<stem>.jsonl`` that exists (a release names a split's file one of several ways), or one error
    naming every name tried and the expected format."""
    paths = [src / f"{s}.jsonl" for s in stems]
    path = next((p for p in paths if p.is_file()), None)
    if path is None:
        raise WriteArrowError(f"{what}: none of {[str(p) for p in paths]} exists; expected {expected}")
    return path


def write_synthetic_splits(dst: str | Path, name: str, label: str, splits: Sequence[tuple[str, int]], seed: int,
                           schema: pa.Schema, records: Callable[[random.Random, int, str], list[Any]],
                           items: Callable[[str, list[Any]], Sequence[Any]],
                           make_row: Callable[[str], Callable[[Any], dict[str, Any]]], *,
                           progress: bool = False) -> dict[str, Written]:
    """A synthetic text set in its converter's layout: ``<name>_<split>.arrow`` per (split, count) of ``splits``
    (the first at least 4 records, the others at least 2), each split's records drawn from its own seeded stream."""
    if splits[0][1] < 4 or any(n < 2 for _, n in splits[1:]):
        counts = ", ".join(f"n_{split}={n}" for split, n in splits)
        raise WriteArrowError(f"synthetic {label}: {counts} are too few (>= 4 and >= 2)")
    written = {}
    for split, n in splits:
        recs = records(random.Random(f"{seed}:{name}:{split}"), n, split)
        written[f"{name}_{split}"] = write_rows(Path(dst) / f"{name}_{split}.arrow", schema, items(split, recs),
                                                make_row(split), progress=progress)
    return written


def _default_permissions(path: Path) -> None:
    """Temp files are created private (0600); give the final file the usual umask-based mode instead."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def write_vocab(dst_dir: Path, label2ans: Sequence[str], name: str = VQA_LABEL_VOCAB) -> Path:
    """The label vocabulary (list index = label id) next to the arrow files, written atomically."""
    path = write_json_atomic(Path(dst_dir) / name, list(label2ans), indent=None)
    _default_permissions(path)
    return path


def vqa_score(count: int) -> float:
    """Soft score for ``count`` matching annotators (of 10): 0, .3, .6, .9, then 1 from four on.

    Equals the official leave-one-out accuracy (n·min(1,(n−1)/3) + (10−n)·min(1,n/3))/10, rounded as the
    originals store it.
    """
    if count <= 0:
        return 0.0
    return (0.3, 0.6, 0.9)[count - 1] if count < 4 else 1.0

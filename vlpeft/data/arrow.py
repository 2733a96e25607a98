"""Reading ViLT-format Arrow IPC files, memory-mapped.

A memory-mapped table costs (almost) no resident memory: image bytes stay on disk until a row is read, so a
multi-GB file opens in milliseconds. Per-row access goes through ``table[col][i].as_py()`` (µs per row);
``take([i])`` is avoided (it materialises ~200 MB per call in pyarrow 26).
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

DATA_DOC_HINT = ("see DATA.md: write them with `python -m write_arrow <dataset> --root <raw data> "
                 "--out <data_root>` (or `python -m write_arrow synthetic --out <data_root>` for a toy set)")


class ArrowSchemaError(ValueError):
    """An arrow file lacks columns the dataset reads."""


class MissingArrowFilesError(FileNotFoundError):
    """One or more arrow files a split needs are not under ``data_root``."""


def arrow_path(data_root: str | os.PathLike, name: str) -> Path:
    return Path(data_root) / f"{name}.arrow"


def check_files(data_root: str | os.PathLike, names: Iterable[str], what: str = "") -> None:
    """Raise ONE error listing every expected file (missing ones marked) when any is absent."""
    names = list(dict.fromkeys(names))
    missing = [n for n in names if not arrow_path(data_root, n).is_file()]
    if not missing:
        return
    lines = [f"  {'MISSING ' if n in missing else 'ok      '}{arrow_path(data_root, n)}" for n in names]
    raise MissingArrowFilesError(
        f"{len(missing)} of {len(names)} arrow files{(' for ' + what) if what else ''} not found under "
        f"data_root={str(data_root)!r}:\n" + "\n".join(lines) + f"\n{DATA_DOC_HINT}")


def open_arrow(path: str | os.PathLike) -> pa.Table:
    """Memory-map an Arrow IPC file and return its table (zero-copy: buffers point into the mapping)."""
    path = Path(path)
    if not path.is_file():
        raise MissingArrowFilesError(f"arrow file {path} does not exist; {DATA_DOC_HINT}")
    try:
        source = pa.memory_map(str(path), "r")
        return pa.ipc.open_file(source).read_all()
    except pa.ArrowInvalid as e:
        raise ArrowSchemaError(f"{path} is not a readable Arrow IPC file ({e}); rewrite it with write_arrow") from e


def check_columns(table: pa.Table, path: str | os.PathLike, required: Sequence[str]) -> None:
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ArrowSchemaError(
            f"{path}: missing column(s) {missing} (has {table.column_names}); this file was not written in the "
            f"ViLT layout this dataset reads — rewrite it with write_arrow")


@dataclass
class SplitTable:
    """The concatenated table of one split plus which file each global row came from."""

    table: pa.Table
    names: list[str]  # file stems, in order
    paths: list[Path]
    offsets: list[int] = field(default_factory=list)  # first global row of each file

    def __len__(self) -> int:
        return self.table.num_rows

    def locate(self, row: int) -> tuple[str, int, Path]:
        """Global row → (file stem, row inside that file, file path)."""
        k = bisect.bisect_right(self.offsets, row) - 1
        return self.names[k], row - self.offsets[k], self.paths[k]

    def column_pylist(self, name: str) -> list:
        """One whole column as Python objects (for one-off scans; datasets read per item with ``cell``/``value``)."""
        return self.table[name].to_pylist()

    def column(self, name: str) -> pa.ChunkedArray:
        return self.table.column(name)

    def binary(self, column: str, row: int) -> bytes:
        return self.table.column(column)[row].as_py()

    def value(self, column: str, row: int) -> Any:
        """One cell as a Python object (µs: no column is converted, the buffers stay in the mapping)."""
        return self.table.column(column)[row].as_py()

    def list_item(self, column: str, row: int, j: int) -> Any:
        """Element ``j`` of the list in cell (``column``, ``row``) as a Python object; ``None`` when the cell is
        null or shorter than ``j + 1`` (test splits store ``[]`` per row), or the element itself is null."""
        cell = self.table.column(column)[row]
        if not cell.is_valid or j >= len(cell):
            return None
        return cell[j].as_py()

    def list_lengths(self, column: str) -> np.ndarray:
        """Length of every row's list in a list column (null → 0) as int64, read from the offsets only."""
        lengths = pc.fill_null(pc.list_value_length(self.table.column(column)), 0)
        return lengths.to_numpy().astype(np.int64, copy=False) if len(lengths) else np.zeros(0, np.int64)


def load_split(data_root: str | os.PathLike, names: Sequence[str], required: Sequence[str]) -> SplitTable:
    """Open every file of a split (all must exist), check their columns and concatenate them."""
    if not names:
        raise ValueError("load_split: no arrow file names given")
    check_files(data_root, names)
    tables, paths, offsets, n = [], [], [], 0
    for name in names:
        path = arrow_path(data_root, name)
        t = open_arrow(path)
        check_columns(t, path, required)
        tables.append(t)
        paths.append(path)
        offsets.append(n)
        n += t.num_rows
    # "default" promotion unifies e.g. the test split's list<null> answers with list<list<string>>
    table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    return SplitTable(table=table, names=list(names), paths=paths, offsets=offsets)

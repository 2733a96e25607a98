"""Reading ViLT-format Arrow IPC files, memory-mapped.

A memory-mapped table costs (almost) no resident memory: image bytes stay on disk until a row is read, so a
multi-GB file opens in milliseconds. Per-row access goes through ``table[col][i].as_py()`` (µs per row);
``take([i])`` is avoided (it materialises ~200 MB per call in pyarrow 26).

Opening checks what would otherwise fail far from the file, without reading the data: ``Table.validate()`` (buffer
sizes; the first and last offsets of every list / string / binary column against its values, so an offset past
the end cannot ask for a many-GB allocation when its row is read; ~+30% on a VQAv2-sized file's open) and the type
of every column the dataset reads (``type_matches``). ``all_offsets=True`` — the runner's check before it builds
the model (``MTDataModule.check_data``, once per run) — also checks that every offset in between is
non-decreasing (``check_offsets``: a vectorised pass over the offsets alone, ~2x the open; ``validate(full=True)``
would also scan every string for UTF-8, ~3x): too much for every dataset open in every DataLoader worker.
"""

from __future__ import annotations

import bisect
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

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
        f"data_root={str(data_root)!r}:\n" + "\n".join(lines) + f"\n{DATA_DOC_HINT}; or set data_root= to "
        f"the folder that holds them (other file names per split: data_splits=)")


REWRITE_HINT = "rewrite it with `python -m write_arrow <dataset> --root <raw data> --out <data_root>` (see DATA.md)"


def open_arrow(path: str | os.PathLike, all_offsets: bool = False) -> pa.Table:
    """Memory-map an Arrow IPC file and return its table (zero-copy: buffers point into the mapping), after the
    structural checks of the module doc (``all_offsets``: every offset too); ``ArrowSchemaError`` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise MissingArrowFilesError(f"arrow file {path} does not exist; {DATA_DOC_HINT}")
    try:
        source = pa.memory_map(str(path), "r")
        table = pa.ipc.open_file(source).read_all()
    except (pa.ArrowException, OSError) as e:
        raise ArrowSchemaError(f"{path} is not a readable Arrow IPC file ({type(e).__name__}: {e}); "
                               f"{REWRITE_HINT}") from e
    try:
        table.validate()  # not full=True: that also scans every string for UTF-8 (2-3x the open on VQAv2)
    except pa.ArrowException as e:
        raise ArrowSchemaError(f"{path} is corrupt ({e}); {REWRITE_HINT}") from e
    for name in table.column_names if all_offsets else ():
        problem = check_offsets(table.column(name))
        if problem:
            raise ArrowSchemaError(f"{path} is corrupt: column {name!r} {problem}; reading it would read past its "
                                   f"data. {REWRITE_HINT}")
    return table


_LIST = (pa.types.is_list, pa.types.is_large_list)
_BYTES = (pa.types.is_binary, pa.types.is_large_binary, pa.types.is_string, pa.types.is_large_string)


def check_offsets(col: pa.ChunkedArray | pa.Array) -> str | None:
    """What is wrong with the offsets of a list / string / binary column (and of the lists inside it), or None.
    Run after ``validate()``, which bounds the first and last offsets: non-negative lengths then keep every row
    inside the values (a decreasing offset is how a too-large one in the middle shows). Touches offsets only."""
    t = col.type
    if any(f(t) for f in _LIST):
        lengths = pc.list_value_length(col)
    elif any(f(t) for f in _BYTES):
        lengths = pc.binary_length(col)
    else:
        return None
    low = pc.min(lengths).as_py() if len(lengths) else None
    if low is not None and low < 0:
        return f"has decreasing offsets (a row of length {low})"
    return check_offsets(pc.list_flatten(col)) if any(f(t) for f in _LIST) else None


# Column types a reader accepts, as specs: "binary", "str", "int", "num" (int or float), "bool", "scalar" (str or
# int), "label" (str or bool), "list<spec>"; a column whose values are all null (pyarrow type null, e.g. the
# ``[]`` per row of a test split, list<null>) matches any spec, since it holds no value of a wrong type.
def type_matches(t: pa.DataType, spec: str) -> bool:
    if pa.types.is_null(t):
        return True
    if spec.startswith("list<") and spec.endswith(">"):
        return any(f(t) for f in _LIST) and type_matches(t.value_type, spec[5:-1])
    is_str = pa.types.is_string(t) or pa.types.is_large_string(t)
    return {
        "binary": pa.types.is_binary(t) or pa.types.is_large_binary(t),
        "str": is_str,
        "int": pa.types.is_integer(t),
        "num": pa.types.is_integer(t) or pa.types.is_floating(t),
        "bool": pa.types.is_boolean(t),
        "scalar": is_str or pa.types.is_integer(t),
        "label": is_str or pa.types.is_boolean(t),
    }.get(spec, True)


def check_columns(table: pa.Table, path: str | os.PathLike, required: Sequence[str],
                  types: Mapping[str, str] | None = None) -> None:
    """Every ``required`` column present, and of the type ``types`` gives for it (when it gives one)."""
    missing = [c for c in required if c not in table.column_names]
    if missing:
        raise ArrowSchemaError(
            f"{path}: missing column(s) {missing} (has {table.column_names}); this file was not written in the "
            f"ViLT layout this dataset reads — rewrite it with write_arrow")
    wrong = [f"{c!r} is {table.schema.field(c).type}, expected {types[c]}" for c in required
             if c in (types or {}) and not type_matches(table.schema.field(c).type, types[c])]
    if wrong:
        raise ArrowSchemaError(f"{path}: column {'; column '.join(wrong)} — not the layout this dataset reads; "
                               f"{REWRITE_HINT}")


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


def load_split(data_root: str | os.PathLike, names: Sequence[str], required: Sequence[str],
               types: Mapping[str, str] | None = None, all_offsets: bool = False) -> SplitTable:
    """Open every file of a split (all must exist), check their columns (and ``types``; ``all_offsets``: see
    ``open_arrow``) and concatenate them."""
    if not names:
        raise ValueError("load_split: no arrow file names given")
    check_files(data_root, names)
    tables, paths, offsets, n = [], [], [], 0
    for name in names:
        path = arrow_path(data_root, name)
        t = open_arrow(path, all_offsets)
        check_columns(t, path, required, types)
        tables.append(t)
        paths.append(path)
        offsets.append(n)
        n += t.num_rows
    # "default" promotion unifies e.g. the test split's list<null> answers with list<list<string>>
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
    except pa.ArrowException as e:  # same columns, different types (e.g. int32 vs int64 ids): name them
        differ = [c for c in tables[0].column_names
                  if len({str(t.schema.field(c).type) for t in tables if c in t.column_names}) > 1]
        listing = "\n".join(f"  {p}: " + ", ".join(f"{c} {t.schema.field(c).type}" for c in differ
                                                   if c in t.column_names) for p, t in zip(paths, tables))
        raise ArrowSchemaError(f"the files of one split disagree on column types ({e}):\n{listing}\n"
                               f"write them with the same write_arrow version so their types match") from e
    return SplitTable(table=table, names=list(names), paths=paths, offsets=offsets)

"""Atomic file writes (nothing we write is ever left half-done) and a JSON-lines reader with clear errors."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only if the block succeeds."""
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if tmp_path.exists():  # mkstemp makes 0600 files; give the result the mode a plain open() would
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, dst)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dst) as tmp:
        tmp.write_bytes(data)
    return Path(dst)


def write_text_atomic(dst: str | os.PathLike, text: str) -> Path:
    return write_bytes_atomic(dst, text.encode("utf-8"))


def write_json_atomic(dst: str | os.PathLike, obj: Any, indent: int | None = 2) -> Path:
    return write_text_atomic(dst, json.dumps(obj, indent=indent) + "\n")


def parse_json_lines(lines: Iterable[str], path: str | os.PathLike, what: str,
                     error: type[Exception] = ValueError) -> list[Any]:
    """One JSON value per non-blank line; a bad line raises ``error`` naming the file, the line and ``what``."""
    records = []
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise error(f"{path}, line {lineno}: not valid JSON ({e}); expected {what}") from e
    return records

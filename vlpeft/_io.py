"""Atomic file writes (nothing we write is ever left half-done) and a JSON-lines reader with clear errors."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterable, Iterator


DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


class OutputPathError(ValueError):
    """An output path that names a folder (or another thing that is not a file we may write)."""


class DiskFullError(OSError):
    """The disk (or quota) filled while writing ``path``; nothing was half-written: ``path`` is as it was."""

    def __init__(self, path: Path, need: int | None, written: int, free: int | None):
        size = (f"it needed about {_mib(need)}" if need is not None else
                f"{_mib(written)} were written before the disk filled")
        room = "" if free is None else f", {_mib(free)} are free on that disk"
        super().__init__(errno.ENOSPC, f"no space left on the device writing {path} ({size}{room}). Nothing was "
                         f"half-written: {path} is as it was before (the partial temporary file was removed). Free "
                         "space there (or point log_dir= / the output elsewhere) and run again")
        self.path, self.need = path, need

    def __str__(self) -> str:
        return self.strerror


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB" if n >= 2**20 else f"{n} bytes"


def check_output_file(dst: str | os.PathLike) -> Path:
    """``dst`` as a file path to write; OutputPathError when it names a folder."""
    dst = Path(dst)
    if dst.is_dir():
        raise OutputPathError(f"{dst} is a folder; name the file to write inside it (e.g. {dst / 'out.json'})")
    return dst


@contextlib.contextmanager
def atomic_path(dst: str | os.PathLike, need: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``dst``; rename it onto ``dst`` only if the block succeeds.

    A full disk raises DiskFullError naming ``dst`` and the space ``need``-ed (when the caller knows it)."""
    dst = check_output_file(dst)
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
    except OSError as e:
        if e.errno not in DISK_FULL or isinstance(e, DiskFullError):
            raise
        written = tmp_path.stat().st_size if tmp_path.exists() else 0
        tmp_path.unlink(missing_ok=True)  # give the space back before measuring what is free
        try:
            free = shutil.disk_usage(dst.parent).free
        except OSError:
            free = None
        raise DiskFullError(dst, need, written, free) from None
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_bytes_atomic(dst: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(dst, need=len(data)) as tmp:
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

"""Run folders: reserving ``<log_dir>/<run name>/version_<N>/`` atomically, naming test dumps after the run whose
checkpoint they test, and resolving ``placement=latest`` to one search run of the same experiment.

Run folder layout (the TensorBoard logger's): ``<log_dir>/<exp_name>_seed<seed>_from_<load name>/version_<N>/``
for search and train runs, ``<log_dir>/<exp_name>_seed<seed>_test_<load name>/version_<N>/`` for test runs.
Each reserved folder holds a ``run.json`` (who reserved it; for train runs, ``placement_source``: the resolved
``placement.json`` the run trained on).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

from vlpeft._io import write_json_atomic
from vlpeft.config import ConfigError
from vlpeft.search.placement import PlacementError
from vlpeft.sections import key, take

VERSION_ENV = "VLPEFT_RUN_VERSION"  # set by the launching process; DDP ranks join that version, never reserve
RUN_INFO = "run.json"
_VERSION_RE = re.compile(r"^version_(\d+)$")


# ---------------------------------------------------------------------------------------------- reserving
def check_name_part(key: str, value: Any) -> str:
    """``value`` as one folder name (no separator, not ``.``/``..``, not absolute): a config value that becomes part
    of a run folder's name must not move the folder out of ``log_dir``. ConfigError naming the key otherwise."""
    text = str(value)
    seps = [c for c in (os.sep, os.altsep, "/") if c]
    if not text or text in (".", "..") or any(c in text for c in seps) or "\0" in text or Path(text).is_absolute():
        raise ConfigError(f"{key}={text!r} is not a single folder name: the run folder "
                          f"<log_dir>/{text}_seed…/version_N would land outside log_dir (or be no folder at all). "
                          f"Pass a plain name such as {key}=my_experiment; choose where runs go with log_dir=")
    return text


def release_run_dir(run_dir: str | os.PathLike) -> bool:
    """Give a reserved run folder back: remove ``version_N`` when it holds nothing but ``run.json`` (a run that
    failed before it started), and the run name's folder when that is then empty. False when anything else is there."""
    run_dir = Path(run_dir)
    try:
        if any(p.name != RUN_INFO for p in run_dir.iterdir()):
            return False
        (run_dir / RUN_INFO).unlink(missing_ok=True)
        run_dir.rmdir()
    except OSError:
        return False
    with contextlib.suppress(OSError):  # not empty: other versions of the run are there
        run_dir.parent.rmdir()
    return True


def _existing_versions(root: Path) -> list[int]:
    if not root.is_dir():
        return []
    return [int(m.group(1)) for p in root.iterdir() if (m := _VERSION_RE.match(p.name))]


def reserve_run_dir(log_dir: str | os.PathLike, name: str) -> tuple[Path, int]:
    """The run folder ``<log_dir>/<name>/version_<N>`` for this run, and N.

    In the launching process N is reserved atomically: ``os.mkdir`` of the next free ``version_N``, taking N+1
    whenever another run created that folder first, so two runs started together never share a folder.
    A process started with ``VLPEFT_RUN_VERSION`` set (a DDP rank re-running the script) joins that version.
    """
    root = Path(log_dir) / name
    if os.environ.get(VERSION_ENV, "") != "":
        raw = os.environ[VERSION_ENV]
        if not raw.isdigit():
            raise ValueError(f"{VERSION_ENV}={raw!r} is not a run version number; unset it (it is set by the "
                             "launching process for its DDP ranks only)")
        run_dir = root / f"version_{int(raw)}"
        run_dir.mkdir(parents=True, exist_ok=True)  # normally there already (made by the launching process)
        return run_dir, int(raw)
    version = max(_existing_versions(root), default=-1) + 1
    while True:
        run_dir = root / f"version_{version}"
        try:
            root.mkdir(parents=True, exist_ok=True)
            os.mkdir(run_dir)
        except FileExistsError:
            version += 1
            continue
        except FileNotFoundError:  # a failed run gave the (empty) run name folder back meanwhile: make it again
            continue
        break
    write_json_atomic(run_dir / RUN_INFO, {"run_name": name, "version": version, "pid": os.getpid(),
                                          "host": socket.gethostname(), "reserved_at": time.time()})
    return run_dir, version


@contextlib.contextmanager
def ranks_join(version: int) -> Iterator[None]:
    """DDP ranks started inside this block (Lightning re-runs the script) join run version ``version``."""
    before = os.environ.get(VERSION_ENV)
    os.environ[VERSION_ENV] = str(version)
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(VERSION_ENV, None)
        else:
            os.environ[VERSION_ENV] = before


def update_run_info(run_dir: str | os.PathLike, **entries: Any) -> Path:
    """Merge ``entries`` into the run folder's ``run.json`` (written atomically)."""
    path = Path(run_dir) / RUN_INFO
    info = json.loads(path.read_text()) if path.is_file() else {}
    info.update(entries)
    return write_json_atomic(path, info)


def read_run_info(run_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(run_dir) / RUN_INFO
    return json.loads(path.read_text()) if path.is_file() else {}


# ---------------------------------------------------------------------------------------------- test dumps
def run_of(path: str | os.PathLike) -> tuple[str, int] | None:
    """``(run name, N)`` for a file inside a run folder (``…/<run>/version_<N>/[checkpoints/]<file>``), else None."""
    p = Path(path)
    for folder in (p.parent, p.parent.parent):
        m = _VERSION_RE.match(folder.name)
        if m and folder.parent.name:
            return folder.parent.name, int(m.group(1))
    return None


def dump_name(load_path: Any) -> str:
    """The name test dumps carry: the tested run and checkpoint, e.g. ``finetune_vqa_seed0_from_vilt_v3_last``.

    With a list (backbone + trainable weights on top) the last entry is the trained run. A checkpoint outside a
    run folder gives its file stem.
    """
    paths = [p for p in (load_path if isinstance(load_path, (list, tuple)) else [load_path]) if p]
    if not paths:
        return "scratch"
    last = Path(paths[-1])
    run = run_of(last)
    return f"{run[0]}_v{run[1]}_{last.stem}" if run else last.stem


# ---------------------------------------------------------------------------------------------- placement=latest
def _search_runs(log_dir: Path, exp_name: str) -> dict[Path, tuple[str, str]]:
    """placement.json of every search run folder of ``exp_name`` → (seed, load name) of its run."""
    pat = re.compile(rf"^{re.escape(exp_name)}_seed(-?\d+)_from_(.+)$")
    found: dict[Path, tuple[str, str]] = {}
    for p in log_dir.glob("*/version_*/placement.json"):
        m = pat.match(p.parent.parent.name)
        if m and _VERSION_RE.match(p.parent.name):
            found[p] = (m.group(1), m.group(2))
    return found


def _listing(paths) -> str:
    return "\n".join(f"  {p}  (modified {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(p.stat().st_mtime))})"
                     for p in paths)


def find_latest_placement(log_dir: str | os.PathLike, exp_name: str, seed: int, load_name: str) -> Path:
    """``placement=latest``: the newest ``placement.json`` of a search run of the same ``exp_name``.

    Rule: candidates are the search run folders ``<exp_name>_seed<s>_from_<ckpt>/version_<n>/`` under
    ``log_dir``. Those whose run name matches this run's (same seed and load name) win; if none does, the
    candidates must all come from one run name (else: ambiguous). Of the remaining ones the newest wins; two
    sharing the newest modification time are ambiguous. Ambiguity raises, listing the files.
    """
    log_dir = Path(log_dir)
    runs = _search_runs(log_dir, exp_name)
    if not runs:
        others = sorted({p.parent.parent.name for p in log_dir.glob("*/version_*/placement.json")})
        hint = f"; placement.json files of other runs there: {others}" if others else ""
        raise PlacementError(f"placement=latest: no placement.json of a search run with exp_name={exp_name!r} "
                             f"under log_dir={log_dir}{hint}; run the search stage with the same exp_name "
                             "(the named configs set it) or pass placement=<path to its placement.json>")
    mine = [p for p, (s, ld) in runs.items() if s == str(seed) and ld == load_name]
    pool = mine
    if not mine:
        names = sorted({p.parent.parent.name for p in runs})
        if len(names) > 1:
            raise PlacementError(
                f"placement=latest is ambiguous: no search run of exp_name={exp_name!r} matches this run's seed "
                f"{seed} and load_path {load_name!r}, and several others do:\n{_listing(sorted(runs))}\n"
                "pass placement=<path to the placement.json> you mean")
        pool = list(runs)
    newest = max(p.stat().st_mtime_ns for p in pool)
    top = sorted(p for p in pool if p.stat().st_mtime_ns == newest)
    if len(top) > 1:
        raise PlacementError(f"placement=latest is ambiguous: these placement files are equally new:\n"
                             f"{_listing(top)}\npass placement=<path to the placement.json> you mean")
    return top[0]


@dataclass(frozen=True)
class PlacementKeys:
    """What resolving ``placement=`` reads: the key, and where ``latest`` looks (``_run_dir``: the runner's)."""

    placement: str
    log_dir: str = ""
    exp_name: str = ""
    seed: int = 0
    run_dir: str | None = key("_run_dir", default=None, shared=True)


def resolve_placement_source(where: PlacementKeys | Mapping[str, Any], load_name: str) -> str:
    """The placement file a train run uses, from ``placement=`` (a path, a run folder, or ``latest``).

    ``latest`` is resolved with :func:`find_latest_placement` and printed. When a run folder (``_run_dir``) is given
    the resolved path is recorded as ``placement_source`` in that folder's ``run.json``; a process joining a run
    folder that already records one (a DDP rank) takes that file, so every rank trains on the same placement.
    """
    w = take(PlacementKeys, where)
    src, run_dir = str(w.placement), w.run_dir
    if run_dir:
        recorded = read_run_info(run_dir).get("placement_source")
        if recorded and read_run_info(run_dir).get("placement") == src:
            return recorded
    if src == "latest":
        found = find_latest_placement(w.log_dir, w.exp_name, w.seed, load_name)
        print(f"[vlpeft] placement=latest → {found}", flush=True)
        resolved = str(found.resolve())
    else:
        p = Path(src)
        resolved = str((p / "placement.json" if p.is_dir() else p).resolve())
    if run_dir:
        update_run_info(run_dir, placement=src, placement_source=resolved)
    return resolved

"""Run folders (issue 7): atomic reservation, test dumps named after the tested run, placement=latest restricted to
the experiment, run_search.py / run_train.py, and progress lines when stdout is not a terminal."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from vlpeft import runner
from vlpeft.config import ConfigError
from vlpeft.rundir import (VERSION_ENV, dump_name, find_latest_placement, reserve_run_dir,
                           resolve_placement_source)
from vlpeft.search.placement import Placement, PlacementError

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = dict(images=16)  # this module's arrows (tests/conftest.py): small, these tests check no learning


@pytest.fixture(autouse=True)
def _no_inherited_version(monkeypatch):
    monkeypatch.delenv(VERSION_ENV, raising=False)


# ---------------------------------------------------------------------------------------------- 1. reservation
def _race(n: int, reserve) -> list:
    barrier = threading.Barrier(n)
    out: list = [None] * n

    def work(i):
        barrier.wait()
        out[i] = reserve()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


@pytest.mark.parametrize("repeat", range(4))
def test_concurrent_threads_get_different_run_folders(tmp_path, repeat):
    log = tmp_path / "result"
    if repeat % 2:  # also when earlier versions exist
        (log / "exp_seed0_from_x" / "version_0").mkdir(parents=True)
    got = _race(8, lambda: reserve_run_dir(log, "exp_seed0_from_x"))
    versions = [v for _, v in got]
    assert len(set(versions)) == 8
    assert all(d == log / "exp_seed0_from_x" / f"version_{v}" and d.is_dir() for d, v in got)
    assert all(json.loads((d / "run.json").read_text())["version"] == v for d, v in got)


def test_runner_run_dir_reserves_distinct_versions(tmp_path):
    """runner._run_dir (what run_fit / run_test call) no longer hands two simultaneous runs the same version."""
    config = {"log_dir": str(tmp_path)}
    for _ in range(3):
        got = _race(6, lambda: runner._run_dir(config, "exp_seed0_from_x"))
        assert len({v for _, v in got}) == 6


def _reserve_in_process(log, barrier, queue):
    barrier.wait()
    queue.put(reserve_run_dir(log, "exp_seed0_from_x")[1])


def test_concurrent_processes_get_different_run_folders(tmp_path):
    ctx = mp.get_context("fork")
    for rep in range(3):
        log = tmp_path / f"r{rep}"
        barrier, queue = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_reserve_in_process, args=(log, barrier, queue)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert all(p.exitcode == 0 for p in procs)
        assert sorted(queue.get(timeout=5) for _ in procs) == [0, 1, 2, 3]


def test_ddp_rank_joins_the_reserved_version(tmp_path, monkeypatch):
    run_dir, version = reserve_run_dir(tmp_path, "exp")
    monkeypatch.setenv(VERSION_ENV, str(version))
    assert reserve_run_dir(tmp_path, "exp") == (run_dir, version)  # a rank: joins, reserves nothing
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["version_0"]
    monkeypatch.setenv(VERSION_ENV, "x")
    with pytest.raises(ValueError, match=VERSION_ENV):
        reserve_run_dir(tmp_path, "exp")


def test_tensorboard_logger_uses_the_reserved_folder(tmp_path):
    from pytorch_lightning.loggers import TensorBoardLogger

    run_dir, version = reserve_run_dir(tmp_path, "exp")
    logger = TensorBoardLogger(str(tmp_path), name="exp", version=version, default_hp_metric=False)
    logger.log_metrics({"a": 1.0}, step=0)
    logger.finalize("success")
    assert Path(logger.log_dir) == run_dir and list(run_dir.glob("events.out.tfevents.*"))
    assert sorted(p.name for p in (tmp_path / "exp").iterdir()) == ["version_0"]


# ---------------------------------------------------------------------------------------------- 2. dump names
def test_dump_name_names_the_tested_run(tmp_path):
    ckpt = tmp_path / "result" / "finetune_vqa_seed0_from_vilt" / "version_3" / "checkpoints" / "last.ckpt"
    assert dump_name(str(ckpt)) == "finetune_vqa_seed0_from_vilt_v3_last"
    trainable = ckpt.parent.parent / "trainable.safetensors"
    assert dump_name([str(tmp_path / "vilt.ckpt"), str(trainable)]) == "finetune_vqa_seed0_from_vilt_v3_trainable"
    assert dump_name(str(tmp_path / "vilt_vqa.ckpt")) == "vilt_vqa"  # outside a run folder: its stem


# ---------------------------------------------------------------------------------------------- 3. placement=latest
def _placement(log: Path, run: str, version: int, skip: int, mtime: float) -> Path:
    path = Placement.das([skip]).save(log / run / f"version_{version}" / "placement.json")
    os.utime(path, (mtime, mtime))
    return path


def _cfg(log: Path, **kw) -> dict:
    return dict(dict(log_dir=str(log), exp_name="vqa", seed=0, placement="latest", method="das",
                     load_path="vilt.ckpt"), **kw)


def test_latest_ignores_other_experiments(tmp_path, capsys):
    mine = _placement(tmp_path, "vqa_seed0_from_vilt", 0, 1, 1000)
    _placement(tmp_path, "nlvr2_seed0_from_vilt", 0, 2, 2000)  # newer, another experiment
    _placement(tmp_path, "vqa_extra_seed0_from_vilt", 0, 3, 3000)  # exp_name with "vqa" as a prefix
    p = runner.resolve_placement(_cfg(tmp_path))
    assert p.skip == (1,)
    assert str(mine.resolve()) in capsys.readouterr().out  # says which file it took


def test_latest_without_a_search_of_this_experiment_names_the_fix(tmp_path):
    _placement(tmp_path, "nlvr2_seed0_from_vilt", 0, 2, 2000)
    with pytest.raises(PlacementError, match=r"exp_name='vqa'.*nlvr2_seed0_from_vilt.*placement=<path"):
        runner.resolve_placement(_cfg(tmp_path))


def test_latest_prefers_the_run_matching_seed_and_load_path(tmp_path):
    mine = _placement(tmp_path, "vqa_seed0_from_vilt", 0, 1, 1000)
    _placement(tmp_path, "vqa_seed0_from_other", 0, 2, 2000)  # newer, but searched from another checkpoint
    _placement(tmp_path, "vqa_seed1_from_vilt", 0, 3, 3000)  # newer, another seed
    assert find_latest_placement(tmp_path, "vqa", 0, "vilt") == mine
    newer = _placement(tmp_path, "vqa_seed0_from_vilt", 1, 2, 1500)  # a newer version of the matching run wins
    assert find_latest_placement(tmp_path, "vqa", 0, "vilt") == newer


def test_latest_refuses_several_runs_none_matching(tmp_path):
    a = _placement(tmp_path, "vqa_seed0_from_other", 0, 2, 2000)
    b = _placement(tmp_path, "vqa_seed1_from_vilt", 0, 3, 3000)
    with pytest.raises(PlacementError, match="ambiguous") as err:
        find_latest_placement(tmp_path, "vqa", 0, "vilt")
    assert str(a) in str(err.value) and str(b) in str(err.value) and "placement=<path" in str(err.value)


def test_latest_takes_one_run_of_another_seed(tmp_path):
    """Searching with one seed and training with another is usual: a single candidate run is taken."""
    _placement(tmp_path, "vqa_seed1_from_vilt", 0, 3, 1000)
    newest = _placement(tmp_path, "vqa_seed1_from_vilt", 1, 2, 2000)
    assert find_latest_placement(tmp_path, "vqa", 0, "vilt") == newest


def test_latest_refuses_equally_new_files(tmp_path):
    a = _placement(tmp_path, "vqa_seed0_from_vilt", 0, 1, 2000)
    b = _placement(tmp_path, "vqa_seed0_from_vilt", 1, 2, 2000)
    _placement(tmp_path, "vqa_seed0_from_vilt", 2, 3, 1000)
    with pytest.raises(PlacementError, match="equally new") as err:
        find_latest_placement(tmp_path, "vqa", 0, "vilt")
    assert str(a) in str(err.value) and str(b) in str(err.value)


def test_resolved_placement_is_recorded_and_ranks_reuse_it(tmp_path):
    mine = _placement(tmp_path, "vqa_seed0_from_vilt", 0, 1, 1000)
    run_dir, _ = reserve_run_dir(tmp_path, "vqa_seed0_from_vilt")
    cfg = _cfg(tmp_path, _run_dir=str(run_dir))
    assert runner.resolve_placement(cfg).skip == (1,)
    info = json.loads((run_dir / "run.json").read_text())
    assert info["placement"] == "latest" and info["placement_source"] == str(mine.resolve())
    _placement(tmp_path, "vqa_seed0_from_vilt", 5, 2, 5000)  # a newer search finishes before a rank starts
    assert resolve_placement_source(cfg, "vilt") == str(mine.resolve())  # the rank trains on the same file


# ---------------------------------------------------------------------------------------------- 4. entry points
def test_stage_forcing_refuses_the_other_stage():
    from vlpeft.entrypoints import forced_stage_argv

    assert forced_stage_argv("search", ["run_search.py", "with", "demo", "max_epoch=3"]) == \
        ["run_search.py", "with", "stage=search", "demo", "max_epoch=3"]
    assert forced_stage_argv("train", ["run_train.py"]) == ["run_train.py", "with", "stage=train"]
    for argv, words in [(["with", "das_train"], "das_train"), (["with", "stage=train"], "stage=train"),
                        (["with", "dvp_adaption_bert_vqa"], "dvp_adaption_bert_vqa"),
                        (["with", "test_only=True"], "test_only=True")]:
        with pytest.raises(ConfigError, match=words):
            forced_stage_argv("search", ["run_search.py", *argv])
    with pytest.raises(ConfigError, match="das_search"):
        forced_stage_argv("train", ["run_train.py", "with", "das_search"])
    with pytest.raises(ConfigError, match="stage=search"):
        forced_stage_argv("train", ["run_train.py", "with", "x=1", "stage=search", "-l", "ERROR"])


def _tiny(arrows: Path, log: Path) -> list[str]:
    return ["demo", f"data_root={arrows}", f"log_dir={log}", "per_gpu_batchsize=16", "batch_size=16",
            "max_epoch=2", "das_epoch=2", "das_turn=1", "num_workers=0"]


def _script(name: str, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    env.pop(VERSION_ENV, None)
    return subprocess.run([sys.executable, str(ROOT / name), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def test_run_search_and_run_train_scripts(arrows, tmp_path):
    log = tmp_path / "result"
    # a search line stays a search: run_search.py refuses a train named config before doing anything
    bad = _script("run_search.py", ["with", *_tiny(arrows, log), "das_train"], tmp_path)
    assert bad.returncode == 2 and "das_train" in bad.stderr and "run_train.py" in bad.stderr
    assert not log.exists()

    s = _script("run_search.py", ["with", *_tiny(arrows, log)], tmp_path)  # demo's stage=demo → search
    assert s.returncode == 0, s.stderr[-3000:]
    found = list(log.glob("demo_seed0_from_scratch/version_*/placement.json"))
    assert len(found) == 1 and Placement.load(found[0]).meta["rounds"] > 0

    t = _script("run_train.py", ["with", *_tiny(arrows, log), "max_epoch=1", "placement=latest"], tmp_path)
    assert t.returncode == 0, t.stderr[-3000:]
    assert f"placement=latest → {found[0].resolve()}" in t.stdout
    run_dir = log / "demo_seed0_from_scratch" / "version_1"
    assert list(run_dir.glob("checkpoints/last.ckpt")) and not (run_dir / "placement.json").exists()
    assert json.loads((run_dir / "run.json").read_text())["placement_source"] == str(found[0].resolve())


# ---------------------------------------------------------------------------------------------- 5 + 2, in-process
def test_progress_lines_and_test_dumps_per_run(sacred, arrows, tmp_path, capsys):
    log = tmp_path / "result"
    upd = dict(data_root=str(arrows), log_dir=str(log), per_gpu_batchsize=16, batch_size=16, max_epoch=1,
               num_workers=0, stage="train", skip_module=[1])
    r = sacred("demo", **dict(upd, progress_interval=0))
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if ln.startswith("[vlpeft] train epoch")]
    assert any("step 1/" in ln and "loss " in ln and "loss n/a" not in ln and "samples/s" in ln and "ETA" in ln
               for ln in lines), out[-3000:]
    assert any(ln.endswith("(epoch end)") for ln in lines)

    last = Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt"
    subs = [Path(sacred("demo", **dict(upd, test_only=True, load_path=str(last))).result["submission"])
            for _ in range(2)]
    assert subs[0] != subs[1] and all(s.is_file() for s in subs)  # the second test run did not overwrite the first
    for i, s in enumerate(subs):
        assert s == log / "demo_seed0_test_last" / f"version_{i}" / "vqa_submit_demo_seed0_from_scratch_v0_last.json"
    assert not list(log.glob("vqa_submit_*.json"))


def test_progress_silent_on_a_terminal_and_checks_interval():
    from vlpeft.progress import ProgressLines, progress_callbacks

    class Tty:
        def isatty(self):
            return True

    assert progress_callbacks({"progress_interval": 0}, stream=Tty()) == []
    assert isinstance(progress_callbacks({"progress_interval": 5}, stream=open(os.devnull, "w"))[0], ProgressLines)
    with pytest.raises(ConfigError, match="progress_interval"):
        ProgressLines(-1)

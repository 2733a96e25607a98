"""Issue 18: what vlpeft refuses and never overwrites — checkpoints that would run code, a load_path that matches
nothing, run folders outside log_dir, an export onto an existing file, a SIGTERM that looked like success, other
tools' folders in the report, output flags naming folders, a full disk, run folders of runs that never started."""

from __future__ import annotations

import errno
import json
import os
import pathlib
import signal
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

from vlpeft import _io, evaluate, export, report
from vlpeft.checkpoint import CheckpointError, read_checkpoint, save_trainable, torch_load
from vlpeft.config import ConfigError
from vlpeft.rundir import release_run_dir, reserve_run_dir


@pytest.fixture
def run_demo(sacred, arrows):
    """The demo (one train epoch unless overridden) on this module's arrows, logging into ``log``."""

    def run(log: Path, **updates):
        base = dict(data_root=str(arrows), log_dir=str(log), per_gpu_batchsize=8, batch_size=8, num_workers=0,
                    max_epoch=1, stage="train")
        return sacred("demo", **{**base, **updates})

    return run


class _Payload:
    """What a malicious checkpoint carries: unpickling it calls os.system (here: creates a marker file)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _evil(tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / "payload_ran"
    path = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {"backbone.x": torch.zeros(2)}, "hyper_parameters": _Payload(marker)}, path)
    return path, marker


# ---------------------------------------------------------------------------------------------- 1. unpickling
def test_checkpoint_that_would_run_code_is_refused_and_never_run(tmp_path):
    evil, marker = _evil(tmp_path)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(evil)
    msg = str(e.value)
    assert str(evil) in msg and "system" in msg and "never unpickles" in msg and ".safetensors" in msg
    assert "weights_only=False" in msg and "st.save_file" in msg  # how to re-save it, outside vlpeft
    assert not marker.exists()
    # the export CLI reads it the same way; its former opt-in is refused by name
    rc = export.main([str(evil), "--out", str(tmp_path / "out.ckpt")])
    assert rc == 2 and not marker.exists() and not (tmp_path / "out.ckpt").exists()
    rc = export.main([str(evil), "--out", str(tmp_path / "out.ckpt"), "--unsafe-pickle"])
    assert rc == 2 and not marker.exists() and not (tmp_path / "out.ckpt").exists()


def test_old_format_checkpoint_with_code_is_refused_too(tmp_path):
    marker = tmp_path / "payload_ran"
    path = tmp_path / "old_format.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path,
               _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match=r"old_format.ckpt holds something .*system.*never unpickles"):
        read_checkpoint(path)
    assert not marker.exists()


def test_there_is_no_opt_in_to_full_unpickling(tmp_path):
    """vlpeft loads data, not code: no keyword, key or flag unpickles arbitrary objects (the former
    ``unsafe_pickle=True`` is refused by name with the way to re-save the file, before anything is built)."""
    import inspect

    from vlpeft.config import ConfigError, validate_config

    evil, marker = _evil(tmp_path)
    assert "unsafe_pickle" not in inspect.signature(torch_load).parameters
    with pytest.raises(CheckpointError):
        torch_load(evil)
    with pytest.raises(ConfigError, match=r"unsafe_pickle was removed: vlpeft never unpickles.*st.save_file"):
        validate_config({"unsafe_pickle": True})
    assert not marker.exists()


def test_the_printed_resave_command_works_as_written(tmp_path):
    """A trusted file holding a refused object (here argparse's Namespace, as some training scripts save): the
    refusal's one-line re-save, run as printed, gives a .safetensors file that loads with the same tensors."""
    import argparse
    import re
    import subprocess
    import sys

    src = tmp_path / "trusted.ckpt"
    w = torch.arange(6.0).reshape(2, 3)
    torch.save({"state_dict": {"backbone.w": w}, "hyper_parameters": argparse.Namespace(lr=1e-4)}, src)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(src)
    assert "argparse.Namespace" in str(e.value)
    code = re.search(r'python -c "(.*)"$', str(e.value)).group(1).replace("FILE", str(src))
    subprocess.run([sys.executable, "-c", code], check=True, cwd=tmp_path, timeout=120)
    sd, _ = read_checkpoint(tmp_path / "trusted.ckpt.safetensors")
    assert list(sd) == ["backbone.w"] and torch.equal(sd["backbone.w"], w)


def test_train_run_refuses_code_in_load_path(run_demo, tmp_path):
    evil, marker = _evil(tmp_path)
    log = tmp_path / "result"
    with pytest.raises(CheckpointError, match="never unpickles"):
        run_demo(log, load_path=str(evil))
    assert not marker.exists()
    assert not list(log.glob("*/version_*"))  # failed before training: its run folder was given back


def test_original_checkpoint_containers_load_weights_only(tmp_path):
    """The originals' .ckpt files (ViLT: PL 1.1.4, METER: PL 1.3.2, sacred 0.8.2) hold their sacred config as
    hyper_parameters (ReadOnlyDict / ReadOnlyList), Lightning's AttributeDict, and callback classes as keys of
    ``callbacks``: all load through the weights_only unpickler, as inert plain containers."""
    from lightning_fabric.utilities.data import AttributeDict
    from pytorch_lightning.callbacks import ModelCheckpoint
    from sacred.config.custom_containers import ReadOnlyDict, ReadOnlyList

    config = ReadOnlyDict({"exp_name": "finetune_vqa", "loss_names": ReadOnlyDict({"vqa": 1}),
                           "datasets": ReadOnlyList(["vqa"])})
    sd = {"transformer.blocks.0.norm1.weight": torch.randn(4), "vqa_classifier.0.bias": torch.randn(3)}
    path = tmp_path / "vilt_original.ckpt"
    torch.save({"epoch": 9, "state_dict": sd, "hyper_parameters": AttributeDict(config=config),
                "callbacks": {ModelCheckpoint: {"best_model_score": torch.tensor(0.7), "best_model_path": "x"}}},
               path)
    got, extras = read_checkpoint(path)
    assert got.keys() == sd.keys() and all(torch.equal(got[k], v) for k, v in sd.items())
    old_format = tmp_path / "old_format.ckpt"  # torch < 1.6's format: not scannable, the fixed stand-ins apply
    torch.save({"state_dict": sd, "hyper_parameters": {"config": config}}, old_format,
               _use_new_zipfile_serialization=False)
    assert read_checkpoint(old_format)[1]["hyper_parameters"]["config"]["loss_names"] == {"vqa": 1}
    cfg = extras["hyper_parameters"]["config"]
    assert cfg["loss_names"] == {"vqa": 1} and list(cfg["datasets"]) == ["vqa"]
    assert type(cfg) is dict and type(cfg["datasets"]) is list  # plain containers: sacred's classes never ran
    (key,) = extras["callbacks"]
    assert key is not ModelCheckpoint and key.__name__ == "ModelCheckpoint"


def test_load_path_matching_no_tensor_is_refused(run_demo, tmp_path):
    other = tmp_path / "other_model.ckpt"
    torch.save({"state_dict": {"encoder.layer.0.weight": torch.randn(3, 3), "decoder.w": torch.randn(2)}}, other)
    log = tmp_path / "result"
    with pytest.raises(CheckpointError) as e:
        run_demo(log, load_path=str(other))
    msg = str(e.value)
    assert f"load_path {other} matches no tensor of this model" in msg and "encoder.layer.0.weight" in msg
    assert "load_path=''" in msg
    assert not list(log.glob("*/version_*"))


# ---------------------------------------------------------------------------------------------- 2. exp_name
@pytest.mark.parametrize("name", ["../../escaped", "a/b", "..", "ABS"])
def test_exp_name_must_be_one_folder_name(run_demo, tmp_path, name):
    name = str(tmp_path / "abs_target") if name == "ABS" else name
    log = tmp_path / "deep" / "result"
    with pytest.raises(ConfigError) as e:
        run_demo(log, exp_name=name)
    assert f"exp_name={name!r} is not a single folder name" in str(e.value) and "log_dir=" in str(e.value)
    assert not list(tmp_path.rglob("version_*")) and not list(tmp_path.glob("*escaped*"))
    assert not list(tmp_path.glob("abs_target*")) and not list(log.glob("*"))


# ---------------------------------------------------------------------------------------------- 4. SIGTERM
class _SigtermAt(pl.Callback):
    """Sends this process SIGTERM in the middle of epoch ``epoch`` (as a cluster's preemption would)."""

    def __init__(self, epoch: int):
        self.epoch = epoch

    def on_train_batch_end(self, trainer, *args):
        if trainer.current_epoch == self.epoch and not trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_stops_a_search_with_nonzero_exit_and_the_resume_command(run_demo, tmp_path, monkeypatch, capsys):
    import vlpeft.runner as runner

    real = runner.progress_callbacks
    monkeypatch.setattr(runner, "progress_callbacks", lambda cfg: [_SigtermAt(1), *real(cfg)])
    monkeypatch.setattr(sys, "argv", ["run.py", "with", "demo", "stage=search"])
    log = tmp_path / "result"
    with pytest.raises(SystemExit) as e:
        run_demo(log, stage="search", max_epoch=2, das_epoch=2, das_turn=1)
    assert e.value.code == 143  # not 0: `set -e` in scripts/das.sh stops before training on an old placement
    (run_dir,) = log.glob("*/version_*")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert last.is_file() and not (run_dir / "placement.json").exists()
    err = capsys.readouterr().err
    assert "stopped by SIGTERM" in err and f"python run.py with demo stage=search resume_from={last}" in err
    monkeypatch.setattr(runner, "progress_callbacks", real)
    r = run_demo(log, stage="search", max_epoch=2, das_epoch=2, das_turn=1, resume_from=str(last))
    assert Path(r.result["placement_path"]).is_file()


# ---------------------------------------------------------------------------------------------- 5. export --out
def test_export_never_overwrites_without_force_and_never_its_source(tmp_path):
    run_dir = tmp_path / "run" / "version_0"
    (run_dir / "checkpoints").mkdir(parents=True)
    best, last = run_dir / "checkpoints" / "best-epoch=1-step=2.ckpt", run_dir / "checkpoints" / "last.ckpt"
    best.write_bytes(b"best")
    last.write_bytes(b"resume state")
    with pytest.raises(export.ExportError, match="--out .*last.ckpt exists; name a new file, or pass --force"):
        export.export_checkpoint(run_dir, last)
    for force in (False, True):
        with pytest.raises(export.ExportError, match="is the checkpoint being exported"):
            export.export_checkpoint(best, best, force=force)
    with pytest.raises(export.ExportError, match="is a folder; name the file"):
        export.export_checkpoint(best, run_dir)
    assert export.main([str(run_dir), "--out", str(last)]) == 2
    assert last.read_bytes() == b"resume state" and best.read_bytes() == b"best"


# ---------------------------------------------------------------------------------------------- 9. report
def _run_folder(root: Path, name: str, metrics, ours: bool = True) -> Path:
    d = root / name / "version_0"
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(metrics))
    if ours:
        (d / "run.json").write_text(json.dumps({"run_name": name, "version": 0}))
    return d


def test_report_counts_only_vlpeft_run_folders(tmp_path, capsys):
    log = tmp_path / "result"
    _run_folder(log, "mine_seed0_from_vilt", {"val": {"the_metric": 0.5}})
    foreign = _run_folder(log, "lightning_logs", {"val": {"the_metric": 0.9}}, ours=False)
    assert report.main([str(log)]) == 0
    out = capsys.readouterr()
    assert "mine_seed0_from_vilt" in out.out and "lightning_logs" not in out.out
    assert f"skipped {foreign}: no vlpeft run.json" in out.err


@pytest.mark.parametrize("metrics", [[1, 2], 3])
def test_report_names_a_metrics_file_that_is_no_object(tmp_path, capsys, metrics):
    log = tmp_path / "result"
    d = _run_folder(log, "mine_seed0_from_vilt", metrics)
    assert report.main([str(log)]) == 2
    err = capsys.readouterr().err
    assert f"{d / 'metrics.json'} holds a JSON {type(metrics).__name__}" in err and "re-run that stage" in err


# ---------------------------------------------------------------------------------------------- output folders
def test_output_flags_naming_a_folder_are_refused(tmp_path, capsys):
    log = tmp_path / "result"
    _run_folder(log, "mine_seed0_from_vilt", {"val": {"the_metric": 0.5}})
    for flag in ("--md", "--csv"):
        assert report.main([str(log), flag, str(tmp_path)]) == 2
        assert f"{flag} {tmp_path} is a folder; name the file to write" in capsys.readouterr().err
    nothing = str(tmp_path / "missing.json")
    assert evaluate.main(["nlvr2", "--predictions", nothing, "--json", str(tmp_path)]) == 2
    assert f"--json {tmp_path} is a folder; name the file to write" in capsys.readouterr().err
    assert evaluate.main(["fill-vqa", "--submission", nothing, "--questions", nothing, "--out", str(tmp_path)]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- disk full
def _disk_fills_after(monkeypatch, n: int):
    """Every write of more than ``n`` bytes writes ``n`` and then fails as a full disk does."""
    real = pathlib.Path.write_bytes

    def write_bytes(self, data):
        real(self, bytes(data)[:n])
        if len(data) > n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return len(data)

    monkeypatch.setattr(pathlib.Path, "write_bytes", write_bytes)


def test_disk_full_names_the_file_and_leaves_the_old_one_whole(tmp_path, monkeypatch):
    from vlpeft.runner import _AtomicCheckpointIO

    last = tmp_path / "checkpoints" / "last.ckpt"
    last.parent.mkdir()
    torch.save({"state_dict": {"w": torch.ones(3)}}, last)
    before = last.read_bytes()
    _disk_fills_after(monkeypatch, 100)
    with pytest.raises(_io.DiskFullError) as e:
        _AtomicCheckpointIO().save_checkpoint({"state_dict": {"w": torch.zeros(10_000)}}, last)
    msg = str(e.value)
    assert f"no space left on the device writing {last}" in msg and "it needed" in msg
    assert "Nothing was half-written" in msg and "log_dir=" in msg
    assert last.read_bytes() == before and sorted(p.name for p in last.parent.iterdir()) == ["last.ckpt"]
    dump = tmp_path / "vqa_submit.json"
    with pytest.raises(_io.DiskFullError, match=f"writing {dump} \\(it needed about"):
        _io.write_json_atomic(dump, [{"question_id": i, "answer": "yes"} for i in range(50)])
    assert not dump.exists() and not list(tmp_path.glob(".*.tmp"))


def test_disk_full_while_saving_trainable_weights(tmp_path, monkeypatch):
    import vlpeft.checkpoint as ck

    def full(tensors, filename, metadata=None):
        Path(filename).write_text("partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(ck, "save_file", full)
    with pytest.raises(_io.DiskFullError, match="trainable.safetensors \\(it needed about 24 bytes"):
        save_trainable(torch.nn.Linear(2, 2), tmp_path, {}, None)
    assert not list(tmp_path.iterdir())


def test_disk_full_in_a_file_lightning_writes_names_it(run_demo, tmp_path, monkeypatch):
    import pytorch_lightning.loggers.tensorboard as tb

    def full(path, hparams, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(tb, "save_hparams_to_yaml", full)
    log = tmp_path / "result"
    with pytest.raises(OSError) as e:
        run_demo(log)
    msg = str(e.value)
    assert "no space left on the device writing" in msg and "hparams.yaml" in msg and "may be incomplete" in msg
    assert "never half-written" in msg and "run it again" in msg


# ---------------------------------------------------------------------------------------------- early failure
def test_run_failing_before_training_gives_its_folder_back(run_demo, tmp_path):
    log = tmp_path / "result"
    with pytest.raises(Exception, match="no-such-tokenizer"):
        run_demo(log, tokenizer=str(tmp_path / "no-such-tokenizer"))
    assert not list(log.glob("*/version_*")) and not list(log.glob("*"))


def test_release_keeps_a_folder_that_holds_more_than_run_json(tmp_path):
    a, va = reserve_run_dir(tmp_path, "exp")
    b, vb = reserve_run_dir(tmp_path, "exp")
    (b / "metrics.json").write_text("{}")
    assert (va, vb) == (0, 1)
    assert release_run_dir(a) and not a.exists()
    assert not release_run_dir(b) and (b / "metrics.json").is_file()
    assert release_run_dir(reserve_run_dir(tmp_path, "solo")[0]) and not (tmp_path / "solo").exists()
    assert reserve_run_dir(tmp_path, "exp")[1] == 2  # never a version another run holds

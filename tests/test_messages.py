"""Bad input gives one clear message naming the key or file and the fix (issue 7, defect 9)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from vlpeft.checkpoint import CheckpointError
from vlpeft.config import ConfigError
from vlpeft.search.placement import Placement, PlacementError

ROOT = Path(__file__).resolve().parents[1]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_command_line_typos_name_the_closest_key():
    p = _cli("run.py", "with", "demo", "learnin_rate=1e-3")
    assert p.returncode == 2 and "unknown config key 'learnin_rate' (did you mean 'learning_rate'?)" in p.stderr
    assert "Traceback" not in p.stderr
    p = _cli("run_search.py", "with", "task_finetune_vqa_randaugg")
    assert p.returncode == 2 and "did you mean 'task_finetune_vqa_randaug'" in p.stderr


def test_a_refusal_inside_the_run_is_one_line_on_the_command_line(demo, arrows):
    # refused by the run's own checks (after sacred has parsed the command line): one line, exit 2, no traceback
    p = _cli("run.py", "with", "demo", f"data_root={arrows}", "stage=search", "das_epoch=1")
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "error: das_epoch=1 <= das_warmup_epoch=1" in p.stderr and "set das_epoch > das_warmup_epoch" in p.stderr
    # a Python caller keeps the exception
    with pytest.raises(ConfigError, match="das_epoch"):
        demo(data_root=str(arrows), stage="search", das_epoch=1)


def test_write_arrow_bad_count_is_one_line(tmp_path):
    p = _cli("-m", "write_arrow", "synthetic", "--dst", str(tmp_path / "a"), "--images", "0")
    assert p.returncode == 2 and "Traceback" not in p.stderr and "--images 0 is too few" in p.stderr


@pytest.mark.parametrize("updates, words", [
    (dict(data_root="{tmp}/nowhere"), r"data_root=.*nowhere does not exist"),
    (dict(learning_rate=-1.0), r"learning_rate=-1.0 must be a positive number"),
    (dict(resume_from="{tmp}/gone.ckpt"), r"resume_from=.*gone.ckpt does not exist"),
    (dict(log_dir="{file}/runs"), r"log_dir=.*is not a writable folder"),
    (dict(load_path="{tmp}/missing.ckpt"), r"load_path .*missing.ckpt does not exist"),
    (dict(pet="dass"), r"pet='dass' is not a registered PET preset \(did you mean 'das'\?\)"),
    (dict(stage="search", search="kab"), r"search=kab places a visual prompt.*backbone=vilt offers only \['skip'\]"),
])
def test_config_errors_name_key_and_fix(demo, arrows, tmp_path, updates, words):
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    upd = {k: v.format(tmp=tmp_path, file=a_file) if isinstance(v, str) else v for k, v in updates.items()}
    with pytest.raises(ConfigError, match=words):
        demo(**{"data_root": str(arrows), "log_dir": str(tmp_path / "r" / "runs"), **upd})
    assert not (tmp_path / "r").exists()  # a refused run leaves no (empty) log folder behind


def test_log_dir_is_checked_without_being_created(tmp_path):
    from vlpeft.config import _unwritable

    (tmp_path / "a_file").write_text("x")
    assert _unwritable(tmp_path / "new" / "deeper") is None and not (tmp_path / "new").exists()
    assert "is a file" in _unwritable(tmp_path / "a_file" / "runs")
    assert "is a file" in _unwritable(tmp_path / "a_file")


def test_placement_of_a_deeper_backbone_names_the_file(demo, arrows, tmp_path):
    path = tmp_path / "deep" / "placement.json"
    Placement.das([7], num_layers=12).save(path)
    with pytest.raises(PlacementError, match=r"placement .*deep/placement.json was searched on a backbone with 12 "
                                             r"layers, but this backbone has 4"):
        demo(data_root=str(arrows), log_dir=str(tmp_path / "r"), placement=str(path))


def test_checkpoint_head_of_another_label_count_names_the_key(demo, arrows, tmp_path):
    labels = len(json.loads((arrows / "vqav2_label_vocab.json").read_text()))
    sd = {"vqa_classifier.3.weight": torch.zeros(labels + 5, 256), "vqa_classifier.3.bias": torch.zeros(labels + 5)}
    ckpt = tmp_path / "other_labels.ckpt"
    torch.save({"state_dict": sd}, ckpt)
    with pytest.raises(CheckpointError, match=rf"\({labels + 5}, 256\).*set vqav2_label_size to the checkpoint's"):
        demo(data_root=str(arrows), log_dir=str(tmp_path / "r"), test_only=True, load_path=str(ckpt), pet="none")

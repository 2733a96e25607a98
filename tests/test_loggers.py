"""The ``logger`` config key (issue 20): csv writes Lightning's metrics.csv into the run folder; bad values and a
missing wandb are refused before anything is built."""

from __future__ import annotations

import csv
import importlib.util
from pathlib import Path

import pytest

from vlpeft.config import ConfigError

SYNTHETIC = dict(images=16)  # this module's arrows (tests/conftest.py): small, these tests check no learning


@pytest.fixture
def train(sacred, arrows, tmp_path):
    """One training epoch of the demo on this module's arrows, logging into ``tmp_path / "result"``."""

    def run(**kw):
        cfg = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), per_gpu_batchsize=16, batch_size=16,
                   max_epoch=1, num_workers=0, stage="train", skip_module=[2])
        return sacred("demo", **{**cfg, **kw})

    return run


def test_csv_logger_writes_metrics_into_the_run_folder(train):
    r = train(logger="csv")
    run_dir = Path(r.result["run_dir"])
    metrics = run_dir / "metrics.csv"
    assert metrics.is_file() and (run_dir / "hparams.yaml").is_file()
    rows = list(csv.DictReader(metrics.open()))
    assert any(row.get("val/the_metric") for row in rows)  # the validation metric the checkpoints monitor
    assert list(run_dir.glob("checkpoints/*.ckpt"))  # checkpoints stay in the same run folder
    assert not list(run_dir.glob("events.out.tfevents*"))


@pytest.mark.parametrize("value, words", [("tb", r"logger='tb' is not one of \['tensorboard', 'csv', 'wandb'\]"),
                                          (None, "logger=None")])
def test_bad_logger_is_refused_before_building(train, tmp_path, value, words):
    with pytest.raises(ConfigError, match=words):
        train(logger=value)
    assert not list((tmp_path / "result").glob("*/version_*"))  # no run folder: refused up front


def test_wandb_without_the_package_names_the_fix(monkeypatch):
    from vlpeft.loggers import check_logger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_logger({"logger": "wandb"}, ConfigError)

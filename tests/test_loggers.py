"""The ``logger`` config key (issue 20): csv writes Lightning's metrics.csv into the run folder; bad values and a
missing wandb are refused before anything is built."""

from __future__ import annotations

import csv
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402  (registers the sacred main)
from vlpeft.config import ConfigError  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

QUIET = {"--loglevel": "ERROR"}


@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("arrows")
    write_synthetic(root, seed=0, images=48, variants=("vqa",))
    return root


def _sacred(arrows: Path, log_dir: Path, **kw):
    cfg = dict(data_root=str(arrows), log_dir=str(log_dir), per_gpu_batchsize=16, batch_size=16, max_epoch=1,
               num_workers=0, stage="train", skip_module=[2])
    cfg.update(kw)
    return run_py.ex.run(named_configs=["demo"], config_updates=cfg, options=QUIET)


def test_csv_logger_writes_metrics_into_the_run_folder(arrows, tmp_path):
    r = _sacred(arrows, tmp_path / "result", logger="csv")
    run_dir = Path(r.result["run_dir"])
    metrics = run_dir / "metrics.csv"
    assert metrics.is_file() and (run_dir / "hparams.yaml").is_file()
    rows = list(csv.DictReader(metrics.open()))
    assert any(row.get("val/the_metric") for row in rows)  # the validation metric the checkpoints monitor
    assert list(run_dir.glob("checkpoints/*.ckpt"))  # checkpoints stay in the same run folder
    assert not list(run_dir.glob("events.out.tfevents*"))


@pytest.mark.parametrize("value, words", [("tb", r"logger='tb' is not one of \['tensorboard', 'csv', 'wandb'\]"),
                                          (None, "logger=None")])
def test_bad_logger_is_refused_before_building(arrows, tmp_path, value, words):
    with pytest.raises(ConfigError, match=words):
        _sacred(arrows, tmp_path / "result", logger=value)
    assert not list((tmp_path / "result").glob("*/version_*"))  # no run folder: refused up front


def test_wandb_without_the_package_names_the_fix(monkeypatch):
    from vlpeft.loggers import check_logger

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ConfigError, match="pip install wandb"):
        check_logger({"logger": "wandb"}, ConfigError)

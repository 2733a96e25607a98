"""A run says how it did (issue 20, item 2): the closing block of a run, the speed-up rule, the report's named
metric, and every documented config key settable on the command line."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import run as run_py  # its print_config command, on sys.path through tests/conftest.py
from vlpeft.config import ALL_KEYS, DEFAULTS, LOSS_KEYS, ConfigError

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = dict(seed=3, images=24)  # this module's arrows (tests/conftest.py)

QUIET = {"--loglevel": "ERROR"}


# ------------------------------------------------------------------------------ config keys on the command line
def _readme_table_keys() -> list[str]:
    text = (ROOT / "README.md").read_text()
    table = text.split("## Config keys users touch", 1)[1].split("\n## ", 1)[0]
    keys: list[str] = []
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        first = re.sub(r"\[[^\]]*\]", "", line.split(" | ", 1)[0])  # defaults in brackets are values, not keys
        for tok in re.findall(r"`([^`]+)`", first):
            assert tok in ALL_KEYS or tok in LOSS_KEYS, f"README table names {tok!r}, which is no config key"
            if tok in ALL_KEYS:
                keys.append(tok)
    return keys


# a value a user would give, where the default (None, "", an empty or a merged dict) would not exercise the key
EXAMPLES = {
    "data_splits": {"vqa": {"test": ["vqav2_rest_val"]}, "nlvr2": {"test": ["nlvr2_dev", "nlvr2_test1"]}},
    "loss_names": {"vqa": 1, "caption": 0},
    "visual_features": {"vqa": "feats/vqa"},
    "max_steps": 10, "resume_from": "last.ckpt", "no_decay": ["bias", "LayerNorm.weight"],
    "lr_mult_head": 5, "num_gpus": [0], "precision": "bf16", "placement": "latest", "load_path": "a.ckpt",
}


def test_every_documented_key_is_settable_on_the_command_line():
    keys = _readme_table_keys()
    assert {"data_splits", "loss_names", "placement", "logger", "visual_features"} <= set(keys)
    for key in keys:
        value = EXAMPLES.get(key, DEFAULTS[key])
        assert value is not None and value != {}, f"give {key} an example value in EXAMPLES"
        r = run_py.ex.run("print_config", config_updates={key: value}, options=QUIET)
        assert _holds(r.config[key], value), (key, r.config[key])


def _holds(got, value) -> bool:
    """``got`` is ``value``, or (sacred merges a dict update into the default) holds each of its entries."""
    if isinstance(value, dict):
        return isinstance(got, dict) and all(k in got and _holds(got[k], v) for k, v in value.items())
    return got == value


def test_data_splits_on_the_command_line_replaces_one_entry():
    update = 'data_splits={"vqa": {"test": ["vqav2_rest_val"]}}'  # as the shell passes it
    p = subprocess.run([sys.executable, "run.py", "print_config", "with", update], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 0 and "ConfigAddedError" not in p.stderr, p.stderr[-2000:]
    out = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout)
    vqa = re.split(r"^\s*vqa:[ \t]*$", out, maxsplit=1, flags=re.M)[1].split("\n", 4)[:4]  # not tvqa:
    assert "test = ['vqav2_rest_val']" in vqa[1]  # the override
    assert "train = ['vqav2_train', 'vqav2_trainable_val']" in vqa[2]  # the rest of the default kept


def test_data_splits_refuses_unknown_dataset_or_split_naming_the_fix():
    with pytest.raises(ConfigError, match=r"unknown dataset 'vqx'.*data_splits=\{\"vqa\""):
        run_py.ex.run("print_config", config_updates={"data_splits": {"vqx": {"test": ["a"]}}}, options=QUIET)
    with pytest.raises(ConfigError, match=r"data_splits\['vqa'\].*train / val / test"):
        run_py.ex.run("print_config", config_updates={"data_splits": {"vqa": {"tst": ["a"]}}}, options=QUIET)
    with pytest.raises(ConfigError, match=r"non-empty list"):
        run_py.ex.run("print_config", config_updates={"data_splits": {"vqa": {"test": []}}}, options=QUIET)


# ------------------------------------------------------------------------------ the speed-up rule
def _rec(skip, median, lo, hi):
    return {"flops": {"chosen": 3e9, "full": 4e9, "reduction": 0.25}, "batch_size": 8, "plan": {"skip": skip},
            "speedup": {"median": median, "min": lo, "max": hi, "rounds": 5, "device": "cpu"}}


def test_speedup_is_stated_only_beyond_its_spread():
    from vlpeft.computation import summary_line

    noise = summary_line(_rec([1], 0.794, 0.79, 1.05))  # the range holds 1: noise, not a speed-up
    assert "no measurable speed-up (0.79–1.05×)" in noise and "0.794" not in noise
    real = summary_line(_rec([1, 2], 1.3, 1.2, 1.5))
    assert "measured speed-up 1.300× [1.200, 1.500]" in real
    slower = summary_line(_rec([1], 0.85, 0.8, 0.9))  # beyond the spread on the other side: stated as measured
    assert "measured speed-up 0.850× [0.800, 0.900]" in slower
    none = summary_line(_rec([], 0.794, 0.79, 1.05))  # a plan that skips nothing claims no speed-up at all
    assert "nothing skipped: no speed-up to measure" in none and "×" not in none


# ------------------------------------------------------------------------------ the report names its metric
def _run_folder(log: Path, name: str, metrics: dict, comp: dict | None) -> Path:
    d = log / name / "version_0"
    d.mkdir(parents=True)
    (d / "run.json").write_text(json.dumps({"run_name": name, "version": 0}))
    (d / "metrics.json").write_text(json.dumps(metrics))
    if comp is not None:
        (d / "computation.json").write_text(json.dumps(dict(comp, stage="train")))
    return d


def test_report_names_the_metric_in_percent(tmp_path, capsys):
    from vlpeft import report

    log = tmp_path / "log"
    comp = dict(_rec([1], 0.794, 0.79, 1.05), params={"trainable": 10, "total": 1000, "percent": 1.0})
    _run_folder(log, "vqa_run", {"val": {"vqa_score": 0.34, "the_metric": 0.34}}, comp)
    _run_folder(log, "full_run", {"val": {"nlvr2_dev_accuracy": 0.713, "nlvr2_accuracy": 0.7, "the_metric": 0.713}},
                dict(comp, plan={"skip": []}))
    _run_folder(log, "cap_run", {"test": {"caption_cider": 1.161, "the_metric": 1.161}}, None)
    assert report.main([str(log), "--csv", str(tmp_path / "t.csv")]) == 0
    md = capsys.readouterr().out
    rows = {r["run"].split("/")[0]: r for r in csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))}
    assert (rows["vqa_run"]["metric_name"], float(rows["vqa_run"]["metric"]), rows["vqa_run"]["metric_unit"]) \
        == ("val/vqa_score", 34.0, "%")
    assert rows["full_run"]["metric_name"] == "val/nlvr2_dev_accuracy" and float(rows["full_run"]["metric"]) == 71.3
    assert (rows["cap_run"]["metric_name"], float(rows["cap_run"]["metric"]), rows["cap_run"]["metric_unit"]) \
        == ("test/caption_cider", 1.161, "CIDEr-D")
    assert float(rows["vqa_run"]["speedup"]) == 0.794  # the CSV keeps the measurement itself
    line = {n: next(ln for ln in md.splitlines() if ln.startswith(f"| {n}/")) for n in rows}
    assert "| val vqa_score 34.0 % |" in line["vqa_run"] and "no measurable speed-up (0.79–1.05×)" in line["vqa_run"]
    assert "| val nlvr2_dev_accuracy 71.3 % |" in line["full_run"] and "none (nothing skipped)" in line["full_run"]
    assert "| test caption_cider 1.161 CIDEr-D |" in line["cap_run"]


# ------------------------------------------------------------------------------ every run ends saying how it did
def test_runs_end_with_their_score_and_files(sacred, arrows, tmp_path, capsys):
    log = tmp_path / "result"
    common = dict(data_root=str(arrows), log_dir=str(log), per_gpu_batchsize=8, batch_size=8, num_workers=0,
                  max_epoch=1, das_epoch=1, das_turn=1, das_warmup_epoch=0, das_adapter_dim=8, das_skip_adapter_dim=16)

    def run(**upd):
        capsys.readouterr()
        r = sacred("demo", **dict(common, **upd))
        block = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("[vlpeft] ")][-3:]
        return r, block

    s, block = run(stage="search")
    sdir = Path(s.result["run_dir"])
    score = json.loads((sdir / "metrics.json").read_text())["val"]["vqa_score"]
    assert block[0] == f"[vlpeft] search run done: val vqa_score {100 * score:.1f} %" + block[0].split("%", 1)[1]
    assert block[1] == "[vlpeft] read: load_path (none: initialised weights)"
    assert block[2].startswith(f"[vlpeft] wrote in {sdir}: placement.json, placement.png, checkpoints/best-")
    assert "checkpoints/last.ckpt" in block[2] and "metrics.json, computation.json" in block[2]

    t, block = run(stage="train", placement="latest")
    tdir = Path(t.result["run_dir"])
    assert t.result["placement_source"] == str(sdir / "placement.json") and "placement_path" not in t.result
    assert block[0].startswith("[vlpeft] train run done: val vqa_score ")
    assert "(last epoch; kept checkpoint: " in block[0]
    assert block[1] == f"[vlpeft] read: load_path (none: initialised weights); placement {sdir / 'placement.json'}"
    assert "trainable.safetensors" in block[2] and str(tdir) in block[2]

    # the synthetic test split has no answers: said so, with the override that scores a split with answers
    _, block = run(test_only=True, load_path=t.result["checkpoint"])
    assert block[0].startswith("[vlpeft] test run done: test: no score (the test split has no answers")
    assert "data_splits=" in block[0]
    assert block[1] == f"[vlpeft] read: load_path {t.result['checkpoint']}; placement {t.result['checkpoint']}"
    assert block[2].endswith(".json") and "vqa_submit_" in block[2]
    r, block = run(test_only=True, load_path=t.result["checkpoint"],
                   data_splits={"vqa": {"test": ["vqav2_rest_val"]}})
    metrics = json.loads((Path(r.result["run_dir"]) / "metrics.json").read_text())["test"]
    assert block[0] == f"[vlpeft] test run done: test vqa_score {100 * metrics['vqa_score']:.1f} %"


def test_the_named_scores_are_what_the_metric_sums():
    from vlpeft.scores import selection_metrics
    from vlpeft.tasks.metrics import the_metric

    cases = [{"vqa_score": 0.34, "vqa_loss": 2.0},
             {"nlvr2_dev_accuracy": 0.713, "nlvr2_accuracy": 0.7, "nlvr2_loss": 0.6},
             {"snli_ve_accuracy": 0.5, "itm_accuracy": 0.9, "ir_r1": 0.2, "tr_r1": 0.3, "ir_r5": 0.6},
             {"ir_r1": 0.2, "gqa_accuracy": float("nan"), "caption_cider": 1.161}]
    names = [[k for k, _ in selection_metrics(c)] for c in cases]
    assert names == [["vqa_score"], ["nlvr2_dev_accuracy"], ["itm_accuracy", "snli_ve_accuracy", "ir_r1", "tr_r1"],
                     ["caption_cider"]]
    for c in cases:
        assert sum(v for _, v in selection_metrics(c)) == pytest.approx(the_metric(c), abs=1e-12)

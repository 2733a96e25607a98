"""A run says how it did (issue 20, item 2): the closing block of a run, the speed-up rule, the report's named
metric, and every documented config key settable on the command line."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402
from vlpeft.config import ALL_KEYS, DEFAULTS, LOSS_KEYS, ConfigError  # noqa: E402

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
    p = subprocess.run([sys.executable, "run.py", "print_config", "with", 'data_splits={"vqa": {"test": ["vqav2_rest_val"]}}'],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and "ConfigAddedError" not in p.stderr, p.stderr[-2000:]
    out = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout)
    vqa = out.split("vqa:", 1)[1].split("\n", 4)[:4]
    assert "test = ['vqav2_rest_val']" in vqa[1]  # the override
    assert "train = ['vqav2_train', 'vqav2_trainable_val']" in vqa[2]  # the rest of the default kept


def test_data_splits_refuses_unknown_dataset_or_split_naming_the_fix():
    with pytest.raises(ConfigError, match=r"unknown dataset 'vqx'.*data_splits=\{\"vqa\""):
        run_py.ex.run("print_config", config_updates={"data_splits": {"vqx": {"test": ["a"]}}}, options=QUIET)
    with pytest.raises(ConfigError, match=r"data_splits\['vqa'\].*train / val / test"):
        run_py.ex.run("print_config", config_updates={"data_splits": {"vqa": {"tst": ["a"]}}}, options=QUIET)
    with pytest.raises(ConfigError, match=r"non-empty list"):
        run_py.ex.run("print_config", config_updates={"data_splits": {"vqa": {"test": []}}}, options=QUIET)

"""README "Deliberate differences": every key the table offers to restore an original behaviour exists and accepts
the value it names (so the list cannot point users at a key that was renamed or removed)."""
import ast
import re
from pathlib import Path

import pytest

from vlpeft.config import DEFAULTS, NAMED_CONFIGS, validate_config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def _section() -> str:
    start = README.index("## Deliberate differences from the original code")
    return README[start:README.index("\n## ", start + 3)]


def _restores() -> list[tuple[str, str]]:
    rows = [line for line in _section().splitlines() if line.startswith("| ") and not line.startswith("| where")]
    pairs = []
    for row in rows:
        last = row.rstrip(" |").rsplit("|", 1)[-1]
        pairs += re.findall(r"`([a-z_0-9]+)=([^`\s]+)`", last)
    return pairs


def test_the_section_lists_the_known_differences():
    rows = [line for line in _section().splitlines() if line.startswith("| ") and not line.startswith("| where")]
    assert len(rows) >= 20
    for must in ("search_score_mode=train", "plm_dtype=fp16", "dvp_original_trainable=True",
                 "t5_original_position_bias=True", "das_round_timing=after_step"):
        assert must in _section(), must


@pytest.mark.parametrize("key,value", _restores())
def test_every_restoring_key_is_a_config_key_that_takes_the_value(key, value, tmp_path):
    assert key in DEFAULTS, f"README names {key}= but no such config key exists"
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        parsed = value  # a bare word, as sacred parses it
    base = {**DEFAULTS, **NAMED_CONFIGS["task_finetune_vqa_randaug"], "data_root": str(tmp_path)}  # a valid run
    validate_config(base)
    validate_config({**base, key: parsed})  # raises ConfigError on a value the key refuses

"""The demo's text-only reference (``vlpeft.demo.text_only_score``): the figure the README quotes as "answering from
the question alone" is computed by the demo itself, so a fresh clone prints it."""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pytest

from vlpeft.config import BASE_CONFIG, NAMED_CONFIGS
from vlpeft.demo import text_only_score
from write_arrow.synthetic import write_synthetic


def _write(path, rows):
    """rows: one list of (question, {label: soft score}) per image."""
    table = pa.table({
        "questions": [[q for q, _ in img] for img in rows],
        "answer_labels": [[list(s) for _, s in img] for img in rows],
        "answer_scores": [[list(s.values()) for _, s in img] for img in rows],
    })
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def test_majority_answer_per_question_string_scored_on_rest_val(tmp_path):
    # training side (train + trainable_val): "colour?" has best answer 1 twice and 2 once; "count?" has 3 once
    _write(tmp_path / "vqav2_train.arrow", [[("colour?", {1: 1.0, 2: 0.3}), ("count?", {3: 1.0})],
                                            [("colour?", {1: 0.6, 4: 0.9})]])  # best here is 4, not 1
    _write(tmp_path / "vqav2_trainable_val.arrow", [[("colour?", {2: 1.0})], [("colour?", {1: 1.0})]])
    # "colour?" best answers on the training side: 1, 4, 2, 1 → 1; overall: 1 ×2, 4, 2, 3 → 1
    _write(tmp_path / "vqav2_rest_val.arrow", [[("colour?", {1: 0.6, 2: 1.0}), ("count?", {3: 1.0})],
                                               [("never seen?", {1: 0.3, 3: 1.0})]])
    # colour? → 1 scores 0.6; count? → 3 scores 1.0; never seen? → the overall majority 1 scores 0.3
    assert text_only_score(tmp_path) == pytest.approx((0.6 + 1.0 + 0.3) / 3)


def test_an_answer_missing_from_the_val_soft_scores_counts_zero(tmp_path):
    _write(tmp_path / "vqav2_train.arrow", [[("shape?", {5: 1.0})]])
    _write(tmp_path / "vqav2_trainable_val.arrow", [[("shape?", {5: 1.0})]])
    _write(tmp_path / "vqav2_rest_val.arrow", [[("shape?", {6: 1.0})], [("shape?", {5: 0.9, 6: 0.3})]])
    assert text_only_score(tmp_path) == pytest.approx(0.45)


def test_the_readme_states_the_reference_the_demo_prints(tmp_path):
    """README "The two commands" quotes the demo's question-alone reference; it is what the demo computes on its
    own data (the ``demo`` named config's seed and image count)."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    stated = re.search(r"answering from the question alone gives (\d+\.\d)\b", readme)
    assert stated, "README no longer states the demo's question-alone reference"
    demo = {**BASE_CONFIG, **NAMED_CONFIGS["demo"]}
    write_synthetic(tmp_path, seed=demo["seed"], images=demo["demo_images"])
    assert f"{100 * text_only_score(tmp_path):.1f}" == stated.group(1)

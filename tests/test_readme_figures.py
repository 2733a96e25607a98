"""Figures the README states and what prints them in a fresh clone: the demo's question-alone reference
(``vlpeft.demo.text_only_score``, printed by the demo) and ``scripts/dvp_learns_synthetic.py`` (DVP with the packaged
MiniLM learns to use the image), run here small."""

from __future__ import annotations

import json
import re
import runpy
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from vlpeft.config import DEFAULTS, NAMED_CONFIGS
from vlpeft.demo import text_only_score
from vlpeft.export import dropped_keys
from vlpeft.lightning import VLPeftModule
from vlpeft.search.placement import Placement
from write_arrow.synthetic import write_synthetic

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


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
    stated = re.search(r"answering from the question alone gives (\d+\.\d)\b", README)
    assert stated, "README no longer states the demo's question-alone reference"
    demo = {**DEFAULTS, **NAMED_CONFIGS["demo"]}
    write_synthetic(tmp_path, seed=demo["seed"], images=demo["demo_images"])
    assert f"{100 * text_only_score(tmp_path):.1f}" == stated.group(1)


def test_the_dvp_learning_check_script_runs_and_reports_its_reference(tmp_path, monkeypatch):
    """The README's DVP learning figures come from ``scripts/dvp_learns_synthetic.py``: run tiny (16 images, one
    epoch), it trains BERT-DVP and reports the same question-alone reference the demo computes, on its own data."""
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "figures.json"
    monkeypatch.setattr(sys, "argv", ["dvp_learns_synthetic.py", "--images", "16", "--epochs", "1", "--json", str(out),
                                      "--work", str(tmp_path / "work"), "--seed", "3"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script puts the repository first on it
    runpy.run_path(str(root / "scripts" / "dvp_learns_synthetic.py"), run_name="__main__")
    figures = json.loads(out.read_text())
    assert figures["images"] == 16 and figures["epochs"] == 1 and figures["seed"] == 3
    assert list((tmp_path / "work" / "result").glob("DVP_seed3_*"))  # the run took the seed
    assert (tmp_path / "work" / "result").is_dir()  # --work keeps the run there (the default folder is removed)
    assert 0 <= figures["dvp_bert_val_vqa_score"] <= 100
    write_synthetic(tmp_path / "arrows", seed=0, images=16, variants=("vqa",))
    assert figures["text_only_val_vqa_score"] == round(100 * text_only_score(tmp_path / "arrows"), 2)
    assert figures["margin_points"] == pytest.approx(figures["dvp_bert_val_vqa_score"] -
                                                     figures["text_only_val_vqa_score"], abs=0.011)


def test_the_pruned_share_of_vilt_b_the_readme_states():
    """README step 7: a pruned export of ViLT-B (DAS, 1 of 12 blocks skipped) is smaller by "about 8.5 %" — the block
    with its in-block adapters and the 11 skip adapters that never run, over every tensor of the model (VQAv2 head
    of 3129 answers). Built on the meta device: shapes only."""
    stated = re.search(r"11 unused skip adapters, about (\d+\.\d) %", README)
    assert stated, "README no longer states the pruned share"
    cfg = {**DEFAULTS, **NAMED_CONFIGS["task_finetune_vqa_randaug"], "stage": "train", "vqav2_label_size": 3129}
    with torch.device("meta"):
        model = VLPeftModule(dict(cfg, skip_module=[11]), placement=Placement.das([11]))
    state = model.state_dict()
    dropped = set(dropped_keys(model))
    assert len(model.backbone.transformer.blocks) == 12 and any(".blocks.11." in k for k in dropped)
    share = sum(state[k].numel() for k in dropped) / sum(v.numel() for v in state.values())
    assert f"{100 * share:.1f}" == stated.group(1)

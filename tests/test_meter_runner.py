"""METER through run.py with DAS-METER's named configs, on synthetic data: search → train (placement=latest) →
test_only writing the VQAv2 submission. The backbone is a tiny METER whose text tower is a BERT on the
bert-base-uncased vocabulary (METER's ``*_clip_bert`` text option), so the offline default tokenizer feeds it."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest
import torch

from vlpeft.config import NAMED_CONFIGS
from vlpeft.search.placement import Placement

HIDDEN = 32  # test_meter_tiny_bert's hidden_size
NAMED = ["task_finetune_vqa_clip_bert", "clip16", "clip_randaug"]  # the DAS-METER VQA scripts' (minus text_roberta)
SYNTHETIC = dict(seed=5, images=24)  # this module's arrows (tests/conftest.py)


def _common(arrows: Path, log: Path) -> dict:
    # image_size after clip16 as the scripts do (there 384); here the tiny CLIP's 32
    return dict(data_root=str(arrows), log_dir=str(log), backbone="test_meter_bert", image_size=32,
                per_gpu_batchsize=8, batch_size=8, num_gpus=0, num_workers=0, vqav2_label_size=0,
                das_adapter_dim=8, das_skip_adapter_dim=16)


def test_meter_named_configs_are_the_originals():
    vqa = NAMED_CONFIGS["task_finetune_vqa_clip_bert"]
    assert vqa["backbone"] == "meter" and vqa["learning_rate"] == 25e-6 and vqa["lr_mult_head"] == 50
    assert vqa["lr_mult_cross_modal"] == 5 and vqa["image_size"] == 576 and vqa["batch_size"] == 512
    assert vqa["token4classifier"] is True and vqa["das_skip_adapter_dim"] == 288 and vqa["das_adapter_dim"] == 96
    assert NAMED_CONFIGS["task_finetune_nlvr2_clip_bert"]["learning_rate"] == 5e-5
    assert NAMED_CONFIGS["task_finetune_irtr_f30k_clip_bert"]["learning_rate"] == 5e-5
    assert NAMED_CONFIGS["task_finetune_irtr_coco_clip_bert"]["learning_rate"] == 5e-6
    assert NAMED_CONFIGS["clip16"]["patch_size"] == 16 and NAMED_CONFIGS["clip16"]["vit"] == "ViT-B/16"
    assert NAMED_CONFIGS["text_roberta"]["vocab_size"] == 50265


def _test_qids(arrows: Path) -> set[int]:
    table = pa.ipc.open_file(pa.memory_map(str(arrows / "vqav2_test.arrow"))).read_all()
    return {q for row in table.column("question_id").to_pylist() for q in row}


def test_meter_search_train_test_through_run_py(sacred, arrows, tmp_path):
    log = tmp_path / "result"
    common = _common(arrows, log)
    # 1. DAS search over the 2·num_top_layer fusion layers (0–1 text, 2–3 image)
    r = sacred(*NAMED, "das_search", max_epoch=2, skip_num=2, das_epoch=2, das_turn=1, das_warmup_epoch=0, **common)
    p = Placement.load(r.result["placement_path"])
    assert p.method == "das" and len(p.skip) == 2 and p.num_layers == 4 and len(p.scores) == 4
    assert p.meta["rounds"] > 0 and any(s != 0 for s in p.scores)

    # 2. train on the newest placement of this experiment
    r = sacred(*NAMED, placement="latest", max_epoch=1, **common)
    run_dir = Path(r.result["run_dir"])
    last = run_dir / "checkpoints" / "last.ckpt"
    ckpt = torch.load(last, map_location="cpu", weights_only=True)
    assert ckpt["vlpeft_placement"]["skip"] == list(p.skip)
    sd = ckpt["state_dict"]
    n = 2
    for c in p.skip:  # the skipped layers' skip adapters were built and saved
        slot = f"backbone.adapter_list_l.{c}.0." if c < n else f"backbone.adapter_list_v.{c - n}.0."
        assert any(k.startswith(slot) for k in sd), slot
    assert sd["backbone.token4classifier"].shape == (1, 1, HIDDEN)
    # METER's head: Linear(2H, 2H)–LN–GELU–Linear(2H, labels) on cls_feats = [text; image] pooled
    assert sd["heads.vqa_classifier.0.weight"].shape == (2 * HIDDEN, 2 * HIDDEN)
    # METER's lr groups: heads × lr_mult_head (50), names with cross_modal × lr_mult_cross_modal (5)
    lrs = {g["name"]: g["initial_lr"] for g in ckpt["optimizer_states"][0]["param_groups"]}
    assert lrs["head_decay"] == pytest.approx(25e-6 * 50) and lrs["cross_modal_decay"] == pytest.approx(25e-6 * 5)
    assert lrs["decay"] == pytest.approx(25e-6)

    # 3. test_only writes the VQAv2 submission, one answer per test question
    r = sacred(*NAMED, test_only=True, load_path=str(last), **common)
    sub = Path(r.result["submission"])
    assert sub.parent == Path(r.result["run_dir"]) and sub.name.startswith("vqa_submit_")
    rows = json.loads(sub.read_text())
    qids = [row["question_id"] for row in rows]
    assert len(set(qids)) == len(qids) and set(qids) == _test_qids(arrows)
    vocab = json.loads((arrows / "vqav2_label_vocab.json").read_text())
    assert all(row["answer"] in vocab for row in rows)

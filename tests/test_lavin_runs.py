"""LaVIN-DAS's twelve released scripts and DVP's ScienceQA scripts as named configs (issue 19 item 5): each resolves
with ``print_config`` and carries its script's values; each benchmark runs search → train → test_only through run.py
on its synthetic set on the tiny ``test_lavin`` backbone, writing its test dump."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

import run as run_py
from vlpeft.config import NAMED_CONFIGS
from vlpeft.named_configs.lavin_das import DVP_SQA_CONFIGS, LAVIN_CONFIGS
from vlpeft.search.placement import Placement
from write_arrow import (write_boolq_synthetic, write_csqa_synthetic, write_gsm8k_synthetic,
                         write_scienceqa_synthetic)

QUIET = {"--loglevel": "ERROR"}
# the scripts, restated: search (--max_seq_len, --epochs = --nas_epoch, --warmup_epochs, --skipped_num,
# --nas_warmup_epoch; ScienceQA's last two are train_llama.py's defaults), fine-tuning (--max_seq_len, --epochs,
# --warmup_epochs), evaluation (--max_seq_len, --max_batch_size, --skip_list, max_gen_len), --blr
SCRIPTS = {
    "boolq": dict(search=(1024, 10, 1, 6, 3), train=(1024, 5, 1), eval=(4096, 1, [], 10), blr=1e-4, task="boolq"),
    "csqa": dict(search=(1024, 5, 1, 6, 2), train=(512, 5, 1), eval=(4096, 8, [18, 26, 22, 19, 29, 27], 10),
                 blr=1e-4, task="csqa"),
    "gsm8k": dict(search=(1024, 10, 1, 4, 5), train=(512, 20, 1), eval=(4096, 1, [], 256), blr=1e-4, task="gsm8k"),
    "sqa": dict(search=(512, 10, 4, 6, 5), train=(512, 20, 2), eval=(512, 64, [24, 27, 25, 22], 64), blr=9e-3,
                task="scienceqa"),
}


def test_every_lavin_config_resolves_with_its_scripts_values():
    assert sorted(LAVIN_CONFIGS) == sorted(f"das_{s}_lavin_{b}" for s in ("search", "train", "evaluate")
                                           for b in SCRIPTS)
    for name in LAVIN_CONFIGS + DVP_SQA_CONFIGS:
        assert run_py.ex.run("print_config", named_configs=[name], options=QUIET).status == "COMPLETED", name
    for bench, s in SCRIPTS.items():
        search, train, ev = (NAMED_CONFIGS[f"das_{x}_lavin_{bench}"] for x in ("search", "train", "evaluate"))
        for c in (search, train, ev):
            # 2 GPUs × 4 × accumulation 4 = 32 per step; lr = blr · 32 / 256; LaVIN's adapters on a lavin LLaMA
            assert (c["backbone"], c["pet"], c["batch_size"], c["datasets"], c["das_llama_adapter_dim"]) == \
                ("lavin", "das_llama", 32 if c is not ev else ev["per_gpu_batchsize"], [s["task"]], 8)
            assert c["learning_rate"] == pytest.approx(s["blr"] * 32 / 256)
            assert c["das_llama_router"] == (bench == "sqa") and (c["lavin_clip_model"] == "") == (bench != "sqa")
            assert c["decay_power"] == "cosine" and c["weight_decay"] == 0.02 and c["seed"] == 0
        seq, epochs, warm, skipped, nas_warm = s["search"]
        assert (search["stage"], search["search"], search["max_text_len"], search["max_epoch"], search["das_epoch"],
                search["skip_num"], search["das_warmup_epoch"]) == ("search", "das", seq, epochs, epochs, skipped,
                                                                    nas_warm)
        assert search["warmup_steps"] == pytest.approx(warm / epochs)
        seq, epochs, warm = s["train"]
        assert (train["stage"], train["max_text_len"], train["max_epoch"], train["skip_module"]) == \
            ("train", seq, epochs, [])
        assert train["warmup_steps"] == pytest.approx(warm / epochs)
        seq, batch, skip, gen = s["eval"]
        assert (ev["test_only"], ev["max_text_len"], ev["per_gpu_batchsize"], ev["skip_module"], ev["gen_max_length"],
                ev["num_gpus"]) == (True, seq, batch, skip, gen, 1)
    # DVP's SQA scripts: 2 GPUs × 8 × accumulation 2, blr 1e-2; search 2 epochs (1 warm-up, wd 0.04), fine-tuning
    # 20 epochs (2 warm-up, wd 0.05) at the script's insert_layer 4
    dvp_s, dvp_t = NAMED_CONFIGS["dvp_search_llama_sqa"], NAMED_CONFIGS["dvp_adaption_llama_sqa"]
    assert (dvp_s["backbone"], dvp_s["search"], dvp_s["max_epoch"], dvp_s["weight_decay"],
            dvp_s["per_gpu_batchsize"]) == ("lavin", "kab", 2, 0.04, 8)
    assert (dvp_t["max_epoch"], dvp_t["weight_decay"], dvp_t["insert_layer"]) == (20, 0.05, 4)
    assert dvp_s["learning_rate"] == dvp_t["learning_rate"] == pytest.approx(1e-2 * 32 / 256)


# --- search → train → test_only on the synthetic sets ---------------------------------------------------------------
@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("lavin_arrows")
    write_boolq_synthetic(root, seed=1, n_train=8, n_val=4)
    write_csqa_synthetic(root, seed=1, n_train=8, n_val=4)
    write_gsm8k_synthetic(root, seed=1, n_train=8, n_test=4)
    write_scienceqa_synthetic(root, seed=1, n_train=8, n_small=4, image_px=32)
    return root


TINY_CLIP = dict(lavin_clip_model="test_clip_tiny", lavin_clip_every=1, lavin_hidden_proj=16,
                 lavin_visual_adapter_dim=4, image_size=32)


@pytest.mark.parametrize("bench", sorted(SCRIPTS))
def test_search_train_test_only_through_run_py(sacred, arrows, tmp_path, bench):
    task = SCRIPTS[bench]["task"]
    common = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), backbone="test_lavin",
                  tokenizer="bert-base-uncased", per_gpu_batchsize=8, batch_size=8, num_gpus=0, num_workers=0,
                  max_text_len=96, max_epoch=1, das_epoch=1, das_warmup_epoch=0, skip_num=1, das_llama_adapter_dim=4,
                  gen_max_length=8, das_rounds_per_epoch=1, **(TINY_CLIP if bench == "sqa" else {}))
    r = sacred(f"das_search_lavin_{bench}", **common)
    p = Placement.load(r.result["placement_path"])
    assert p.method == "das" and len(p.skip) == 1 and p.meta["rounds"] > 0
    r = sacred(f"das_train_lavin_{bench}", placement="latest", **common)
    ckpt = Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt"
    # evaluate: the script's skip list is the released 7B one; the tiny model takes the checkpoint's placement
    r = sacred(f"das_evaluate_lavin_{bench}", load_path=str(ckpt), skip_module=[],
               **dict(common, per_gpu_batchsize=4, batch_size=4))
    run_dir = Path(r.result["run_dir"])
    rows = json.loads(next(run_dir.glob(f"{task}_predict_*.json")).read_text())
    assert len(rows) == 4 and len({x["qid"] for x in rows}) == 4
    assert all(isinstance(x["answer"], str) and x["label"] not in (None, "") for x in rows)
    metrics = json.loads((run_dir / "metrics.json").read_text())["test"]
    assert 0.0 <= metrics[f"{task}_accuracy"] <= 1.0
    if bench == "sqa":  # LaVIN's {pid: choice} and the DAS README's table
        scores = json.loads(next(run_dir.glob("scienceqa_scores_*.json")).read_text())
        assert sorted(scores["preds"]) == sorted(x["qid"] for x in rows) and "Avg" in scores["table"]
        assert metrics["scienceqa_avg"] == pytest.approx(metrics["scienceqa_accuracy"])


def test_dvp_on_scienceqa_search_train_test_only_through_run_py(sacred, arrows, tmp_path):
    """DVP-SQA on LaVIN: the KAB search places the visual prompt at a LLaMA layer, training reads that placement
    (cross-attention + slot + LaVIN's modules train) and test_only generates answers from the checkpoint."""
    common = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), backbone="test_lavin",
                  tokenizer="bert-base-uncased", per_gpu_batchsize=8, batch_size=8, num_gpus=0, num_workers=0,
                  max_text_len=96, max_epoch=1, das_llama_adapter_dim=4, gen_max_length=4, dvp_llama_xattn_dim=16,
                  num_heads=4, **TINY_CLIP)
    r = sacred("dvp_search_llama_sqa", **common)
    p = Placement.load(r.result["placement_path"])
    assert p.method == "kab" and isinstance(p.insert_layer, int) and p.insert_layer >= 0
    r = sacred("dvp_adaption_llama_sqa", placement="latest", **common)
    run_dir = Path(r.result["run_dir"])
    trained = set(load_file(str(run_dir / "trainable.safetensors")))
    # the original's trainable set: every 'adapter', 'cross_attn' and 'image_params' parameter
    assert {"backbone.image_params", "backbone.cross_attn.linear_q.weight", "backbone.adapter_proj.conv_A.weight",
            "backbone.adapter_modality_embedding.weight"} <= trained
    assert not any(n.startswith(("backbone.clip.", "backbone.plm.llama.", "backbone.lm_head")) for n in trained)
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    r = sacred("dvp_adaption_llama_sqa", load_path=str(ckpt), test_only=True, placement="latest",
               **dict(common, per_gpu_batchsize=4, batch_size=4))
    rows = json.loads(next(Path(r.result["run_dir"]).glob("scienceqa_predict_*.json")).read_text())
    assert len(rows) == 4 and all(isinstance(x["answer"], str) for x in rows)

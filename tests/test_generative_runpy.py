"""The generative four-task run through run.py's sacred experiment (issue 11): a tiny VL-BART with ``vl_pet_large``
trains on VQA + GQA + NLVR2 + COCO captioning (single-task batches, per-task PET context), then ``test_only`` from
the checkpoint writes the VQA submission and the COCO caption results into the test run's folder; the training loss
falls. A DAS search over the encoder/decoder layers of the same model runs on one generative task."""

from __future__ import annotations

import json
from pathlib import Path


def _upd(tmp_path, data: Path, **kw):
    upd = dict(backbone="test_vl_bart", pet="vl_pet_large", vl_pet_down_dim=8, vl_pet_gate_dim=8, vl_pet_vpa_dim=8,
               data_root=str(data), log_dir=str(tmp_path / "result"), exp_name="gen",
               datasets=["vqa", "gqa", "nlvr2", "coco"],
               loss_names={"vqa": 1, "gqa": 1, "nlvr2": 1, "caption": 1, "itm": 0, "mlm": 0}, per_gpu_batchsize=4,
               batch_size=4, image_size=32, num_beams=2, gen_max_length=6, max_text_len=20, max_epoch=2,
               max_steps=None, vqav2_label_size=0, gqa_label_size=18, skip_module=[], num_gpus=0, num_workers=0,
               learning_rate=3e-3, warmup_steps=0, train_transform_keys=["clip"], val_transform_keys=["clip"],
               multitask_sampling="balanced", seed=0)
    upd.update(kw)
    return upd


def _epoch_losses(run_dir: Path) -> dict[str, list[float]]:
    """Per task, the logged ``train/<task>_loss`` epoch values from the run's TensorBoard file."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir)).Reload()
    out = {}
    for tag in acc.Tags()["scalars"]:
        if tag.startswith("train/") and tag.endswith("_loss") and tag != "train/loss":
            out[tag[len("train/"):-len("_loss")]] = [e.value for e in acc.Scalars(tag)]
    return out


def test_vl_bart_vl_pet_large_four_tasks_train_then_test_only(sacred, make_arrows, tmp_path):
    data = make_arrows("gen_data", images=16, image_px=32, variants=("vqa", "gqa", "nlvr2", "coco_captions"))
    upd = _upd(tmp_path, data)
    train = sacred(**upd).result
    run_dir = Path(train["run_dir"])
    ckpt = run_dir / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for key in ("vqa_score", "gqa_accuracy", "nlvr2_accuracy", "caption_cider"):  # every task was evaluated
        assert key in metrics["val"] and metrics["val"][key] >= 0, (key, metrics["val"])
    # the mixture trained: every task's training loss of the last epoch is below the first epoch's
    losses = _epoch_losses(run_dir)
    assert set(losses) == {"vqa", "gqa", "nlvr2", "caption"}
    assert all(ls[-1] < ls[0] for ls in losses.values()), losses
    test = sacred(**dict(upd, test_only=True, load_path=str(ckpt))).result
    test_dir = Path(test["run_dir"])
    sub = json.loads(Path(test["submission"]).read_text())
    assert Path(test["submission"]).parent == test_dir and sub
    assert all(set(r) == {"question_id", "answer"} and isinstance(r["answer"], str) for r in sub)
    caps = json.loads(next(test_dir.glob("caption_result_*.json")).read_text())
    assert caps and all(set(r) == {"image_id", "caption"} and isinstance(r["image_id"], int) for r in caps)
    assert len(caps) == len({r["image_id"] for r in caps})


def test_vl_adapter_and_vl_pet_named_configs_reproduce_the_scripts():
    """The named configs carry the released scripts' settings (spec §3.5–3.6, §4) and build their presets on the
    tiny VL-BART; per-task modules are keyed by the tasks batches carry (``caption`` for COCO)."""
    from vlpeft.backbones import BACKBONES
    from vlpeft.config import DEFAULTS, NAMED_CONFIGS
    from vlpeft.named_configs.vl_adapter import VL_CONFIGS
    from vlpeft.pet import PRESETS, inject

    assert len(VL_CONFIGS) == 10 + 1 + 8 and all(n in NAMED_CONFIGS for n in VL_CONFIGS)
    single = NAMED_CONFIGS["vladapter_single_adapter"]
    assert (single["backbone"], single["pet"], single["learning_rate"], single["batch_size"], single["max_epoch"],
            single["num_beams"], single["gradient_clip_val"], single["adam_eps"], single["warmup_steps"],
            single["use_tasks_prompts"], single["seed"]) == ("vl_bart", "vl_adapter", 1e-3, 500, 20, 5, 5.0, 1e-6,
                                                            0.1, True, 9595)
    assert NAMED_CONFIGS["vladapter_multiple_adapters"]["learning_rate"] == 3e-4
    assert NAMED_CONFIGS["vladapter_multiple_adapters"]["use_tasks_prompts"] is False
    assert NAMED_CONFIGS["vladapter_full_finetuning"]["train_base"] == "all"
    t5 = NAMED_CONFIGS["vlpet_large_t5"]
    assert (t5["backbone"], t5["vl_pet_down_dim"], t5["vl_pet_gate_dim"], t5["vl_pet_gate_scale"], t5["learning_rate"],
            t5["batch_size"], t5["seed"]) == ("vl_t5", 192, 192, 0.3, 3e-4, 300, 42)
    for name in ("vladapter_multiple_adapters", "vladapter_multiple_prompts", "vladapter_hyperformer"):
        cfg = {**DEFAULTS, **NAMED_CONFIGS[name], "prompt_mid": 16, "hyper_task_dim": 8, "hyper_hidden": 8}
        bb = BACKBONES.build("test_vl_bart", {})
        report = inject(bb, PRESETS.build(cfg["pet"], cfg))
        if name != "vladapter_hyperformer":
            keys = {n.split(".tasks.")[1].split(".")[0] for n in report.param_names() if ".tasks." in n}
            assert keys == {"vqa", "gqa", "nlvr2", "caption"}, (name, keys)


def test_das_search_on_vl_bart_then_train_on_its_placement(sacred, make_arrows, tmp_path):
    """DAS on the generative hosts (issue 11 item 5): a search over VL-BART's encoder + decoder layers with DAS's skip
    adapters on generative VQA (reward: minus the LM loss) writes placement.json; a train run reads it back with
    placement=latest, and the skipped layers are the searched ones."""
    data = make_arrows("gen_das_data", images=16, image_px=32)
    upd = _upd(tmp_path, data, pet="das", das_adapter_dim=4, das_skip_adapter_dim=8, datasets=["vqa"],
               loss_names={"vqa": 1, "itm": 0, "mlm": 0}, exp_name="gen_das", max_epoch=2, skip_num=1,
               das_turn=1, das_warmup_epoch=0, das_epoch=2, search="das")
    search = sacred(**dict(upd, stage="search")).result
    placement = json.loads(Path(search["placement_path"]).read_text())
    assert len(placement["skip"]) == 1 and 0 <= placement["skip"][0] < 4  # test_vl_bart: 2 encoder + 2 decoder layers
    train = sacred(**dict(upd, stage="train", placement="latest", max_epoch=1)).result
    run = json.loads((Path(train["run_dir"]) / "run.json").read_text())
    assert run["placement_source"] == search["placement_path"]
    comp = json.loads((Path(train["run_dir"]) / "computation.json").read_text())
    assert comp["flops"]["chosen"] < comp["flops"]["full"]


def test_vit_gpt2_routing_captioning_through_run_py(sacred, make_arrows, tmp_path):
    """Routing-VLPEFT's captioning setting through run.py: the named config ``routing_vit_gpt2_lora`` on the tiny
    ViT + GPT-2 (routing LoRA reading the ViT pooler output) trains on COCO captions — the caption loss falls — and
    test_only writes the COCO caption results."""
    data = make_arrows("caption_data", images=16, image_px=32, variants=("coco_captions",))
    upd = dict(backbone="test_vit_gpt2", tokenizer="bert-base-uncased", routing_r=4, routing_alpha=4,
               data_root=str(data),
               log_dir=str(tmp_path / "result"), per_gpu_batchsize=4, batch_size=4, image_size=32, max_epoch=2,
               warmup_steps=0, learning_rate=3e-3, num_beams=2, gen_max_length=6, num_gpus=0, num_workers=0,
               train_transform_keys=["vit"], val_transform_keys=["vit"])
    train = sacred("routing_vit_gpt2_lora", **upd).result
    run_dir = Path(train["run_dir"])
    losses = _epoch_losses(run_dir)
    assert list(losses) == ["caption"] and losses["caption"][-1] < losses["caption"][0], losses
    assert "caption_cider" in json.loads((run_dir / "metrics.json").read_text())["val"]
    test = sacred("routing_vit_gpt2_lora",
                  **dict(upd, test_only=True, load_path=str(run_dir / "checkpoints" / "last.ckpt"))).result
    caps = json.loads(next(Path(test["run_dir"]).glob("caption_result_*.json")).read_text())
    assert caps and all(isinstance(r["caption"], str) for r in caps)

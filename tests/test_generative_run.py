"""One multi-task generative run through ``VLPeftModule`` (fit, validate, test) on synthetic data, with the
real fixture VL-BART registered for the duration of the test: the wiring the lead connects to run.py."""

from __future__ import annotations

import copy
import json

import pytest
import pytorch_lightning as pl

from tests.helpers import fixture_vl_bart
from vlpeft.backbones import BACKBONES
from vlpeft.config import DEFAULTS, validate_config
from vlpeft.data.generative import GenerativeDataModule, MultitaskLoader, datamodule_for
from vlpeft.lightning import VLPeftModule
from vlpeft.runner import _datamodule
from write_arrow.synthetic import write_synthetic

NAME = "fixture_vl_bart"  # not test_*: the backbone conformance tests must not pick it up


@pytest.fixture
def registered():
    BACKBONES.register(NAME, capabilities=("generate",))(lambda config: fixture_vl_bart())
    yield
    BACKBONES._entries.pop(NAME)


def test_multitask_generative_run_writes_dumps(registered, tmp_path):
    root = tmp_path / "data"
    write_synthetic(root, seed=0, images=16, image_px=32, variants=("vqa", "nlvr2", "coco_captions"))
    config = copy.deepcopy(DEFAULTS)
    config.update(backbone=NAME, pet="none", train_base="all", data_root=str(root), datasets=["vqa", "nlvr2", "coco"],
                  loss_names={**{k: 0 for k in config["loss_names"]}, "vqa": 1, "nlvr2": 1, "caption": 1},
                  per_gpu_batchsize=4,
                  batch_size=4, image_size=32, num_workers=0, num_beams=2, gen_max_length=6, learning_rate=1e-3,
                  max_epoch=1, max_steps=None, warmup_steps=0, vqav2_label_size=18, seed=0, skip_module=[],
                  train_transform_keys=["pixelbert"], val_transform_keys=["pixelbert"],
                  _dump_dir=str(tmp_path / "run"), _dump_name="last")
    config = validate_config(config)  # the generative keys and loss_names={"caption": 1} are known keys
    (tmp_path / "run").mkdir()
    model = VLPeftModule(config)
    assert [t.name for t in model.tasks] == ["vqa", "nlvr2", "caption"] and len(model.heads) == 0
    dm = datamodule_for(config, model.backbone.capabilities)
    assert isinstance(dm, GenerativeDataModule)
    assert isinstance(_datamodule(config), GenerativeDataModule)  # what runner.run_fit / run_test build
    trainer = pl.Trainer(accelerator="cpu", devices=1, max_epochs=1, limit_train_batches=6, limit_val_batches=4,
                         logger=False, enable_checkpointing=False, num_sanity_val_steps=0,
                         enable_progress_bar=False)
    trainer.fit(model, datamodule=dm)
    assert isinstance(dm._train_loader, MultitaskLoader)
    val = model.epoch_results["val"]  # decoded and scored in validation, one metric per task
    assert {"vqa_score", "nlvr2_accuracy", "nlvr2_dev_accuracy", "caption_cider"} <= set(val)
    assert val["the_metric"] == pytest.approx(val["vqa_score"] + val["nlvr2_dev_accuracy"] + val["caption_cider"])
    # each training batch trained its own task: the losses logged are those of the tasks scheduled first
    seen = {f"{t}_loss" for t in dm._train_loader.epoch_tasks[:6]}
    assert {k for k in model.epoch_results["train"] if k.endswith("_loss")} == seen and len(seen) >= 2
    trainer.test(model, datamodule=dm)
    test = model.epoch_results["test"]
    assert "nlvr2_accuracy" in test and "caption_cider" in test and "caption_bleu4" in test
    sub = json.loads((tmp_path / "run" / "vqa_submit_last.json").read_text())
    assert len(sub) > 0 and all(set(r) == {"question_id", "answer"} for r in sub)
    caps = json.loads((tmp_path / "run" / "caption_result_last.json").read_text())
    assert len(caps) > 0 and all(set(r) == {"image_id", "caption"} for r in caps)
    # COCO results format: the int COCO id parsed from the Karpathy file name (synthetic val ids start at 300000)
    assert all(isinstance(r["image_id"], int) and r["image_id"] >= 300_000 for r in caps)

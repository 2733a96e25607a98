"""The generative multi-task run through run.py's sacred experiment: train, then test_only from the checkpoint,
with the VQA submission and the COCO caption results written into the test run's folder. The backbone is the
real fixture VL-BART of tests/helpers.py, registered for the test (the lead's vl_bart replaces it)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402  (registers the sacred main)
from tests.helpers import fixture_vl_bart  # noqa: E402
from vlpeft.backbones import BACKBONES  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

NAME = "fixture_vl_bart"


@pytest.fixture
def registered():
    BACKBONES.register(NAME, capabilities=("generate",))(lambda config: fixture_vl_bart())
    yield
    BACKBONES._entries.pop(NAME)


def test_train_then_test_only_through_sacred(registered, tmp_path):
    write_synthetic(tmp_path / "data", seed=0, images=8, image_px=32, variants=("vqa", "nlvr2", "coco_captions"))
    # loss_names={"caption": 1} and the generative keys parse like any other key
    upd = dict(backbone=NAME, pet="none", train_base="all", data_root=str(tmp_path / "data"),
               log_dir=str(tmp_path / "result"), exp_name="gen", datasets=["vqa", "nlvr2", "coco"],
               loss_names={"vqa": 1, "nlvr2": 1, "caption": 1, "itm": 0, "mlm": 0}, per_gpu_batchsize=4,
               batch_size=4, image_size=32, num_beams=2, gen_max_length=6, max_epoch=1, max_steps=None,
               vqav2_label_size=18, skip_module=[], num_gpus=0, num_workers=0, learning_rate=1e-3, warmup_steps=0,
               train_transform_keys=["pixelbert"], val_transform_keys=["pixelbert"], multitask_sampling="balanced")
    quiet = {"--loglevel": "ERROR"}
    train = run_py.ex.run(config_updates=upd, options=quiet).result
    ckpt = Path(train["run_dir"]) / "checkpoints" / "last.ckpt"
    assert ckpt.is_file()
    test = run_py.ex.run(config_updates=dict(upd, test_only=True, load_path=str(ckpt)), options=quiet).result
    run_dir = Path(test["run_dir"])
    sub = json.loads(Path(test["submission"]).read_text())
    assert Path(test["submission"]).parent == run_dir and sub and all(set(r) == {"question_id", "answer"} for r in sub)
    caps = json.loads(next(run_dir.glob("caption_result_*.json")).read_text())
    assert caps and all(set(r) == {"image_id", "caption"} and isinstance(r["image_id"], int) for r in caps)
    assert len(caps) == len({r["image_id"] for r in caps})

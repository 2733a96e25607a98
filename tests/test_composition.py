"""The axes are independent: a search, a PET recipe and a backbone that no original repo combined run together
through ``run.py`` with configs alone, and a meaningless combination is refused with the reason."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vlpeft.config import ConfigError
from vlpeft.search.placement import Placement

SYNTHETIC = dict(seed=4, images=24)  # this module's arrows (tests/conftest.py)


def test_das_search_on_clip_bert_then_train(sacred, arrows, tmp_path):
    """DAS (layer skipping) on the DVP backbone: the prompt enters at insert_layer=1, DAS picks a PLM layer to skip
    and trains its skip adapter; the train stage reads both from placement.json."""
    common = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), backbone="test_clip_bert", image_size=32,
                  per_gpu_batchsize=8, batch_size=8, max_epoch=2, num_gpus=0, precision=32, num_workers=0,
                  vqav2_label_size=0, insert_layer=1, pet="das", das_adapter_dim=8, das_skip_adapter_dim=16)
    r = sacred("dvp_search_bert_vqa", search="das", skip_num=1, das_epoch=2, das_turn=1, das_warmup_epoch=0, **common)
    p = Placement.load(r.result["placement_path"])
    assert p.method == "das" and len(p.skip) == 1 and p.insert_layer == 1 and p.num_layers == 3
    assert p.meta["rounds"] > 0 and any(s != 0 for s in p.scores)

    r = sacred("dvp_adaption_bert_vqa", placement="latest", exp_name="DVP", **{**common, "max_epoch": 1})
    ckpt = torch.load(Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["vlpeft_placement"]["skip"] == list(p.skip) and ckpt["vlpeft_placement"]["insert_layer"] == 1
    sd = ckpt["state_dict"]
    assert any(k.startswith(f"backbone.skip_adapters.{p.skip[0]}.0.") for k in sd)


def test_kab_on_vilt_is_refused_with_the_reason(sacred, arrows, tmp_path):
    with pytest.raises(ConfigError, match=r"search=kab places a visual prompt before a unit, but backbone=vilt offers "
                                          r"only \['skip'\] candidates"):
        sacred("demo", stage="search", search="kab", data_root=str(arrows), log_dir=str(tmp_path))


def test_nlvr2_on_clip_plm_is_refused_with_the_reason(sacred, arrows, tmp_path):
    from vlpeft.build import assemble
    from vlpeft.config import DEFAULTS, NAMED_CONFIGS

    cfg = {**DEFAULTS, **NAMED_CONFIGS["dvp_adaption_bert_vqa"], "backbone": "test_clip_bert",
           "loss_names": {**NAMED_CONFIGS["dvp_adaption_bert_vqa"]["loss_names"], "nlvr2": 1, "vqa": 0}}
    with pytest.raises(ValueError, match=r"task nlvr2 needs the backbone capability \['pair_images'\]"):
        assemble(cfg)
    with pytest.raises(ConfigError, match=r"task nlvr2 needs the backbone capability \['pair_images'\]"):
        sacred("dvp_adaption_bert_vqa", backbone="test_clip_bert", data_root=str(arrows), log_dir=str(tmp_path),
             loss_names=cfg["loss_names"], datasets=["nlvr2"])

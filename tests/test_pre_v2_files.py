"""Files written before the v2 architecture (an original-layout ViLT ``.ckpt`` and a ``trainable.safetensors`` +
``trainable.json``, made by commit 31733a4's code; ``reports.json`` holds what its loader reported) still load,
with the same report, into the same tensors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlpeft.checkpoint import load_weights
from vlpeft.config import DEFAULTS
from vlpeft.lightning import VLPeftModule
from vlpeft.search.placement import Placement

HERE = Path(__file__).with_name("fixtures") / "pre_v2"


def _module() -> VLPeftModule:
    saved = json.loads((HERE / "reports.json").read_text())["config"]
    cfg = {**DEFAULTS, **saved, "method": "das", "stage": "train",
           "loss_names": {**DEFAULTS["loss_names"], "itm": 0, "mlm": 0, "vqa": 1}}
    torch.manual_seed(12)
    return VLPeftModule(cfg, placement=Placement.das(saved["skip_module"]))


@pytest.mark.parametrize("name, fresh_heads", [("vilt_original.ckpt", True), ("trainable.safetensors", False)])
def test_pre_v2_files_load_with_the_same_report(name, fresh_heads):
    want = json.loads((HERE / "reports.json").read_text())["reports"][name]
    m = _module()
    (r,) = load_weights(m, str(HERE / name), fresh_heads=fresh_heads)
    assert (r.loaded, sorted(r.missing), sorted(r.unexpected), r.placement) == \
        (want["loaded"], want["missing"], want["unexpected"], want["placement"])
    own = m.state_dict()
    if name.endswith(".safetensors"):
        src = load_file(str(HERE / name))
    else:
        sd = torch.load(HERE / name, map_location="cpu", weights_only=True)["state_dict"]
        src = {f"backbone.{k}": v for k, v in sd.items() if not k.startswith("vqa_classifier")}
        src.pop("backbone.text_embeddings.position_ids")
    assert src and all(torch.equal(own[k], v) for k, v in src.items())

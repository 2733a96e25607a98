"""No host–device synchronisation on the training hot path (issue 12): a training step's plan draw, the forward
of the backbone and the task loss run with every model tensor on the ``meta`` device, where anything that reads a
value on the host (``.item()``, ``.tolist()``, ``bool(t)``, ``torch.equal``) raises. The search state stays on
the host (``SearchState._apply``), so its draws never wait for the device."""

from __future__ import annotations

import pytest
import torch

from vlpeft.backbones import LayerPlan
from vlpeft.build import assemble
from vlpeft.config import DEFAULTS, NAMED_CONFIGS
from vlpeft.tasks._base import compute


def _vilt_config(**kw) -> dict:
    cfg = {**DEFAULTS, **NAMED_CONFIGS["demo"], "stage": "search", "vqav2_label_size": 7, "drop_rate": 0.1,
           "das_adapter_dim": 8, "das_skip_adapter_dim": 16}
    cfg.update(kw)
    return cfg


def _meta_batch(B: int = 3, L: int = 8, size: int = 64) -> dict:
    sizes = [(64, 64), (48, 64), (64, 32)]
    return {"text_ids": torch.zeros(B, L, dtype=torch.long, device="meta"),
            "text_masks": torch.ones(B, L, dtype=torch.long, device="meta"),
            "image": torch.empty(B, 3, size, size, device="meta"),
            "image_mask": torch.ones(B, size, size, dtype=torch.bool, device="meta"),
            "image_sizes": sizes, "vqa_targets": torch.zeros(B, 7, device="meta")}


def test_meta_tensors_refuse_host_reads():
    """The premise: on meta, a host read raises (so the step below would fail on any sync)."""
    t = torch.ones(2, device="meta")
    for read in (lambda: t.sum().item(), lambda: t.tolist(), lambda: bool(t.any()), lambda: torch.equal(t, t)):
        with pytest.raises((RuntimeError, NotImplementedError)):
            read()


def test_das_training_step_has_no_host_sync():
    a = assemble(_vilt_config())
    model = torch.nn.ModuleDict({"backbone": a.backbone, "heads": a.heads, "search": a.search}).to("meta")
    assert a.search.das_gate.device.type == "cpu"  # the search state stayed on the host
    model.train()
    batch = _meta_batch()
    for epoch in (0, 1):
        for _ in range(3):
            plan = a.search.train_plan(epoch, a.base_plan)
            out = compute(a.tasks, lambda b, **kw: a.backbone(b, plan, **kw), a.heads, batch)
            assert out["loss"].device.type == "meta" and len(plan.skip) == a.search.k
            a.search.round_due(epoch, optimizer_step=True)


def test_patch_extents_from_sizes_equal_the_mask_path():
    """With the collate's ``image_sizes`` the patch extents come from host data; the result is the same as when
    they are read from the mask on the device."""
    a = assemble(_vilt_config(stage="train", skip_module=[]))
    bb = a.backbone.eval()
    g = torch.Generator().manual_seed(0)
    sizes = [(64, 64), (40, 64), (64, 20), (17, 33)]
    img = torch.randn(4, 3, 64, 64, generator=g)
    mask = torch.zeros(4, 64, 64, dtype=torch.bool)
    for b, (h, w) in enumerate(sizes):
        mask[b, :h, :w] = True
    with torch.no_grad():
        x1, m1, (p1, _) = bb.visual_embed(img * mask[:, None], mask)
        x2, m2, (p2, _) = bb.visual_embed(img * mask[:, None], mask, sizes=sizes)
    assert torch.equal(x1, x2) and torch.equal(m1, m2) and torch.equal(p1, p2)
    plan = LayerPlan.of([1])
    batch = {"text_ids": torch.randint(5, 90, (4, 6), generator=g), "text_masks": torch.ones(4, 6, dtype=torch.long),
             "image": img * mask[:, None], "image_mask": mask}
    with torch.no_grad():
        assert torch.equal(bb(batch, plan)["cls_feats"], bb({**batch, "image_sizes": sizes}, plan)["cls_feats"])

"""DAS finds a planted answer on a real (small) ViLT: block j is made an identity (zeroed output projections),
so skipping it costs nothing while skipping any other block changes the answer; the search must choose j."""

from __future__ import annotations

import torch

from vlpeft.build import build_with_pet
from vlpeft.backbones import LayerPlan
from vlpeft.config import DEFAULTS
from vlpeft.search.das import DASSearch
from vlpeft.tasks.heads import build_heads
from vlpeft.tasks.objectives import compute_tasks

LABELS = 10


def _config() -> dict:
    cfg = dict(DEFAULTS)
    cfg.update(vit="test_vilt_tiny_p32", hidden_size=64, num_heads=4, num_layers=4, patch_size=32, drop_rate=0.0,
               vocab_size=200, max_text_len=8, vqav2_label_size=LABELS, das_adapter_dim=16, das_skip_adapter_dim=32,
               loss_names={**DEFAULTS["loss_names"], "itm": 0, "mlm": 0, "vqa": 1})
    return cfg


def _plant(model, j: int) -> None:
    """Block j becomes the identity; every skip adapter too, so skipping j changes nothing at all."""
    with torch.no_grad():
        blk = model.transformer.blocks[j]
        for lin in (blk.attn.proj, blk.mlp.fc2, blk.adapter0.up_proj, blk.adapter1.up_proj):
            lin.weight.zero_()
            lin.bias.zero_()
        for skip in model.adapter_list:
            skip[0].up_proj.weight.zero_()
            skip[0].up_proj.bias.zero_()


def _search_once(seed: int, j: int, rounds: int = 40) -> list[int]:
    torch.manual_seed(seed)
    cfg = _config()
    model = build_with_pet(cfg)[0].eval()
    heads = build_heads(cfg, model.hidden_size)
    with torch.no_grad():
        heads["vqa_classifier"][3].weight.normal_(0, 1.0)  # make answers depend strongly on the features
    _plant(model, j)
    g = torch.Generator().manual_seed(seed)
    batch = {
        "image": torch.randn(8, 3, 128, 128, generator=g),
        "image_mask": torch.ones(8, 128, 128, dtype=torch.bool),
        "text_ids": torch.randint(1, 200, (8, 8), generator=g),
        "text_masks": torch.ones(8, 8, dtype=torch.long),
    }
    with torch.no_grad():
        full = heads["vqa_classifier"](model(batch, LayerPlan())["cls_feats"])
    batch["vqa_targets"] = torch.sigmoid(full)  # the unskipped model's answers: its loss is the minimum
    search = DASSearch(model.num_layers, skip_num=1, das_step=3, seed=seed)
    for _ in range(rounds):
        cands = search.propose_candidates()
        with torch.no_grad():
            losses = torch.stack([
                compute_tasks(lambda b, c=c, **kw: model(b, LayerPlan.of(c), **kw), heads, batch, cfg["loss_names"])["loss"]
                for c in cands
            ])
        search.update(cands, losses)
    return search.best()


def test_skipping_the_identity_block_is_free():
    cfg = _config()
    torch.manual_seed(0)
    model = build_with_pet(cfg)[0].eval()
    _plant(model, 2)
    batch = {"image": torch.randn(2, 3, 128, 128), "text_ids": torch.randint(1, 200, (2, 8)),
             "text_masks": torch.ones(2, 8, dtype=torch.long)}
    with torch.no_grad():
        ref = model(batch, LayerPlan())["cls_feats"]
        assert torch.allclose(model(batch, LayerPlan.of([2]))["cls_feats"], ref, atol=1e-6)
        assert not torch.allclose(model(batch, LayerPlan.of([1]))["cls_feats"], ref, atol=1e-3)


def test_das_chooses_the_planted_block_in_most_seeds():
    hits = 0
    for seed in range(10):
        j = seed % 4
        hits += _search_once(seed, j) == [j]
    assert hits >= 8, f"DAS chose the planted identity block in only {hits}/10 seeds"

"""DAS finds a planted answer on a (small) METER: co-attention layer j is made an identity (zeroed output
projections and adapters, default LayerNorms after a normalised input), so skipping it costs nothing while skipping
any other fusion layer changes the answer; the search over the 2·num_top_layer gates must choose j."""

from __future__ import annotations

import pytest
import torch

from vlpeft.backbones._protocol import LayerPlan
from vlpeft.backbones.meter import METER_VARIANTS
from vlpeft.build import build_with_pet
from vlpeft.config import DEFAULTS
from vlpeft.search.das import DASSearch
from vlpeft.tasks.heads import build_heads
from vlpeft.tasks.objectives import compute_tasks

LABELS = 10
N_TOP = 3  # co-attention layers per stream: gates 0–2 text, 3–5 image
PLANTABLE = [1, 2, 4, 5]  # not a stream's first layer: its input is not a LayerNorm output


def _config() -> dict:
    cfg = dict(DEFAULTS)
    cfg.update(METER_VARIANTS["test_meter_tiny"])
    cfg.update(backbone="meter", pet="das", num_top_layer=N_TOP, drop_rate=0.0, vqav2_label_size=LABELS,
               das_adapter_dim=8, das_skip_adapter_dim=16,
               loss_names={**DEFAULTS["loss_names"], "itm": 0, "mlm": 0, "vqa": 1})
    return cfg


def _zero(lin: torch.nn.Linear) -> None:
    lin.weight.zero_()
    lin.bias.zero_()


def _plant(model, j: int) -> None:
    """Fusion layer j becomes the identity on its (LayerNorm-output) input; every skip adapter too."""
    stream, i = ("text", j) if j < N_TOP else ("image", j - N_TOP)
    assert i >= 1, "the first layer of a stream reads the un-normalised embeddings"
    layers = getattr(model, f"cross_modal_{stream}_layers")
    with torch.no_grad():
        # BERT init (std 0.02) leaves every post-norm co-attention layer close to the identity; give them weight so
        # that skipping any other layer changes the answer clearly
        for stream_layers in (model.cross_modal_text_layers, model.cross_modal_image_layers):
            for m in stream_layers.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.normal_(0, 0.3)
        lay = layers[i]
        for lin in (lay.attention.output.dense, lay.crossattention.output.dense, lay.output.dense,
                    lay.attention.output.adapter.up_proj, lay.crossattention.output.adapter.up_proj,
                    lay.adapter.up_proj,
                    layers[i - 1].adapter.up_proj):  # the previous layer's output is then a LayerNorm output
            _zero(lin)
        for ln in (lay.attention.output.LayerNorm, lay.crossattention.output.LayerNorm, lay.output.LayerNorm,
                   layers[i - 1].output.LayerNorm):
            ln.weight.fill_(1.0)
            ln.bias.zero_()
        for slots in (model.adapter_list_l, model.adapter_list_v):
            for skip in slots:
                _zero(skip[0].up_proj)


def _batch(g: torch.Generator, b: int = 8) -> dict:
    return {"image": torch.randn(b, 3, 32, 32, generator=g), "text_ids": torch.randint(3, 100, (b, 8), generator=g),
            "text_masks": torch.ones(b, 8, dtype=torch.long)}


def _infer(model, skip):
    plan = LayerPlan.of(skip)
    return lambda b, **kw: model(b, plan, **kw)


def _search_once(seed: int, j: int, rounds: int = 40) -> list[int]:
    torch.manual_seed(seed)
    cfg = _config()
    model = build_with_pet(cfg)[0].eval()
    heads = build_heads(cfg, model.hidden_size, model.cls_dim)
    with torch.no_grad():
        heads["vqa_classifier"][3].weight.normal_(0, 1.0)  # make answers depend strongly on the features
    _plant(model, j)
    batch = _batch(torch.Generator().manual_seed(seed))
    with torch.no_grad():
        full = heads["vqa_classifier"](model(batch)["cls_feats"])
    batch["vqa_targets"] = torch.sigmoid(full)  # the unskipped model's answers: its loss is the minimum
    search = DASSearch(model.num_layers, skip_num=1, das_step=3, seed=seed)
    for _ in range(rounds):
        cands = search.propose_candidates()
        with torch.no_grad():
            losses = torch.stack([compute_tasks(_infer(model, c), heads, batch, cfg["loss_names"])["loss"]
                                  for c in cands])
        search.update(cands, losses)
    return search.best()


@pytest.mark.parametrize("j", PLANTABLE)
def test_skipping_the_identity_layer_is_free(j):
    torch.manual_seed(0)
    model = build_with_pet(_config())[0].eval()
    assert model.num_layers == 2 * N_TOP
    _plant(model, j)
    batch = _batch(torch.Generator().manual_seed(1), b=2)
    with torch.no_grad():
        ref = model(batch)["cls_feats"]
        assert torch.allclose(model(batch, LayerPlan.of([j]))["cls_feats"], ref, atol=1e-5)
        for other in range(2 * N_TOP):
            if other != j:
                assert not torch.allclose(model(batch, LayerPlan.of([other]))["cls_feats"], ref, atol=1e-3), other


def test_das_chooses_the_planted_layer_in_most_seeds():
    hits = 0
    for seed in range(8):
        j = PLANTABLE[seed % len(PLANTABLE)]
        hits += _search_once(seed, j) == [j]
    assert hits >= 6, f"DAS chose the planted identity layer in only {hits}/8 seeds"

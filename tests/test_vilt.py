"""ViLT backbone with DAS adapters: parity with transformers' ViLT, checkpoint loading, counts, skipping."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from torch import nn
from transformers import ViltConfig, ViltForQuestionAnswering

from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.backbones._convert import hf_to_vilt_state_dict, vilt_to_hf_state_dict
from vlpeft.backbones.vilt import ViLT, ViltCheckpointError, checkpoint_filter_fn
from vlpeft.build import build_with_pet
from vlpeft.backbones.vilt import build_vilt as build_bare_vilt
from vlpeft.checkpoint import CheckpointError, load_checkpoint_file
from vlpeft.pet.adapters import DASAdapter
from vlpeft.search.placement import PlacementError, validate_skip

from helpers import proj_loss

VOCAB = 100
TRAINABLE_RULE = ("classifier", "pooler", "token_type_embeddings", "rank_output", "adapter")


def build_vilt(cfg: dict) -> ViLT:
    """ViLT with the das preset injected and its trainable set applied (the run's path)."""
    full = {"method": "das", "backbone": "", "pet": "", "search": "", "train_base": "", "full_finetune": False, "use_adapter": False,
            "stage": "train", "trainable": "original", **cfg}
    return build_with_pet(full)[0]


def build_backbone(cfg: dict) -> ViLT:
    return BACKBONES.build(cfg.get("backbone") or "vilt", cfg)


def tiny_config(**kw):
    cfg = dict(method="das", vit="test_vilt_tiny", hidden_size=64, num_heads=4, num_layers=2, mlp_ratio=4,
               drop_rate=0.0, vocab_size=VOCAB, max_text_len=40, max_image_len=-1, patch_size=16,
               das_adapter_dim=8, das_skip_adapter_dim=16)
    cfg.update(kw)
    return cfg


def vqa_head(d: int, labels: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, labels))


class VQAModel(nn.Module):
    """Backbone + head with the original top-level names (``text_embeddings…``, ``vqa_classifier.*``)."""

    def __init__(self, vilt: ViLT, labels: int):
        super().__init__()
        self.vilt = vilt
        self.vqa_classifier = vqa_head(vilt.hidden_size, labels)

    def forward(self, batch, plan=LayerPlan()):
        return self.vqa_classifier(self.vilt(batch, plan)["cls_feats"])


def make_batch(B=3, L=12, size=64, seed=0, heights=None, widths=None):
    g = torch.Generator().manual_seed(seed)
    text_ids = torch.randint(1, VOCAB, (B, L), generator=g)
    text_masks = torch.ones(B, L, dtype=torch.long)
    text_masks[1, 8:] = 0
    text_ids[1, 8:] = 0
    image = torch.randn(B, 3, size, size, generator=g)
    mask = torch.zeros(B, size, size, dtype=torch.bool)
    heights = heights or [size] * B
    widths = widths or [size] * B
    for b in range(B):
        mask[b, : heights[b], : widths[b]] = True
    image = image * mask[:, None]  # zero padding, as the collate
    return {"text_ids": text_ids, "text_masks": text_masks, "text_labels": torch.full((B, L), -100),
            "image": image, "image_mask": mask}


def zero_adapters(vilt: ViLT) -> None:
    with torch.no_grad():
        for name, mod in vilt.named_modules():
            if isinstance(mod, DASAdapter):
                mod.up_proj.weight.zero_()
                mod.up_proj.bias.zero_()


# --------------------------------------------------------------------------------------------- parity with HF
def hf_tiny(labels: int) -> ViltForQuestionAnswering:
    cfg = ViltConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=256, hidden_act="gelu", hidden_dropout_prob=0.0,
                     attention_probs_dropout_prob=0.0, layer_norm_eps=1e-6, image_size=64, patch_size=16,
                     max_position_embeddings=40, max_image_length=-1, num_labels=labels, num_images=1)
    cfg._attn_implementation = "eager"
    torch.manual_seed(1)
    hf = ViltForQuestionAnswering(cfg).eval()
    # ViLT's BERT embeddings use eps 1e-12 while the ViT uses 1e-6; HF has one eps for both
    hf.vilt.embeddings.text_embeddings.LayerNorm.eps = 1e-12
    with torch.no_grad():  # non-trivial values everywhere (HF inits biases, cls, positions to 0)
        for n, p in hf.named_parameters():
            p.copy_(1.0 + 0.1 * torch.randn_like(p) if "norm" in n.lower() and n.endswith("weight")
                    else 0.05 * torch.randn_like(p))
    return hf


def test_vqa_logits_match_transformers_vilt():
    labels = 7
    hf = hf_tiny(labels)
    ours = VQAModel(build_vilt(tiny_config()), labels).eval()
    sd = {k if k.startswith("vqa_classifier.") else "vilt." + k: v for k, v in hf_to_vilt_state_dict(hf.state_dict()).items()}
    missing, unexpected = ours.load_state_dict(sd, strict=False)
    assert unexpected == []
    assert missing and all("adapter" in k for k in missing)  # only the DAS adapters have no HF counterpart
    zero_adapters(ours.vilt)
    # full images and padded ones (3 rows of patches; 2 columns)
    batch = make_batch(heights=[64, 40, 64], widths=[64, 64, 20])
    with torch.no_grad():
        ref = hf(input_ids=batch["text_ids"], attention_mask=batch["text_masks"], pixel_values=batch["image"],
                 pixel_mask=batch["image_mask"].long(), output_hidden_states=True)
        out = ours.vilt(batch, LayerPlan())
        logits = ours.vqa_classifier(out["cls_feats"])
    assert logits.shape == (3, labels)
    torch.testing.assert_close(logits, ref.logits, atol=1e-4, rtol=0)
    L = batch["text_ids"].shape[1]
    # text positions are in the same order in both models (HF permutes image tokens of full images)
    hf_final = hf.vilt.layernorm(ref.hidden_states[-1])
    torch.testing.assert_close(out["text_feats"], hf_final[:, :L], atol=1e-4, rtol=0)
    # image token count: the largest valid patch count (4x4), padded samples masked to 12 and 8 patches
    assert out["image_masks"].sum(1).tolist() == [17, 13, 9]


def test_hf_name_converter_round_trip():
    hf = hf_tiny(5)
    sd = hf.state_dict()
    back = vilt_to_hf_state_dict(hf_to_vilt_state_dict(sd))
    expected = {k for k in sd if not k.endswith(("position_ids", "token_type_ids"))}
    assert set(back) == expected
    for k in expected:
        assert torch.equal(back[k], sd[k]), k


def test_hf_format_file_loads_through_the_checkpoint_loader(tmp_path):
    hf = hf_tiny(5)
    p = tmp_path / "hf.bin"
    torch.save(hf.state_dict(), p)
    model = VQAModel(build_vilt(tiny_config()), 5).eval()
    rep = load_checkpoint_file(model, p, prefix_map={"classifier.": "vqa_classifier.", "": "vilt."})
    assert rep.unexpected == []
    assert rep.missing and all("adapter" in k for k in rep.missing)
    assert torch.equal(model.vilt.transformer.blocks[1].attn.qkv.weight,
                       torch.cat([hf.vilt.encoder.layer[1].attention.attention.query.weight,
                                  hf.vilt.encoder.layer[1].attention.attention.key.weight,
                                  hf.vilt.encoder.layer[1].attention.attention.value.weight]))
    assert torch.equal(model.vqa_classifier[3].weight, hf.classifier[3].weight)


# --------------------------------------------------------------------------------------------- checkpoints
def test_round_trip_through_original_ckpt(tmp_path):
    torch.manual_seed(0)
    a = VQAModel(build_vilt(tiny_config()), 4).eval()
    # original ViLT layout: backbone names at the top level beside vqa_classifier.*
    sd = {k.removeprefix("vilt."): v for k, v in a.state_dict().items()}
    # old transformers saved BERT's position_ids buffer; original ckpts carry it
    sd["text_embeddings.position_ids"] = torch.arange(40)[None]
    p = tmp_path / "vilt.ckpt"
    torch.save({"state_dict": sd, "hyper_parameters": {"config": {}}}, p)
    torch.manual_seed(123)
    b = VQAModel(build_vilt(tiny_config()), 4).eval()
    batch = make_batch(heights=[64, 48, 32])
    with torch.no_grad():
        assert not torch.allclose(a(batch, LayerPlan.of([1])), b(batch, LayerPlan.of([1])))
        rep = load_checkpoint_file(b, p, prefix_map={"vqa_classifier.": "vqa_classifier.", "": "vilt."})
        assert rep.missing == [] and rep.unexpected == []
        assert rep.loaded == len(a.state_dict())
        for skip in ([], [0], [1]):
            assert torch.equal(a(batch, LayerPlan.of(skip)), b(batch, LayerPlan.of(skip)))
    # the names are the original ViLT ones (no prefix on the backbone itself)
    keys = set(a.vilt.state_dict())
    for k in ("text_embeddings.word_embeddings.weight", "token_type_embeddings.weight", "transformer.cls_token",
              "transformer.pos_embed", "transformer.patch_embed.proj.weight", "transformer.blocks.0.attn.qkv.weight",
              "transformer.blocks.1.adapter1.up_proj.weight", "transformer.norm.weight", "pooler.dense.weight",
              "adapter_list.1.0.adapter_layer_norm_before.weight", "adapter_list.0.0.down_proj.bias"):
        assert k in keys, k


def test_pos_embed_resized_on_load():
    model = build_vilt(tiny_config())  # 4x4 grid, d 64
    old = torch.zeros(1, 1 + 2 * 2, 64)
    old[0, 0] = 5.0  # cls position
    old[0, 1:, :] = torch.tensor([0.0, 3.0, 6.0, 9.0])[:, None]  # 2x2 grid [[0, 3], [6, 9]]
    out = checkpoint_filter_fn({"transformer.pos_embed": old}, model)["transformer.pos_embed"]
    assert out.shape == (1, 17, 64)
    assert torch.all(out[0, 0] == 5.0)
    # bilinear, align_corners=True: 2x2 -> 4x4 is the plane 0 + x + 2y... scaled: rows 0..3, cols 0..3
    expect = torch.tensor([[0, 1, 2, 3], [2, 3, 4, 5], [4, 5, 6, 7], [6, 7, 8, 9]], dtype=torch.float32)
    torch.testing.assert_close(out[0, 1:, 0].view(4, 4), expect, atol=1e-5, rtol=0)


def test_nlvr2_token_types():
    two = build_vilt(tiny_config())
    w = two.token_type_embeddings.weight.detach().clone()
    batch = make_batch()
    with pytest.raises(ValueError, match="expand_token_types_for_nlvr2"):
        two(batch, image_token_type_idx=2)
    two.expand_token_types_for_nlvr2()
    t = two.token_type_embeddings.weight
    assert t.shape == (3, 64) and torch.equal(t[:2], w) and torch.equal(t[2], w[1])
    # a 2-row checkpoint loads into a model built for NLVR2 (3 rows): row 2 := row 1
    three = build_vilt(tiny_config(loss_names={"nlvr2": 1, "vqa": 0}))
    assert three.token_type_embeddings.num_embeddings == 3
    out = checkpoint_filter_fn({"token_type_embeddings.weight": w}, three)["token_type_embeddings.weight"]
    assert torch.equal(out, torch.stack([w[0], w[1], w[1]]))
    nl = make_batch(B=2)
    nl["image_0"], nl["image_0_mask"] = nl.pop("image"), nl.pop("image_mask")
    with torch.no_grad():
        three.eval()
        f = three(nl, image_key="image_0", image_token_type_idx=2)["cls_feats"]
    assert f.shape == (2, 64)


def test_checkpoint_errors(tmp_path):
    model = build_vilt(tiny_config())
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint_file(model, tmp_path / "nope.ckpt")
    other = build_vilt(tiny_config(das_adapter_dim=12))
    p = tmp_path / "other.ckpt"
    torch.save({"state_dict": other.state_dict()}, p)
    with pytest.raises(ViltCheckpointError, match=r"adapter0.*\(12, 64\).*\(8, 64\).*das_adapter_dim"):
        load_checkpoint_file(model, p)
    wide = {"transformer.blocks.0.mlp.fc1.weight": torch.zeros(256, 128)}
    with pytest.raises(ViltCheckpointError, match=r"mlp.fc1.weight.*\(256, 128\).*\(256, 64\).*vit/hidden_size"):
        checkpoint_filter_fn(wide, model)


# --------------------------------------------------------------------------------------------- counts
def _count(model: nn.Module):
    """(trainable, total, adapters): trainable as the run derives it (heads ∪ injected ∪ base policy), checked
    against the original DAS name rule on the way."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for n, p in model.named_parameters() if p.requires_grad)
    rule = {n for n, p in model.named_parameters() if any(r in n for r in TRAINABLE_RULE)}
    assert rule == {n for n, p in model.named_parameters() if p.requires_grad}
    adapters = sum(p.numel() for n, p in model.named_parameters() if "adapter" in n)
    return trainable, total, adapters


def _full_config(**kw):
    return dict(vit="vit_base_patch32_384", hidden_size=768, num_heads=12, num_layers=12, mlp_ratio=4,
                drop_rate=0.1, vocab_size=30522, max_text_len=40, max_image_len=-1, das_adapter_dim=96,
                das_skip_adapter_dim=192, **kw)


class _Flat(nn.Module):
    """The original module layout: backbone attributes and heads side by side at the top level."""

    def __init__(self, vilt: ViLT, heads: dict[str, nn.Module]):
        super().__init__()
        for name, mod in vilt.named_children():
            self.add_module(name, mod)
        for name, mod in heads.items():
            self.add_module(name, mod)


def test_original_trainable_counts_vilt_das():
    with torch.device("meta"):
        vqa = build_vilt(_full_config())
        heads = {"vqa_classifier": vqa_head(768, 3129)}
        model = _Flat(vqa, heads)
    trainable, total, adapters = _count(model)
    assert (trainable, total, adapters) == (13_752_633, 124_753_977, 7_165_440)
    assert vqa.num_layers == 12 and vqa.hidden_size == 768 and vqa.pos_grid == (12, 12)
    assert sum(p.numel() for p in vqa.transformer.blocks[0].adapter0.parameters()) == 149_856
    assert sum(p.numel() for p in vqa.adapter_list[0].parameters()) == 297_408
    # the "names" rule also trains text_embeddings.token_type_embeddings (seeds.md §8 item 17)
    assert "text_embeddings.token_type_embeddings.weight" in dict(vqa.named_parameters())
    with torch.device("meta"):
        nl = build_vilt(_full_config(loss_names={"nlvr2": 1}))
        nl_model = _Flat(nl, {"nlvr2_classifier": nn.Sequential(nn.Linear(1536, 1536), nn.LayerNorm(1536),
                                                                 nn.GELU(), nn.Linear(1536, 2))})
        ir = build_vilt(_full_config())
        ir_model = _Flat(ir, {"itm_score": nn.ModuleDict({"fc": nn.Linear(768, 2)}).requires_grad_(False),
                              "rank_output": nn.Linear(768, 1)})
    assert _count(nl_model)[:2] == (10_126_850, 121_128_194)
    assert _count(ir_model)[:2] == (7_759_873, 118_762_755)


# --------------------------------------------------------------------------------------------- behaviour
def test_skipped_block_not_computed():
    model = build_vilt(tiny_config(vit="test_vilt_tiny_p32", num_layers=4, patch_size=32)).eval()
    model.requires_grad_(True)  # every block trainable, to see which ones get gradients
    assert model.num_layers == 4
    calls: list[str] = []
    for i, blk in enumerate(model.transformer.blocks):
        blk.register_forward_hook(lambda m, a, o, i=i: calls.append(f"block{i}"))
        blk.attn.register_forward_hook(lambda m, a, o, i=i: calls.append(f"attn{i}"))
        blk.adapter0.register_forward_hook(lambda m, a, o, i=i: calls.append(f"adapter0_{i}"))
    for i, seq in enumerate(model.adapter_list):
        seq[0].register_forward_hook(lambda m, a, o, i=i: calls.append(f"skip{i}"))
    batch = make_batch(B=2, size=128)
    with torch.no_grad():
        model(batch, LayerPlan.of([3, 1]))
    # inner hooks fire before their block's; nothing of blocks 1 and 3 runs, only their skip adapters
    assert calls == ["attn0", "adapter0_0", "block0", "skip1", "attn2", "adapter0_2", "block2", "skip3"]
    assert calls.count("skip1") == 1 and calls.count("skip3") == 1
    # training through a skip set: the skipped blocks get no gradient, their skip adapters do
    model.train()
    proj_loss(model(batch, LayerPlan.of([1]))["cls_feats"]).backward()
    assert model.transformer.blocks[1].attn.qkv.weight.grad is None
    assert model.transformer.blocks[1].adapter0.up_proj.weight.grad is None
    assert model.adapter_list[1][0].up_proj.weight.grad.abs().sum() > 0
    assert model.transformer.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.adapter_list[0][0].up_proj.weight.grad is None


def test_skip_adapter_is_residual_and_changes_output():
    model = build_vilt(tiny_config()).eval()
    batch = make_batch()
    with torch.no_grad():
        full = model(batch)["cls_feats"]
        skip = model(batch, LayerPlan.of([0]))["cls_feats"]
        assert not torch.allclose(full, skip)
        # a zero skip adapter makes a skipped block the identity
        zero_adapters(model)
        x = torch.randn(2, 5, 64)
        assert torch.equal(model.adapter_list[0](x), x)
        assert torch.equal(model.transformer.blocks[0].adapter0(x), torch.zeros_like(x))


@pytest.mark.parametrize("skip, match", [([2], "out of range"), ([-1], "out of range")])
def test_bad_skip_raises(skip, match):
    model = build_vilt(tiny_config())
    with pytest.raises(PlacementError, match=match):
        model(make_batch(), LayerPlan.of(skip))


def test_a_skip_list_naming_a_block_twice_is_refused():
    # a LayerPlan holds a set, so a repeated block can only come from a list: the placement's own check
    with pytest.raises(PlacementError, match="more than once"):
        validate_skip([1, 1], build_vilt(tiny_config()).num_layers)


def test_max_image_len_caps_tokens_and_is_seeded():
    model = build_vilt(tiny_config(max_image_len=5)).eval()
    batch = make_batch(B=3, heights=[64, 64, 32], widths=[64, 64, 32])  # 16, 16 and 4 valid patches
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(batch)
        torch.manual_seed(0)
        b = model(batch)
        torch.manual_seed(1)
        c = model(batch)
    assert a["image_masks"].shape == (3, 6)
    assert a["image_masks"].sum(1).tolist() == [6, 6, 5]  # cls + min(valid, 5)
    pi, grid = a["patch_index"]
    assert grid == (4, 4)
    for s in range(2):
        cells = {tuple(x) for x in pi[s].tolist()}
        assert len(cells) == 5  # distinct patches, all inside the 4x4 valid grid
    assert {tuple(x) for x in pi[2, :4].tolist()} == {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert torch.equal(a["cls_feats"], b["cls_feats"]) and torch.equal(a["patch_index"][0], b["patch_index"][0])
    assert not torch.equal(a["patch_index"][0][:2], c["patch_index"][0][:2])
    # an explicit generator drives the draw instead of the global RNG
    model.patch_generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        d = model(batch)
    model.patch_generator = torch.Generator().manual_seed(7)
    torch.manual_seed(99)
    with torch.no_grad():
        e = model(batch)
    assert torch.equal(d["patch_index"][0], e["patch_index"][0])
    with pytest.raises(ValueError, match="max_image_len"):
        build_vilt(tiny_config(max_image_len=0))


def test_image_mask_respected():
    model = build_vilt(tiny_config()).eval()
    batch = make_batch(B=2, heights=[64, 32], widths=[64, 48])  # sample 1: 2x3 valid patches
    with torch.no_grad():
        out = model(batch)
        assert out["image_masks"][1].tolist() == [1] * 7 + [0] * 10
        assert {tuple(x) for x in out["patch_index"][0][1, :6].tolist()} == {(r, c) for r in range(2) for c in range(3)}
        # pixels under padding do not matter; pixels in the image do
        noisy = dict(batch, image=batch["image"].clone())
        noisy["image"][1, :, 32:, :] = 7.0
        noisy["image"][1, :, :, 48:] = -3.0
        torch.testing.assert_close(model(noisy)["cls_feats"], out["cls_feats"], atol=1e-6, rtol=0)
        noisy["image"][1, :, 0, 0] += 1.0
        assert not torch.allclose(model(noisy)["cls_feats"][1], out["cls_feats"][1])
        # the explicit mask decides, not the pixel values: an all-zero real image still has its patches
        zero = dict(batch, image=torch.zeros_like(batch["image"]))
        assert model(zero)["image_masks"][0].sum() == 17
    bad = dict(batch, image_mask=batch["image_mask"].clone())
    bad["image_mask"][0, 20:40, 20:40] = False
    with pytest.raises(ValueError, match="top-left aligned rectangle"):
        model(bad)


def test_outputs_deterministic_under_seed_with_dropout():
    model = build_vilt(tiny_config(drop_rate=0.1)).train()
    batch = make_batch()
    torch.manual_seed(3)
    a = model(batch, LayerPlan.of([1]))["cls_feats"]
    torch.manual_seed(3)
    b = model(batch, LayerPlan.of([1]))["cls_feats"]
    torch.manual_seed(4)
    c = model(batch, LayerPlan.of([1]))["cls_feats"]
    assert torch.equal(a, b) and not torch.equal(a, c)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(batch)["cls_feats"], model(batch)["cls_feats"])


def test_outputs_and_sizes_follow_the_variant():
    for vit, layers, patch, size in (("test_vilt_tiny", 2, 16, 64), ("test_vilt_tiny_p32", 4, 32, 128)):
        m = build_backbone(tiny_config(vit=vit, num_layers=layers, patch_size=patch))
        assert isinstance(m, ViLT)
        assert m.num_layers == layers == len(m.adapter_list) and m.hidden_size == 64
        assert m.patch_size == (patch, patch) and m.pos_grid == (4, 4)
        batch = make_batch(B=2, size=size)
        batch["text_ids_mlm"] = batch["text_ids"].clone()
        with torch.no_grad():
            out = m.eval()(batch, LayerPlan(), mask_text=True)
        assert out["cls_feats"].shape == (2, 64) and out["text_feats"].shape == (2, 12, 64)
        assert out["image_feats"].shape == (2, 17, 64) and out["raw_cls_feats"].shape == (2, 64)
        torch.testing.assert_close(out["cls_feats"], torch.tanh(m.pooler.dense(out["text_feats"][:, 0])))


def test_config_errors():
    with pytest.raises(ValueError, match="set hidden_size=64"):
        build_vilt(tiny_config(hidden_size=128))
    with pytest.raises(ValueError, match="set num_layers=2"):
        build_vilt(tiny_config(num_layers=12))
    with pytest.raises(ValueError, match="not a known ViT variant"):
        build_vilt(tiny_config(vit="vit_huge"))
    # the ViLT builder given a dict lacking an architecture key names it (the run's assembly, vlpeft.build, first
    # completes a partial dict with the base config's defaults, as it does an older checkpoint's config)
    with pytest.raises(KeyError, match="vocab_size"):
        build_bare_vilt({k: v for k, v in tiny_config().items() if k != "vocab_size"})
    with pytest.raises(KeyError, match="not a registered backbone.*did you mean 'vilt'"):
        build_backbone(dict(tiny_config(), backbone="vitl"))
    m = build_vilt(tiny_config())
    with pytest.raises(ValueError, match="max_text_len"):
        m(make_batch(L=41))
    with pytest.raises(KeyError, match="image_0"):
        m(make_batch(), image_key="image_0")


def test_das_adapter_shapes_and_init():
    torch.manual_seed(0)
    a = DASAdapter(768, 96)
    assert sum(p.numel() for p in a.parameters()) == 2 * 768 + (768 * 96 + 96) + (96 * 768 + 768) == 149_856
    assert a.adapter_layer_norm_before.eps == 1e-5
    assert torch.all(a.down_proj.bias == 0) and torch.all(a.adapter_layer_norm_before.weight == 1)
    assert abs(float(a.down_proj.weight.detach().std()) - 0.02) < 0.001
    x = torch.randn(2, 3, 768)
    h = a.up_proj(torch.relu(a.down_proj(a.adapter_layer_norm_before(x))))
    torch.testing.assert_close(a(x), h)
    r = DASAdapter(768, 96, residual=True)
    torch.testing.assert_close(r(x), x + r.up_proj(torch.relu(r.down_proj(r.adapter_layer_norm_before(x)))))

"""METER backbone and DAS on METER: encoder parity with transformers, the original key layout, skipping, counts."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, CLIPVisionConfig, CLIPVisionModel, RobertaModel
from transformers.models.bert.modeling_bert import BertLayer

from vlpeft.backbones._clip import CLIP_VARIANTS, hf_to_openai_clip
from vlpeft.backbones._protocol import LayerPlan
from vlpeft.backbones.meter import (
    METER,
    BertCrossLayer,
    MeterCheckpointError,
    build_meter,
    build_meter_clip,
    build_meter_variant,
    regrid_positions,
)
from vlpeft.pet._base import PETS, PetSpec, Recipe, inject
from vlpeft.pet.adapters import DASAdapter

from helpers import proj_loss

# DAS-METER's trainable-name rule (meter_module_{search,train}.py): a parameter trains iff its name contains one of
# TRAINABLE and none of FROZEN.
TRAINABLE = ("classifier", "pooler", "token_type_embeddings", "rank_output", "adapter")
FROZEN = ("text_transformer", "vit_model")

# A test-only PET builder (the real DAS preset belongs to vlpeft.pet): DAS adapters, residual on skip sites.
if "_test_meter_das" not in PETS:
    PETS.register("_test_meter_das", test=dict(site={}, options=dict(bottleneck=4), identity=False))(
        lambda site, bottleneck: DASAdapter(site.dim, bottleneck, residual=site.anchor == "skip"))


def das_recipe(par: int = 96, skip: int = 288) -> Recipe:
    """DAS-METER's adapters: b = 96 on every parallel site, b = 288 (3·96) on every skip site."""
    return Recipe("das_meter_test", (PetSpec("_test_meter_das", ("par",), {"bottleneck": par}),
                                     PetSpec("_test_meter_das", ("skip",), {"bottleneck": skip})),
                  base_policy="das_original")


def tiny(**kw) -> METER:
    torch.manual_seed(0)
    return build_meter_variant("test_meter_tiny", **kw)


def make_batch(B=3, L=9, size=32, seed=0, vocab=100):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, vocab, (B, L), generator=g)
    ids[:, 0] = 0  # <s>
    masks = torch.ones(B, L, dtype=torch.long)
    masks[1, 6:] = 0
    ids[1, 6:] = 1  # RoBERTa <pad>
    out = {"text_ids": ids, "text_masks": masks, "text_labels": torch.full((B, L), -100)}
    for k in ("image", "image_0", "image_1"):
        out[k] = torch.randn(B, 3, size, size, generator=g)
    return out


# ----------------------------------------------------------------------------------------------- encoders
def test_text_encoder_equals_roberta_forward_on_the_same_weights():
    m = tiny().eval()
    ref = RobertaModel(m.text_transformer.config).eval()
    ref.load_state_dict(m.text_transformer.state_dict())
    b = make_batch()
    got = m.encode_text(b["text_ids"], b["text_masks"])
    want = ref(input_ids=b["text_ids"], attention_mask=b["text_masks"]).last_hidden_state
    keep = b["text_masks"].bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-5, atol=1e-5)
    # the padding really is masked: changing a padded token leaves the real ones unchanged
    ids2 = b["text_ids"].clone()
    ids2[1, 7] = 50
    torch.testing.assert_close(m.encode_text(ids2, b["text_masks"])[1, :6], got[1, :6], rtol=1e-5, atol=1e-5)


def test_text_encoder_from_a_local_folder(tmp_path):
    src = tiny()
    src.text_transformer.save_pretrained(tmp_path / "roberta")
    m = tiny(text_encoder=str(tmp_path / "roberta"))
    assert isinstance(m.text_transformer, RobertaModel)
    for k, v in src.text_transformer.state_dict().items():
        assert torch.equal(v, m.text_transformer.state_dict()[k]), k
    with pytest.raises(FileNotFoundError, match="text_encoder="):
        tiny(text_encoder=str(tmp_path / "nowhere"))


def _tiny_hf_clip(seed=1, **kw) -> CLIPVisionModel:
    torch.manual_seed(seed)
    return CLIPVisionModel(CLIPVisionConfig(**{**CLIP_VARIANTS["test_clip_tiny"], **kw})).eval()


def _meter_reference(hf: CLIPVisionModel, img: torch.Tensor) -> torch.Tensor:
    """METER's image features in transformers terms: the penultimate layer's tokens through post_layernorm."""
    out = hf(pixel_values=img, output_hidden_states=True)
    return hf.post_layernorm(out.hidden_states[-2])


def test_image_encoder_equals_clip_vision_model_from_an_hf_folder_and_an_openai_file(tmp_path):
    hf = _tiny_hf_clip(num_hidden_layers=3)
    img = torch.randn(2, 3, 32, 32)
    want = _meter_reference(hf, img)

    hf.save_pretrained(tmp_path / "clip")
    from_folder = build_meter_clip(str(tmp_path / "clip"), 32).eval()
    assert len(from_folder.visual.transformer.resblocks) == 2  # layers − 1
    torch.testing.assert_close(from_folder(img), want, rtol=1e-5, atol=1e-5)

    # OpenAI files do not store the head count: CLIP's rule is width // 64, so this one is 128 wide with 2 heads
    hf = _tiny_hf_clip(num_hidden_layers=3, hidden_size=128, num_attention_heads=2, intermediate_size=256)
    want = _meter_reference(hf, img)
    sd = hf_to_openai_clip(hf)
    sd["positional_embedding"] = torch.randn(5, 12)  # the text tower's leftovers METER's wrapper keeps
    sd["ln_final.weight"], sd["ln_final.bias"] = torch.rand(12), torch.rand(12)
    torch.save(sd, tmp_path / "clip.pt")
    from_file = build_meter_clip(str(tmp_path / "clip.pt"), 32).eval()
    torch.testing.assert_close(from_file(img), want, rtol=1e-5, atol=1e-5)
    assert torch.equal(from_file.positional_embedding, sd["positional_embedding"])
    assert torch.equal(from_file.ln_final.weight, sd["ln_final.weight"])


def test_clip_positions_are_regridded_bicubically_to_image_size(tmp_path):
    hf = _tiny_hf_clip()
    hf.save_pretrained(tmp_path / "clip")
    m = build_meter_clip(str(tmp_path / "clip"), 48)
    assert m.visual.positional_embedding.shape == (1 + 6 * 6, 32) and m.image_size == 48
    # the table: class row kept, 4×4 grid → 6×6 bicubic (align_corners=False), computed here independently
    pos = hf.embeddings.position_embedding.weight.detach()
    grid = pos[1:].reshape(4, 4, 32).permute(2, 0, 1)[None]
    want = F.interpolate(grid, size=(6, 6), mode="bicubic", align_corners=False)[0].permute(1, 2, 0).reshape(36, 32)
    got = m.visual.positional_embedding.detach()
    torch.testing.assert_close(got[0], pos[0])
    torch.testing.assert_close(got[1:], want)
    torch.testing.assert_close(regrid_positions(pos[None], 6)[0], got)  # (1, N, d) tables too
    with pytest.raises(ValueError, match="multiple of the CLIP patch 8"):
        build_meter_clip("test_clip_tiny", 36)
    with pytest.raises(ValueError, match="expects images"):
        m(torch.randn(1, 3, 32, 32))


def test_cross_layer_equals_transformers_bert_layer_with_cross_attention():
    """METER's BertCrossLayer is BERT's decoder layer (self-attn, cross-attn, FFN) without a causal mask:
    transformers' ``BertLayer`` (eager attention, explicit additive masks) on the same weights."""
    torch.manual_seed(2)
    ours = BertCrossLayer(32, 4, 128, 0.1).eval()
    cfg = BertConfig(hidden_size=32, num_attention_heads=4, intermediate_size=128, is_decoder=True,
                     add_cross_attention=True, attn_implementation="eager")
    ref = BertLayer(cfg).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert not missing and not unexpected
    h, e = torch.randn(2, 5, 32), torch.randn(2, 7, 32)
    mh = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    me = torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]])
    ah = (1.0 - mh[:, None, None, :].float()) * -10000.0
    ae = (1.0 - me[:, None, None, :].float()) * -10000.0
    want = ref(h, attention_mask=ah, encoder_hidden_states=e, encoder_attention_mask=ae)
    want = want[0] if isinstance(want, tuple) else want
    torch.testing.assert_close(ours(h, e, ah, ae), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------- original key layout
def original_meter_keys(n_cross: int, n_clip_blocks: int, n_text_layers: int, das: bool, t4c: bool) -> set[str]:
    """The backbone keys of METER's ``METERTransformerSS`` (meter_module.py) and DAS-METER's
    (``meter_module_train.py`` + ``bert_model_PA.py``), written out from the original module code."""
    keys = {f"{m}.{p}" for m in ("cross_modal_text_transform", "cross_modal_image_transform",
                                 "cross_modal_text_pooler.dense", "cross_modal_image_pooler.dense")
            for p in ("weight", "bias")}
    keys.add("token_type_embeddings.weight")
    # clip_model.py: CLIP(visual=VisualTransformer, positional_embedding, ln_final); Transformer has layers-1 blocks
    keys |= {"vit_model.positional_embedding", "vit_model.ln_final.weight", "vit_model.ln_final.bias",
             "vit_model.visual.class_embedding", "vit_model.visual.positional_embedding",
             "vit_model.visual.conv1.weight"}
    keys |= {f"vit_model.visual.{ln}.{p}" for ln in ("ln_pre", "ln_post") for p in ("weight", "bias")}
    for i in range(n_clip_blocks):
        b = f"vit_model.visual.transformer.resblocks.{i}."
        keys |= {b + "attn.in_proj_weight", b + "attn.in_proj_bias", b + "attn.out_proj.weight",
                 b + "attn.out_proj.bias"}
        keys |= {b + f"{m}.{p}" for m in ("ln_1", "ln_2", "mlp.c_fc", "mlp.c_proj") for p in ("weight", "bias")}
    # RobertaModel (with its pooler)
    t = "text_transformer."
    keys |= {t + f"embeddings.{e}.weight" for e in ("word_embeddings", "position_embeddings",
                                                    "token_type_embeddings", "LayerNorm")}
    keys |= {t + "embeddings.LayerNorm.bias", t + "pooler.dense.weight", t + "pooler.dense.bias"}
    bert_layer = [f"attention.self.{q}" for q in ("query", "key", "value")] + [
        "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
        "output.LayerNorm"]
    for i in range(n_text_layers):
        keys |= {t + f"encoder.layer.{i}.{m}.{p}" for m in bert_layer for p in ("weight", "bias")}
    # bert_model.py BertCrossLayer: attention, crossattention, intermediate, output
    cross = bert_layer + [m.replace("attention.", "crossattention.", 1) for m in bert_layer
                          if m.startswith("attention.")]
    adapter = [f"{a}.{p}" for a in ("adapter_layer_norm_before", "down_proj", "up_proj") for p in ("weight", "bias")]
    for s in ("text", "image"):
        for i in range(n_cross):
            b = f"cross_modal_{s}_layers.{i}."
            keys |= {b + f"{m}.{p}" for m in cross for p in ("weight", "bias")}
            # bert_model_PA.py: BertSelfOutput.adapter (in attention and crossattention), BertCrossLayer.adapter
            if das:
                keys |= {b + f"{where}adapter.{a}" for where in ("attention.output.", "crossattention.output.", "")
                         for a in adapter}
    if das:  # meter_module_*.py: adapter_list_l / adapter_list_v = ModuleList(Sequential(ParallelAdapter(288)))
        keys |= {f"adapter_list_{s}.{i}.0.{a}" for s in ("l", "v") for i in range(n_cross) for a in adapter}
    if t4c:
        keys.add("token4classifier")
    return keys


@pytest.mark.parametrize("das", [False, True])
def test_state_dict_has_exactly_the_original_keys(das):
    m = tiny(token4classifier=das)
    if das:
        inject(m, das_recipe(8, 16))
    want = original_meter_keys(n_cross=2, n_clip_blocks=1, n_text_layers=2, das=das, t4c=das)
    got = set(m.state_dict())
    assert got == want, (sorted(got - want), sorted(want - got))


def _original_checkpoint(model: METER, grid_from: int | None = None, rows: int | None = None) -> dict:
    """A state dict in the original layout: another METER's tensors under the same names, plus what the originals'
    checkpoints also hold (old-transformers buffers, heads, DAS search buffers)."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    sd["text_transformer.embeddings.position_ids"] = torch.arange(42)[None]  # transformers 4.6 saved it
    sd["vqa_classifier.0.weight"] = torch.zeros(2, 2)  # heads and search state belong to other owners
    sd["das_gate"], sd["skip_num"] = torch.zeros(4), torch.ones(1)
    if grid_from is not None:
        sd["vit_model.visual.positional_embedding"] = torch.randn(1 + grid_from ** 2, model.vit_model.width)
    if rows is not None:
        sd["token_type_embeddings.weight"] = sd["token_type_embeddings.weight"][:rows]
    return sd


def test_original_das_checkpoint_loads_with_no_missing_keys_and_only_foreign_ones_left_over():
    src = tiny(token4classifier=True)
    inject(src, das_recipe(8, 16))
    sd = _original_checkpoint(src)
    torch.manual_seed(5)
    dst = build_meter_variant("test_meter_tiny", token4classifier=True)
    inject(dst, das_recipe(8, 16))
    res = dst.load_state_dict(dst.checkpoint_filter_fn(sd), strict=False)
    assert res.missing_keys == []
    assert sorted(res.unexpected_keys) == ["das_gate", "skip_num", "vqa_classifier.0.weight"]
    for k, v in dst.state_dict().items():
        assert torch.equal(v, src.state_dict()[k]), k


def test_pretrained_meter_checkpoint_into_das_nlvr2_model_at_another_resolution():
    """METER-pretrain (2 token types, 288 px, no adapters, no token4classifier) → DAS-METER NLVR2 at 384 px:
    positions re-gridded, token types expanded, token4classifier computed from the checkpoint's embeddings;
    missing: only what the original creates after loading (adapters, token4classifier is computed here)."""
    src = tiny()
    sd = _original_checkpoint(src, grid_from=3, rows=2)  # tiny: 24 px / 8 = 3 (as 288/16 = 18)
    dst = tiny(token4classifier=True, loss_names={"nlvr2": 1})
    inject(dst, das_recipe(8, 16))
    assert dst.token_type_embeddings.num_embeddings == 3
    filtered = dst.checkpoint_filter_fn(sd)
    res = dst.load_state_dict(filtered, strict=False)
    assert all(".adapter." in k or k.startswith("adapter_list_") for k in res.missing_keys) and res.missing_keys
    assert sorted(res.unexpected_keys) == ["das_gate", "skip_num", "vqa_classifier.0.weight"]
    tt = dst.token_type_embeddings.weight
    assert torch.equal(tt[:2], sd["token_type_embeddings.weight"]) and torch.equal(tt[2], tt[1])
    torch.testing.assert_close(dst.vit_model.visual.positional_embedding,
                               regrid_positions(sd["vit_model.visual.positional_embedding"], 4))
    # token4classifier = text_transformer.embeddings([[0]]) of the loaded weights, in eval mode
    emb = dst.text_transformer.embeddings.eval()
    torch.testing.assert_close(dst.token4classifier, emb(input_ids=torch.zeros(1, 1, dtype=torch.long)))


def test_checkpoint_shape_errors_name_the_fix():
    m = tiny()
    sd = {"cross_modal_text_transform.weight": torch.zeros(32, 16)}
    with pytest.raises(MeterCheckpointError, match="input_"):
        m.checkpoint_filter_fn(sd)


def test_config_errors_name_the_fix():
    with pytest.raises(ValueError, match="set patch_size=8"):
        tiny(patch_size=16)
    with pytest.raises(ValueError, match="set input_text_embed_size=32"):
        tiny(input_text_embed_size=64)
    with pytest.raises(ValueError, match="set input_image_embed_size=32"):
        tiny(input_image_embed_size=64)


# ----------------------------------------------------------------------------------------------- DAS on METER
def test_candidates_follow_das_gate_order_and_sites_carry_the_das_names():
    m = tiny()
    n = m.num_top_layer
    assert m.candidates().count == 2 * n and m.candidates().skip and not m.candidates().insert
    assert [m.candidate_name(i) for i in range(2 * n)] == (
        [f"cross_modal_text_layers.{i}" for i in range(n)] + [f"cross_modal_image_layers.{i}" for i in range(n)])
    sites = m.sites()
    das = [s for s in sites if s.anchor in ("par", "skip")]
    assert len(das) == 2 * n * 4
    # the zoo's slots (out_seq / out_par / gate per sublayer) and projections (q, k, v, o of both attentions, the FFN)
    assert len([s for s in sites if s.anchor in ("out_seq", "out_par", "gate")]) == 2 * n * 3 * 3
    assert len([s for s in sites if s.anchor.startswith("proj:")]) == 2 * n * 10
    assert len({s.name for s in sites}) == len(sites)
    by = {(s.layer, s.sublayer, s.anchor): s.name for s in sites}
    assert by[(n, "cross_attn", "proj:o")] == "cross_modal_image_layers.0.crossattention.output.dense"
    assert by[(1, "ffn", "gate")] == "cross_modal_text_layers.1.output.gate"
    assert by[(0, "attn", "par")] == "cross_modal_text_layers.0.attention.output.adapter"
    assert by[(0, "cross_attn", "par")] == "cross_modal_text_layers.0.crossattention.output.adapter"
    assert by[(0, "ffn", "par")] == "cross_modal_text_layers.0.adapter"
    assert by[(0, "block", "skip")] == "adapter_list_l.0.0"
    assert by[(n + 1, "ffn", "par")] == "cross_modal_image_layers.1.adapter"
    assert by[(n + 1, "block", "skip")] == "adapter_list_v.1.0"
    assert all(s.dim == m.hidden_size and s.family == "meter" for s in sites if not s.anchor.startswith("proj:"))
    report = inject(m, das_recipe(8, 16))
    names = dict(m.named_parameters())
    assert report.param_names() <= set(names)
    assert names["adapter_list_v.1.0.down_proj.weight"].shape == (16, 32)
    assert names["cross_modal_image_layers.1.crossattention.output.adapter.down_proj.weight"].shape == (8, 32)
    with pytest.raises(ValueError, match="already holds"):
        m.attach(sites[0], DASAdapter(32, 8))


def _count_calls(m: METER):
    calls: dict[str, int] = {}
    mods = {f"t{i}": l for i, l in enumerate(m.cross_modal_text_layers)}
    mods |= {f"v{i}": l for i, l in enumerate(m.cross_modal_image_layers)}
    mods |= {f"sl{i}": a for i, a in enumerate(m.adapter_list_l)}
    mods |= {f"sv{i}": a for i, a in enumerate(m.adapter_list_v)}
    for k, mod in mods.items():
        mod.register_forward_hook(lambda *_a, k=k: calls.__setitem__(k, calls.get(k, 0) + 1))
    return calls


def test_a_skipped_unit_is_not_computed_and_its_skip_adapter_runs_instead():
    m = tiny(token4classifier=True)
    report = inject(m, das_recipe(8, 16))
    calls = _count_calls(m)
    n = m.num_top_layer
    plan = LayerPlan.of([0, n + 1])  # text layer 0 and image layer 1
    out = m(make_batch(), plan)
    assert calls == {"sl0": 1, "t1": 1, "v0": 1, "sv1": 1}
    # gradients reach exactly the modules the plan runs (+ what feeds them)
    proj_loss(out["cls_feats"]).backward()
    pet = report.param_names()
    used = report.used_param_names(plan)
    params = dict(m.named_parameters())
    got = {k for k in pet if params[k].grad is not None and params[k].grad.abs().sum() > 0}
    assert got == used
    assert not any(p.grad is not None for k, p in params.items() if k.startswith("cross_modal_text_layers.0."))


def test_forward_follows_meter_das_infer():
    """An independent walk through DAS-METER's ``infer``: RoBERTa (transformers forward) → text transform →
    token4classifier at position 0 → token types → per layer, both streams read the previous x and y, a skipped
    layer's skip adapter runs instead → [text pooler; image pooler]."""
    m = tiny(token4classifier=True).eval()
    inject(m, das_recipe(8, 16))
    n = m.num_top_layer
    skip = {1, n}  # text layer 1, image layer 0
    b = make_batch()
    with torch.no_grad():
        t = m.text_transformer(input_ids=b["text_ids"], attention_mask=b["text_masks"]).last_hidden_state
        x = m.cross_modal_text_transform(t)
        x = torch.cat([m.token4classifier.expand(3, -1, -1), x[:, 1:]], 1) + m.token_type_embeddings.weight[0]
        y = m.cross_modal_image_transform(m.vit_model(b["image"])) + m.token_type_embeddings.weight[1]
        mt = (1.0 - b["text_masks"][:, None, None, :].float()) * -10000.0
        mv = torch.zeros(3, 1, 1, y.shape[1])
        for i in range(n):
            x1 = m.adapter_list_l[i](x) if i in skip else m.cross_modal_text_layers[i](x, y, mt, mv)
            y1 = m.adapter_list_v[i](y) if n + i in skip else m.cross_modal_image_layers[i](y, x, mv, mt)
            x, y = x1, y1
        want = torch.cat([torch.tanh(m.cross_modal_text_pooler.dense(x[:, 0])),
                          torch.tanh(m.cross_modal_image_pooler.dense(y[:, 0]))], -1)
        got = m(b, LayerPlan.of(skip))
    torch.testing.assert_close(got["cls_feats"], want, rtol=1e-5, atol=1e-5)
    assert got["cls_feats"].shape == (3, m.cls_dim)


def test_an_empty_skip_site_is_the_identity():
    m = tiny().eval()
    b = make_batch()
    enc = m._encode(b)
    n = m.num_top_layer
    out = m(b, LayerPlan.of(range(n)))  # every text layer skipped, no skip adapters attached
    torch.testing.assert_close(out["text_feats"], enc["x"])


def test_forward_many_equals_one_forward_per_plan():
    m = tiny(token4classifier=True).eval()
    inject(m, das_recipe(8, 16))
    b = make_batch()
    plans = [LayerPlan.of([0, 2]), LayerPlan.of([1]), LayerPlan.of([])]
    for one, many in zip([m(b, p) for p in plans], m.forward_many(b, plans)):
        torch.testing.assert_close(one["cls_feats"], many["cls_feats"])


def test_token4classifier_replaces_the_text_start_state():
    m = tiny(token4classifier=True).eval()
    b = make_batch()
    enc = m._encode(b)
    tt0 = m.token_type_embeddings.weight[0]
    torch.testing.assert_close(enc["x"][:, 0], (m.token4classifier[0, 0] + tt0).expand(3, -1))
    plain = m.cross_modal_text_transform(m.encode_text(b["text_ids"], b["text_masks"])) + tt0
    torch.testing.assert_close(enc["x"][:, 1:], plain[:, 1:])


def test_nlvr2_pass_reads_its_image_and_token_type_2():
    m = tiny(loss_names={"nlvr2": 1}).eval()
    b = make_batch()
    f1 = m(b, image_key="image_1", image_token_type_idx=2)["cls_feats"]
    with torch.no_grad():
        m.token_type_embeddings.weight[2] += 1.0
    f1b = m(b, image_key="image_1", image_token_type_idx=2)["cls_feats"]
    f0 = m(b, image_key="image_0", image_token_type_idx=1)["cls_feats"]
    assert not torch.allclose(f1, f1b) and not torch.allclose(f0, f1b)
    with pytest.raises(ValueError, match="expand_token_types_for_nlvr2"):
        tiny()(b, image_token_type_idx=2)


def test_score_pairs_with_an_image_cache_equals_the_full_forward():
    m = tiny().eval()
    b = make_batch()
    one = {k: v[:1] for k, v in b.items()}
    cache = m.encode_images(one)
    texts = {k: b[k] for k in ("text_ids", "text_masks")}
    got = m(texts, image_cache=cache)["cls_feats"]
    want = m({**texts, "image": one["image"].expand(3, -1, -1, -1)})["cls_feats"]
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_trainable_set_equals_das_meter_name_rule():
    m = tiny(token4classifier=True)
    report = inject(m, das_recipe(8, 16))
    ours = {n for n, _ in m.base_trainable("das_original")} | report.param_names()
    rule = {n for n, _ in m.named_parameters() if any(t in n for t in TRAINABLE) and not any(f in n for f in FROZEN)}
    assert ours == rule
    assert {n for n, _ in m.base_trainable("none")} == set()
    assert not report.param_names() & {n for n, _ in m.base_trainable("all")}


# ----------------------------------------------------------------------------------------------- counts at base size
def _numel(ps) -> int:
    return sum(p.numel() for p in ps)


def _head(d_in: int, hs2: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hs2), nn.LayerNorm(hs2), nn.GELU(), nn.Linear(hs2, out))


@pytest.fixture(scope="module")
def base_das_meter():
    """DAS-METER at base size on the meta device (shapes only, nothing allocated, nothing downloaded)."""
    def build(image_size: int, nlvr2: bool = False):
        with torch.device("meta"):
            m = build_meter_variant("meter_clip16_288_roberta_random", image_size=image_size, token4classifier=True,
                                    loss_names={"nlvr2": 1 if nlvr2 else 0})
            report = inject(m, das_recipe(96, 288))
        return m, report
    return build


def test_das_meter_parameter_counts_at_base_size(base_das_meter):
    """Counts from the original shapes (d = 768, CLIP-B/16 width 768 with 12 − 1 = 11 blocks, RoBERTa-base):

    - CLIP block: in_proj 3·768·768 + 3·768 + out_proj 768·768 + 768 + 2 LN·1,536 + c_fc 768·3072 + 3072
      + c_proj 3072·768 + 768 = 7,087,872; image tower at 288 px (18×18 grid): conv 589,824 + class 768
      + positions 325·768 = 249,600 + ln_pre/ln_post 3,072 + 11 blocks 77,966,592 + text leftovers 77·512 + 1,024
      = 78,850,304;
    - RoBERTa-base with pooler: 124,645,632;
    - BertCrossLayer: 2 × (4·590,592 + 1,536) + (768·3072 + 3072) + (3072·768 + 768 + 1,536) = 9,451,776; ×12;
    - transforms 2·590,592, poolers 2·590,592, token types 2·768, token4classifier 768;
    - DAS adapter (2d + d·b + b + b·d + d): b = 96 → 149,856; b = 288 → 444,960; 36 + 12 of them = 10,734,336
      (DAS-METER's printed "extra parameter").
    Heads (original shapes, hs = 768): VQA Linear(1536,1536)-LN-GELU-Linear(1536,3129) = 7,173,177; NLVR2
    Linear(3072,1536)-LN-GELU-Linear(1536,2) = 4,726,274 and a third token-type row; SNLI 2,368,515; F30K:
    itm_score Linear(1536,2) frozen + rank_output (weight replaced by a 1×1536 row) 1,537.
    Totals and trainable counts = DAS-METER's start-up print ``trainable_size:…%(trainable/total)``.
    """
    m, report = base_das_meter(288)
    assert _numel(m.vit_model.parameters()) == 78_850_304
    assert _numel(m.text_transformer.parameters()) == 124_645_632
    assert _numel(m.cross_modal_text_layers[0].parameters()) - 3 * 149_856 == 9_451_776
    adapters = _numel(p for n, p in m.named_parameters() if "adapter" in n)
    assert adapters == 10_734_336 == 36 * 149_856 + 12 * 444_960
    own = _numel(p for _, p in m.base_trainable("das_original"))
    assert own == 2 * 590_592 + 2 * 768 + 768
    assert own + adapters == 11_917_824
    backbone_288 = _numel(m.parameters())
    assert backbone_288 == 330_016_256

    with torch.device("meta"):
        nlvr2_head = _head(3072, 1536, 2)
    mn, _ = base_das_meter(288, nlvr2=True)
    total, trainable = _numel(mn.parameters()) + _numel(nlvr2_head.parameters()), 11_917_824 + 768 + 4_726_274
    assert (trainable, total) == (16_644_866, 334_743_298)  # NLVR2 at 288

    m384, _ = base_das_meter(384)
    backbone_384 = _numel(m384.parameters())
    assert backbone_384 - backbone_288 == (577 - 325) * 768
    with torch.device("meta"):
        vqa, snli = _head(1536, 1536, 3129), _head(1536, 1536, 3)
        itm, rank = nn.Linear(1536, 2), nn.Linear(1536, 1)
    assert (11_917_824 + _numel(vqa.parameters()), backbone_384 + _numel(vqa.parameters())) == (19_091_001, 337_382_969)
    assert (11_917_824 + _numel(snli.parameters()), backbone_384 + _numel(snli.parameters())) == (14_286_339,
                                                                                                  332_578_307)
    f30k_total = backbone_384 + _numel(itm.parameters()) + _numel(rank.parameters())
    assert (11_917_824 + _numel(rank.parameters()), f30k_total) == (11_919_361, 330_214_403)


def test_build_meter_reads_the_original_keys():
    torch.manual_seed(0)
    cfg = {"vit": "test_clip_tiny", "image_size": 40, "patch_size": 8, "tokenizer": "roberta-base",
           "text_encoder": "test_roberta_tiny", "num_top_layer": 3, "input_image_embed_size": 32,
           "input_text_embed_size": 32, "hidden_size": 16, "num_heads": 2, "mlp_ratio": 2, "drop_rate": 0.0}
    m = build_meter(cfg)
    assert (m.num_top_layer, m.hidden_size, m.cls_dim, m.vit_model.image_size) == (3, 16, 32, 40)
    assert m.cross_modal_text_layers[0].intermediate.dense.out_features == 32
    assert m.token4classifier is None and m.token_type_embeddings.num_embeddings == 2
    b = make_batch(size=40)
    assert m(b)["cls_feats"].shape == (3, 32)

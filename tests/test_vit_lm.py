"""ViT + GPT-2 / ViT + RoBERTa (Routing-VLPEFT's hosts, spec §1.2, §2 M10, §5, §6.5): parity of the text paths with
Hugging Face's models on the same weights, ``generate`` equal to transformers' ``generate``, skipping, routing
reading the image's ``x_v``, and the parameter counts of spec §6.5 at base size (meta device, no download)."""

from __future__ import annotations

import pytest
import torch

import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.pet import PRESETS, inject
from vlpeft.pet.trainable import apply_trainable, count_parameters

PLAN = LayerPlan()
ROUTING_PRESETS = [f"routing_{k}_{fn}" for k in ("lora", "adapter") for fn in ("add", "mul", "mul_expand", "vl")]
SMALL = dict(routing_r=4, routing_alpha=8, routing_adapter_r=4, lora_r=4, lora_alpha=8, lora_dropout=0.0)
SYNTHETIC = dict(seed=6, images=48)  # the arrows of the run.py tests (tests/conftest.py)


def _bb(name: str, seed: int = 0, **cfg):
    torch.manual_seed(seed)
    return BACKBONES.build(name, cfg).eval()


def _batch(B: int = 2, L: int = 5, T: int = 4, pad_row: bool = False, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1000, 2000, (B, L), generator=g)
    masks = torch.ones(B, L, dtype=torch.long)
    if pad_row:
        masks[1, -2:] = 0
        ids[1, -2:] = 0
    targets = torch.randint(1000, 2000, (B, T), generator=g)
    return {"text_ids": ids, "text_masks": masks, "target_ids": targets,
            "image": torch.randn(B, 3, 32, 32, generator=g)}


# --- GPT-2 --------------------------------------------------------------------------------------------------------------
def test_gpt2_text_path_equals_hf_forward():
    bb = _bb("test_vit_gpt2", no_vis_prefix=True)
    hf = bb.plm.gpt2
    b = _batch()
    with torch.no_grad():
        out = bb(b, PLAN)
        ref = hf(input_ids=torch.cat([b["text_ids"], b["target_ids"]], dim=1)).logits
        L, T = b["text_ids"].shape[1], b["target_ids"].shape[1]
        torch.testing.assert_close(out["lm_logits"], ref[:, L - 1:L + T - 1], rtol=1e-5, atol=1e-5)
        want = torch.nn.functional.cross_entropy(ref[:, L - 1:L + T - 1].reshape(-1, ref.shape[-1]),
                                                 b["target_ids"].reshape(-1))
        torch.testing.assert_close(out["lm_loss"], want, rtol=1e-5, atol=1e-6)
        no_targets = bb({k: v for k, v in b.items() if k != "target_ids"}, PLAN)["lm_logits"]
        torch.testing.assert_close(no_targets, hf(input_ids=b["text_ids"]).logits, rtol=1e-5, atol=1e-5)


def test_gpt2_padded_prompt_and_padded_targets_give_the_unpadded_row():
    bb = _bb("test_vit_gpt2", no_vis_prefix=True)
    b = _batch(pad_row=True)
    b["target_ids"][1, -1] = -100
    with torch.no_grad():
        out = bb(b, PLAN)["lm_logits"]
        row = torch.cat([b["text_ids"][1, :3], b["target_ids"][1, :3]])[None]
        ref = bb.plm.gpt2(input_ids=row).logits[0, 2:5]
    torch.testing.assert_close(out[1, :3], ref, rtol=1e-5, atol=1e-5)


def test_gpt2_visual_prefix_is_the_first_position():
    bb = _bb("test_vit_gpt2")  # prefix on (RT's default)
    b = _batch()
    with torch.no_grad():
        out = bb(b, PLAN)
        x_v = bb.visual_context(b["image"])
        wte = bb.plm.gpt2.transformer.wte
        seq = torch.cat([x_v, wte(b["text_ids"]), wte(b["target_ids"])], dim=1)
        ref = bb.plm.gpt2(inputs_embeds=seq).logits
        L, T = b["text_ids"].shape[1], b["target_ids"].shape[1]
        torch.testing.assert_close(out["lm_logits"], ref[:, L:L + T], rtol=1e-5, atol=1e-5)
        # captioning without a prompt: the prefix predicts the first caption token
        cap = bb({"image": b["image"], "target_ids": b["target_ids"]}, PLAN)["lm_logits"]
        ref = bb.plm.gpt2(inputs_embeds=torch.cat([x_v, wte(b["target_ids"])], dim=1)).logits[:, :T]
        torch.testing.assert_close(cap, ref, rtol=1e-5, atol=1e-5)
    assert x_v.shape == (2, 1, bb.hidden_size)
    assert torch.equal(x_v[:, 0], bb.vit(pixel_values=b["image"]).pooler_output)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_gpt2_generate_equals_hf_generate(num_beams):
    bb = _bb("test_vit_gpt2", no_vis_prefix=True)
    hf = bb.plm.gpt2
    b = _batch()
    cfg = hf.config
    with torch.no_grad():
        ours = bb.generate_ids(b, PLAN, num_beams=num_beams, max_new_tokens=6)
        ref = hf.generate(input_ids=b["text_ids"], attention_mask=b["text_masks"], num_beams=num_beams,
                          max_new_tokens=6, do_sample=False, eos_token_id=cfg.eos_token_id,
                          pad_token_id=cfg.pad_token_id, bos_token_id=cfg.bos_token_id)
    assert torch.equal(ours, ref[:, b["text_ids"].shape[1]:])
    text = bb(b, PLAN, generate=True, num_beams=num_beams, max_new_tokens=6)["generated"]
    assert text == bb.decode(ours) and len(text) == 2


@pytest.mark.parametrize("num_beams", [1, 3])
def test_gpt2_generate_with_the_visual_prefix_equals_hf_vit_then_hf_generate(num_beams):
    """With the visual prefix (the released runs' setting): the same ids as HF's ViT pooler output put in front of
    the token embeddings and HF's ``generate(inputs_embeds=...)`` (RT's captioning by hand; bench/generate_vs_hf.py's
    peer)."""
    bb = _bb("test_vit_gpt2")
    hf, cfg, b = bb.plm.gpt2, bb.plm.gpt2.config, _batch()
    with torch.no_grad():
        ours = bb.generate_ids(b, PLAN, num_beams=num_beams, max_new_tokens=6)
        prefix = bb.vit(pixel_values=b["image"]).pooler_output.unsqueeze(1)
        embeds = torch.cat([prefix, hf.transformer.wte(b["text_ids"])], dim=1)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long)
        ref = hf.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams, max_new_tokens=6,
                          do_sample=False, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.pad_token_id,
                          bos_token_id=cfg.bos_token_id)
    assert torch.equal(ours, ref)


def test_gpt2_generate_left_packs_a_padded_prompt():
    bb = _bb("test_vit_gpt2")
    b = _batch(pad_row=True)
    with torch.no_grad():
        both = bb.generate_ids(b, PLAN, max_new_tokens=5)
        alone = bb.generate_ids({"image": b["image"][1:], "text_ids": b["text_ids"][1:, :3]}, PLAN, max_new_tokens=5)
    assert torch.equal(both[1, :alone.shape[1]], alone[0])


def test_gpt2_skipped_block_is_never_called_in_forward_or_generate():
    bb = _bb("test_vit_gpt2")
    b = _batch()
    calls = []
    h = bb.candidate_module(1).register_forward_hook(lambda *a: calls.append(1))
    with torch.no_grad():
        full = bb.generate_ids(b, PLAN, num_beams=3, max_new_tokens=4)
        assert calls
        calls.clear()
        skipped = bb.generate_ids(b, LayerPlan.of([1]), num_beams=3, max_new_tokens=4)
        bb(b, LayerPlan.of([1]))
    h.remove()
    assert not calls and not torch.equal(full, skipped)
    assert type(bb.plm.gpt2.transformer.h[1]).__name__ == "GPT2Block"  # restored after the call


@pytest.mark.parametrize("skip", [(), (0,), (1, 2)])
def test_gpt2_generate_with_cache_equals_greedy_recomputation(skip):
    """Skipped blocks store zero keys / values in the cache (layer 0 sets its length): cached greedy decoding equals
    re-running the whole sequence through ``forward`` at every step."""
    bb = _bb("test_vit_gpt2")
    inject(bb, PRESETS.build("das", dict(das_adapter_dim=4, das_skip_adapter_dim=4)))
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if "skip_adapters" in n:
                p.normal_(0.0, 0.3)
    plan = LayerPlan.of(skip)
    b = {k: v for k, v in _batch().items() if k != "target_ids"}
    with torch.no_grad():
        ours = bb.generate_ids(b, plan, max_new_tokens=4)
        ids = b["text_ids"]
        for _ in range(4):
            nxt = bb(dict(b, text_ids=ids, text_masks=torch.ones_like(ids)), plan)["lm_logits"][:, -1].argmax(-1)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
    assert torch.equal(ours, ids[:, b["text_ids"].shape[1]:])


def test_last_hidden_state_context_and_bos_prompt():
    """``vit_use_pooler=False``: x_v is the ViT's last hidden state (every token a prefix token); a captioning batch
    without a prompt and without a prefix starts from GPT-2's BOS; ``add`` routing refuses M > 1 by name."""
    bb = _bb("test_vit_gpt2", vit_use_pooler=False)
    b = _batch()
    with torch.no_grad():
        x_v = bb.visual_context(b["image"])
        assert torch.equal(x_v, bb.vit(pixel_values=b["image"]).last_hidden_state) and x_v.shape[1] == 5
        out = bb(b, PLAN)["lm_logits"]
        wte = bb.plm.gpt2.transformer.wte
        ref = bb.plm.gpt2(inputs_embeds=torch.cat([x_v, wte(b["text_ids"]), wte(b["target_ids"])], dim=1)).logits
        torch.testing.assert_close(out, ref[:, 5 + 5 - 1:5 + 5 + 3], rtol=1e-5, atol=1e-5)
    inject(bb, PRESETS.build("routing_lora_add", SMALL))
    with pytest.raises(ValueError, match="routing 'add' needs one context token"):
        bb(b, PLAN)
    bare = _bb("test_vit_gpt2", no_vis_prefix=True)
    with torch.no_grad():
        cap = bare({"image": b["image"], "target_ids": b["target_ids"]}, PLAN)["lm_logits"]
        bos = torch.full((2, 1), bare.plm.gpt2.config.bos_token_id)
        ref = bare.plm.gpt2(input_ids=torch.cat([bos, b["target_ids"]], dim=1)).logits[:, :-1]
    torch.testing.assert_close(cap, ref, rtol=1e-5, atol=1e-5)


# --- RoBERTa --------------------------------------------------------------------------------------------------------------
def test_roberta_text_path_equals_hf_pooler_output():
    bb = _bb("test_vit_roberta")  # no prefix (RT's default)
    b = _batch(pad_row=True)
    with torch.no_grad():
        out = bb(b, PLAN)["cls_feats"]
        ref = bb.plm.roberta(input_ids=b["text_ids"], attention_mask=b["text_masks"]).pooler_output
    assert torch.equal(out, ref)
    assert bb.capabilities == {"classify"} and out.shape == (2, bb.cls_dim)


def test_roberta_side_takes_a_real_bert_folder():
    """vit_roberta's text model may be a BERT (same module layout): the offline MiniLM BERT loads with its real
    weights and the text path equals transformers' BertModel pooler output on them."""
    from transformers import BertModel

    from vlpeft.data.tokenizer import resolve_tokenizer_path

    bb = BACKBONES.build("vit_roberta", {"vit_model": "vit_small_w384_random", "lm_config": "",
                                         "tokenizer": "minilm"}).eval()
    ref_model = BertModel.from_pretrained(resolve_tokenizer_path("minilm"), local_files_only=True).eval()
    ids = torch.tensor([[101, 2054, 3609, 2003, 1996, 4418, 102]])
    b = {"text_ids": ids, "text_masks": torch.ones_like(ids), "image": torch.zeros(1, 3, 224, 224)}
    with torch.no_grad():
        out = bb(b, PLAN)["cls_feats"]
        ref = ref_model(input_ids=ids, attention_mask=torch.ones_like(ids)).pooler_output
    assert type(bb.plm.roberta).__name__ == "BertModel"
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-6)


def test_vit_pet_sites_are_opt_in_and_train():
    """RT keeps the ViT frozen and unadapted (no ViT site by default, so the §6.5 counts hold); with
    ``vit_pet_sites=True`` the ViT's projections are sites too (layer -1: never skipped), LoRA lands there and its
    parameters get gradients through x_v."""
    base = _bb("test_vit_roberta", use_vis_prefix=True)
    assert not [s for s in base.sites() if s.stack == "vit"]
    bb = _bb("test_vit_roberta", use_vis_prefix=True, vit_pet_sites=True)
    vit_sites = [s for s in bb.sites() if s.stack == "vit"]
    assert vit_sites and {s.layer for s in vit_sites} == {-1} and {s.role for s in vit_sites} == {"vision"}
    report = inject(bb, PRESETS.build("lora", dict(lora_r=2, lora_alpha=4, lora_dropout=0.0)))
    apply_trainable(bb, report, "none")
    in_vit = [n for n in report.param_names() if n.startswith("vit.")]
    sites = {s.name: s for s in vit_sites}
    assert in_vit and {sites[n.rsplit(".", 1)[0]].anchor for n in in_vit} == {"proj:q", "proj:v"}
    b = _batch(pad_row=True)
    with torch.no_grad():  # LoRA's B = 0: the ViT still computes the released function
        assert torch.equal(bb(b, PLAN)["cls_feats"], base(b, PLAN)["cls_feats"])
    bb(b, PLAN)["cls_feats"].pow(2).sum().backward()
    params = dict(bb.named_parameters())
    assert all(params[n].grad is not None for n in in_vit if n.endswith("lora_B"))


def test_roberta_visual_prefix():
    bb = _bb("test_vit_roberta", use_vis_prefix=True)
    b = _batch(pad_row=True)
    b2 = dict(b, image=torch.randn_like(b["image"]))
    with torch.no_grad():
        out = bb(b, PLAN)["cls_feats"]
        x_v = bb.visual_context(b["image"])
        rob = bb.plm.roberta
        embeds = torch.cat([x_v, rob.embeddings.word_embeddings(b["text_ids"])], dim=1)
        mask = torch.cat([torch.ones(2, 1, dtype=torch.long), b["text_masks"]], dim=1)
        torch.testing.assert_close(out, rob(inputs_embeds=embeds, attention_mask=mask).pooler_output)
        assert not torch.allclose(out, bb(b2, PLAN)["cls_feats"])


# --- routing: the modules read x_v ---------------------------------------------------------------------------------------
def _routed_outputs(name: str, preset: str, **cfg):
    """Outputs for two images, with every PET parameter moved off its init (LoRA's B = 0 would hide x_v)."""
    bb = _bb(name, **cfg)
    report = inject(bb, PRESETS.build(preset, SMALL))
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if n in report.param_names():
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    b = _batch()
    b2 = dict(b, image=torch.randn(b["image"].shape, generator=g))
    key = "lm_logits" if "gpt2" in name else "cls_feats"
    with torch.no_grad():
        return bb(b, PLAN)[key], bb(b2, PLAN)[key], report


HOSTS = [("test_vit_gpt2", dict(no_vis_prefix=True)), ("test_vit_roberta", {})]  # no prefix: vision only via routing


@pytest.mark.parametrize("preset", ROUTING_PRESETS)
@pytest.mark.parametrize("name,cfg", HOSTS, ids=[h[0] for h in HOSTS])
def test_routing_presets_route_on_the_image(name, cfg, preset):
    a, b, report = _routed_outputs(name, preset, **cfg)
    assert report.injected and (a - b).abs().max() > 1e-4


@pytest.mark.parametrize("preset", ["lora", "rt_adapter"])
@pytest.mark.parametrize("name,cfg", HOSTS, ids=[h[0] for h in HOSTS])
def test_without_routing_the_image_does_not_matter(name, cfg, preset):
    a, b, report = _routed_outputs(name, preset, **cfg)
    assert report.injected and torch.equal(a, b)


def test_routed_generate_repeats_x_v_per_beam():
    bb = _bb("test_vit_gpt2", no_vis_prefix=True)
    report = inject(bb, PRESETS.build("routing_lora_add", SMALL))
    with torch.no_grad():
        for n, p in bb.named_parameters():
            if n in report.param_names():
                p.normal_(0.0, 0.3)
    b = _batch()
    with torch.no_grad():
        beams = bb.generate_ids(b, PLAN, num_beams=3, max_new_tokens=4)
        row = bb.generate_ids({k: v[1:] for k, v in b.items()}, PLAN, num_beams=3, max_new_tokens=4)
    assert torch.equal(beams[1, :row.shape[1]], row[0])


def test_gpt2_block_adapter_is_shared_by_attention_and_mlp():
    bb = _bb("test_vit_gpt2")
    report = inject(bb, PRESETS.build("routing_adapter_add", SMALL))
    mods = {(i.site.layer, i.site.sublayer): bb.get_submodule(i.site.name) for i in report.injected}
    assert mods[(0, "attn")] is mods[(0, "ffn")] and mods[(0, "attn")] is not mods[(1, "attn")]
    assert mods[(0, "attn")].inner_skip and mods[(0, "attn")].act_name == "gelu_new"


def test_roberta_adapter_is_per_sublayer_and_replaces_the_output():
    bb = _bb("test_vit_roberta")
    report = inject(bb, PRESETS.build("routing_adapter_add", SMALL))
    mods = [bb.get_submodule(i.site.name) for i in report.injected]
    assert len({id(m) for m in mods}) == len(mods) == 2 * bb.num_layers
    assert all(not m.inner_skip and m.act_name == "gelu" for m in mods)
    bb2 = _bb("test_vit_roberta")
    inject(bb2, PRESETS.build("routing_adapter_add", dict(SMALL, routing_add_res=True)))
    assert all(bb2.get_submodule(i.site.name).inner_skip for i in report.injected)


# --- spec §6.5 at base size ----------------------------------------------------------------------------------------------
BASE = dict(vit_model="vit_base_patch16_224_in21k")
COUNTS = [  # (backbone, lm_config, preset, options, train_base, trainable, all LM-side)
    ("vit_gpt2", "gpt2", "routing_lora_add", {}, "", 4_783_104, 129_158_400),
    ("vit_gpt2", "gpt2", "routing_adapter_add", {}, "", 2_406_912, 126_809_856),
    ("vit_roberta", "roberta_base", "routing_lora_add", {}, "bias:query+bias:value", 4_737_024, 129_364_224),
    ("vit_roberta", "roberta_base", "lora", dict(lora_r=128, lora_alpha=128, lora_dropout=0.0),
     "bias:query+bias:value", 4_737_024, 129_364_224),  # the released script: plain LoRA, --freeze_ln
    ("vit_roberta", "roberta_base", "routing_lora_add", {}, "", 4_773_888, 129_364_224),
    ("vit_roberta", "roberta_base", "routing_adapter_add", dict(routing_adapter_r=64), "", 2_416_128, 127_024_896),
    ("vit_roberta", "roberta_base", "rt_adapter", dict(routing_adapter_r=64), "", 2_416_128, 127_024_896),
]


@pytest.mark.parametrize("bb_name,lm,preset,opts,train_base,trainable,total", COUNTS,
                         ids=[f"{c[0]}-{c[2]}-{c[4] or 'preset'}" for c in COUNTS])
def test_spec_6_5_counts_at_base_size(bb_name, lm, preset, opts, train_base, trainable, total):
    with torch.device("meta"):
        bb = BACKBONES.build(bb_name, dict(BASE, lm_config=lm))
        recipe = PRESETS.build(preset, opts)
        report = inject(bb, recipe)
    apply_trainable(bb, report, train_base or recipe.base_policy)
    bare = {"gpt2": 124_439_808, "roberta_base": 124_645_632}[lm]  # spec §1.2
    assert count_parameters(bb.plm) == (trainable, total) and total - report_params(bb, report) == bare
    assert count_parameters(bb.vit) == (0, 86_389_248)  # ViT-B/16-in21k with pooler, frozen, not in §6.5's "all"


def report_params(bb, report) -> int:
    params = dict(bb.named_parameters())
    return sum(params[n].numel() for n in report.param_names() if n in params)


def test_roberta_classifier_is_rts_two_layer_head():
    from vlpeft.tasks.heads import build_heads

    with torch.device("meta"):
        heads = build_heads({"loss_names": {"vqa": 1}, "vqav2_label_size": 3129}, 768)
    head = heads["vqa_classifier"]
    assert [type(m).__name__ for m in head] == ["Linear", "LayerNorm", "GELU", "Linear"]
    assert (head[0].in_features, head[0].out_features, head[3].out_features) == (768, 1536, 3129)
    n = sum(p.numel() for p in head.parameters())
    assert n == 5_993_529  # spec §1.2
    assert round(100 * (4_737_024 + n) / (129_364_224 + n), 2) == 7.93  # spec §6.5, released RoBERTa LoRA


# --- bad input ---------------------------------------------------------------------------------------------------------------
def test_bad_config_is_refused_before_building():
    with pytest.raises(ValueError, match="lm_config='test_roberta_tiny' is not a gpt2 variant"):
        BACKBONES.build("vit_gpt2", dict(vit_model="test_vit_tiny", lm_config="test_roberta_tiny"))
    with pytest.raises(ValueError, match="no_vis_prefix='yes' must be True or False"):
        BACKBONES.build("vit_gpt2", dict(vit_model="test_vit_tiny", lm_config="test_gpt2_tiny", no_vis_prefix="yes"))
    with pytest.raises(FileNotFoundError, match="vit_model='/nonexistent/vit'"):
        BACKBONES.build("vit_roberta", dict(vit_model="/nonexistent/vit", lm_config="test_roberta_tiny"))
    with pytest.raises(ValueError, match="width 768 differs from the gpt2 width 32"):
        with torch.device("meta"):
            BACKBONES.build("vit_gpt2", dict(vit_model="vit_base_patch16_224_in21k", lm_config="test_gpt2_tiny"))


def test_missing_image_names_the_key():
    bb = _bb("test_vit_roberta")
    with pytest.raises(KeyError, match=r"batch\['image'\]"):
        bb({"text_ids": torch.ones(1, 3, dtype=torch.long)}, PLAN)


# --- named configs (spec §5) ---------------------------------------------------------------------------------------------
NAMED = [  # (named config, routing on, trainable, all LM-side) — spec §6.5 rows
    ("routing_vit_gpt2_lora", True, 4_783_104, 129_158_400),
    ("routing_vit_gpt2_adapter", True, 2_406_912, 126_809_856),
    ("routing_vit_roberta_lora", True, 4_737_024, 129_364_224),
    ("routing_vit_roberta_adapter", True, 2_416_128, 127_024_896),
    ("routing_vit_roberta_lora_as_released", False, 4_737_024, 129_364_224),
    ("routing_vit_roberta_adapter_as_released", False, 2_416_128, 127_024_896),
]


@pytest.mark.parametrize("cfg_name,routed,trainable,total", NAMED, ids=[n[0] for n in NAMED])
def test_named_configs_build_the_released_runs(cfg_name, routed, trainable, total):
    from vlpeft.build import build_with_pet
    from vlpeft.config import ALL_KEYS, DEFAULTS, NAMED_CONFIGS, ex

    cfg = NAMED_CONFIGS[cfg_name]
    assert cfg_name in ex.named_configs and set(cfg) - {"seed"} <= ALL_KEYS
    assert cfg["exp_name"] == cfg_name and cfg["vit_use_pooler"] and cfg["weight_decay"] == 0.0
    lm = "gpt2" if "gpt2" in cfg_name else "roberta_base"
    # base size, random weights on the meta device; the offline vocabulary stands in for the LM's own tokenizer
    config = {**DEFAULTS, **cfg, "vit_model": "vit_base_patch16_224_in21k", "lm_config": lm,
              "tokenizer": "bert-base-uncased"}
    with torch.device("meta"):
        bb, report, _ = build_with_pet(config)
    assert count_parameters(bb.plm) == (trainable, total) and count_parameters(bb.vit)[0] == 0
    placed = [bb.get_submodule(i.site.name) for i in report.injected]
    placed = [p for m in placed for p in (m.pets() if hasattr(m, "pets") else [m])]  # a projection holds its LoRA
    routes = {m.routing for m in placed}
    assert report.injected and routes == ({"add"} if routed else {None})
    assert bb.cfg.vis_prefix  # every released script feeds the visual prefix


# --- through run.py ---------------------------------------------------------------------------------------------------------
# the RT VQA named config on the tiny test backbone (its tokenizer, 32 px images) and the synthetic data
TINY_RUN = dict(per_gpu_batchsize=16, batch_size=16, num_gpus=0, num_workers=0, vqav2_label_size=0,
                backbone="test_vit_roberta", image_size=32, max_epoch=3, learning_rate=2e-3, warmup_steps=0.1,
                max_text_len=16, tokenizer="bert-base-uncased", seed=1)


@pytest.fixture
def rt_run(sacred, arrows, tmp_path, trainer_callbacks):
    """``rt_run(**updates)``: the RT VQA named config on the tiny backbone and this module's arrows; returns the
    recorder of its training losses / trainable names and the run's result."""
    import pytorch_lightning as pl

    class _Rec(pl.Callback):
        def __init__(self):
            self.losses, self.trainable = [], []

        def on_fit_start(self, trainer, pl_module):
            self.trainable = [n for n, p in pl_module.named_parameters() if p.requires_grad]

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            self.losses.append(float(outputs["loss"]))

    def run(**updates):
        rec = _Rec()
        trainer_callbacks[:] = [rec]
        cfg = dict(TINY_RUN, data_root=str(arrows), log_dir=str(tmp_path / "result"), **updates)
        return rec, sacred("routing_vit_roberta_lora", **cfg).result

    return run


def test_routing_vit_roberta_trains_through_run_py(rt_run):
    """Routed LoRA (+ q / v biases) and the head train, the LM's other weights and the ViT stay frozen, and the
    training loss drops."""
    rec, _ = rt_run(routing_r=8, routing_alpha=8)
    assert len(rec.losses) >= 6 and all(torch.isfinite(torch.tensor(rec.losses)))
    k = 3
    assert sum(rec.losses[-k:]) / k < 0.9 * sum(rec.losses[:k]) / k, rec.losses
    assert any(n.endswith("query.lora_A") for n in rec.trainable) and any("vqa_classifier" in n for n in rec.trainable)
    assert any(n.endswith("query.bias") for n in rec.trainable)
    assert not any(".vit." in n or n.endswith(("query.weight", "key.bias", "LayerNorm.weight")) for n in rec.trainable)


def test_das_search_skips_roberta_layers_through_run_py(rt_run):
    import json

    _, result = rt_run(stage="search", search="das", pet="das", train_base="",
                       skip_num=1, das_turn=2, das_warmup_epoch=0, das_adapter_dim=8, das_skip_adapter_dim=8,
                       max_epoch=2)
    placement = json.loads(open(result["placement_path"]).read())
    assert placement["num_layers"] == 3 and len(placement["skip"]) == 1

"""The LaVIN backbone (``vlpeft/backbones/lavin.py``; issue 19 items 4 and 6).

LaVIN's trainable counts (DAS README: 3.8M / 4.2M / 4.6M / 5.0M for LaVIN-7B / DAS2 / DAS4 / DAS6), restated from the
shapes: ``adapter_proj`` 1024→128→4096 (659,584), the modality token 2×4096 (8,192), one CLIP router of width 8 per
ViT-L/14 block (24 × 20,490), one LLaMA router of width 8 per kept layer (81,930) and one skip router of width 32 per
skipped layer (278,562).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from vlpeft._protocol import LayerPlan
from vlpeft.backbones import BACKBONES
from vlpeft.backbones._clip import openai_to_hf_clip
from vlpeft.backbones._generative import pad_targets
from vlpeft.backbones.lavin import build_lavin
from vlpeft.tasks.scienceqa import answer_letter
from vlpeft.build import build_with_pet
from vlpeft.config import DEFAULTS, NAMED_CONFIGS
from vlpeft.pet import PRESETS, inject
from vlpeft.pet.trainable import apply_trainable

# LaVIN-DAS's finetuning_sqa_7b.sh / search_sqa_7b.sh as their named configs, at LLaMA-7B + CLIP ViT-L/14 shapes
# (random weights of those shapes on the meta device in place of the weights' folders; the offline vocabulary)
SHAPES_7B = dict(plm_config="llama_7b", lavin_clip_model="vit_l14_random", tokenizer=DEFAULTS["tokenizer"])


def _trainable_7b(name: str, **over) -> int:
    cfg = {**DEFAULTS, **NAMED_CONFIGS[name], **SHAPES_7B, **over}
    with torch.device("meta"):  # shapes only: nothing allocated
        # a train stage on its fixed skip list; the search stage builds every candidate's skip adapter (no plan)
        plan = None if cfg["stage"] == "search" else LayerPlan.of(cfg["skip_module"])
        bb, report, _ = build_with_pet(cfg, plan)
    return sum(p.numel() for p in bb.parameters() if p.requires_grad)


@pytest.mark.parametrize("skip, exact, readme", [
    ([], 3_781_296, 3.8),
    ([23, 19], 4_174_560, 4.2),  # BoolQ's DAS2 list (finetuning_boolq_7b.sh comments)
    ([24, 27, 25, 22], 4_567_824, 4.6),  # ScienceQA DAS4 (evaluate_sqa_7b.sh)
    ([20, 13, 28, 8, 12, 17], 4_961_088, 5.0),  # BoolQ's DAS6 list
])
def test_lavin_7b_trainable_counts_match_the_das_readme(skip, exact, readme):
    n = _trainable_7b("das_train_lavin_sqa", skip_module=skip)
    assert n == exact
    assert round(n / 1e6, 1) == readme


def test_lavin_7b_search_stage_trains_both_adapters_of_every_layer():
    """LaVIN-DAS's search keeps adapter_attn and replaced_adapter on all 32 layers: 3,781,296 + 32 × 278,562."""
    assert _trainable_7b("das_search_lavin_sqa") == 12_695_280


def test_answer_letter_extraction_as_lavin():
    assert answer_letter("The answer is B. Because ...") == "B"
    assert answer_letter("I think (C). maybe") == "C"  # the fallback pattern: first A-E followed by anything
    assert answer_letter("no letter here") == "FAILED"


# --- parity with LaVIN-DAS's own modules -------------------------------------------------------------------------
# tests/fixtures/lavin_reference.safetensors: written by scripts/lavin_reference.py, which runs the original
# das/mm_model.py (Transformer: insert_image_embeds, modality token, mask, loss), das/mm_adapter.py (set_MMAdapter
# 'attn', set_Clip_Adapter 'router', the skip path) and clip/model.py (VisionTransformer: CLS after every 4th block)
# in fp64 on a tiny LLaMA (d 32, 3 layers, 4 heads, FFN 96, vocab 120) + tiny CLIP (width 16, 8 blocks, 2 heads,
# 32 px / 8), every weight moved off its init, layer 1 skipped. Stored: the weights (fp16 values, exact), the images,
# the loss, the logits predicting each answer token, and the image tokens after adapter_proj.
REF = Path(__file__).parent / "fixtures" / "lavin_reference.safetensors"
PROMPTS, ANSWERS = [[1, 11, 12, 13, 14], [1, 21, 22, 23]], [[31, 32, 33, 2], [41, 42, 2]]
TINY = dict(
    plm_config=dict(vocab_size=120, hidden_size=32, intermediate_size=96, num_hidden_layers=3, num_attention_heads=4,
                    num_key_value_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6, bos_token_id=1,
                    eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
    lavin_clip_model=dict(hidden_size=16, intermediate_size=64, num_hidden_layers=8, num_attention_heads=2,
                          image_size=32, patch_size=8, hidden_act="quick_gelu", layer_norm_eps=1e-5),
    lavin_clip_every=4, lavin_hidden_proj=16, lavin_visual_adapter_dim=4)


def _meta_to_hf_rotary(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Meta's LLaMA rotates adjacent pairs (2k, 2k+1) of each head, Hugging Face's the two halves (k, k + h/2):
    reorder each head's output rows from pair order to half order (as HF's conversion script does)."""
    out, inp = w.shape
    return w.reshape(heads, out // heads // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def _to_ours(ref: dict[str, torch.Tensor], heads: int) -> dict[str, torch.Tensor]:
    w = {k[2:]: v.double() for k, v in ref.items() if k.startswith("w.")}
    out: dict[str, torch.Tensor] = {}
    clip = {"visual." + k[len("backbone.visual."):]: v for k, v in w.items()
            if k.startswith("backbone.visual.") and ".adapter_attn." not in k}
    _, hf = openai_to_hf_clip(clip)
    out.update({"clip." + k: v for k, v in hf.items()})
    names = {"attention.wq": "self_attn.q_proj", "attention.wk": "self_attn.k_proj", "attention.wv": "self_attn.v_proj",
             "attention.wo": "self_attn.o_proj", "feed_forward.w1": "mlp.gate_proj", "feed_forward.w3": "mlp.up_proj",
             "feed_forward.w2": "mlp.down_proj", "attention_norm": "input_layernorm",
             "ffn_norm": "post_attention_layernorm"}
    for k, v in w.items():
        parts = k.split(".")
        if k.startswith("backbone.visual.transformer.resblocks.") and ".adapter_attn." in k:
            out[f"clip_adapters.{parts[4]}." + ".".join(parts[6:])] = v
        elif k.startswith(("adapter_proj.", "adapter_modality_embedding.")):
            out[k] = v
        elif k == "tok_embeddings.weight":
            out["plm.llama.embed_tokens.weight"] = v
        elif k == "norm.weight":
            out["plm.llama.norm.weight"] = v
        elif k == "output.weight":
            out["lm_head.weight"] = v
        elif k.startswith("layers."):
            i, rest = parts[1], ".".join(parts[2:])
            if rest.startswith("adapter_attn."):
                out[f"plm.in_seq.{2 * int(i)}." + rest[len("adapter_attn."):]] = v
            elif rest.startswith("replaced_adapter."):
                out[f"skip_adapters.{i}.0.adapter." + rest[len("replaced_adapter."):]] = v
            else:
                mod, kind = rest.rsplit(".", 1)
                if mod in ("attention.wq", "attention.wk"):
                    v = _meta_to_hf_rotary(v, heads)
                out[f"plm.llama.layers.{i}.{names[mod]}.{kind}"] = v
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, torch.Tensor]:
    return load_file(str(REF))


def _ours(reference, batch0: bool):
    bb = build_lavin({**TINY, "lavin_clip_route_batch0": batch0})
    inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4, "das_llama_router": True}))
    bb = bb.double().eval()
    missing, unexpected = bb.load_state_dict(_to_ours(reference, 4), strict=False)
    assert not unexpected and not [k for k in missing if not k.endswith("position_ids")]
    bb._prefix = {"img": [5, 6], "nonimg": [5, 6, 7, 8]}  # the token ids the reference ran with
    return bb


def _batch(reference, rows: list[int], has_image: list[int]) -> dict[str, torch.Tensor]:
    ps, ans = [PROMPTS[r] for r in rows], [ANSWERS[r] for r in rows]
    ids = torch.zeros(len(rows), max(map(len, ps)), dtype=torch.long)
    for b, p in enumerate(ps):
        ids[b, :len(p)] = torch.tensor(p)
    lengths = torch.tensor([len(p) for p in ps])
    return {"text_ids": ids, "text_masks": (torch.arange(ids.shape[1])[None] < lengths[:, None]).long(),
            "target_ids": pad_targets(ans), "image": reference["images"].double()[rows],
            "has_image": torch.tensor(has_image)}


def _check(out, reference, loss_key: str, logits: dict[int, str]) -> None:
    # lm_loss is computed in fp32 (vlpeft.backbones._generative.lm_loss); the logits stay fp64
    assert torch.allclose(out["lm_loss"].double().reshape(1), reference[loss_key], rtol=1e-6, atol=1e-6)
    for b, k in logits.items():
        n = len(reference[k])
        assert torch.allclose(out["lm_logits"][b, :n], reference[k], rtol=1e-6, atol=1e-6), k


def test_lavin_equals_the_original_modules_with_a_skipped_layer(reference):
    """One sample with an image ("Image: " + CLIP tokens after BOS), one without ("Image: N/A"); layer 1 skipped
    (its skip router on attention_norm(x)); the other layers' routers on the modality token: loss and the logits of
    every answer token as LaVIN-DAS computes them. Each token routes on itself in CLIP (default) = the original's
    result for batch item 0."""
    bb = _ours(reference, batch0=False)
    plan = LayerPlan.of([1])
    with torch.no_grad():
        _check(bb(_batch(reference, [0, 1], [1, 0]), plan), reference, "pair_loss",
               {0: "pair_logits_0", 1: "pair_logits_1"})
        _check(bb(_batch(reference, [0], [1]), plan), reference, "single_loss", {0: "single_logits_0"})
        tokens = bb.image_tokens(reference["images"].double())
    assert torch.allclose(tokens[0], reference["pair_image_tokens"][0], rtol=1e-6, atol=1e-6)
    # the original routes sample 1's CLIP tokens on sample 0's (sequence-first x[:, 0]); each token on itself here
    assert not torch.allclose(tokens[1], reference["pair_image_tokens"][1], atol=1e-3)


def test_lavin_clip_route_batch0_restores_the_original_batch_routing(reference):
    bb = _ours(reference, batch0=True)
    with torch.no_grad():
        tokens = bb.image_tokens(reference["images"].double())
        _check(bb(_batch(reference, [0, 1], [1, 1]), LayerPlan.of([1])), reference, "both_loss", {1: "both_logits_1"})
    assert torch.allclose(tokens, reference["both_image_tokens"], rtol=1e-6, atol=1e-6)


# --- behaviour on the tiny entry ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    bb = BACKBONES.build("test_lavin")
    inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4, "das_llama_router": True}))
    with torch.no_grad():
        for p in bb.parameters():  # off the init: zero up-projections would make every adapter the identity
            p.add_(0.05 * torch.randn_like(p))
    return bb.eval()


def _text_batch(bb, prompts: list[str], answers: list[str] | None = None) -> dict[str, torch.Tensor]:
    enc = bb.tokenizer(prompts, padding=True, return_tensors="pt")
    batch = {"text_ids": enc["input_ids"], "text_masks": enc["attention_mask"]}
    if answers is not None:
        batch["target_ids"] = pad_targets([bb.tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers])
    return batch


def test_greedy_generation_is_the_argmax_of_its_own_teacher_forced_logits(tiny):
    """Each generated token is the argmax of the next-token logits given the prompt and the tokens before it — the
    loss path and the generation path build the same sequence (modality token, BOS, prefix, image tokens, prompt)."""
    batch = {**_text_batch(tiny, ["what is shown here", "is it red"]), "image": torch.randn(2, 3, 32, 32),
             "has_image": torch.tensor([1, 0])}
    with torch.no_grad():
        ids = tiny.generate_ids(batch, LayerPlan.of([2]), max_new_tokens=5)
        logits = tiny({**batch, "target_ids": ids}, LayerPlan.of([2]))["lm_logits"]
    assert ids.shape == (2, 5)
    assert torch.equal(logits.argmax(-1), ids)
    text = tiny(batch, LayerPlan.of([2]), generate=True, max_new_tokens=5)["generated"]
    assert text == tiny.decode(ids)


def test_has_image_selects_the_image_tokens_or_image_na(tiny):
    """A sample without an image reads "Image: N/A" and modality row 0 whatever pixels the batch carries; without an
    ``image`` key every sample is image-less."""
    batch = _text_batch(tiny, ["what is shown here"], ["a cat"])
    with torch.no_grad():
        none = tiny(batch, LayerPlan())["lm_loss"]
        pixels = torch.randn(1, 3, 32, 32)
        off = tiny({**batch, "image": pixels, "has_image": torch.tensor([0])}, LayerPlan())["lm_loss"]
        on = tiny({**batch, "image": pixels}, LayerPlan())["lm_loss"]
    assert torch.equal(none, off) and not torch.allclose(on, off)


def test_text_only_lavin_is_the_plain_language_model():
    """``lavin_clip_model=''`` is LaVIN-DAS's PL_Transformer: no CLIP, no modality token, no prefix — the answer
    logits are the causal LM's over prompt + answer (a freshly injected das_llama is the identity)."""
    torch.manual_seed(0)
    bb = build_lavin({"plm_config": "test_llama_tiny_bertvocab", "lavin_clip_model": ""}).eval()
    assert bb.clip is None
    assert not any(n.startswith(("adapter_proj", "adapter_modality")) for n, _ in bb.named_parameters())
    inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4}))
    batch = _text_batch(bb, ["is the sky blue"], ["yes it is"])
    full = torch.cat([batch["text_ids"], batch["target_ids"]], dim=1)
    with torch.no_grad():
        ours = bb(batch, LayerPlan())["lm_logits"]
        hf = bb.lm_head(bb.plm.llama(input_ids=full).last_hidden_state)
    n, t = batch["text_ids"].shape[1], batch["target_ids"].shape[1]
    assert torch.allclose(ours, hf[:, n - 1:n - 1 + t], atol=1e-5)


def test_bad_lavin_settings_are_refused_before_building():
    with pytest.raises(ValueError, match=r"lavin_visual_adapter='repadapter' must be one of \('router', 'none'\)"):
        build_lavin({**TINY, "lavin_visual_adapter": "repadapter"})
    with pytest.raises(ValueError, match=r"lavin needs a LLaMA: set tokenizer=<LLaMA folder>"):
        build_lavin({"lavin_clip_model": "test_clip_tiny"})
    with pytest.raises(FileNotFoundError, match=r"lavin_clip_model='/no/such/ViT-L-14.pt': .* LaVIN uses OpenAI's"):
        build_lavin({"plm_config": "test_llama_tiny_bertvocab", "lavin_clip_model": "/no/such/ViT-L-14.pt"})
    with pytest.raises(ValueError, match=r"lavin_clip_every=0 must be a positive int"):
        build_lavin({**TINY, "lavin_clip_every": 0})


def test_lm_loss_training_learns_to_read_the_image():
    """The cheap form of scripts/lavin_learns_synthetic.py: the image is a solid colour, the prompt is the same for
    every sample, the answer letter names the colour (chance 1/4). Training only LaVIN's trainables (adapter_proj, the
    modality token, CLIP's routers, the LLaMA routers) on the answer's LM loss lifts the letter accuracy well above
    chance: the image reaches the answer through adapter_proj and the routers. (Seeds 0-3 reach 0.75-1.0.)"""
    torch.manual_seed(0)
    bb = build_lavin(dict(plm_config="test_llama_tiny", lavin_clip_model="test_clip_tiny", lavin_clip_every=1,
                          lavin_hidden_proj=32, lavin_visual_adapter_dim=8))
    with torch.no_grad():  # a random head reads an RMS-normed state: scaled up so that it can be confident at all
        bb.lm_head.weight.mul_(20.0)
    bb._prefix = {"img": [5, 6], "nonimg": [5, 6, 7, 8]}  # test_llama_tiny has no tokenizer of its own
    report = inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 8, "das_llama_router": True}))
    names = set(apply_trainable(bb, report, "none", LayerPlan()))
    params = [p for n, p in bb.named_parameters() if n in names]
    colours = torch.tensor([(1., -1, -1), (-1, 1., -1), (-1, -1, 1.), (1., 1., -1)])
    letters = torch.tensor([40, 41, 42, 43])
    g = torch.Generator().manual_seed(0)

    def batch(n):
        ys = torch.randint(0, 4, (n,), generator=g)
        img = colours[ys][:, :, None, None].expand(n, 3, 32, 32) + 0.3 * torch.randn(n, 3, 32, 32, generator=g)
        ids = torch.tensor([[1, 11, 12, 13, 14, 15]]).expand(n, -1)
        return {"text_ids": ids, "text_masks": torch.ones_like(ids), "image": img,
                "target_ids": pad_targets([[int(letters[y]), 2] for y in ys])}, ys

    def accuracy():
        bb.eval()
        b, ys = batch(128)
        with torch.no_grad():
            logits = bb(b, LayerPlan())["lm_logits"][:, 0, letters]
        bb.train()
        return float((logits.argmax(-1) == ys).float().mean())

    before = accuracy()
    opt = torch.optim.AdamW(params, lr=1e-2)
    losses = []
    for _ in range(40):
        loss = bb(batch(16)[0], LayerPlan())["lm_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    after = accuracy()
    assert losses[-1] < 0.5 * losses[0]
    assert after >= 0.6 and after >= before + 0.3, (before, after)

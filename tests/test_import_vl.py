"""Released VL-PET / VL-Adapter checkpoints (spec §8.7) onto our VL-BART / VL-T5 with the preset injected.

A model A (PET injected, every trainable value moved) is written out in the original repos' key layout — the
backbone and the visual projector under VL-BART's ``model.encoder…`` / VL-T5's ``encoder.block…`` names, the PET
tensors under ``attn_adapter_multihead_down.{h}``, ``encoder_attn_adapter_gating_large_x_down``,
``attn_value_parallel_adapter.adapters.{task}.down_sampler``, ``attn_adapter.adapters.{task}`` (VL-T5:
``block.{ℓ}.layer.{i}.{attn|enc_attn|ff}_adapter``; compacters: ``down_sampler.{phm_rule,W,b}``),
``q_proj.lora_As.{task}``,
``prompt_modules.prompts.{task}.prefix_embedding.{i}`` (single modules saved under every task key) — and imported into
a fresh model B (other seeds): nothing unexpected, nothing missing, and B computes exactly what A computes.
"""

from __future__ import annotations

import pytest
import torch

import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.pet import PRESETS, inject
from vlpeft.pet.import_released import import_released

TASKS = ("vqa", "gqa", "nlvr", "caption")
OPTS = dict(vl_pet_down_dim=8, vl_pet_gate_dim=4, vl_pet_vpa_dim=8, adapter_reduction=4, lora_r=4, lora_alpha=8,
            prompt_len=3, prompt_mid=16)
OUT_SEQ = {("encoder", "attn"): "attn_adapter", ("encoder", "ffn"): "ff_adapter", ("decoder", "attn"): "self_attn_adapter",
           ("decoder", "cross_attn"): "enc_attn_adapter", ("decoder", "ffn"): "ff_adapter"}

# VL-T5 (my_transformers/modeling_t5.py): T5LayerSelfAttention holds ``attn_adapter`` in both stacks,
# T5LayerCrossAttention ``enc_attn_adapter``, T5LayerFF ``ff_adapter``; block.layer = [self, (cross,) ff]
T5_OUT_SEQ = {("encoder", "attn"): (0, "attn_adapter"), ("encoder", "ffn"): (1, "ff_adapter"),
              ("decoder", "attn"): (0, "attn_adapter"), ("decoder", "cross_attn"): (1, "enc_attn_adapter"),
              ("decoder", "ffn"): (2, "ff_adapter")}


def _released_names(bart: bool, module: str, site, rel: str) -> list[str]:
    """The original keys of our parameter ``rel`` of ``module`` at ``site`` (one per task for task-keyed ones)."""
    ell, stack, sub = site.meta["stack_layer"], site.role, site.sublayer
    short = "attn" if sub == "attn" else "ff"
    pre = f"model.encoder.layers.{ell}." if bart else f"encoder.block.{ell}.layer.{0 if sub == 'attn' else 1}."
    part, _, wb = rel.rpartition(".")
    if module == "multihead_adapter":
        return [pre + (f"{short}_adapter_multihead_down.{part.split('.')[1]}.{wb}" if part.startswith("down.")
                       else f"{short}_adapter_multihead_up.{wb}")]
    if module == "gate":
        return [pre + f"encoder_{short}_adapter_gating_large_x_{part}.{wb}"]
    sampler = {"down": "down_sampler", "up": "up_sampler"}
    if module == "bottleneck" and site.anchor == "proj:v":  # the decoder's value adapter
        host = (f"model.decoder.layers.{ell}.encoder_attn." if bart
                else f"decoder.block.{ell}.layer.1.EncDecAttention.")
        return [f"{host}attn_value_parallel_adapter.adapters.{t}.{sampler[part]}.{wb}" for t in TASKS]
    if module in ("bottleneck", "compacter"):  # VL-Adapter: Linear samplers or PHM samplers (phm_rule, W, b)
        if bart:
            return [f"model.{stack}.layers.{ell}.{OUT_SEQ[(stack, sub)]}.adapters.{t}.{sampler[part]}.{wb}"
                    for t in TASKS]
        i, mod = T5_OUT_SEQ[(stack, sub)]
        return [f"{stack}.block.{ell}.layer.{i}.{mod}.adapters.{t}.{sampler[part]}.{wb}" for t in TASKS]
    if module == "lora":
        att = "self_attn" if sub == "attn" else "encoder_attn"
        proj = site.anchor.split(":")[1]
        return [f"model.{stack}.layers.{ell}.{att}.{proj}_proj.lora_{rel[-1]}s.{t}" for t in TASKS]
    if module == "prompt":
        return [f"{'model.' if bart else ''}encoder.prompt_modules.prompts.{t}.{rel}" for t in TASKS]
    raise AssertionError(module)


def _model(name, preset, seed):
    torch.manual_seed(seed)
    bb = BACKBONES.build(name)
    torch.manual_seed(seed + 100)
    report = inject(bb, PRESETS.build(preset, OPTS))
    return bb.eval(), report  # after injection: the modules' dropout (LoRA 0.1) off too


def _released(bb, report) -> dict[str, torch.Tensor]:
    """``bb`` as the original repos save it: backbone + projector by their names, PET keys in their layout."""
    pet = report.param_names()
    sd = {k[len("seq2seq."):]: v.clone() for k, v in bb.state_dict().items()
          if k.startswith("seq2seq.") and k not in pet}
    own = dict(bb.named_parameters(remove_duplicate=False))
    for inj in report.injected:
        for n in inj.param_names:
            for k in _released_names(bb.family == "bart", inj.module, inj.site, n[len(inj.site.name) + 1:]):
                sd[k] = own[n].detach().clone()
    return sd


def _batch():
    g = torch.Generator().manual_seed(0)
    masks = torch.ones(2, 5, dtype=torch.long)
    masks[1, -1] = 0
    return {"text_ids": torch.randint(1000, 2000, (2, 5), generator=g), "text_masks": masks,
            "vis_feats": torch.randn(2, 3, 32, generator=g), "vis_pos": torch.rand(2, 3, 4, generator=g).sort(-1)[0],
            "target_ids": torch.randint(1000, 2000, (2, 3), generator=g)}


CASES = [("test_vl_bart", "vl_pet_large"), ("test_vl_t5", "vl_pet_large"), ("test_vl_bart", "vl_adapter"),
         ("test_vl_t5", "vl_adapter"), ("test_vl_bart", "compacter"), ("test_vl_t5", "compacter"),
         ("test_vl_bart", "lora"), ("test_vl_bart", "prompt"), ("test_vl_t5", "prompt")]


@pytest.mark.parametrize("name,preset", CASES)
def test_released_checkpoint_reproduces_the_model(name, preset):
    a, rep_a = _model(name, preset, 0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # trained values: every parameter moves off its init (LoRA's B = 0 too)
        for p in a.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    sd = _released(a, rep_a)
    assert any(".visual_embedding." in k for k in sd) and not any(k.startswith("seq2seq.") for k in sd)
    b, rep_b = _model(name, preset, 1)
    batch = _batch()
    with torch.no_grad():
        want = a(batch, LayerPlan())["lm_logits"]
        assert not torch.equal(b(batch, LayerPlan())["lm_logits"], want)
        rep = import_released(b, sd, rep_b, with_backbone=True)
        got = b(batch, LayerPlan())["lm_logits"]
    assert rep.unexpected == [] and rep.missing == []
    assert torch.equal(got, want)
    if preset != "vl_pet_large" or name != "test_vl_t5":  # task-keyed copies: one loaded, the others reported
        assert any("one copy of 4 equal keys" in x for x in rep.adapted)


def test_partial_checkpoint_reports_what_is_missing():
    a, rep_a = _model("test_vl_t5", "vl_pet_large", 0)
    sd = {k: v for k, v in _released(a, rep_a).items() if "gating" not in k}
    b, rep_b = _model("test_vl_t5", "vl_pet_large", 1)
    rep = import_released(b, sd, rep_b, with_backbone=True)
    gates = sorted(n for i in rep_b.injected if i.module == "gate" for n in i.param_names)
    assert gates and sorted(rep.missing) == gates and rep.unexpected == []
    # without with_backbone the backbone and projector keys are reported, not loaded
    rep = import_released(b, sd, rep_b)
    assert "encoder.visual_embedding.img_order_embedding.weight" in rep.unexpected
    assert not any("gating" in k or "multihead" in k for k in rep.unexpected)


_HYPER_INV = {"layer_embeddings.weight": "layer_id_embeddings.weight", "task_ln.weight": "LayerNorm.weight",
              "task_ln.bias": "LayerNorm.bias"}
_BLOCK = {"attn": "self_attention", "cross_attn": "cross_attention", "ffn": "feed_forward"}


def _hyper_released_key(stack: str, rel: str) -> str:
    """The VL-Adapter key of our HyperNet parameter ``rel`` (``adapters/adapter_hypernetwork.py`` names)."""
    if rel in _HYPER_INV:
        part = _HYPER_INV[rel]
    elif rel.startswith("task_hypernet."):
        part = "task_hypernet.task_embeding_generator." + rel[len("task_hypernet."):]
    else:
        _, block, gen, wb = rel.split(".")
        side, kind = gen.split("_")
        part = f"{_BLOCK[block]}_{side}_sampler_hyper_net.{'weight' if kind == 'w' else 'bias'}_generator.0.{wb}"
    return f"model.{stack}.adapter_layers_hyper_net.{part}"


def test_released_hyperformer_generators_and_task_embeddings_load():
    """VL-Adapter's Hyperformer keys (one generator per stack, shared task embeddings; ``nlvr`` → ``nlvr2``) load into
    our HyperNet: no unexpected or missing key, the outputs equal the source model's for every task, and the adapter
    weights our HyperNet generates equal the original formula computed from the released tensors
    (``e = LN(task_hypernet([t; l]))``, down = ``weight_generator(e).view(r, d)``, up = ``….view(d, r)``)."""
    from vlpeft.pet.context import pet_context

    opts = dict(OPTS, hyper_task_dim=8, hyper_hidden=6, hyper_proj_dim=4, datasets=["vqa", "gqa", "nlvr2", "caption"])

    def model(seed):
        torch.manual_seed(seed)
        bb = BACKBONES.build("test_vl_bart")
        torch.manual_seed(seed + 100)
        return bb.eval(), inject(bb, PRESETS.build("hyperformer", opts))

    a, rep_a = model(0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():  # trained values
        for p in a.parameters():
            p.add_(0.02 * torch.randn(p.shape, generator=g))
    own = dict(a.named_parameters(remove_duplicate=False))
    pet = set(rep_a.param_names())
    sd = {k[len("seq2seq."):]: v.clone() for k, v in a.state_dict().items() if k.startswith("seq2seq.") and k not in pet}
    seen = set()
    for inj in rep_a.injected:
        for n in inj.param_names:
            if id(own[n]) in seen:
                continue
            seen.add(id(own[n]))
            if ".hypernet." in n:
                sd[_hyper_released_key(inj.site.role, n.split(".hypernet.", 1)[1])] = own[n].detach().clone()
            else:  # task embeddings
                task = n.rsplit(".", 1)[1]
                sd[f"model.shared_task_embed.task_to_embeddings.{'nlvr' if task == 'nlvr2' else task}"] = own[n].detach()
    b, rep_b = model(1)
    rep = import_released(b, sd, rep_b, with_backbone=True)
    assert rep.unexpected == [] and rep.missing == []
    batch = _batch()
    with torch.no_grad():
        for task in ("vqa", "nlvr2"):
            with pet_context(task=task):
                assert torch.equal(b(batch, LayerPlan())["lm_logits"], a(batch, LayerPlan())["lm_logits"])
    # the original formula, from the released tensors alone (encoder, layer 1, FFN block)
    enc = "model.encoder.adapter_layers_hyper_net."
    t, lemb = sd["model.shared_task_embed.task_to_embeddings.nlvr"], sd[enc + "layer_id_embeddings.weight"][1]
    h = torch.relu(torch.nn.functional.linear(torch.cat([t, lemb]), sd[enc + "task_hypernet.task_embeding_generator.0.weight"],
                                              sd[enc + "task_hypernet.task_embeding_generator.0.bias"]))
    e = torch.nn.functional.linear(h, sd[enc + "task_hypernet.task_embeding_generator.2.weight"],
                                   sd[enc + "task_hypernet.task_embeding_generator.2.bias"])
    e = torch.nn.functional.layer_norm(e, e.shape, sd[enc + "LayerNorm.weight"], sd[enc + "LayerNorm.bias"],
                                     eps=1e-6)  # the original controller's layer_norm_epsilon
    gen = enc + "feed_forward_down_sampler_hyper_net."
    down = torch.nn.functional.linear(e, sd[gen + "weight_generator.0.weight"], sd[gen + "weight_generator.0.bias"])
    net = next(m.hypernet for m in b.modules() if hasattr(m, "hypernet") and m.block_type == "ffn")
    w_d, _, _, _ = net.weights(b_task := dict(b.named_parameters(remove_duplicate=False))[
        next(n for n in rep_b.param_names() if n.endswith("task_to_embeddings.nlvr2"))], 1, "ffn")
    torch.testing.assert_close(w_d, down.view(net.r, net.d), rtol=1e-6, atol=1e-6)
    assert torch.equal(b_task, t)



@pytest.mark.parametrize("name", ["test_vl_t5", "test_vl_bart"])
def test_released_compacter_is_the_original_phm_formula(name):
    """A released VL-Adapter compacter (``…{down,up}_sampler.{phm_rule,W,b}``; T5: ``decoder.block.{ℓ}.layer.1.
    enc_attn_adapter…``) imported: the adapter at the decoder's cross-attention output computes, from the released
    tensors alone, ``z + gelu_new(z H_d + b_d) H_u + b_u`` with ``H = Σ_i kron(C_i, S_i)``."""
    import torch.nn.functional as F

    a, rep_a = _model(name, "compacter", 0)
    g = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in a.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    sd = _released(a, rep_a)
    b, rep_b = _model(name, "compacter", 1)
    rep = import_released(b, sd, rep_b)
    assert rep.missing == [] and rep.loaded == 5 * 2 * 6  # 5 sublayer kinds × 2 layers × (rule, S, b) × 2 samplers
    pre = ("model.decoder.layers.1.enc_attn_adapter" if name == "test_vl_bart"
           else "decoder.block.1.layer.1.enc_attn_adapter") + ".adapters.gqa."

    def phm(s):
        c, w = sd[pre + s + ".phm_rule"], sd[pre + s + ".W"]
        return sum(torch.kron(c[i], w[i]) for i in range(c.shape[0])), sd[pre + s + ".b"]

    (hd, bd), (hu, bu) = phm("down_sampler"), phm("up_sampler")
    z = torch.randn(2, 3, hd.shape[0], generator=g)
    want = z + F.gelu(z @ hd + bd, approximate="tanh") @ hu + bu
    inj = next(i for i in rep_b.injected if i.site.role == "decoder" and i.site.sublayer == "cross_attn"
               and i.site.meta["stack_layer"] == 1 and i.site.anchor == "out_seq")
    module = b.get_submodule(next(n for n in inj.param_names if n.endswith(".down.phm_rule"))[:-len(".down.phm_rule")])
    with torch.no_grad():
        torch.testing.assert_close(module(z), want, rtol=1e-5, atol=1e-6)

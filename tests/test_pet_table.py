"""Every tiny backbone × a representative preset list (issue 9, spec §8.6 items 3–6): injection works or is refused
with a ``PetError`` (which pairs are refused is asserted), the trainable set is exactly injected ∪ policy, a
save → load into a fresh copy gives identical outputs, and presets that promise identity at init (LoRA's B = 0,
IA3's ones, no modules) give exactly the bare backbone's output. Plus: the ``out_par`` / ``gate`` sites compose in
the fixed order (sequential, then parallel deltas reading the sublayer input X, then gates G(X, Y)) on ViLT and on
CLIP+BERT/T5/LLaMA, ``kind:scope`` base policies on every backbone, and the per-task context of the Lightning module.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from helpers import backbone_batch as _any_batch
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.checkpoint import load_state, trainable_state
from vlpeft.pet import PRESETS, inject
from vlpeft.pet._base import PetError, Recipe
from vlpeft.pet._sites_hf import ZooSpec
from vlpeft.pet.context import current_task
from vlpeft.pet.trainable import apply_trainable
from vlpeft.pet.unfreeze import unfreeze_params

NAMES = BACKBONES.names("test_*")
PRESET_LIST = ("das", "dvp_adapter", "none", "lora", "ia3", "vl_adapter", "compacter", "vl_pet_large", "bitfit")
# small widths so every preset fits the tiny models (no hard-coded model widths: reductions and ranks only)
OPTIONS = dict(das_adapter_dim=8, das_skip_adapter_dim=12, lora_r=4, lora_alpha=8, adapter_reduction=4,
               vl_pet_down_dim=8, vl_pet_gate_dim=8, vl_pet_vpa_dim=8, datasets=["vqa"])
# (backbone, preset) pairs whose recipe matches no site of the backbone
METERS = [n for n in NAMES if BACKBONES.get(n).meta.get("family") == "meter"]  # zoo sites on the fusion layers only
REFUSED = {(m, "dvp_adapter") for m in METERS} | {
    ("test_vilt", "dvp_adapter"), ("test_clip_llama", "vl_pet_large"),
    ("test_vit_gpt2", "dvp_adapter"), ("test_vit_roberta", "dvp_adapter"),  # DVP's adapters: BERT / T5 / LLaMA only
    ("test_vit_gpt2", "vl_pet_large"),  # GPT-2 is a decoder without cross-attention: no VL-PET site
    ("test_vl_bart", "dvp_adapter"), ("test_vl_bart_video", "dvp_adapter"), ("test_plm_llama", "vl_pet_large"),
    ("test_lavin", "vl_pet_large")}  # LaVIN's LLaMA: a decoder without cross-attention
# backbones with decoder cross-attention
DECODER_XATTN = {"test_clip_t5", "test_plm_t5", "test_vl_bart", "test_vl_bart_video", "test_vl_t5"}
IDENTITY = {"none", "bitfit", "lora", "ia3"}  # B = 0, ones, no modules: exactly the bare backbone at init
NOT_IDENTITY = {"vl_adapter", "compacter", "vl_pet_large"}  # legacy_bart N(0, 0.02), PHM C ~ N(0, 0.01), G ≈ 0.5




def _plan(bb) -> LayerPlan:
    return LayerPlan.of((), 0 if bb.candidates().insert else None)


def _bare(name: str):
    torch.manual_seed(0)
    return BACKBONES.build(name).eval()


def _injected(name: str, preset: str, pet_seed: int = 0):
    bb = _bare(name)
    recipe = PRESETS.build(preset, OPTIONS)
    torch.manual_seed(100 + pet_seed)
    report = inject(bb, recipe)
    policy = recipe.base_policy if bb.knows_policy(recipe.base_policy) else "none"  # as vlpeft.build does
    names = apply_trainable(bb, report, policy)
    return bb.eval(), report, policy, names


def _feats(bb, batch) -> torch.Tensor:
    """``cls_feats``, or a generative backbone's ``lm_logits`` (its batch carries ``target_ids``, see ``_batch``)."""
    with torch.no_grad():
        out = bb(batch, _plan(bb))
    return out["lm_logits"] if "generate" in bb.capabilities else out["cls_feats"]


def _batch(bb) -> dict:
    batch = _any_batch(bb)
    if "generate" in bb.capabilities:
        batch["target_ids"] = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(1))
    return batch


@pytest.mark.parametrize("preset", PRESET_LIST)
@pytest.mark.parametrize("name", NAMES)
def test_preset_table(name, preset):
    if (name, preset) in REFUSED:
        with pytest.raises(PetError, match=rf"pet={preset}: .*{type(_bare(name)).__name__}"):
            _injected(name, preset)
        return
    a, report, policy, names = _injected(name, preset)
    recipe_modules = {s.module for s in report.recipe.modules}
    assert {i.module for i in report.injected} <= recipe_modules
    assert bool(report.injected) == bool(recipe_modules)
    if preset == "vl_pet_large":  # the value adapter needs decoder cross-attention: CLIP+T5 only
        placed = {i.module for i in report.injected}  # (unmatched also lists the other family's specs)
        assert ("bottleneck" in set(report.unmatched) - placed) == (name not in DECODER_XATTN)
        assert {i.site.anchor for i in report.injected} >= {"out_seq", "gate"}

    # trainable set = injected ∪ policy, exactly
    base = {n for n, _ in a.base_trainable(policy)}
    assert set(names) == report.param_names() | base
    assert {n for n, p in a.named_parameters() if p.requires_grad} == report.param_names() | base
    params = dict(a.named_parameters())
    for inj in report.injected:  # every reported parameter exists and lives under its site's registration name
        assert inj.param_names and all(n in params and n.startswith(inj.site.name + ".") for n in inj.param_names)

    # identity at init where the preset promises it
    batch = _batch(a)
    bare = _feats(_bare(name), batch)
    y0 = _feats(a, batch)
    # das on CLIP+PLM places only skip adapters, which an empty plan does not run
    perturbs = preset in NOT_IDENTITY or (preset == "das" and (name == "test_vilt" or name in METERS))
    if preset in IDENTITY:
        assert torch.equal(y0, bare)
    elif perturbs:
        assert not torch.equal(y0, bare)

    # save → load into a fresh copy (other PET init) gives identical outputs, after the trained values moved
    if not names:
        return
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for n, p in a.named_parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn(p.shape, generator=g))
    y1 = _feats(a, batch)
    # the trainable parameters are on the compute path (unless all of them are skip adapters, which an empty plan
    # does not run: das on the text-only plm backbone)
    on_path = bool(base) or any(i.site.anchor != "skip" for i in report.injected)
    if on_path:
        assert not torch.equal(y1, y0)
    b, _, _, _ = _injected(name, preset, pet_seed=1)
    state = trainable_state(a)
    fresh = trainable_state(b)
    assert set(fresh) == set(state) and any(not torch.equal(fresh[k], v) for k, v in state.items())
    if on_path:
        assert not torch.equal(_feats(b, batch), y1)
    load = load_state(b, state, "trainable.safetensors", "test")
    assert load.unexpected == [] and load.loaded == len(state)
    assert torch.equal(_feats(b, batch), y1)


# --- the fixed order at a site: sequential, then out_par(X), then gate G(X, Y) ---------------------------------------
class _Seq(nn.Module):
    def forward(self, h):
        self.h, self.out = h, 2.0 * h
        return self.out


class _Par(nn.Module):
    def forward(self, x):
        self.x, self.out = x, 0.5 * x
        return self.out


class _Gate(nn.Module):
    def forward(self, x, y):
        self.x, self.y, self.out = x, y, torch.sigmoid(x.mean(-1, keepdim=True) + y)
        return self.out


def _record_recipe():
    from vlpeft.pet._base import PETS

    for n, cls in (("_test_seq", _Seq), ("_test_par", _Par), ("_test_gate", _Gate)):
        if n not in PETS.names():
            PETS.register(n)(lambda site, _c=cls, **kw: _c())
    return Recipe("record", (ZooSpec("_test_seq", ("out_seq",), layers=(0, -1)),
                             ZooSpec("_test_par", ("out_par",), layers=(0, -1)),
                             ZooSpec("_test_gate", ("gate",), layers=(0, -1))))


def _x_module(bb, site) -> tuple[nn.Module, int]:
    """An independent place to read the sublayer input X of ``site`` (a module receiving X as argument 0)."""
    if bb.family == "meter":  # the fusion layer's output module: forward(h, x) reads X as argument 1
        return bb.get_submodule(site.name.rsplit(".", 1)[0]), 1
    if bb.family == "vilt":
        blk = bb.transformer.blocks[site.layer]
        return (blk.norm1 if site.sublayer == "attn" else blk.norm2), 0
    if bb.family in ("bart", "t5") and not hasattr(bb, "plm"):  # VL-BART: X enters q_proj / fc1; VL-T5: the norm
        layer = bb.get_submodule(bb.candidate_name(site.layer))
        if bb.family == "bart":
            attn = {"attn": "self_attn", "cross_attn": "encoder_attn"}.get(site.sublayer)
            return (getattr(layer, attn).q_proj if attn else layer.fc1), 0
        return layer.layer[("attn", "cross_attn", "ffn").index(site.sublayer) if site.role == "decoder"
                           else ("attn", "ffn").index(site.sublayer)].layer_norm, 0
    kind = bb.plm.kind
    j = int(site.name.rsplit(".", 1)[-1])
    if kind == "GPT2":
        layer = bb.plm.layers[j // 2]
        return (layer.ln_1 if j % 2 == 0 else layer.ln_2), 0
    if kind in ("BERT", "ROBERTA"):
        layer = bb.plm.layers[j // 2]
        return (layer.attention if j % 2 == 0 else layer.intermediate), 0
    if kind == "LLAMA":
        layer = bb.plm.layers[j // 2]
        return (layer.input_layernorm if j % 2 == 0 else layer.post_attention_layernorm), 0
    n_enc = 2 * len(bb.plm.t5.encoder.block)
    if j < n_enc:
        return bb.plm.t5.encoder.block[j // 2].layer[0 if j % 2 == 0 else -1].layer_norm, 0
    return bb.plm.layers[(j - n_enc) // 3].layer[(j - n_enc) % 3].layer_norm, 0


@pytest.mark.parametrize("name", NAMES)
def test_gate_and_out_par_compose_in_the_fixed_order(name):
    bb = _bare(name)
    report = inject(bb, _record_recipe())
    by_site: dict[tuple, dict[str, nn.Module]] = {}
    for inj in report.injected:
        key = (inj.site.stack, inj.site.layer, inj.site.sublayer)
        by_site.setdefault(key, {})[inj.site.anchor] = bb.get_submodule(inj.site.name)
    sites = {(s.stack, s.layer, s.sublayer): s for s in bb.sites() if s.anchor == "gate"}
    assert by_site and all(set(v) == {"out_seq", "out_par", "gate"} for v in by_site.values())
    seen_x, seen_out, handles = {}, {}, []
    for key in by_site:
        site = sites[key]
        mod, idx = _x_module(bb, site)
        handles.append(mod.register_forward_pre_hook(lambda m, a, key=key, idx=idx: seen_x.__setitem__(key, a[idx])))
        if bb.family == "meter":  # post-norm: LayerNorm(X + Y)
            handles.append(mod.LayerNorm.register_forward_pre_hook(lambda m, a, key=key: seen_out.__setitem__(key, a[0])))
        elif bb.family != "vilt":  # the value the host continues with, seen by a later hook on the same module
            host, where = site.meta["module"], site.meta["where"]
            if where == "input":
                handles.append(host.register_forward_pre_hook(lambda m, a, key=key: seen_out.__setitem__(key, a[0])))
            else:
                handles.append(host.register_forward_hook(
                    lambda m, a, o, key=key, w=where: seen_out.__setitem__(key, o[0] if w == "tuple_output" else o)))
    _feats(bb, _batch(bb))
    for h in handles:
        h.remove()
    for key, mods in by_site.items():
        seq, par, gate = mods["out_seq"], mods["out_par"], mods["gate"]
        assert torch.equal(par.x, seen_x[key]) and gate.x is par.x  # out_par and the gate read the sublayer input
        assert torch.equal(gate.y, seq.out + par.out)  # the gate sees the sequential map plus the deltas
        y = gate.y * gate.out
        if bb.family == "vilt":  # x_next = X + Y (no drop path, no DAS adapter): the ffn input after attn
            if key[2] == "attn":
                assert torch.allclose(seen_x[(key[0], key[1], "ffn")], seen_x[key] + y, atol=1e-6, rtol=0)
        elif bb.family == "meter":
            assert torch.equal(seen_out[key], y + seen_x[key])
        else:
            assert torch.equal(seen_out[key], y)


@pytest.mark.parametrize("name", NAMES)
def test_library_default_gates_and_zero_up_deltas_are_identity(name):
    """Gates with the library default (G ≡ 1) and zero-up out_seq / out_par adapters leave the output unchanged."""
    bare = _feats(_bare(name), _batch(_bare(name)))
    bb = _bare(name)
    recipe = Recipe("identity", (
        ZooSpec("multihead_adapter", ("out_seq",), dict(r=8, heads=4, init="zero_up")),
        ZooSpec("bottleneck", ("out_par",), dict(r=8, inner_skip=False, init="zero_up")),
        ZooSpec("gate", ("gate",), dict(granularity="large", rank=4, init="identity"))))
    report = inject(bb, recipe)
    assert {i.site.anchor for i in report.injected} == {"out_seq", "out_par", "gate"}
    assert torch.equal(_feats(bb, _batch(bb)), bare)


# --- kind:scope base policies ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_kind_scope_policies(name):
    bb = _bare(name)
    report = inject(bb, Recipe("none"))
    for pol in ("norms:encoder", "norms+bias:c_attn", "bias:query+bias:value"):
        assert bb.knows_policy(pol)
        names = set(apply_trainable(bb, report, pol))
        assert names == {n for n, _ in bb.base_trainable(pol)}
    got = {n for n, _ in bb.base_trainable("norms:encoder")}
    if name == "test_vilt":  # "encoder" is ViLT's single-stream transformer
        want = {n for n, _ in unfreeze_params(bb, "norms:transformer")}
        assert want and got == want and not any(n.startswith("text_embeddings.") for n in got)
    elif name.startswith("test_vit_"):  # the ViT never trains: the LM's layers only
        hf, blocks = bb.plm.hf_attr, bb.plm.blocks_path + "."
        want = {f"plm.{hf}.{n}" for n, _ in unfreeze_params(bb.plm.hf_model(), "norms:encoder") if n.startswith(blocks)}
        assert got == want and bool(want) == (bb.family == "roberta")
    elif name.startswith("test_clip"):  # the prompt generator always trains; the PLM's encoder norms by name
        hf = {"BERT": "bert", "T5": "t5", "LLAMA": "llama"}[bb.plm.kind]
        plm = {f"plm.{hf}.{n}" for n, _ in unfreeze_params(bb.plm.hf_model(), "norms:encoder")}
        always = {n for n, _ in bb.base_trainable("none")}
        assert got == plm | always and (bool(plm) == (bb.plm.kind != "LLAMA"))
    elif name == "test_lavin":  # adapter_proj, the modality token, CLIP's routers always train; LLaMA has no encoder
        plm = {f"plm.llama.{n}" for n, _ in unfreeze_params(bb.plm.hf_model(), "norms:encoder")}
        always = {n for n, _ in bb.base_trainable("none")}
        assert always and not plm and got == always
    elif "generate" in bb.capabilities:  # VL-BART/T5: the HF model's encoder norms + the visual projector
        always = {n for n, _ in bb.base_trainable("none")}
        hf = {f"seq2seq.{n}" for n, _ in unfreeze_params(bb.seq2seq, "norms:encoder")}
        assert always and hf and got == hf | always
    else:
        assert got == {n for n, _ in unfreeze_params(bb, "norms:encoder")}
    assert bb.knows_policy("norms") and not bb.knows_policy("normz:encoder")
    with pytest.raises(ValueError, match=r"train_base='normz:encoder'.*kind:scope"):
        apply_trainable(bb, report, "normz:encoder")


# --- the per-task context of the Lightning module --------------------------------------------------------------------
def test_lightning_forward_sets_the_task_context():
    from vlpeft.lightning import VLPeftModule

    class _Task:
        name = "vqa"
        generative = False  # tasks._base.compute(generate=) asks every task

        def owns(self, batch, n_tasks):
            return True

        def compute(self, infer, heads, batch, generate=False):
            return {"task_seen": infer(batch)}

    stub = SimpleNamespace(tasks=[_Task()], heads=None, plan=lambda: LayerPlan(),
                           backbone=lambda b, plan, **kw: current_task())
    stub.batch_task = lambda b: VLPeftModule.batch_task(stub, b)
    assert VLPeftModule.forward(stub, {})["task_seen"] == "vqa"  # the first task when the batch says nothing
    assert VLPeftModule.forward(stub, {"task": "gqa"})["task_seen"] == "gqa"
    assert current_task() is None  # restored after the forward

"""The PET module zoo (issue 9 part 1): parity with Hugging Face peft, identity / non-identity at init, exact
parameter counts at base sizes (spec §2, §6), hand-computed routing, sharing, presets.

Tolerances: float32 throughout. Parity with peft: ``max|ours − peft| ≤ 1e-6 · max(1, max|y|)`` (the two compute the
same products in the same order except for the masked-qkv equivalence, which sums exact zeros; measured 0 to 4.8e-7
on outputs of magnitude ~4). Merge: ``≤ 1e-5`` absolute (W + s·BA rounds once per weight); unmerge restores the weight
to ``≤ 1e-7``. The measured differences are printed with ``-s``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from tests.helpers import EXEMPT, proj_loss
from vlpeft.pet import presets_zoo  # noqa: F401  (registers the zoo)
from vlpeft.pet import unfreeze
from vlpeft.pet._base import PETS, PRESETS, inject
from vlpeft.pet._sites_hf import EXT_ANCHORS, ProjHost, SharePool, ZooSite, ZooSpec, compose_site
from vlpeft.pet._wrap import ProjWrap, attach_to_linear, merge_all, unmerge_all, unwrap_linear, wrap_linear
from vlpeft.pet.bottleneck import Bottleneck
from vlpeft.pet.compacter import Compacter, PHMLinear
from vlpeft.pet.context import pet_context
from vlpeft.pet.gates import Gate
from vlpeft.pet.lora import LoRA
from vlpeft.pet.multihead_adapter import MultiHeadAdapter
from vlpeft.pet.routing import route
from vlpeft.pet.sharing import TaskSwitch, shared_over_tasks


import peft  # noqa: E402,F401  a test dependency (requirements.txt): the parity oracle is never skipped

D = 768
TASKS4 = ("vqa", "gqa", "nlvr2", "caption")


def n_params(*modules: nn.Module) -> int:
    seen, total = set(), 0
    for m in modules:
        for p in m.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel()
    return total


def A(r: int, d: int = D) -> int:
    return 2 * d * r + r + d


def site(anchor="out_seq", dim=D, sublayer="attn", stack="encoder", layer=0, family="bart", **meta) -> ZooSite:
    return ZooSite(stack=stack, layer=layer, sublayer=sublayer, anchor=anchor, dim=dim,
                   name=f"{stack}.{layer}.{sublayer}.{anchor}", family=family, meta=meta)


# --- tiny hosts -----------------------------------------------------------------------------------------------------
def tiny_bert():
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return BertModel(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2Model

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=50, n_embd=32, n_layer=2, n_head=4, n_positions=16, bos_token_id=0, eos_token_id=0,
                     resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2Model(cfg).eval()


def tiny_block():
    from timm.models.vision_transformer import Block

    torch.manual_seed(0)
    return Block(dim=32, num_heads=4).eval()


def ids():
    return torch.randint(0, 50, (2, 7), generator=torch.Generator().manual_seed(3))


def tokens():
    return torch.randn(2, 5, 32, generator=torch.Generator().manual_seed(4))


def bert_out(m):
    with torch.no_grad():
        return m(input_ids=ids()).last_hidden_state


def gpt2_out(m):
    with torch.no_grad():
        return m(input_ids=ids()).last_hidden_state


def block_out(m):
    with torch.no_grad():
        return m(tokens())


def inject_preset(model, preset, family, **config):
    host = ProjHost(model, family=family)
    return inject(host, PRESETS.build(preset, config))


def rand_like(p: torch.Tensor, seed: int) -> torch.Tensor:
    return torch.randn(p.shape, generator=torch.Generator().manual_seed(seed)) * 0.3


# --- the wrapper keeps names ----------------------------------------------------------------------------------------
def test_wrap_keeps_parameter_names_and_objects():
    bert = tiny_bert()
    before = dict(bert.named_parameters())
    name = "encoder.layer.0.attention.self.query"
    w = bert.get_submodule(name).weight
    wrapped = attach_to_linear(bert, name, LoRA(32, 32, r=2, alpha=2))
    assert isinstance(bert.get_submodule(name), ProjWrap) and wrapped.weight is w
    after = dict(bert.named_parameters())
    assert set(after) - set(before) == {f"{name}.lora_A", f"{name}.lora_B"}
    assert all(after[n] is p for n, p in before.items())
    assert wrap_linear(bert, name) is wrapped  # idempotent
    # a checkpoint of the plain model loads unchanged (LoRA keys missing, nothing unexpected)
    res = bert.load_state_dict(tiny_bert().state_dict(), strict=False)
    assert set(res.missing_keys) == {f"{name}.lora_A", f"{name}.lora_B"} and not res.unexpected_keys
    plain = unwrap_linear(bert, name)
    assert isinstance(plain, nn.Linear) and plain.weight is w and set(dict(bert.named_parameters())) == set(before)


def test_wrapped_model_survives_dtype_change_and_deepcopy():
    bert = tiny_bert()
    inject_preset(bert, "lora", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    with torch.no_grad():
        for k, (n, p) in enumerate(bert.named_parameters()):
            if "lora_B" in n:
                p.copy_(rand_like(p, k))
    y = bert_out(bert)
    twin = copy.deepcopy(bert)
    assert torch.equal(bert_out(twin), y)
    lora = twin.get_submodule("encoder.layer.0.attention.self.query").pets()[0]
    assert lora.lora_B is twin.get_submodule("encoder.layer.0.attention.self.query").lora_B
    bert.double()
    assert (bert_out(bert) - y.double()).abs().max() <= 1e-5


def test_inject_report_names_are_model_names():
    bert = tiny_bert()
    report = inject_preset(bert, "lora", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    names = dict(bert.named_parameters())
    assert report.param_names() == {n for n in names if "lora_" in n}
    assert len(report.injected) == 4  # q, v × 2 layers
    assert {i.site.anchor for i in report.injected} == {"proj:q", "proj:v"}


# --- parity with Hugging Face peft ----------------------------------------------------------------------------------
def _copy_lora_bert(ours, theirs):
    k = 0
    for name, mod in ours.named_modules():
        if isinstance(mod, ProjWrap) and mod.pets("delta"):
            lora = mod.pets("delta")[0]
            pm = theirs.get_submodule(name)
            with torch.no_grad():
                lora.lora_A.copy_(rand_like(lora.lora_A, 10 + k))
                lora.lora_B.copy_(rand_like(lora.lora_B, 50 + k))
                pm.lora_A["default"].weight.copy_(lora.lora_A)
                pm.lora_B["default"].weight.copy_(lora.lora_B)
            k += 1
    return k


def test_lora_parity_with_peft_bert():
    from peft import LoraConfig, inject_adapter_in_model

    base = tiny_bert()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    inject_preset(ours, "lora", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0), theirs)
    assert _copy_lora_bert(ours, theirs) == 4
    y0, y1, y2 = bert_out(base), bert_out(ours), bert_out(theirs)
    diff = (y1 - y2).abs().max().item()
    print(f"LoRA BERT parity: max|ours − peft| = {diff:.3g}; max|adapted − base| = {(y1 - y0).abs().max():.3g}")
    assert (y1 - y0).abs().max() > 1e-2  # the adapters do something
    assert diff <= 1e-6 * max(1.0, y2.abs().max().item())


def test_lora_merge_unmerge_bert_matches_peft_merge():
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.lora import LoraLayer

    base = tiny_bert()
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    inject_preset(ours, "lora", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=8, target_modules=["query", "value"], lora_dropout=0.0), theirs)
    _copy_lora_bert(ours, theirs)
    name = "encoder.layer.1.attention.self.value"
    w0 = ours.get_submodule(name).weight.detach().clone()
    y = bert_out(ours)
    assert merge_all(ours) == 4
    for m in theirs.modules():
        if isinstance(m, LoraLayer):
            m.merge()
    y_m = bert_out(ours)
    dw = (ours.get_submodule(name).weight - theirs.get_submodule(name).base_layer.weight).abs().max().item()
    print(f"LoRA merge: max|merged − unmerged output| = {(y_m - y).abs().max():.3g}; "
          f"max|our merged W − peft merged W| = {dw:.3g}")
    assert (y_m - y).abs().max() <= 1e-5
    assert dw <= 1e-7
    unmerge_all(ours)
    assert (ours.get_submodule(name).weight - w0).abs().max() <= 1e-7
    assert (bert_out(ours) - y).abs().max() <= 1e-6
    assert not ours.get_submodule(name).merged


def _masked_lora_to_peft(lora: LoRA, pm):
    """peft has no q/v mask on a fused projection: its equivalent is rank 2r over all of qkv with
    A' = [A_q; A_v] and B' = [[B_q, 0], [0, 0], [0, B_v]] (and α' = 2α, so α'/r' = α/r)."""
    r, sl = lora.r, lora.slice
    with torch.no_grad():
        pm.lora_A["default"].weight.copy_(lora.lora_A)
        b = torch.zeros(3 * sl, 2 * r)
        b[:sl, :r] = lora.lora_B[:sl]
        b[2 * sl:, r:] = lora.lora_B[sl:]
        pm.lora_B["default"].weight.copy_(b)


@pytest.mark.parametrize("host", ["timm_block", "gpt2_conv1d"])
def test_lora_qv_mask_parity_with_peft_fused_qkv(host):
    from peft import LoraConfig, inject_adapter_in_model

    if host == "timm_block":
        base, target, fifo, out, fam = tiny_block(), "attn.qkv", False, block_out, "vit"
    else:
        base, target, fifo, out, fam = tiny_gpt2(), "c_attn", True, gpt2_out, "gpt2"
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    report = inject(ProjHost(ours, fam), PRESETS.build("lora", dict(lora_r=4, lora_alpha=8, lora_dropout=0.0)))
    assert {i.site.anchor for i in report.injected} == {"proj:qkv"}
    inject_adapter_in_model(LoraConfig(r=8, lora_alpha=16, target_modules=[target], fan_in_fan_out=fifo,
                                       lora_dropout=0.0), theirs)
    k = 0
    for i in report.injected:
        lora = ours.get_submodule(i.site.name).pets("delta")[0]
        assert lora.mask == (True, False, True) and lora.lora_A.shape == (8, 32) and lora.lora_B.shape == (64, 4)
        with torch.no_grad():
            lora.lora_A.copy_(rand_like(lora.lora_A, 20 + k))
            lora.lora_B.copy_(rand_like(lora.lora_B, 60 + k))
        _masked_lora_to_peft(lora, theirs.get_submodule(i.site.name))
        k += 1
    y0, y1, y2 = out(base), out(ours), out(theirs)
    diff = (y1 - y2).abs().max().item()
    print(f"LoRA {host} q/v-mask parity: max|ours − peft| = {diff:.3g}; max|adapted − base| = "
          f"{(y1 - y0).abs().max():.3g}")
    assert (y1 - y0).abs().max() > 1e-2
    assert diff <= 1e-6 * max(1.0, y2.abs().max().item())
    # k-slice untouched: the delta's middle third is exactly zero
    lora = ours.get_submodule(report.injected[0].site.name).pets("delta")[0]
    delta = lora(torch.randn(3, 32))
    assert torch.equal(delta[:, 32:64], torch.zeros(3, 32)) and delta[:, :32].abs().max() > 0
    # merge → same outputs (Conv1D: transposed weight), unmerge restores
    merge_all(ours)
    assert (out(ours) - y1).abs().max() <= 1e-5
    unmerge_all(ours)
    assert (out(ours) - y1).abs().max() <= 1e-6


@pytest.mark.parametrize("host", ["bert", "timm_block"])
def test_ia3_parity_with_peft(host):
    from peft import IA3Config, inject_adapter_in_model

    if host == "bert":
        base, out, fam = tiny_bert(), bert_out, "bert"
        cfg = IA3Config(target_modules=r".*\.(key|value|\d+\.output\.dense)$",
                        feedforward_modules=r".*\.\d+\.output\.dense$")
        expect = 6
    else:
        base, out, fam = tiny_block(), block_out, "vit"
        cfg = IA3Config(target_modules=["qkv", "fc2"], feedforward_modules=["fc2"])
        expect = 2
    ours, theirs = copy.deepcopy(base), copy.deepcopy(base)
    report = inject(ProjHost(ours, fam), PRESETS.build("ia3", {}))
    inject_adapter_in_model(cfg, theirs)
    assert len(report.injected) == expect
    y_init = out(ours)
    assert torch.equal(y_init, out(base))  # l = 1: identity at init, exactly
    for k, i in enumerate(report.injected):
        ia3 = ours.get_submodule(i.site.name).pets()[0]
        assert ia3.feedforward == (i.site.anchor == "proj:ff_out")
        with torch.no_grad():
            ia3.ia3_l.copy_(1.0 + rand_like(ia3.ia3_l, 30 + k))
            theirs.get_submodule(i.site.name).ia3_l["default"].copy_(ia3.ia3_l.view_as(
                theirs.get_submodule(i.site.name).ia3_l["default"]))
    y1, y2 = out(ours), out(theirs)
    diff = (y1 - y2).abs().max().item()
    print(f"IA3 {host} parity: max|ours − peft| = {diff:.3g}; max|adapted − base| = {(y1 - y_init).abs().max():.3g}")
    assert (y1 - y_init).abs().max() > 1e-3
    assert diff <= 1e-6 * max(1.0, y2.abs().max().item())


def test_gradients_reach_every_injected_parameter():
    bert = tiny_bert()
    report = inject_preset(bert, "lora", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    named = dict(bert.named_parameters())
    with torch.no_grad():  # non-zero B, so neither A's nor B's gradient is structurally zero
        for k, n in enumerate(sorted(report.param_names())):
            named[n].copy_(rand_like(named[n], 70 + k))
    proj_loss(bert(input_ids=ids()).last_hidden_state).backward()
    for n in report.param_names():
        assert named[n].grad is not None and named[n].grad.abs().max() > 0, n


# --- identity at init where the spec says so, and not where it doesn't (spec §8.6 items 3–6) ----------------------
IDENTITY_SEQ = {
    "bottleneck_zero_up": lambda: Bottleneck(16, 4, init="zero_up"),
    "multihead_zero_up": lambda: MultiHeadAdapter(16, 8, heads=4, init="zero_up"),
    "multihead_pair_zero_up": lambda: MultiHeadAdapter(16, 8, heads=4, mode="pair", init="zero_up"),
    "compacter_zero_up": lambda: Compacter(16, 4, n=2, zero_up=True),
    "routing_adapter_zero_up": lambda: Bottleneck(16, 4, init="zero_up", routing="add"),
}


@pytest.mark.parametrize("kind", sorted(IDENTITY_SEQ))
def test_sequential_modules_identity_at_init(kind):
    torch.manual_seed(0)
    m = IDENTITY_SEQ[kind]()
    x, h = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with pet_context(x_v=torch.randn(2, 16)):
        assert torch.equal(compose_site(x, h, seq=[m]), h)


@pytest.mark.parametrize("granularity", ["large", "middle_x", "middle_y", "small"])
def test_gates_identity_default_exact(granularity):
    torch.manual_seed(0)
    g = Gate(16, granularity, rank=4)  # init="identity": G ≡ 1
    x, h = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    assert torch.equal(compose_site(x, h, gates=[g]), h)


@pytest.mark.parametrize("granularity", ["large", "middle_x", "small"])
def test_gates_legacy_inits(granularity):
    torch.manual_seed(0)
    x, y = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    t5 = Gate(16, granularity, rank=4, init="legacy_t5", scale=0.3)
    assert torch.equal(t5(x, y), torch.full_like(t5(x, y), 0.15))  # σ(0) · 0.3, exactly (spec §3.4)
    bart = Gate(16, granularity, rank=4, init="legacy_bart")
    g, u = bart(x, y), bart.logits(x, y)
    ref = torch.sigmoid(u).mean(dim=-2, keepdim=True) if granularity == "small" else torch.sigmoid(u)
    assert torch.allclose(g, ref, atol=1e-7, rtol=0)
    assert (g - 0.5).abs().max() > 0  # not exactly 0.5: the sublayer starts roughly halved, not preserved
    assert (g - 0.5).abs().max() <= u.abs().max() / 4 + 1e-7  # σ is 1/4-Lipschitz: G ≈ 0.5 for small logits
    shape = {"large": (2, 5, 16), "middle_x": (2, 5, 1), "small": (2, 1, 1)}[granularity]
    assert tuple(g.shape) == shape


def test_gate_middle_y_forms():
    z = Gate(16, "middle_y", init="legacy_t5", scale=0.3)
    assert torch.equal(z(torch.randn(2, 3, 16), torch.randn(2, 3, 16)), torch.full((1, 1, 16), 0.3))
    torch.manual_seed(0)
    b = Gate(16, "middle_y", init="legacy_bart")
    assert torch.allclose(b(None, torch.randn(2, 3, 16)).view(-1), 1.0 + b.z, atol=0)  # 1 + z, no sigmoid (§9 2)
    s = Gate(16, "middle_y", init="legacy_t5", squash="sigmoid")  # the paper figure's 1 + σ(z)
    assert torch.equal(s(None, torch.randn(1, 1, 16)), torch.full((1, 1, 16), 1.5))


def test_vl_adapter_bart_init_is_not_identity():
    torch.manual_seed(0)
    m = Bottleneck(D, 96, init="legacy_bart")
    assert m.up.weight.std().item() == pytest.approx(0.02, rel=0.05) and torch.equal(m.up.bias, torch.zeros(D))
    h = torch.randn(2, 3, D)
    assert (m(h) - h).abs().max() > 1e-3  # small but non-zero Δ at step 0 (spec §2 M1 "Init")


def test_proj_modules_identity_at_init():
    bert = tiny_bert()
    y0 = bert_out(bert)
    m = copy.deepcopy(bert)
    inject_preset(m, "lora", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0)
    assert torch.equal(bert_out(m), y0)  # B = 0
    with pet_context(x_v=torch.randn(2, 32)):
        for fn in ("add", "mul", "mul_expand", "vl"):
            m = copy.deepcopy(bert)
            inject(ProjHost(m, "roberta"), PRESETS.build(f"routing_lora_{fn}", dict(routing_r=4, routing_alpha=4)))
            assert torch.equal(bert_out(m), y0), fn


def test_multihead_equals_rowstacked_bottleneck():
    torch.manual_seed(0)
    mh = MultiHeadAdapter(32, 8, heads=4, init="legacy_bart")
    h = torch.randn(2, 5, 32)
    assert torch.allclose(mh(h), mh.as_bottleneck()(h), atol=1e-6, rtol=0)
    assert n_params(mh) == n_params(mh.as_bottleneck()) == A(8, 32)


# --- parameter counts at base sizes (d = 768) ----------------------------------------------------------------------
COUNTS = [
    # (module, site kwargs, options, expected) — spec §0, §2, §6.1
    ("bottleneck", {}, dict(r=64), 99_136),
    ("bottleneck", {}, dict(reduction=8), 148_320),
    ("bottleneck", {}, dict(r=128), 197_504),
    ("bottleneck", {}, dict(r=192), 295_872),
    ("bottleneck", dict(anchor="proj:v", sublayer="cross_attn", stack="decoder"), dict(r=96, inner_skip=False),
     148_320),
    ("multihead_adapter", {}, dict(r=96, heads=4), 148_320),
    ("multihead_adapter", {}, dict(r=192, heads=4), 295_872),
    ("multihead_adapter", {}, dict(r=96, heads=4, mode="pair"), D * 96 + 96 + 96 * D // 4 + D),
    ("gate", {}, dict(granularity="large", rank=96), 148_320),
    ("gate", {}, dict(granularity="large", rank=192), 295_872),
    ("gate", {}, dict(granularity="middle_x"), 769),
    ("gate", {}, dict(granularity="middle_y"), 768),
    ("gate", {}, dict(granularity="small"), 1_537),
    ("compacter", {}, dict(n=2), 74_608),
    ("lora", dict(anchor="proj:q", in_dim=D, out_dim=D), dict(r=128), 196_608),
    ("lora", dict(anchor="proj:qkv", in_dim=D, out_dim=3 * D, qkv_slices=3), dict(r=128, qkv_mask=(True, False, True)),
     393_216),
    ("routing_lora", dict(anchor="proj:qkv", in_dim=D, out_dim=3 * D, qkv_slices=3),
     dict(r=128, qkv_mask=(True, False, True), routing="add"), 393_216),
    ("routing_adapter", {}, dict(r=128, routing="vl"), 197_504),
    ("ia3", dict(anchor="proj:v", in_dim=D, out_dim=D), {}, D),
    ("ia3", dict(anchor="proj:ff_out", in_dim=4 * D, out_dim=D), {}, 4 * D),
    ("prompt", dict(anchor="input"), dict(length=40, mid=800), 1_261_088),
]


@pytest.mark.parametrize("module,site_kw,options,expected", COUNTS,
                         ids=[f"{c[0]}-{i}" for i, c in enumerate(COUNTS)])
def test_module_counts_at_base_size(module, site_kw, options, expected):
    kw = dict(site_kw)
    meta = {k: kw.pop(k) for k in ("in_dim", "out_dim", "qkv_slices") if k in kw}
    with torch.device("meta"):
        m = PETS.build(module, site(**kw, **meta), **options)
    assert n_params(m) == expected


def test_phm_layer_is_sum_of_kronecker_products():
    torch.manual_seed(0)
    phm = PHMLinear(8, 6, n=2)
    ref = sum(torch.kron(phm.phm_rule[i], phm.W[i]) for i in range(2))
    assert torch.allclose(phm.weight(), ref, atol=1e-7, rtol=0)
    x = torch.randn(3, 8)
    assert torch.allclose(phm(x), x @ ref + phm.b, atol=1e-6, rtol=0)
    assert n_params(PHMLinear(768, 96, n=2)) == 36_968 and n_params(PHMLinear(96, 768, n=2)) == 37_640


# --- a fake backbone with bart-base / t5-base / gpt2 site layouts, for preset totals --------------------------------
class FakeBackbone:
    """Sites of a d = 768 encoder-decoder (or decoder-only gpt2) in the proposed anchors; ``attach`` records."""

    def __init__(self, family: str, enc: int, dec: int, d: int = D):
        self.family, self.attached = family, {}
        s = []
        stacks = [("encoder", enc, ("attn", "ffn")), ("decoder", dec, ("attn", "cross_attn", "ffn"))]
        if family == "gpt2":
            stacks = [("main", enc, ("attn", "ffn"))]
        for stack, n, subs in stacks:
            for layer in range(n):
                for sub in subs:
                    s.append(ZooSite(stack, layer, sub, "out_seq", d, f"{stack}.{layer}.{sub}.seq", family,
                                     {"num_layers": n}))
                    if stack == "encoder" or family == "gpt2":
                        s.append(ZooSite(stack, layer, sub, "gate", d, f"{stack}.{layer}.{sub}.gate", family))
                    if sub == "ffn":
                        s.append(ZooSite(stack, layer, sub, "proj:ff_out", 4 * d, f"{stack}.{layer}.ffn.wo", family,
                                         {"in_dim": 4 * d, "out_dim": d}))
                        continue
                    if family == "gpt2":
                        s.append(ZooSite(stack, layer, sub, "proj:qkv", d, f"{stack}.{layer}.c_attn", family,
                                         {"in_dim": d, "out_dim": 3 * d, "qkv_slices": 3}))
                        continue
                    for p in "qkv":
                        s.append(ZooSite(stack, layer, sub, f"proj:{p}", d, f"{stack}.{layer}.{sub}.{p}", family,
                                         {"in_dim": d, "out_dim": d}))
        s.append(ZooSite("encoder", -1, "block", "input", d, "encoder.prompt", family))
        self._sites = s

    def sites(self):
        return self._sites

    def attach(self, site, module):
        self.attached[site.name] = module

    def pet_params(self) -> int:
        return n_params(*self.attached.values())


BART = dict(family="bart", enc=6, dec=6)
T5 = dict(family="t5", enc=12, dec=12)
GPT2 = dict(family="gpt2", enc=12, dec=0)
PRESET_TOTALS = [
    # (preset, layout, config, PET parameters) — spec §6.2 "added" column, §6.3, §6.5
    ("vl_pet_large", BART, {}, 4_449_600),
    ("vl_pet_small", BART, {}, 2_688_204),
    ("vl_pet_middle_x", BART, {}, 2_678_988),
    ("vl_pet_middle_y", BART, {}, 2_678_976),
    ("vl_pet_large", T5, {}, 24 * 295_872 + 24 * 295_872 + 12 * 148_320),
    ("vl_pet_small", T5, {}, 7_100_928 + 24 * 1_537 + 1_779_840),
    ("vl_adapter", BART, {}, 4_449_600),
    ("vl_adapter_multiple", BART, dict(datasets=list(TASKS4)), 17_798_400),
    ("vl_adapter_half_up", BART, dict(datasets=list(TASKS4)), 11_093_760),
    ("vl_adapter_half_down", BART, dict(datasets=list(TASKS4)), 11_154_240),
    ("compacter", BART, {}, 2_238_240),
    ("hyperformer", BART, dict(datasets=list(TASKS4)), 6_947_088),
    ("lora", BART, {}, 7_077_888),
    ("lora_multiple", BART, dict(datasets=list(TASKS4)), 28_311_552),
    ("prompt", BART, {}, 1_261_088),
    ("bitfit", BART, {}, 0),
    ("routing_lora_add", GPT2, {}, 4_718_592),
    ("routing_lora_vl", GPT2, {}, 4_718_592),
    ("routing_adapter_add", GPT2, {}, 12 * 197_504),
    ("routing_adapter_mul_expand", GPT2, {}, 12 * 197_504),
]


@pytest.mark.parametrize("preset,layout,config,expected", PRESET_TOTALS,
                         ids=[f"{p}-{l['family']}" for p, l, _, _ in PRESET_TOTALS])
def test_preset_totals_at_base_size(preset, layout, config, expected):
    bb = FakeBackbone(**layout)
    with torch.device("meta"):
        report = inject(bb, PRESETS.build(preset, config))
    assert bb.pet_params() == expected
    assert (expected == 0) == (not report.injected)


def _meta_bart():
    from transformers import BartConfig, BartModel

    with torch.device("meta"):
        return BartModel(BartConfig(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6,
                                    encoder_attention_heads=12, decoder_attention_heads=12, encoder_ffn_dim=3072,
                                    decoder_ffn_dim=3072, max_position_embeddings=1024))


def _meta_t5():
    from transformers import T5Config, T5Model

    with torch.device("meta"):
        return T5Model(T5Config(vocab_size=32128, d_model=768, d_ff=3072, num_layers=12, num_heads=12, d_kv=64))


def test_exact_totals_spec_6_6():
    """bart-base / t5-base + VL-PET / VL-Adapter: trainable and all, as spec §6.6 (no VL projector)."""
    bart, t5 = _meta_bart(), _meta_t5()
    n_bart, n_t5 = n_params(bart), n_params(t5)
    assert (n_bart, n_t5) == (139_420_416, 222_903_552)
    enc_ln = unfreeze.count(unfreeze.unfreeze_params(bart, PRESETS.build("vl_pet_large", {}).base_policy))
    assert enc_ln == 19_968
    assert unfreeze.count(unfreeze.unfreeze_params(t5, "norms:encoder")) == 19_200  # T5LayerNorm counted (§9 item 6)
    assert unfreeze.count(unfreeze.bitfit(bart)) == 125_952
    assert unfreeze.count(unfreeze.layernorm(bart)) == 49_152
    assert unfreeze.count(unfreeze.full(bart)) == n_bart
    assert unfreeze.unfreeze_params(t5, "bias") == []  # T5 has no biases

    def added(preset, layout, config=None):
        bb = FakeBackbone(**layout)
        with torch.device("meta"):
            inject(bb, PRESETS.build(preset, config or {}))
        return bb.pet_params()

    large = added("vl_pet_large", BART)
    assert (large + enc_ln, n_bart + large) == (4_469_568, 143_870_016)
    small = added("vl_pet_small", BART)
    assert (small + enc_ln, n_bart + small) == (2_708_172, 142_108_620)
    vla = added("vl_adapter", BART)
    assert (vla + unfreeze.count(unfreeze.layernorm(bart)), n_bart + vla) == (4_498_752, 143_870_016)
    t5_large = added("vl_pet_large", T5)
    assert (t5_large + 19_200, n_t5 + t5_large) == (16_000_896, 238_885_248)


# --- routing (spec §2 M10) ------------------------------------------------------------------------------------------
def test_routing_hand_computed():
    # A = [[1, 2], [0, 1]], x = [1, 1] → t = A x = [3, 1]; x_v = [2, 0] → v = A x_v = [2, 0]; B = I, s = 1
    lora = LoRA(2, 2, r=2, alpha=2.0)
    with torch.no_grad():
        lora.lora_A.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        lora.lora_B.copy_(torch.eye(2))
    x, xv = torch.tensor([[[1.0, 1.0]]]), torch.tensor([[2.0, 0.0]])
    expected = {"add": [5.0, 1.0], "mul": [6.0, 0.0], "mul_expand": [8.0, 0.0], "vl": [12.0, 0.0]}
    for fn, want in expected.items():
        lora.routing = fn
        with pet_context(x_v=xv):
            assert lora(x).view(-1).tolist() == want, fn
    # the adapter's down map applies its bias to x_v too: b_d = [1, -1] → t = [4, 0], v = [3, -1]
    ad = Bottleneck(2, 2, 2, act="identity", inner_skip=False, init="torch", routing="add")
    with torch.no_grad():
        ad.down.weight.copy_(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        ad.down.bias.copy_(torch.tensor([1.0, -1.0]))
        ad.up.weight.copy_(torch.eye(2))
        ad.up.bias.zero_()
    want = {"add": [7.0, -1.0], "mul": [12.0, 0.0], "mul_expand": [12.0, -4.0], "vl": [36.0, -12.0]}
    for fn, w in want.items():
        ad.routing = fn
        with pet_context(x_v=xv):
            assert ad(x).view(-1).tolist() == w, fn


def test_routing_identities_random():
    g = torch.Generator().manual_seed(5)
    lora = LoRA(6, 6, r=3, alpha=3.0, routing="add")
    with torch.no_grad():
        lora.lora_B.copy_(torch.randn(6, 3, generator=g))
    x, xv = torch.randn(2, 4, 6, generator=g), torch.randn(2, 6, generator=g)
    plain = LoRA(6, 6, r=3, alpha=3.0)
    plain.load_state_dict(lora.state_dict())
    with pet_context(x_v=xv):
        # add = LoRA + the per-example term B A x_v (spec §8.6 item 5)
        assert torch.allclose(lora(x), plain(x) + (xv @ lora.lora_A.t() @ lora.lora_B.t()).unsqueeze(1), atol=1e-6)
    t = torch.randn(2, 4, 3, generator=g)
    v1, v2 = torch.randn(2, 1, 3, generator=g), torch.randn(2, 2, 3, generator=g)
    assert torch.allclose(route("vl", t, v1), (t * v1).sum(-1, keepdim=True) * v1, atol=1e-6)  # (t·v) v for M = 1
    assert torch.equal(route("vl", t, v1), route("vl", t, v1, transpose_fix=False))  # reshape = transpose at M = 1
    assert not torch.allclose(route("vl", t, v2), route("vl", t, v2, transpose_fix=False))  # not for M > 1 (§9 10)
    assert torch.allclose(route("vl", t, v2), t @ v2.transpose(1, 2) @ v2, atol=1e-6)
    with pytest.raises(ValueError, match="M = 1"):
        route("add", t, v2)


def test_routing_after_b_has_zero_gradient_at_init():
    """Documentation test (spec §2 M10): RT's afterB form is cubic in B; with B = 0 every gradient is exactly 0."""
    lora = LoRA(6, 6, r=3, alpha=3.0, routing="vl", after_b=True)
    x = torch.randn(2, 4, 6)
    with pet_context(x_v=torch.randn(2, 6)):
        proj_loss(lora(x)).backward()
    assert torch.equal(lora.lora_A.grad, torch.zeros_like(lora.lora_A))
    assert torch.equal(lora.lora_B.grad, torch.zeros_like(lora.lora_B))


def test_routing_needs_context():
    lora = LoRA(4, 4, r=2, routing="add")
    with pytest.raises(LookupError, match="pet_context"):
        lora(torch.randn(1, 2, 4))


# --- sharing across tasks (spec §8.6 item 6) ----------------------------------------------------------------------
def test_task_sharing_counts_and_selection():
    with torch.device("meta"):
        single = shared_over_tasks(lambda: Bottleneck(D, 96), "shared", TASKS4)
        multiple = shared_over_tasks(lambda: Bottleneck(D, 96), "per_task", TASKS4)
        half_up = shared_over_tasks(lambda: Bottleneck(D, 96), "half_up", TASKS4)
        half_down = shared_over_tasks(lambda: Bottleneck(D, 96), "half_down", TASKS4)
    assert len(dict(single.named_parameters(remove_duplicate=False))) == 16  # registered under 4 keys …
    assert n_params(single) == 148_320  # … counted once
    assert n_params(multiple) == 4 * 148_320
    assert n_params(half_up) == 4 * (D * 96 + 96) + (96 * D + D) == 369_792
    assert n_params(half_down) == 4 * (96 * D + D) + (D * 96 + 96) == 371_808

    torch.manual_seed(0)
    sw = shared_over_tasks(lambda: Bottleneck(8, 2, init="legacy_bart"), "per_task", ("vqa", "gqa"))
    h = torch.randn(1, 3, 8)
    with pet_context(task="vqa"):
        a = sw(h)
        with pet_context(task="gqa"):
            b = sw(h)
        assert torch.equal(sw(h), a)  # the inner context is restored
    assert not torch.equal(a, b)
    assert torch.equal(a, sw.tasks["vqa"](h))
    with pytest.raises(LookupError, match="pet_context"):
        sw(h)
    with pet_context(task="nlvr2"), pytest.raises(LookupError, match="known tasks"):
        sw(h)


def test_per_task_lora_on_a_projection():
    bert = tiny_bert()
    report = inject_preset(bert, "lora_multiple", "bert", lora_r=4, lora_alpha=8, lora_dropout=0.0,
                           datasets=["vqa", "gqa"])
    names = {n for n, _ in bert.named_parameters() if "lora" in n}
    assert "encoder.layer.0.attention.self.query.tasks.vqa.lora_A" in names and report.param_names() == names
    with torch.no_grad():
        for k, n in enumerate(sorted(names)):
            dict(bert.named_parameters())[n].copy_(rand_like(dict(bert.named_parameters())[n], k))
    with pet_context(task="vqa"):
        a = bert_out(bert)
    with pet_context(task="gqa"):
        b = bert_out(bert)
    assert (a - b).abs().max() > 1e-3
    w = bert.get_submodule("encoder.layer.0.attention.self.query")
    with pytest.raises(RuntimeError, match="per-task"):
        w.merge()


def test_shared_pool_one_adapter_per_gpt2_block():
    bb = FakeBackbone(**GPT2)
    inject(bb, PRESETS.build("routing_adapter_add", dict(routing_adapter_r=8)))
    assert bb.attached["main.0.attn.seq"] is bb.attached["main.0.ffn.seq"]
    assert bb.attached["main.0.attn.seq"] is not bb.attached["main.1.attn.seq"]


def test_hyperformer_generates_per_task_and_layer():
    torch.manual_seed(0)
    pool = SharePool()
    s0, s1 = site(layer=0, dim=16, num_layers=2), site(layer=1, dim=16, num_layers=2)
    opts = dict(r=4, task_dim=8, hidden=6, proj=3, tasks=("vqa", "gqa"), pool=pool)
    m0, m1 = PETS.build("hyperformer", s0, **opts), PETS.build("hyperformer", s1, **opts)
    assert m0.hypernet is m1.hypernet and len(pool) == 2
    h = torch.randn(1, 3, 16)
    with pet_context(task="vqa"):
        a0, a1 = m0(h), m1(h)
    with pet_context(task="gqa"):
        b0 = m0(h)
    assert (a0 - a1).abs().max() > 0 and (a0 - b0).abs().max() > 0


def test_hyperformer_task_layernorm_eps_is_the_originals():
    """The task-embedding LN is VL-Adapter's ``nn.LayerNorm(p, eps=1e-6)``: the generated down map equals the formula
    restated with eps 1e-6, on perturbed weights whose pre-LN projection is small (so eps matters: 1e-5 is off by
    several per cent there)."""
    torch.manual_seed(0)
    pool = SharePool()
    m = PETS.build("hyperformer", site(layer=1, dim=16, num_layers=2), r=4, task_dim=8, hidden=6, proj=4,
                   tasks=("vqa",), pool=pool)
    net = m.hypernet
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
        net.task_hypernet[2].weight.mul_(0.02)  # pre-LN variance ~1e-5: the eps is visible
        net.task_hypernet[2].bias.mul_(0.02)
    t = m.task_embeddings(None).detach()
    x = torch.relu(net.task_hypernet[0](torch.cat([t, net.layer_embeddings.weight[1]])))
    e = net.task_hypernet[2](x)
    e = (e - e.mean()) / torch.sqrt(e.var(unbiased=False) + 1e-6) * net.task_ln.weight + net.task_ln.bias
    want = net.generators["ffn"]["down_w"](e).view(4, 16)
    with torch.no_grad():
        got = net.weights(t, 1, "ffn")[0]
    torch.testing.assert_close(got, want.detach(), rtol=1e-5, atol=1e-7)
    assert net.task_ln.eps == 1e-6


# --- presets and the extended sites ---------------------------------------------------------------------------------
def test_presets_registered_with_consistent_keys():
    from vlpeft.pet.presets_zoo import ZOO_PRESETS

    required = {"lora", "ia3", "compacter", "hyperformer", "prompt", "bitfit", "vl_adapter", "vl_adapter_multiple",
                "vl_pet_small", "vl_pet_middle_x", "vl_pet_middle_y", "vl_pet_large"}
    required |= {f"routing_{k}_{fn}" for k in ("lora", "adapter") for fn in ("add", "mul", "mul_expand", "vl")}
    assert required <= set(ZOO_PRESETS) <= set(PRESETS.names())
    seen: dict[str, object] = {}
    for name in ZOO_PRESETS:
        for k, v in PRESETS.get(name).keys.items():
            assert seen.setdefault(k, v) == v, f"config key {k} has two defaults"
        recipe = PRESETS.build(name, {"datasets": list(TASKS4)})
        unfreeze.parse_policy(recipe.base_policy)
        assert all(a in EXT_ANCHORS for spec in recipe.modules for a in spec.anchors)


def test_presets_read_their_keys():
    r = PRESETS.build("lora", dict(lora_r=16, lora_alpha=4))
    assert r.modules[0].options["r"] == 16 and r.modules[0].options["alpha"] == 4
    r = PRESETS.build("vl_pet_large", dict(vl_pet_down_dim=48, vl_pet_gate_scale=0.5))
    bart_spec = [s for s in r.modules if s.module == "multihead_adapter" and "t5" in s.not_families][0]
    assert bart_spec.options["r"] == 48
    assert [s for s in r.modules if s.module == "gate"][0].options["scale"] == 0.5


def test_zoo_spec_selectors():
    spec = ZooSpec("gate", ("gate",), sublayers=("attn",), stacks=("encoder",), not_families=("t5",))
    assert spec.matches(site("gate"))
    assert not spec.matches(site("gate", stack="decoder"))
    assert not spec.matches(site("gate", family="t5"))
    assert not spec.matches(site("out_seq"))
    with pytest.raises(ValueError):
        ZooSpec("lora", ("proj:zz",))


def test_proj_host_sites():
    gpt2 = {(s.name, s.anchor, s.sublayer, s.layer) for s in ProjHost(tiny_gpt2(), "gpt2").sites()}
    assert ("h.1.attn.c_attn", "proj:qkv", "attn", 1) in gpt2
    assert ("h.1.attn.c_proj", "proj:o", "attn", 1) in gpt2 and ("h.1.mlp.c_proj", "proj:ff_out", "ffn", 1) in gpt2
    bert = {(s.name, s.anchor) for s in ProjHost(tiny_bert(), "bert").sites()}
    assert ("encoder.layer.0.attention.output.dense", "proj:o") in bert
    assert ("encoder.layer.0.output.dense", "proj:ff_out") in bert
    assert not any(n.startswith("pooler") for n, _ in bert)
    blk = {(s.name, s.anchor, s.meta.get("qkv_slices")) for s in ProjHost(tiny_block(), "vit").sites()}
    assert ("attn.qkv", "proj:qkv", 3) in blk


def test_unfreeze_policy_grammar():
    gpt2 = tiny_gpt2()
    names = {n for n, _ in unfreeze.unfreeze_params(gpt2, "norms+bias:c_attn")}
    assert "h.0.attn.c_attn.bias" in names and "h.0.ln_1.weight" in names and "ln_f.bias" in names
    assert "h.0.mlp.c_fc.bias" not in names
    trainable = unfreeze.apply_policy(gpt2, "bias:c_attn")
    assert trainable == ["h.0.attn.c_attn.bias", "h.1.attn.c_attn.bias"]
    with pytest.raises(ValueError, match="norms:encoder"):
        unfreeze.parse_policy("layernorm")


def test_task_switch_forwards_role_and_merge_when_shared():
    bert = tiny_bert()
    name = "encoder.layer.0.attention.self.query"
    sw = shared_over_tasks(lambda: LoRA(32, 32, r=2, alpha=2), "shared", ("vqa", "gqa"))
    assert isinstance(sw, TaskSwitch) and sw.role == "delta" and sw.mergeable
    w = attach_to_linear(bert, name, sw)
    with torch.no_grad():
        sw.tasks["vqa"].lora_B.normal_()
    y = bert_out(bert)
    w.merge()
    assert (bert_out(bert) - y).abs().max() <= 1e-5


def test_vl_pet_value_adapter_on_bart_cross_attention():
    """VL-PET's decoder VPA sits on proj:v of cross-attention (reads the encoder memory E, no inner skip, §2 M3):
    BART's N(0, 0.02) init perturbs the outputs; T5's zero-init up keeps them."""
    from transformers import BartConfig, BartModel

    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=50, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=16,
                     dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    base = BartModel(cfg).eval()

    def out(m):
        with torch.no_grad():
            return m(input_ids=ids(), decoder_input_ids=ids()).last_hidden_state

    y0 = out(base)
    for family, identity in (("bart", False), ("t5", True)):
        m = copy.deepcopy(base)
        report = inject(ProjHost(m, family), PRESETS.build("vl_pet_large", dict(vl_pet_vpa_dim=8)))
        assert [i.site.name for i in report.injected] == [f"decoder.layers.{i}.encoder_attn.v_proj" for i in (0, 1)]
        # ProjHost offers no out_seq / gate sites; the other family's specs match nothing either
        assert set(report.unmatched) == {"multihead_adapter", "gate", "bottleneck"}
        assert torch.equal(out(m), y0) == identity


# --- conformance over the registry ------------------------------------------------------------------------------------
# Every PET module declares its tiny test entry where it registers (``register_pet(name, test=dict(site=…,
# options=…, identity=…))``); tests/test_registries.py fails for a module without one.
PET_NAMES = [n for n in PETS.names() if n not in EXEMPT["PET module"]]


def _conformance_site(name: str) -> tuple[ZooSite, dict]:
    test = PETS.test_options(name)
    kw = dict(test["site"])
    meta = {k: kw.pop(k) for k in ("in_dim", "out_dim", "num_layers", "input_norm") if k in kw}
    if meta.pop("input_norm", False):  # the layer's own pre-attention norm, which a skip site names
        meta["input_norm"] = nn.LayerNorm(16)
    extra = {"pool": SharePool()} if test.get("pool") else {}
    return site(dim=16, **kw, **meta), {**test["options"], **extra}


def _apply(m: nn.Module, anchor: str, x: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(output without the module, output with it) at a site of ``anchor``: X the sublayer input, H its output."""
    if anchor.startswith("proj:"):
        lin = nn.Linear(16, 16)
        host = nn.Sequential(lin)
        y0 = lin(x)
        attach_to_linear(host, "0", m)
        return y0, host(x)
    if anchor == "gate":
        return h, compose_site(x, h, gates=[m])
    if anchor == "par":  # a delta from the sublayer input, added to its output
        return h, compose_site(x, h, par=[m])
    if anchor == "skip":  # replaces the skipped unit; an empty skip site is the identity
        return h, m(h)
    return h, compose_site(x, h, seq=[m])  # out_seq / in_seq: maps the tensor, with its own residual


@pytest.mark.parametrize("name", PET_NAMES)
def test_pet_module_conformance(name):
    """Built from its registered test entry: unknown options refused, parameters present, identity at init exactly
    as the entry declares, and once its weights are moved off their init the module changes the output and every
    parameter gets a gradient."""
    s, options = _conformance_site(name)
    identity = PETS.get(name).test["identity"]
    torch.manual_seed(0)
    m = PETS.build(name, s, **options)
    assert n_params(m) > 0
    with pytest.raises(TypeError, match="unknown options|unexpected keyword"):
        PETS.build(name, s, no_such_option=1, **options)
    x, h = torch.randn(2, 5, 16), torch.randn(2, 5, 16)
    with pet_context(x_v=torch.randn(2, 16), task="vqa"):
        if s.anchor == "input":  # a prompt: the generated rows, then the input unchanged; the mask grows with it
            out, mask = m(h, torch.ones(2, 5))
            length = out.shape[1] - 5
            assert length > 0 and torch.equal(out[:, length:], h) and mask.shape == (2, 5 + length)
            perturb = lambda: m(h, torch.ones(2, 5))[0][:, :length]  # noqa: E731
        else:
            y0, y = _apply(m, s.anchor, x, h)
            assert y.shape == y0.shape
            assert torch.equal(y, y0) == identity
            perturb = lambda: _apply(m, s.anchor, x, h)[1]  # noqa: E731
        before = perturb().detach()
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        after = perturb()
        assert not torch.allclose(after, before)
        proj_loss(after).backward()
    idle = tuple(PETS.get(name).test.get("idle", ()))  # parameters the entry says one site never uses
    for n, p in m.named_parameters():
        used = p.grad is not None and p.grad.abs().max() > 0
        assert used != n.startswith(idle), n

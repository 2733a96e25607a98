"""Importing released VL-PET / VL-Adapter PET weights (spec §8.7) into our injected modules.

The released hosts (VL-BART / VL-T5) are not ours yet (issue 11): the modules are injected into tiny
``transformers.BartModel`` / ``T5Model`` stand-ins whose projections are ``ProjHost`` sites and whose sublayer-output
(``out_seq``) and ``gate`` sites are registered beside each layer by ``StandIn``. Key names below are written from the
spec's §8.7 patterns and the original modeling files (``attn_adapter_multihead_down``, ``encoder_attn_adapter_gating_
large_x_down``, ``attn_value_parallel_adapter.adapters.{task}.down_sampler`` …).
"""

from __future__ import annotations

import pytest
import torch

from vlpeft.checkpoint import CheckpointError
from vlpeft.pet import PRESETS, inject
from vlpeft.pet._base import Recipe
from vlpeft.pet._sites_hf import ProjHost, ZooSite, ZooSpec
from vlpeft.pet.import_released import import_released, parse_key

D = 32
TASKS = ("vqa", "gqa", "nlvr", "caption")


def tiny_bart():
    from transformers import BartConfig, BartModel

    torch.manual_seed(0)
    return BartModel(BartConfig(vocab_size=50, d_model=D, encoder_layers=2, decoder_layers=2,
                                encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                decoder_ffn_dim=64, max_position_embeddings=16)).eval()


def tiny_t5():
    from transformers import T5Config, T5Model

    torch.manual_seed(0)
    return T5Model(T5Config(vocab_size=50, d_model=D, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4,
                            d_kv=8)).eval()


class StandIn:
    """Projection sites from ``ProjHost`` plus ``out_seq`` / ``gate`` sites per sublayer, registered on the layer as
    ``pet_{sublayer}_{anchor}`` (BART ``encoder.layers.{ℓ}``, T5 ``encoder.block.{ℓ}``)."""

    def __init__(self, model, family):
        self.model, self.family = model, family
        self.proj = ProjHost(model, family)
        layers = "layers" if family == "bart" else "block"
        self._sites = list(self.proj.sites())
        for stack, subs in (("encoder", ("attn", "ffn")), ("decoder", ("attn", "cross_attn", "ffn"))):
            for ell in range(2):
                for sub in subs:
                    for anchor in ("out_seq", "gate"):
                        name = f"{stack}.{layers}.{ell}.pet_{sub}_{anchor.replace('_', '')}"
                        self._sites.append(ZooSite(stack, ell, sub, anchor, D, name, family))

    def sites(self):
        return self._sites

    def attach(self, site, module):
        if site.anchor.startswith("proj:"):
            return self.proj.attach(site, module)
        parent, _, leaf = site.name.rpartition(".")
        self.model.get_submodule(parent).add_module(leaf, module)


def rnd(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def owned(model):
    return dict(model.named_parameters(remove_duplicate=False))


# --- VL-PET BART, the four gate granularities -----------------------------------------------------------------------
GATE_KEYS = {  # granularity -> {released leaf: shape}
    "large": {"gating_large_x_down.weight": (4, D), "gating_large_x_down.bias": (4,),
              "gating_large_x_up.weight": (D, 4), "gating_large_x_up.bias": (D,)},
    "middle_x": {"gating_middle_xy_add.weight": (1, D), "gating_middle_xy_add.bias": (1,)},
    "middle_y": {"gating_middle_ia3_add": (D,)},
    "small": {"gating_small_xy_cat.weight": (1, 2 * D), "gating_small_xy_cat.bias": (1,)},
}
GATE_OURS = {"gating_large_x_down.weight": "down.weight", "gating_large_x_down.bias": "down.bias",
             "gating_large_x_up.weight": "up.weight", "gating_large_x_up.bias": "up.bias",
             "gating_middle_xy_add.weight": "proj.weight", "gating_middle_xy_add.bias": "proj.bias",
             "gating_middle_ia3_add": "z", "gating_small_xy_cat.weight": "proj.weight",
             "gating_small_xy_cat.bias": "proj.bias"}


def vl_pet_bart_sd(granularity, heads=4, r=8):
    """Released VL-PET BART keys; returns (state dict, {released key: our parameter name or None for a head})."""
    sd, where, seed = {}, {}, 0
    for ell in range(2):
        for sub, ours in (("attn", "attn"), ("ff", "ffn")):
            pre = f"model.encoder.layers.{ell}."
            for h in range(heads):
                for wb, shape in (("weight", (r // heads, D)), ("bias", (r // heads,))):
                    seed += 1
                    sd[f"{pre}{sub}_adapter_multihead_down.{h}.{wb}"] = rnd(*shape, seed=seed)
                    where[f"{pre}{sub}_adapter_multihead_down.{h}.{wb}"] = (
                        f"encoder.layers.{ell}.pet_{ours}_outseq.down.{h}.{wb}")
            for wb, shape in (("weight", (D, r)), ("bias", (D,))):
                seed += 1
                sd[f"{pre}{sub}_adapter_multihead_up.{wb}"] = rnd(*shape, seed=seed)
                where[f"{pre}{sub}_adapter_multihead_up.{wb}"] = f"encoder.layers.{ell}.pet_{ours}_outseq.up.{wb}"
            for leaf, shape in GATE_KEYS[granularity].items():
                seed += 1
                k = f"{pre}encoder_{sub}_adapter_gating_{leaf.split('gating_', 1)[1]}"
                sd[k] = rnd(*shape, seed=seed)
                where[k] = f"encoder.layers.{ell}.pet_{ours}_gate.{GATE_OURS[leaf]}"
    for ell in range(2):
        for s, ours in (("down_sampler", "down"), ("up_sampler", "up")):
            down = s == "down_sampler"
            for wb, shape in (("weight", (8, D) if down else (D, 8)), ("bias", (8,) if down else (D,))):
                seed += 1
                t = rnd(*shape, seed=seed)
                for task in TASKS:  # the same tensor under every task key
                    k = f"model.decoder.layers.{ell}.encoder_attn.attn_value_parallel_adapter.adapters.{task}.{s}.{wb}"
                    sd[k] = t.clone()
                    where[k] = f"decoder.layers.{ell}.encoder_attn.v_proj.{ours}.{wb}"
    return sd, where


def vl_pet_bart(granularity, **extra):
    m = tiny_bart()
    cfg = dict(vl_pet_down_dim=8, vl_pet_gate_dim=4, vl_pet_vpa_dim=8, **extra)
    report = inject(StandIn(m, "bart"), PRESETS.build(f"vl_pet_{granularity}", cfg))
    return m, report


@pytest.mark.parametrize("granularity", ["large", "middle_x", "middle_y", "small"])
def test_vl_pet_bart_every_tensor_lands(granularity):
    m, report = vl_pet_bart(granularity)
    sd, where = vl_pet_bart_sd(granularity)
    sd["model.encoder.layers.0.fc1.weight"] = torch.zeros(64, D)  # a backbone key: not ours to import
    rep = import_released(m, sd, report)
    own = owned(m)
    for key, name in where.items():
        assert torch.equal(own[name], sd[key]), (key, name)
    assert rep.missing == [] and rep.unexpected == ["model.encoder.layers.0.fc1.weight"]
    n_gate = len(GATE_KEYS[granularity])
    assert rep.loaded == 2 * 2 * (4 * 2 + 2 + n_gate) + 2 * 4
    # the value adapter: one copy of the four task keys per tensor
    dedup = [a for a in rep.adapted if "one copy of 4 equal keys" in a]
    assert len(dedup) == 2 * 4
    assert not any("row-stack" in a for a in rep.adapted)  # 4 released heads into our 4 heads: nothing changes


def test_row_stack_into_a_plain_bottleneck_by_hand():
    """Released heads h = 0..3, each 2×d, become rows 2h, 2h+1 of the plain bottleneck's 8×d down map."""
    m = tiny_bart()
    recipe = Recipe("enc_bn", (ZooSpec("bottleneck", ("out_seq",), dict(r=8), sublayers=("attn", "ffn"),
                                       stacks=("encoder",)),))
    report = inject(StandIn(m, "bart"), recipe)
    sd = {}
    for h in range(4):
        sd[f"model.encoder.layers.1.attn_adapter_multihead_down.{h}.weight"] = torch.full((2, D), float(h))
        sd[f"model.encoder.layers.1.attn_adapter_multihead_down.{h}.bias"] = torch.tensor([10.0 * h, 10.0 * h + 1])
    rep = import_released(m, sd, report)
    own = owned(m)
    w = own["encoder.layers.1.pet_attn_outseq.down.weight"]
    expect_w = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], dtype=torch.float32)[:, None].expand(8, D)
    assert torch.equal(w, expect_w)
    assert torch.equal(own["encoder.layers.1.pet_attn_outseq.down.bias"],
                       torch.tensor([0.0, 1.0, 10.0, 11.0, 20.0, 21.0, 30.0, 31.0]))
    assert rep.loaded == 2 and rep.unexpected == []
    assert ["row-stack of 4 heads" in a for a in rep.adapted] == [True, True]
    # everything else the recipe injected was not in the checkpoint
    assert "encoder.layers.1.pet_attn_outseq.up.weight" in rep.missing
    assert "encoder.layers.0.pet_ffn_outseq.down.weight" in rep.missing
    assert len(rep.missing) == 2 * 2 * 4 - 2


def test_row_stack_resplit_into_fewer_heads():
    """4 released heads into our 2-head adapter: our head 0 = released heads 0, 1 stacked; head 1 = heads 2, 3."""
    m, report = vl_pet_bart("middle_y", vl_pet_heads=2)
    sd, _ = vl_pet_bart_sd("middle_y")
    rep = import_released(m, sd, report)
    own = owned(m)
    pre = "model.encoder.layers.0.ff_adapter_multihead_down"
    assert torch.equal(own["encoder.layers.0.pet_ffn_outseq.down.0.weight"],
                       torch.cat([sd[f"{pre}.0.weight"], sd[f"{pre}.1.weight"]]))
    assert torch.equal(own["encoder.layers.0.pet_ffn_outseq.down.1.bias"],
                       torch.cat([sd[f"{pre}.2.bias"], sd[f"{pre}.3.bias"]]))
    assert sum("split into our 2" in a for a in rep.adapted) == 2 * 2 * 2
    assert rep.missing == []


def test_task_copies_that_differ_raise_naming_the_keys():
    m, report = vl_pet_bart("small")
    sd, _ = vl_pet_bart_sd("small")
    bad = "model.decoder.layers.1.encoder_attn.attn_value_parallel_adapter.adapters.nlvr.up_sampler.bias"
    sd[bad] = sd[bad] + 1
    with pytest.raises(CheckpointError) as e:
        import_released(m, sd, report)
    msg = str(e.value)
    assert bad in msg and "adapters.vqa.up_sampler.bias" in msg and "per_task" in msg


def test_unknown_and_out_of_range_keys_are_unexpected():
    m, report = vl_pet_bart("middle_x")
    sd, _ = vl_pet_bart_sd("middle_x")
    extra = {"model.encoder.layers.0.attn_adapter_new_thing.weight": torch.zeros(3),
             "model.encoder.layers.5.attn_adapter_multihead_up.bias": torch.zeros(D),  # no layer 5 in our host
             "model.encoder.visual_embedding.feat_embedding.0.weight": torch.zeros(D, 8),
             "model.encoder.prompt_modules.prompts.vqa.prefix_embedding.0.weight": torch.zeros(8, D)}
    rep = import_released(m, {**sd, **extra}, report)
    assert sorted(rep.unexpected) == sorted(extra)
    assert rep.missing == []


def test_granularity_mismatch_is_an_error_naming_the_key():
    m, report = vl_pet_bart("large")
    sd, _ = vl_pet_bart_sd("small")
    with pytest.raises(CheckpointError, match=r"encoder_attn_adapter_gating_small_xy_cat\.weight.*proj\.weight"):
        import_released(m, sd, report)


def test_missing_head_is_an_error():
    m, report = vl_pet_bart("large")
    sd, _ = vl_pet_bart_sd("large")
    del sd["model.encoder.layers.0.attn_adapter_multihead_down.2.weight"]
    with pytest.raises(CheckpointError, match=r"heads \[0, 1, 3\]"):
        import_released(m, sd, report)


def test_host_naming_function_maps_layers():
    """A host numbering its layers differently: the naming function says where released layer ℓ lives."""
    m, report = vl_pet_bart("middle_y")
    sd, where = vl_pet_bart_sd("middle_y")
    names = {(i.site.role, i.site.layer, i.site.sublayer, i.site.anchor): i.site.name for i in report.injected}

    def swapped(stack, layer, sublayer, anchor):
        return names.get((stack, 1 - layer, sublayer, anchor))

    import_released(m, sd, report, site_name=swapped)
    own = owned(m)
    for key, name in where.items():
        other = name.replace("layers.0.", "layers.X.").replace("layers.1.", "layers.0.")
        other = other.replace("layers.X.", "layers.1.")
        assert torch.equal(own[other], sd[key]), key


def test_ddp_prefix_and_prefix_inside_a_model():
    m, report = vl_pet_bart("middle_y")
    holder = torch.nn.Module()
    holder.backbone = m
    sd, where = vl_pet_bart_sd("middle_y")
    rep = import_released(holder, {f"module.{k}": v for k, v in sd.items()}, report, prefix="backbone.")
    own = owned(holder)
    assert all(torch.equal(own[f"backbone.{n}"], sd[k]) for k, n in where.items())
    assert rep.missing == [] and rep.unexpected == []


def test_shape_mismatch_goes_through_load_state():
    m, report = vl_pet_bart("middle_y")
    sd, _ = vl_pet_bart_sd("middle_y")
    sd["model.encoder.layers.0.attn_adapter_multihead_up.weight"] = torch.zeros(D, 12)
    with pytest.raises(CheckpointError, match=r"pet_attn_outseq\.up\.weight has shape \(32, 12\)"):
        import_released(m, sd, report)


# --- VL-PET T5 --------------------------------------------------------------------------------------------------------
def test_vl_pet_t5_small_every_tensor_lands():
    m = tiny_t5()
    report = inject(StandIn(m, "t5"), PRESETS.build("vl_pet_small", dict(vl_pet_down_dim=8, vl_pet_vpa_dim=8)))
    sd, where, seed = {}, {}, 100
    for ell in range(2):
        for sub, ours, t5sub in (("attn", "attn", 0), ("ff", "ffn", 1)):
            pre = f"encoder.block.{ell}.layer.{t5sub}."
            leaves = [(f"{sub}_adapter_multihead_down.{h}.{wb}", f"down.{h}.{wb}",
                       (2, D) if wb == "weight" else (2,)) for h in range(4) for wb in ("weight", "bias")]
            leaves += [(f"{sub}_adapter_multihead_up.weight", "up.weight", (D, 8)),
                       (f"{sub}_adapter_multihead_up.bias", "up.bias", (D,))]
            for leaf, o, shape in leaves:
                seed += 1
                sd[pre + leaf] = rnd(*shape, seed=seed)
                where[pre + leaf] = f"encoder.block.{ell}.pet_{ours}_outseq.{o}"
            for wb, shape in (("weight", (1, 2 * D)), ("bias", (1,))):
                seed += 1
                k = f"{pre}encoder_{sub}_adapter_gating_small_xy_cat.{wb}"
                sd[k] = rnd(*shape, seed=seed)
                where[k] = f"encoder.block.{ell}.pet_{ours}_gate.proj.{wb}"
        for s, o, shape in (("down_sampler.weight", "down.weight", (8, D)),
                            ("down_sampler.bias", "down.bias", (8,)),
                            ("up_sampler.weight", "up.weight", (D, 8)), ("up_sampler.bias", "up.bias", (D,))):
            seed += 1
            t = rnd(*shape, seed=seed)
            for task in TASKS:
                k = f"decoder.block.{ell}.layer.1.EncDecAttention.attn_value_parallel_adapter.adapters.{task}.{s}"
                sd[k] = t.clone()
                where[k] = f"decoder.block.{ell}.layer.1.EncDecAttention.v.{o}"
    sd["encoder.block.0.layer.0.SelfAttention.q.weight"] = torch.zeros(D, D)
    rep = import_released(m, sd, report)
    own = owned(m)
    for key, name in where.items():
        assert torch.equal(own[name], sd[key]), (key, name)
    assert rep.missing == [] and rep.unexpected == ["encoder.block.0.layer.0.SelfAttention.q.weight"]


def test_t5_ff_adapter_under_the_attention_layer_is_not_parsed():
    assert parse_key("encoder.block.0.layer.0.ff_adapter_multihead_up.weight") is None
    p = parse_key("encoder.block.3.layer.1.ff_adapter_multihead_down.2.bias")
    assert (p.stack, p.layer, p.sublayer, p.anchor, p.part, p.head) == ("encoder", 3, "ffn", "out_seq", "down.bias", 2)


# --- VL-Adapter BART ------------------------------------------------------------------------------------------------
ADAPTER_SITES = [("encoder", "attn_adapter", "attn"), ("encoder", "ff_adapter", "ffn"),
                 ("decoder", "self_attn_adapter", "attn"), ("decoder", "enc_attn_adapter", "cross_attn"),
                 ("decoder", "ff_adapter", "ffn")]


def vl_adapter_sd(tasks, same: bool):
    """adapters.{task}.{down,up}_sampler at every sublayer; ``same``: one tensor under every task key."""
    sd, where, seed = {}, {}, 200
    for stack, mod, sub in ADAPTER_SITES:
        for ell in range(2):
            for s, o, shape in (("down_sampler.weight", "down.weight", (4, D)),
                                ("down_sampler.bias", "down.bias", (4,)),
                                ("up_sampler.weight", "up.weight", (D, 4)), ("up_sampler.bias", "up.bias", (D,))):
                seed += 1
                for i, task in enumerate(tasks):
                    k = f"model.{stack}.layers.{ell}.{mod}.adapters.{task}.{s}"
                    sd[k] = rnd(*shape, seed=seed if same else seed * 10 + i)
                    where[k] = (f"{stack}.layers.{ell}.pet_{sub}_outseq.", o, task)
    return sd, where


def test_vl_adapter_single_takes_one_copy():
    m = tiny_bart()
    report = inject(StandIn(m, "bart"), PRESETS.build("vl_adapter", dict(adapter_reduction=8)))
    sd, where = vl_adapter_sd(("vqa", "gqa"), same=True)
    rep = import_released(m, sd, report)
    own = owned(m)
    for key, (stem, o, _task) in where.items():
        assert torch.equal(own[stem + o], sd[key]), key
    assert rep.loaded == 5 * 2 * 4 and rep.missing == [] and rep.unexpected == []
    assert sum("one copy of 2 equal keys" in a for a in rep.adapted) == 5 * 2 * 4


def test_vl_adapter_multiple_per_task_copies():
    m = tiny_bart()
    report = inject(StandIn(m, "bart"), PRESETS.build("vl_adapter_multiple", dict(datasets=["vqa", "gqa"])))
    sd, where = vl_adapter_sd(("vqa", "gqa"), same=False)
    rep = import_released(m, sd, report)
    own = owned(m)
    for key, (stem, o, task) in where.items():
        assert torch.equal(own[f"{stem}tasks.{task}.{o}"], sd[key]), key
    assert rep.loaded == 5 * 2 * 4 * 2 and rep.missing == [] and rep.adapted == []


def test_vl_adapter_single_with_distinct_task_tensors_raises():
    m = tiny_bart()
    report = inject(StandIn(m, "bart"), PRESETS.build("vl_adapter", dict(adapter_reduction=8)))
    sd, _ = vl_adapter_sd(("vqa", "gqa"), same=False)
    with pytest.raises(CheckpointError, match=r"adapters\.vqa\..*adapters\.gqa\..*differ"):
        import_released(m, sd, report)


def test_vl_adapter_half_up_shares_one_up_and_checks_it():
    m = tiny_bart()
    report = inject(StandIn(m, "bart"), PRESETS.build("vl_adapter_half_up", dict(datasets=["vqa", "gqa"])))
    sd, where = vl_adapter_sd(("vqa", "gqa"), same=False)
    with pytest.raises(CheckpointError, match="up_sampler"):  # per-task up tensors cannot fill one shared up
        import_released(m, sd, report)
    for k in list(sd):  # a half-shared release: the up sampler equal across tasks
        if ".gqa.up_sampler" in k:
            sd[k] = sd[k.replace(".gqa.", ".vqa.")].clone()
    import_released(m, sd, report)
    own = owned(m)
    for key, (stem, o, task) in where.items():
        assert torch.equal(own[f"{stem}tasks.{task}.{o}"], sd[key]), key


def test_vl_adapter_lora_per_task():
    m = tiny_bart()
    report = inject(StandIn(m, "bart"), PRESETS.build("lora_multiple", dict(datasets=["vqa", "gqa"], lora_r=4)))
    sd, where, seed = {}, {}, 300
    for stack, att, sub in (("encoder", "self_attn", "attn"), ("decoder", "self_attn", "attn"),
                            ("decoder", "encoder_attn", "cross_attn")):
        for ell in range(2):
            for proj in ("q_proj", "v_proj"):
                for ab, shape in (("A", (4, D)), ("B", (D, 4))):
                    for task in ("vqa", "gqa"):
                        seed += 1
                        k = f"model.{stack}.layers.{ell}.{att}.{proj}.lora_{ab}s.{task}"
                        sd[k] = rnd(*shape, seed=seed)
                        where[k] = f"{stack}.layers.{ell}.{att}.{proj}.tasks.{task}.lora_{ab}"
    rep = import_released(m, sd, report)
    own = owned(m)
    for key, name in where.items():
        assert torch.equal(own[name], sd[key]), key
    assert rep.loaded == len(sd) and rep.missing == [] and rep.unexpected == []


def test_unknown_task_is_an_error():
    m = tiny_bart()
    report = inject(StandIn(m, "bart"), PRESETS.build("vl_adapter_multiple", dict(datasets=["vqa", "gqa"])))
    sd, _ = vl_adapter_sd(("vqa", "nlvr"), same=False)
    with pytest.raises(CheckpointError, match=r"adapters\.nlvr\..*'nlvr'.*datasets"):
        import_released(m, sd, report)


def test_vl_adapter_t5_and_phm_keys_parse():
    """VL-T5's adapter names (``layer.{0|1|2}.{attn|enc_attn|ff}_adapter``) and PHM sampler parameters."""
    p = parse_key("decoder.block.4.layer.1.enc_attn_adapter.adapters.vqa.up_sampler.phm_rule")
    assert (p.stack, p.layer, p.sublayer, p.anchor, p.part, p.task) == ("decoder", 4, "cross_attn", "out_seq",
                                                                        "up.phm_rule", "vqa")
    p = parse_key("decoder.block.0.layer.0.attn_adapter.adapters.gqa.down_sampler.weight")
    assert (p.stack, p.sublayer, p.part) == ("decoder", "attn", "down.weight")
    p = parse_key("encoder.block.2.layer.1.ff_adapter.adapters.gqa.down_sampler.W")
    assert (p.stack, p.sublayer, p.part) == ("encoder", "ffn", "down.W")
    assert parse_key("model.decoder.layers.1.ff_adapter.adapters.nlvr.up_sampler.b").part == "up.b"
    for wrong in ("encoder.block.0.layer.0.ff_adapter.adapters.vqa.down_sampler.weight",  # ff under self-attention
                  "encoder.block.0.layer.1.enc_attn_adapter.adapters.vqa.down_sampler.weight",  # no encoder cross
                  "decoder.block.0.layer.1.ff_adapter.adapters.vqa.down_sampler.weight"):  # decoder FF is layer 2
        assert parse_key(wrong) is None, wrong

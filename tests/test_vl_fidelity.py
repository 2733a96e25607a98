"""The VL-Adapter / VL-PET / Routing named configs against the original trainers (issue 16 items 7, 8, 10).

- Weight decay: the VL-T5 trainer exempts the names containing ``"bias"`` or ``"LayerNorm.weight"`` (so VL-BART's
  ``self_attn_layer_norm.weight`` and VL-T5's ``layer_norm.weight`` are decayed, the Hyperformer's own
  ``adapter_layers_hyper_net.LayerNorm.weight`` is not); ViLT's rule stays the default.
- Trainable set: VL-Adapter's ``--unfreeze_layer_norms`` matched no VL-T5 norm (its class test named transformers'
  ``T5LayerNorm`` while VL-T5 has its own class): the T5 named configs train the adapters and the visual projector
  only; ``train_base=norms`` opts into T5's norms.
- RT's optimiser: transformers' ``AdamW`` defaults, eps 1e-6 and betas (0.9, 0.999).
"""

from __future__ import annotations

import pytest
import torch

import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from vlpeft.backbones import BACKBONES
from vlpeft.build import _inject
from vlpeft.config import DEFAULTS, NAMED_CONFIGS
from vlpeft.optim import build_optimizer, param_groups
from vlpeft.pet.trainable import count_parameters

VLT5_RULE = ("bias", "LayerNorm.weight")  # VL-T5/src/trainer_base.py, on the original's names


def _cfg(*names: str, **over) -> dict:
    cfg = dict(DEFAULTS)
    for n in names:
        cfg.update(NAMED_CONFIGS[n])
    cfg.update(over)
    return cfg


def _original_name(ours: str) -> str:
    """The original's name for ours where it differs in a way the substring rule sees (the Hyperformer's LN)."""
    return ours.replace(".hypernet.task_ln.", ".adapter_layers_hyper_net.LayerNorm.")


def _tiny(name: str, cfg: dict, seed: int = 0):
    torch.manual_seed(seed)
    bb = BACKBONES.build(name, {})
    report, policy = _inject(bb, dict(cfg, backbone=name), None)
    g = torch.Generator().manual_seed(seed + 7)
    with torch.no_grad():  # trained values: LN weights off 1, biases off 0
        for p in bb.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))
    return bb, report, policy


# --- item 7: the weight-decay rule per config -----------------------------------------------------------------------
@pytest.mark.parametrize("host,names,over", [
    ("test_vl_bart", ("vladapter_single_adapter",), {}),
    ("test_vl_bart", ("vladapter_hyperformer",), dict(hyper_task_dim=8, hyper_hidden=8)),
    ("test_vl_t5", ("vladapter_single_adapter", "vladapter_t5"), dict(train_base="norms")),
    ("test_vl_bart", ("vlpet_large_bart",), dict(vl_pet_down_dim=8, vl_pet_gate_dim=4, vl_pet_vpa_dim=8)),
    ("test_vl_t5", ("vlpet_small_t5",), dict(vl_pet_down_dim=8, vl_pet_vpa_dim=8)),
])
def test_vl_configs_decay_what_the_vlt5_trainer_decays(host, names, over):
    cfg = _cfg(*names, **over)
    bb, _, _ = _tiny(host, cfg)
    groups = {g["name"]: set(g["param_names"]) for g in param_groups(bb.named_parameters(), cfg)}
    trainable = [n for n, p in bb.named_parameters() if p.requires_grad]
    want_decay = {n for n in trainable if not any(s in _original_name(n) for s in VLT5_RULE)}
    assert groups.get("decay", set()) == want_decay
    assert groups.get("no_decay", set()) == set(trainable) - want_decay
    norms = [n for n in trainable if "layer_norm.weight" in n and "visual_embedding" not in n]
    assert norms and set(norms) <= want_decay  # the backbone's LN weights are decayed, as in the original
    if "hyperformer" in names[0]:
        assert any(".task_ln.weight" in n for n in groups["no_decay"])  # its own LayerNorm is exempt there


def test_decay_step_on_a_bart_layer_norm_weight():
    """One AdamW step with zero gradients is the decoupled decay alone: w ← w (1 − lr · 0.01) for VL-BART's
    ``self_attn_layer_norm.weight`` under the VL-Adapter config; ViLT's default rule leaves it as it was."""
    name = "seq2seq.model.encoder.layers.0.self_attn_layer_norm.weight"
    for cfg, factor in ((_cfg("vladapter_single_adapter"), 1 - 1e-3 * 0.01),
                        (_cfg("vladapter_single_adapter", no_decay=None), 1.0)):
        bb, _, _ = _tiny("test_vl_bart", cfg)
        p = dict(bb.named_parameters())[name]
        before = p.detach().clone()
        opt = build_optimizer(bb, cfg)
        for q in bb.parameters():
            q.grad = torch.zeros_like(q) if q.requires_grad else None
        opt.step()
        torch.testing.assert_close(p.detach(), before * factor, rtol=0, atol=1e-7)


def test_every_vl_config_sets_the_vlt5_rule_and_vilt_stays_the_default():
    from vlpeft.named_configs.vl_adapter import VL_CONFIGS

    for n in VL_CONFIGS:
        if n != "vladapter_t5":  # the host overlay, given after a method
            assert list(VLT5_RULE) == NAMED_CONFIGS[n]["no_decay"][:2], n
    assert DEFAULTS["no_decay"] is None
    groups = {g["name"]: g["param_names"] for g in param_groups(
        [("x.self_attn_layer_norm.weight", torch.nn.Parameter(torch.ones(2)))], DEFAULTS)}
    assert groups == {"no_decay": ["x.self_attn_layer_norm.weight"]}


def test_bad_no_decay_is_one_config_error():
    from vlpeft.config import ConfigError, validate_config

    for bad in ("bias", ["bias", 3], [""]):
        with pytest.raises(ConfigError, match="no_decay=.*list of name substrings"):
            validate_config(dict(DEFAULTS, no_decay=bad))


# --- item 8: VL-Adapter on T5 trains no norms ----------------------------------------------------------------------
def _base_count(names: tuple[str, ...], **over) -> int:
    cfg = _cfg(*names, **over)
    host = dict(vl_config="t5_base", vl_vocab_size=32200) if "vladapter_t5" in names else dict(
        vl_config="bart_base", vl_vocab_size=50465)
    with torch.device("meta"):
        bb = BACKBONES.build(cfg["backbone"], dict(host, vis_feat_dim=2048, tokenizer=None))
        _inject(bb, cfg, None)
    return count_parameters(bb)[0]


PROJ_T5 = 1_581_312  # VL-T5's visual projector (f = 2048)
HYPER_T5 = 5 * 1_334_880 + 2 * (132_232 + 12 * 512 + 16) + 4 * 512  # 5 block types, 2 stacks of 12, 4 tasks


@pytest.mark.parametrize("method,trainable", [
    ("single_adapter", 60 * 148_320 + PROJ_T5),  # 10,480,512: the released T5 single-adapter run
    ("multiple_adapters", 4 * 60 * 148_320 + PROJ_T5),
    ("hyperformer", HYPER_T5 + PROJ_T5),
    ("single_compacter", 60 * 74_608 + PROJ_T5),
    ("multiple_compacters", 4 * 60 * 74_608 + PROJ_T5),
    ("single_prompt", 2_842_400),
])
def test_t5_named_configs_train_what_the_scripts_trained(method, trainable):
    assert _base_count((f"vladapter_{method}", "vladapter_t5")) == trainable


def test_t5_norms_opt_in_and_bart_unchanged():
    assert _base_count(("vladapter_single_adapter", "vladapter_t5")) == 10_480_512
    # train_base=norms: T5's 62 norms (25 encoder + 37 decoder, d = 768) train too
    assert _base_count(("vladapter_single_adapter", "vladapter_t5"), train_base="norms") == 10_480_512 + 62 * 768
    # VL-BART: every LN is an nn.LayerNorm, so the named config still trains all 32 (spec §6.2)
    assert _base_count(("vladapter_single_adapter",)) == 6_081_600
    assert _base_count(("vladapter_hyperformer",)) == 8_579_088


# --- item 10: RT's optimiser -----------------------------------------------------------------------------------------
def test_routing_configs_use_transformers_adamw_defaults():
    from vlpeft.named_configs.routing import ROUTING_CONFIGS

    for n in ROUTING_CONFIGS:
        cfg = _cfg(n)
        opt = build_optimizer([("w", torch.nn.Parameter(torch.zeros(2)))], cfg)
        assert isinstance(opt, torch.optim.AdamW) and opt.defaults["eps"] == 1e-6, n
        assert opt.defaults["betas"] == (0.9, 0.999) and opt.param_groups[0]["weight_decay"] == 0.0, n

"""Parameter groups, optimisers and learning-rate schedules."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from vlpeft.optim import build_optimizer, build_scheduler, param_groups, warmup_steps


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(4, 4)
        self.norm = nn.LayerNorm(4)
        self.adapter = nn.Module()
        self.adapter.adapter_layer_norm_before = nn.LayerNorm(4)
        self.adapter.down_proj = nn.Linear(4, 2)
        self.vqa_classifier = nn.Sequential(nn.Linear(4, 8), nn.LayerNorm(8))
        self.frozen = nn.Linear(4, 4)
        self.frozen.requires_grad_(False)


CFG = {"learning_rate": 1e-4, "weight_decay": 0.01, "lr_mult": 10, "optim_type": "adamw",
       "warmup_steps": 2, "decay_power": 1, "end_lr": 0}


def test_param_groups_membership_and_head_multiplier():
    groups = {g["name"]: g for g in param_groups(Toy().named_parameters(), CFG)}
    assert sorted(groups["decay"]["param_names"]) == [
        "adapter.adapter_layer_norm_before.weight",  # no no-decay substring matches: decayed (original behaviour)
        "adapter.down_proj.weight", "encoder.weight"]
    assert sorted(groups["no_decay"]["param_names"]) == [
        "adapter.adapter_layer_norm_before.bias", "adapter.down_proj.bias", "encoder.bias", "norm.bias",
        "norm.weight"]
    assert sorted(groups["head_decay"]["param_names"]) == ["vqa_classifier.0.weight", "vqa_classifier.1.weight"]
    assert sorted(groups["head_no_decay"]["param_names"]) == ["vqa_classifier.0.bias", "vqa_classifier.1.bias"]
    assert groups["decay"]["weight_decay"] == 0.01 and groups["no_decay"]["weight_decay"] == 0.0
    assert groups["head_decay"]["weight_decay"] == 0.01 and groups["head_no_decay"]["weight_decay"] == 0.0
    assert groups["decay"]["lr"] == pytest.approx(1e-4) and groups["head_no_decay"]["lr"] == pytest.approx(1e-3)
    assert not any("frozen" in n for g in groups.values() for n in g["param_names"])
    # DVP's LLaMA norms and empty groups
    m = nn.Module()
    m.layers = nn.Module()
    m.layers.input_layernorm = nn.LayerNorm(2)  # ".input_layernorm.weight" contains "layernorm.weight"
    groups = param_groups(m.named_parameters(), CFG)
    assert [g["name"] for g in groups] == ["no_decay"]


def test_build_optimizer_kinds_and_errors():
    opt = build_optimizer(Toy(), CFG)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.98) and opt.defaults["eps"] == 1e-8
    assert len(opt.param_groups) == 4
    assert isinstance(build_optimizer(Toy(), dict(CFG, optim_type="adam")), torch.optim.Adam)
    sgd = build_optimizer(list(Toy().named_parameters()), dict(CFG, optim_type="sgd"))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["momentum"] == 0.9
    with pytest.raises(ValueError, match="optim_type='lamb'"):
        build_optimizer(Toy(), dict(CFG, optim_type="lamb"))
    with pytest.raises(ValueError, match="requires_grad"):
        build_optimizer(Toy().requires_grad_(False), CFG)


def _multipliers(cfg, total, steps):
    model = Toy()
    opt = build_optimizer(model, dict(cfg, learning_rate=1.0, lr_mult=10))
    sched = build_scheduler(opt, cfg, total)
    assert sched["interval"] == "step"
    seen = {}
    for step in range(max(steps) + 1):
        if step in steps:
            lrs = {g["name"]: g["lr"] for g in opt.param_groups}
            assert lrs["head_decay"] == pytest.approx(10 * lrs["decay"])  # heads keep their multiple
            seen[step] = lrs["decay"]
        opt.step()
        sched["scheduler"].step()
    return seen


def test_polynomial_power_1_with_warmup_by_hand():
    # warmup 2, total 10: 0, 1/2, 1, then linear to 0 over 8 steps
    got = _multipliers(CFG, 10, [0, 1, 2, 3, 6, 10, 11])
    assert got == pytest.approx({0: 0.0, 1: 0.5, 2: 1.0, 3: 0.875, 6: 0.5, 10: 0.0, 11: 0.0})
    # end_lr 0.1 (of lr 1.0): (1 - 0.1)·remaining + 0.1; after total the end lr
    got = _multipliers(dict(CFG, end_lr=0.1), 10, [2, 6, 10, 12])
    assert got == pytest.approx({2: 1.0, 6: 0.55, 10: 0.1, 12: 0.1})
    # a float warm-up is a fraction of the total
    assert warmup_steps(dict(CFG, warmup_steps=0.2), 10) == 2
    assert _multipliers(dict(CFG, warmup_steps=0.2), 10, [1, 6]) == pytest.approx({1: 0.5, 6: 0.5})


def test_polynomial_matches_transformers():
    from transformers import get_polynomial_decay_schedule_with_warmup

    cfg = dict(CFG, warmup_steps=3, decay_power=2, end_lr=1e-5)
    p1 = nn.Parameter(torch.zeros(1))
    p2 = nn.Parameter(torch.zeros(1))
    ours = torch.optim.SGD([p1], lr=1e-3)
    ref = torch.optim.SGD([p2], lr=1e-3)
    s_ours = build_scheduler(ours, cfg, 12)["scheduler"]
    s_ref = get_polynomial_decay_schedule_with_warmup(ref, 3, 12, lr_end=1e-5, power=2.0)
    for _ in range(15):
        assert ours.param_groups[0]["lr"] == pytest.approx(ref.param_groups[0]["lr"], rel=1e-12, abs=1e-15)
        ours.step(), ref.step(), s_ours.step(), s_ref.step()


def test_cosine_and_constant_with_warmup():
    got = _multipliers(dict(CFG, decay_power="cosine"), 10, [0, 1, 2, 4, 6, 10])
    # after warm-up: 0.5·(1 + cos(π·(t − 2)/8))
    assert got == pytest.approx({0: 0.0, 1: 0.5, 2: 1.0, 4: 0.5 * (1 + math.cos(math.pi / 4)), 6: 0.5, 10: 0.0})
    got = _multipliers(dict(CFG, decay_power="constant"), 10, [0, 1, 2, 9, 20])
    assert got == pytest.approx({0: 0.0, 1: 0.5, 2: 1.0, 9: 1.0, 20: 1.0})


def test_scheduler_config_errors():
    opt = build_optimizer(Toy(), CFG)
    with pytest.raises(ValueError, match="decay_power='linear'"):
        build_scheduler(opt, dict(CFG, decay_power="linear"), 10)
    with pytest.raises(ValueError, match="end_lr"):
        build_scheduler(opt, dict(CFG, end_lr=1.0), 10)
    with pytest.raises(ValueError, match="total_steps"):
        build_scheduler(opt, CFG, 0)
    with pytest.raises(ValueError, match="fraction"):
        warmup_steps(dict(CFG, warmup_steps=1.5), 10)


def test_adam_eps_betas_and_clip_keys_reach_optimizer_and_trainer():
    """VL-Adapter / VL-PET train with AdamW eps 1e-6, betas (0.9, 0.999) and gradient clip 5: the keys reach
    torch's optimiser and Lightning's trainer; bad values are refused before any model is built."""
    import pytest
    import torch

    from vlpeft.config import DEFAULTS, ConfigError, validate_config
    from vlpeft.optim import build_optimizer

    cfg = dict(DEFAULTS, adam_eps=1e-6, adam_betas=[0.9, 0.999], learning_rate=1e-3)
    opt = build_optimizer([("w", torch.nn.Parameter(torch.zeros(2)))], cfg)
    assert opt.defaults["eps"] == 1e-6 and opt.defaults["betas"] == (0.9, 0.999)
    for bad in (dict(adam_betas=[0.9]), dict(adam_betas=[0.9, 1.0]), dict(adam_eps=0), dict(gradient_clip_val=-1)):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            validate_config(dict(DEFAULTS, **bad))

"""Optimiser and learning-rate schedule (the originals' ``set_schedule``), on current PyTorch / transformers.

Four parameter groups: {weight decay, no decay} × {base lr, head lr·lr_mult}; METER adds two more, for names
containing ``cross_modal`` (lr·``lr_mult_cross_modal``), and its heads take ``lr_mult_head`` when that key is set
(METER's ``set_schedule``: a head name wins over ``cross_modal``). As in the originals the
no-decay test is a substring test on names, so LayerNorm weights whose names match none of the substrings
(the DAS adapters' ``adapter_layer_norm_before.weight``, the heads' ``…classifier.1.weight``) *are* decayed;
kept for fidelity (seeds.md §8 item 21).

The substrings are a per-config key, ``no_decay``: ``None`` (the default) is ViLT's list ``NO_DECAY`` (with DVP's
``layernorm`` addition); a named config gives its original trainer's list, e.g. the VL-T5 trainer's
``["bias", "LayerNorm.weight"]`` for VL-Adapter / VL-PET, under which BART's ``self_attn_layer_norm.weight`` and
T5's ``layer_norm.weight`` are decayed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from vlpeft.sections import is_settings, key, take
from vlpeft.tasks.heads import LR_MULT_HEADS

NO_DECAY = (
    "bias", "LayerNorm.bias", "LayerNorm.weight",
    "norm.bias", "norm.weight", "norm1.bias", "norm1.weight", "norm2.bias", "norm2.weight",
    "layernorm.weight", "layernorm.bias",  # DVP's addition (LLaMA's input_/post_attention_layernorm)
)
HEAD_NAMES = LR_MULT_HEADS
CROSS_MODAL = "cross_modal"  # METER's cross_modal_names
OPTIMIZERS = ("adamw", "adam", "sgd")
SCHEDULES = ("cosine", "constant", "<number: polynomial power>")


@dataclass(frozen=True)
class OptimConfig:
    """What the optimiser and the schedule read. The keys' defaults are the base config's (``vlpeft.config``);
    the fallbacks here only serve a partial dict (a test, an older checkpoint's config)."""

    learning_rate: float = key(convert=float)
    weight_decay: float = key(convert=float)
    optim_type: str = key(default="adamw", shared=True)
    lr_mult: float = key(convert=float, default=1.0, shared=True)
    lr_mult_head: float | None = key(convert=float, default=None, shared=True)  # METER's key; None = lr_mult
    lr_mult_cross_modal: float = key(convert=float, default=1.0, shared=True)
    adam_eps: float = key(convert=float, default=1e-8, shared=True)
    adam_betas: Any = key(default=(0.9, 0.98), shared=True)
    no_decay: Any = key(default=None, shared=True)
    warmup_steps: Any = key(default=0, shared=True)
    decay_power: Any = key(default=1, shared=True)
    end_lr: float = key(default=0, shared=True)


def no_decay_substrings(config: OptimConfig | Mapping[str, Any]) -> tuple[str, ...]:
    """The config's no-decay substrings (``no_decay``; ``None`` → ViLT's ``NO_DECAY``)."""
    nd = _no_decay(config)
    if nd is None:
        return NO_DECAY
    if isinstance(nd, str) or not isinstance(nd, (list, tuple)) or not all(isinstance(x, str) and x for x in nd):
        raise ValueError(f"no_decay={nd!r} must be a list of name substrings, e.g. "
                         f"no_decay=['bias','LayerNorm.weight'],"
                         f" or None for ViLT's list")
    return tuple(nd)


def _no_decay(config: OptimConfig | Mapping[str, Any]) -> Any:
    # no_decay alone: the VL checks call this with only that key
    return config.no_decay if isinstance(config, OptimConfig) else take(_NoDecay, config).no_decay


@dataclass(frozen=True)
class _NoDecay:
    no_decay: Any = key(default=None, shared=True)


def _named(model_or_named_params: nn.Module | Iterable[tuple[str, nn.Parameter]]) -> list[tuple[str, nn.Parameter]]:
    if isinstance(model_or_named_params, nn.Module):
        return list(model_or_named_params.named_parameters())
    return list(model_or_named_params)


def param_groups(named_params: Iterable[tuple[str, nn.Parameter]], config: OptimConfig | Mapping[str, Any],
                 head_names: Sequence[str] = HEAD_NAMES) -> list[dict[str, Any]]:
    """The original four groups over parameters with ``requires_grad`` (empty groups dropped).

    Each group carries a ``name`` (decay / no_decay / head_decay / head_no_decay / cross_modal_decay /
    cross_modal_no_decay; the last two only for METER's names) and ``param_names``
    for inspection; torch optimisers keep extra group keys untouched.
    """
    o = take(OptimConfig, config)
    lr, wd = o.learning_rate, o.weight_decay
    lr_mult = o.lr_mult if o.lr_mult_head is None else o.lr_mult_head  # lr_mult_head: METER's key
    cross_mult = o.lr_mult_cross_modal
    groups: dict[str, dict[str, Any]] = {
        "decay": {"params": [], "param_names": [], "weight_decay": wd, "lr": lr},
        "no_decay": {"params": [], "param_names": [], "weight_decay": 0.0, "lr": lr},
        "head_decay": {"params": [], "param_names": [], "weight_decay": wd, "lr": lr * lr_mult},
        "head_no_decay": {"params": [], "param_names": [], "weight_decay": 0.0, "lr": lr * lr_mult},
        "cross_modal_decay": {"params": [], "param_names": [], "weight_decay": wd, "lr": lr * cross_mult},
        "cross_modal_no_decay": {"params": [], "param_names": [], "weight_decay": 0.0, "lr": lr * cross_mult},
    }
    no_decay_names = no_decay_substrings(o)
    seen: set[int] = set()
    for name, p in named_params:
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        head = any(h in name for h in head_names)
        no_decay = any(nd in name for nd in no_decay_names)
        prefix = "head_" if head else ("cross_modal_" if CROSS_MODAL in name else "")
        key = prefix + ("no_decay" if no_decay else "decay")
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [dict(g, name=k) for k, g in groups.items() if g["params"]]


def build_optimizer(model_or_named_params: nn.Module | Iterable[tuple[str, nn.Parameter]],
                    config: OptimConfig | Mapping[str, Any]) -> torch.optim.Optimizer:
    """``optim_type``: adamw (decoupled decay; ``adam_betas`` (0.9, 0.98) and ``adam_eps`` 1e-8 by default, as ViLT),
    adam, or sgd (momentum 0.9)."""
    o = take(OptimConfig, config)
    groups = param_groups(_named(model_or_named_params), o)
    if not groups:
        raise ValueError("no parameter has requires_grad=True: nothing to optimise (check the trainable set)")
    lr = o.learning_rate
    kind = str(o.optim_type).lower()
    if kind == "adamw":
        # torch's AdamW = the deprecated transformers AdamW (decoupled decay, bias correction)
        betas = tuple(float(b) for b in o.adam_betas)
        return torch.optim.AdamW(groups, lr=lr, eps=o.adam_eps, betas=betas)
    if kind == "adam":
        return torch.optim.Adam(groups, lr=lr)
    if kind == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9)
    raise ValueError(f"optim_type={o.optim_type!r} is not one of {OPTIMIZERS}")


@dataclass(frozen=True)
class _Warmup:
    warmup_steps: Any = key(default=0, shared=True)


def warmup_steps(config: OptimConfig | Mapping[str, Any], total_steps: int) -> int:
    """``warmup_steps`` as a step count: an int is taken as is, a float is a fraction of ``total_steps``."""
    w = (config if is_settings(config) else take(_Warmup, config)).warmup_steps
    if isinstance(w, bool) or not isinstance(w, (int, float)):
        raise ValueError(f"warmup_steps must be an int (steps) or a float (fraction of total), got {w!r}")
    if isinstance(w, float):
        if not 0.0 <= w <= 1.0:
            raise ValueError(f"warmup_steps={w} as a float is a fraction of the total steps; use 0.0 … 1.0")
        return int(total_steps * w)
    if w < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {w}")
    return int(w)


@dataclass(frozen=True)
class _Schedule:
    """The schedule's keys (a test builds it from a dict without the optimiser's keys)."""

    warmup_steps: Any = key(default=0, shared=True)
    decay_power: Any = key(default=1, shared=True)
    end_lr: float = key(default=0, shared=True)


def polynomial_multiplier(step: int, warmup: int, total: int, lr_init: float, lr_end: float,
                          power: float) -> float:
    """HF's ``get_polynomial_decay_schedule_with_warmup`` multiplier (guarded against total == warmup)."""
    if step < warmup:
        return step / max(1, warmup)
    if step > total:
        return lr_end / lr_init
    decay_steps = max(1, total - warmup)
    remaining = 1.0 - (step - warmup) / decay_steps
    return ((lr_init - lr_end) * remaining ** power + lr_end) / lr_init


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig | Mapping[str, Any],
                    total_steps: int) -> dict[str, Any]:
    """Lightning scheduler dict stepping every optimizer step.

    ``decay_power``: a number → polynomial decay from the lr to ``end_lr`` with linear warm-up (HF formula; each
    group's own lr is scaled by the same multiplier, so heads keep their multiple); "cosine" → HF cosine with
    warm-up; "constant" → HF constant with warm-up.
    """
    total = int(total_steps)
    if total <= 0:
        raise ValueError(f"total_steps must be positive, got {total_steps} (set max_steps or max_epoch)")
    o = config if is_settings(config) else take(_Schedule, config)
    warmup = warmup_steps(o, total)
    power = o.decay_power
    if power == "cosine":
        from transformers import get_cosine_schedule_with_warmup

        sched = get_cosine_schedule_with_warmup(optimizer, num_warmup_steps=warmup, num_training_steps=total)
    elif power == "constant":
        from transformers import get_constant_schedule_with_warmup

        sched = get_constant_schedule_with_warmup(optimizer, num_warmup_steps=warmup)
    else:
        try:
            p = float(power)
        except (TypeError, ValueError):
            raise ValueError(f"decay_power={power!r} is not one of {SCHEDULES}") from None
        if isinstance(power, bool) or not math.isfinite(p):
            raise ValueError(f"decay_power={power!r} is not one of {SCHEDULES}")
        lr_init = float(optimizer.defaults["lr"])
        lr_end = float(o.end_lr or 0)
        if not lr_init > lr_end:
            raise ValueError(f"end_lr ({lr_end}) must be smaller than learning_rate ({lr_init})")
        # own LambdaLR with the HF formula: HF divides by (total - warmup), which is 0 when they are equal
        sched = LambdaLR(optimizer, lambda s: polynomial_multiplier(s, warmup, total, lr_init, lr_end, p))
    return {"scheduler": sched, "interval": "step", "frequency": 1}

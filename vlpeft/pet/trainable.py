"""The trainable set, derived from what was injected (as Hugging Face peft does), and one counting utility.

trainable = heads (as their builders set them) ∪ injected PET modules ∪ ``backbone.base_trainable(policy)``.
With a plan (``trainable=used``, or ``trainable=original`` for a recipe whose original trains only what the
placement runs: ``Recipe.original_trains_used``, LaVIN-DAS) only the PET modules the plan runs train. Never name
substrings.
"""

from __future__ import annotations

from torch import nn

from vlpeft._protocol import LayerPlan
from vlpeft.pet._base import PetReport


def apply_trainable(backbone: nn.Module, report: PetReport, policy: str, plan: LayerPlan | None = None) -> list[str]:
    """Set ``requires_grad`` on every backbone parameter; returns the trainable names (backbone-relative)."""
    known = backbone.knows_policy(policy) if hasattr(backbone, "knows_policy") else policy in backbone.base_policies()
    if not known:
        raise ValueError(f"train_base={policy!r}: {type(backbone).__name__} knows {list(backbone.base_policies())} "
                         f"and kind:scope policies (e.g. 'norms:encoder', 'norms+bias:c_attn'; kinds none/bias/norms/all)")
    pet = report.param_names() if plan is None else report.used_param_names(plan)
    base = {n for n, _ in backbone.base_trainable(policy)}
    names = []
    for n, p in backbone.named_parameters():
        on = n in pet or n in base
        p.requires_grad_(on)
        if on:
            names.append(n)
    return names


def count_parameters(module: nn.Module) -> tuple[int, int]:
    """(trainable, total) element counts; a parameter shared by several modules is counted once."""
    trainable = total = 0
    for p in module.parameters():  # parameters() de-duplicates shared tensors
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def format_trainable(module: nn.Module) -> str:
    """``trainable params: 13,752,633 || all params: 124,753,977 || trainable%: 11.0238`` (peft's format)."""
    trainable, total = count_parameters(module)
    pct = 100.0 * trainable / total if total else 0.0
    return f"trainable params: {trainable:,d} || all params: {total:,d} || trainable%: {pct:.4f}"

"""Mark and count trainable parameters (one shared utility, as Hugging Face peft has).

The DAS rule is a substring test on parameter names; it also catches names the authors may not have meant
(``text_embeddings.token_type_embeddings``, METER's ``token4classifier``; seeds.md §8 item 17). Callers that
want the original set pass ``ORIGINAL_DAS_TRAINABLE``; an explicit set is just another include list.
"""

from __future__ import annotations

from typing import Sequence

from torch import nn

# ViLT-DAS: a parameter trains iff its name contains one of these
ORIGINAL_DAS_TRAINABLE: tuple[str, ...] = ("classifier", "pooler", "token_type_embeddings", "rank_output", "adapter")


def mark_trainable(module: nn.Module, include: Sequence[str], exclude: Sequence[str] = ()) -> list[str]:
    """Train exactly the parameters whose name contains an ``include`` substring and no ``exclude`` one.

    Everything else is frozen. Returns the trainable names (in ``named_parameters`` order).
    """
    if isinstance(include, str) or isinstance(exclude, str):
        raise TypeError("include/exclude are sequences of substrings, e.g. ('adapter',), not a single string")
    names = []
    for name, p in module.named_parameters():
        train = any(s in name for s in include) and not any(s in name for s in exclude)
        p.requires_grad_(train)
        if train:
            names.append(name)
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

"""Head pieces with the original parameter names (`vqa_classifier`, `nlvr2_classifier`, ...).

The heads live in one ``nn.ModuleDict`` keyed by those names, so an original checkpoint's
``vqa_classifier.0.weight`` maps to ``heads.vqa_classifier.0.weight`` by a plain prefix. Each task builds its own
(``Task.build_heads`` in ``vlpeft/tasks/<task>.py``); the name lists below are read from ``TASKS``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vlpeft._init import init_weights_bert as init_weights
from vlpeft.sections import key, take
from vlpeft.tasks._base import (TASK_GATES, active_tasks, all_tasks, build_task_heads, build_tasks, head_names,
                                lr_mult_heads, settings_from_config)

@dataclass(frozen=True)
class _Gates:
    loss_names: Mapping[str, float] = key()  # which tasks are on (their weights gate them)


# pre-training heads of original ViLT/METER checkpoints that no task here builds (loaded when built, else reported)
PRETRAINING_HEADS: tuple[str, ...] = ("itm_score", "mlm_score", "mpp_score")


class ITMHead(nn.Module):
    """Image-text matching head (`itm_score.fc`): logits [no match, match]; seeds `rank_output` for IRTR."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.fc = nn.Linear(hidden_size, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def build_heads(config: Mapping[str, Any], hidden_size: int, in_dim: int | None = None,
                only: Sequence[str] | None = None, gate: str = ">=1") -> nn.ModuleDict:
    """Heads for the active tasks of ``config["loss_names"]`` (classify mode), widths from ``hidden_size``;
    ``only``: the tasks to build heads for (None = all active). A config-reading convenience over
    ``build_task_heads``."""
    if "loss_names" not in config:
        raise KeyError("build_heads needs config['loss_names'] (a dict task -> gate, e.g. {'vqa': 1})")
    settings = settings_from_config(config)
    tasks = build_tasks(take(_Gates, config).loss_names, frozenset({"classify", "pair_images", "score_pairs", "itm",
                                                         "text_only", "generate"}), "heads", settings, gate)
    if only is not None:
        tasks = [t for t in tasks if t.name in set(only)]
    return build_task_heads(tasks, hidden_size, in_dim, settings.head_hidden)


@torch.no_grad()
def init_rank_output_from_itm(heads: nn.ModuleDict) -> None:
    """``rank_output`` := row 1 (the "match" logit) of ``itm_score.fc``; ``itm_score`` is frozen.

    Call again after loading a checkpoint that carries ``itm_score`` (heads are built before loading).
    The originals assign a view of the ITM row (``rank_output.weight.data = itm_score.fc.weight.data[1:]``), but
    moving the model to the GPU gives every parameter its own copy (``Module._apply`` sets ``param.data`` per
    parameter), so in their GPU runs ``itm_score`` stays at its loaded values while ``rank_output`` trains — as
    this copy does; METER's ITM loss (itm > 0 beside irtr) therefore scores with the frozen pre-trained head.
    """
    if "rank_output" not in heads or "itm_score" not in heads:
        raise KeyError("init_rank_output_from_itm needs heads 'itm_score' and 'rank_output' (irtr must be active)")
    fc, rank = heads["itm_score"].fc, heads["rank_output"]
    if rank.weight.shape[1] != fc.weight.shape[1]:
        raise ValueError(
            f"rank_output takes {rank.weight.shape[1]} features but itm_score.fc takes {fc.weight.shape[1]}"
        )
    rank.weight.copy_(fc.weight[1:2])
    rank.bias.copy_(fc.bias[1:2])
    for p in heads["itm_score"].parameters():
        p.requires_grad_(False)


def __getattr__(name: str) -> Any:
    # read from TASKS when asked (not at import: the task files import this module while TASKS is being filled)
    if name == "LR_MULT_HEADS":  # the heads the optimiser gives lr × lr_mult (the classifiers, not rank_output)
        return lr_mult_heads()
    if name == "TASK_HEADS":
        return {t.name: t.heads for t in all_tasks()}
    if name == "ORIGINAL_HEAD_PREFIXES":  # top-level head names in original ViLT/METER checkpoints
        return tuple(dict.fromkeys(head_names() + PRETRAINING_HEADS))
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["ITMHead", "PRETRAINING_HEADS", "TASK_GATES", "active_tasks", "build_heads", "init_rank_output_from_itm",
           "init_weights"]

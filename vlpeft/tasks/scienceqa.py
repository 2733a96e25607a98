"""ScienceQA: image + text multiple choice (LaVIN-DAS's multimodal setting): one logit per choice slot, slots past
a problem's own number of choices masked out."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vlpeft.tasks._base import Infer, head, labels_of, register_task
from vlpeft.tasks._classify import ClassifierTask

SCIENCEQA_CHOICES = 5  # ScienceQA problems have 2..5 choices; logits past a problem's own count are masked


@register_task
class ScienceQATask(ClassifierTask):
    """ScienceQA (``scienceqa_classifier``, CE against the answer's index over the problem's own choices)."""
    test_backbone = "test_clip_llama"

    name = "scienceqa"
    heads = ("scienceqa_classifier",)
    lr_mult_heads = ("scienceqa_classifier",)
    option_keys = {"label_size": ("scienceqa_label_size", SCIENCEQA_CHOICES)}
    answer_vocab_option = "label_size"

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        logits = head(heads, "scienceqa_classifier", "scienceqa")(feats)
        n = labels_of(batch, "scienceqa_num_choices", "scienceqa", logits.device)
        if bool((n > logits.shape[1]).any()):
            raise ValueError(f"a ScienceQA problem has {int(n.max())} choices but scienceqa_label_size="
                             f"{logits.shape[1]}; raise scienceqa_label_size")
        valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < n[:, None]
        return logits.masked_fill(~valid, torch.finfo(logits.dtype).min)

    def collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], label_size: int | None) -> None:
        super().collate(items, batch, label_size)
        if "scienceqa_num_choices" in items[0]:
            batch["scienceqa_num_choices"] = torch.tensor([int(it["scienceqa_num_choices"]) for it in items],
                                                          dtype=torch.long)


def compute_scienceqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return ScienceQATask().classify_step(infer, heads, batch)


__all__ = ["SCIENCEQA_CHOICES", "ScienceQATask", "compute_scienceqa"]

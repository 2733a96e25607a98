"""BoolQ: yes/no QA on text alone (LaVIN-DAS's language-only setting); only a backbone that reads text alone
(``text_only``: the PLM backbones) can take its batches, which carry no image."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from vlpeft.tasks._base import Infer, register_task
from vlpeft.tasks._classify import ClassifierTask

BOOLQ_CLASSES = 2  # no 0, yes 1


@register_task
class BoolQTask(ClassifierTask):
    """BoolQ (``boolq_classifier``, CE over {no, yes} from the backbone's cls features)."""
    test_backbone = "test_plm_bert"

    name = "boolq"
    needs = frozenset({"classify", "text_only"})
    heads = ("boolq_classifier",)
    lr_mult_heads = ("boolq_classifier",)
    num_classes = BOOLQ_CLASSES


def compute_boolq(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return BoolQTask().classify_step(infer, heads, batch)


__all__ = ["BOOLQ_CLASSES", "BoolQTask", "compute_boolq"]

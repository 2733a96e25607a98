"""SNLI-VE: three-way entailment of a hypothesis by an image (DVP, METER); accuracy also per dev / test file."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from vlpeft.tasks._base import Infer, OfficialScorer, register_task
from vlpeft.tasks._classify import ClassifierTask

SNLI_VE_CLASSES = 3  # contradiction 0, neutral 1, entailment 2


@register_task
class SNLIVETask(ClassifierTask):
    """SNLI-VE (``snli_ve_classifier``, CE over contradiction / neutral / entailment); selection on dev."""
    test_backbone = "test_vilt"

    name = "snli_ve"
    heads = ("snli_ve_classifier",)
    lr_mult_heads = ("snli_ve_classifier",)
    num_classes = SNLI_VE_CLASSES
    dev_test = True
    official = OfficialScorer("SNLI-VE accuracy", "snli_ve_accuracy_files", (("--annotations", False, "official JSON lines file (default: the rows' own 'label')"),))


def compute_snli_ve(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return SNLIVETask().classify_step(infer, heads, batch)


__all__ = ["SNLIVETask", "SNLI_VE_CLASSES", "compute_snli_ve"]

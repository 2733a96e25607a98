"""The step's objectives, one per task (each lives in its task's file, ``vlpeft/tasks/<task>.py``; re-exported
here under their old names): ``compute_<task>(infer, heads, batch) -> dict`` holding ``<task>_loss``,
``<task>_logits`` and what the metrics need; ``compute_tasks`` runs the active ones and sums every key containing
"loss" into ``loss`` (unweighted, as the originals)."""

from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import nn

from vlpeft.tasks._base import IGNORE_INDEX, TASKS, Infer, build_tasks, ce_and_accuracy, compute
from vlpeft.tasks.boolq import compute_boolq
from vlpeft.tasks.gqa import compute_gqa
from vlpeft.tasks.irtr import compute_irtr, irtr_batch, num_false_texts
from vlpeft.tasks.itm import compute_itm, itm_batch, itm_labels
from vlpeft.tasks.nlvr2 import compute_nlvr2
from vlpeft.tasks.scienceqa import compute_scienceqa
from vlpeft.tasks.snli_ve import compute_snli_ve
from vlpeft.tasks.vqa import compute_vqa, vqa_batch_score

_ce_and_accuracy = ce_and_accuracy
# every capability a classify-mode task may need: compute_tasks runs what loss_names asks, as before
_ALL_CLASSIFY = frozenset({"classify", "pair_images", "score_pairs", "itm", "text_only"})


def compute_tasks(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any],
                  loss_names: Mapping[str, float], gate: str = ">=1") -> dict[str, torch.Tensor]:
    """Run every active task (``gate``: ">=1" ViLT / DVP, ">0" METER) in classify mode; ``loss`` = unweighted sum of
    all values whose key contains "loss"."""
    tasks = build_tasks(loss_names, _ALL_CLASSIFY, "compute_tasks", gate=gate)
    if not tasks:
        raise ValueError(f"no active task in loss_names (a task is active when its weight is {gate})")
    return compute(tasks, infer, heads, batch)


def score_for_search(task: str, out: Mapping[str, Any]) -> float:
    """The KAB reward in percent (``Task.search_score``): VQA soft score ×100 at the argmax; accuracy ×100 else."""
    return TASKS.build(task).search_score(out)


__all__ = ["IGNORE_INDEX", "compute_boolq", "compute_gqa", "compute_irtr", "compute_itm", "compute_nlvr2",
           "compute_scienceqa", "compute_snli_ve", "compute_tasks", "compute_vqa", "irtr_batch", "itm_batch",
           "itm_labels", "num_false_texts", "score_for_search", "vqa_batch_score"]

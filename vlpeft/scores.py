"""A run's score by name: the metrics ``the_metric`` sums (the checkpoint monitor), and how runs, the demo and
the report print them. No imports, so ``python -m vlpeft.report`` stays light."""

from __future__ import annotations

import math
from typing import Any, Mapping

# tasks whose selection metric uses the held-out (dev) split when the phase has one
SPLIT_TASKS = ("nlvr2", "snli_ve")


def selection_metrics(task_scores: Mapping[str, Any]) -> list[tuple[str, float]]:
    """The named metrics ``the_metric`` sums (absent and NaN ones left out), in its order: what a run reports
    as its score (``vqa_score``, ``nlvr2_dev_accuracy``, ``ir_r1`` and ``tr_r1``, ``caption_cider``, ...)."""
    def get(key: str) -> float | None:
        v = task_scores.get(key)
        return None if v is None or math.isnan(float(v)) else float(v)

    keys = ["vqa_score", "gqa_accuracy", "boolq_accuracy", "scienceqa_accuracy", "itm_accuracy"]
    keys += [f"{t}_dev_accuracy" if get(f"{t}_dev_accuracy") is not None else f"{t}_accuracy" for t in SPLIT_TASKS]
    if get("ir_r1") is not None and get("tr_r1") is not None:
        keys += ["ir_r1", "tr_r1"]
    keys.append("caption_cider")
    return [(k, get(k)) for k in keys if get(k) is not None]


def metric_text(name: str, value: float) -> str:
    """``vqa_score 34.0 %`` (fractions in percent); CIDEr-D on pycocoevalcap's scale (papers print it ×100)."""
    if name == "caption_cider":
        return f"{name} {value:.3f} CIDEr-D"
    return f"{name} {100 * value:.1f} %"

"""Scoring helpers of the generate mode of tasks (VL-BART / VL-T5, ViT + GPT-2): VQA, GQA, NLVR2 as text, COCO
captioning. The mode is an option of each task (``vlpeft/tasks/<task>.py``, ``Task.for_backbone``): a backbone that
can ``generate`` and not ``classify`` runs it (so ``loss_names={"vqa": 1}`` on ``vl_bart`` is generative VQA);
``caption`` has only this mode. Each task in generate mode:

- trains on ``lm_loss`` of the batch's ``target_ids`` (the answer / caption tokens the collate chose, see
  ``vlpeft.data.generative``) → ``<task>_loss``;
- in validation and test (``compute(..., generate=True)``) decodes with ``num_beams`` / ``max_new_tokens``
  (config ``num_beams``, ``gen_max_length``: the originals' flags) and scores the strings:

  ========  =====================================================================  ======================
  task      per-sample score                                                       epoch metric (logged)
  ========  =====================================================================  ======================
  vqa       label soft score of the normalised answer (VL-Adapter's "topk_score")  ``vqa_score``
  gqa       same rule; GQA labels hold one answer of score 1, so exact match        ``gqa_accuracy``
  nlvr2     generated "true"/"false" equals the label (anything else is wrong)      ``nlvr2_accuracy``
                                                                                    (+ ``_dev``/``_test``)
  caption   none: corpus CIDEr-D, BLEU-4, METEOR, ROUGE-L over the split            ``caption_cider`` ...
  ========  =====================================================================  ======================

Generated answers are normalised with :func:`vlpeft.data.normalize.normalize_word` — the official VQA
evaluation's punctuation / digit / article rules, the same function the arrow writers built the label strings
with, so a label always matches itself (the official scorer, ``vlpeft.evaluate vqa``, remains the reference
number for a submission).
"""

from __future__ import annotations

import math
import re
from typing import Any, Mapping, Sequence

from vlpeft.data.normalize import normalize_word
from vlpeft.tasks._base import GENERATIVE_KEYS, settings_from_config

NLVR2_WORDS = {"true": 1, "false": 0}


# ---------------------------------------------------------------------------------------------- scoring
def soft_scores(generated: Sequence[str], answers: Sequence[Sequence[str]],
                scores: Sequence[Sequence[float]]) -> list[float]:
    """Per sample: the label score of ``normalize_word(generated)`` (0 when absent); NaN for a sample without
    answers (a test question), which the metric does not count."""
    if not len(generated) == len(answers) == len(scores):
        raise ValueError(f"soft_scores: {len(generated)} answers generated for {len(answers)} questions "
                         f"({len(scores)} score lists)")
    out = []
    for gen, ans, sc in zip(generated, answers, scores):
        if not ans:
            out.append(math.nan)
            continue
        label = dict(zip((str(a) for a in ans), (float(s) for s in sc)))
        out.append(label.get(normalize_word(str(gen).strip()), 0.0))
    return out


def nlvr2_predictions(generated: Sequence[str]) -> list[int]:
    """"true" → 1, "false" → 0 (after normalisation), anything else → -1 (never equals a label)."""
    return [NLVR2_WORDS.get(normalize_word(str(g).strip()), -1) for g in generated]


_COCO_NAME = re.compile(r"^COCO_[a-z]+\d{4}_(\d+)(?:\.\w+)?$")


def coco_image_id(image_id: Any) -> Any:
    """The id a COCO results file uses: ``COCO_val2014_000000391895.jpg`` (Karpathy arrow files keep the file
    name) → ``391895`` (int, what ``pycocotools.COCO.loadRes`` matches); other ids unchanged."""
    m = _COCO_NAME.match(str(image_id)) if isinstance(image_id, str) else None
    return int(m.group(1)) if m else image_id


def generation_options(config: Mapping[str, Any]) -> dict[str, int]:
    """The originals' flags: ``num_beams`` (scripts: 5) and ``gen_max_length`` (default 20) → generate()'s keys."""
    return settings_from_config(config).generation_options()


__all__ = ["GENERATIVE_KEYS", "coco_image_id", "generation_options", "nlvr2_predictions", "soft_scores"]

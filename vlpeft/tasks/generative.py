"""Tasks answered by generation (VL-BART / VL-T5, ViT + GPT-2): VQA, GQA, NLVR2 as text, COCO captioning.

``build_tasks`` picks these variants for a backbone that can ``generate`` and not ``classify`` (so
``loss_names={"vqa": 1}`` on ``vl_bart`` is generative VQA); ``caption`` exists only here. Each task:

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
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import torch

from vlpeft._registry import Registry
from vlpeft.data.normalize import normalize_word
from vlpeft.tasks._base import Task

GEN_TASK_NAMES = ("vqa", "gqa", "nlvr2", "caption")
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


# ---------------------------------------------------------------------------------------------- compute
def _compute(name: str, options: Mapping[str, Any], infer, heads, batch: Mapping[str, Any],
             generate: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "target_ids" in batch:  # absent at test time and for caption evaluation (one sample per image)
        feats = infer(batch)
        if "lm_loss" not in feats:
            raise KeyError(f"generative task {name!r}: the backbone returned no 'lm_loss' for a batch with "
                           f"target_ids (see vlpeft.backbones._generative)")
        out[f"{name}_loss"] = feats["lm_loss"]
    if not generate:
        return out
    generated = list(infer(batch, generate=True, **options)["generated"])
    out[f"{name}_generated"] = generated
    if name == "vqa" and "vqa_answer" in batch:
        out["vqa_gen_scores"] = torch.tensor(soft_scores(generated, batch["vqa_answer"], batch["vqa_scores"]),
                                             dtype=torch.float64)
    elif name == "gqa" and "gqa_answer" in batch:
        out["gqa_gen_scores"] = torch.tensor(soft_scores(generated, batch["gqa_answer"], batch["gqa_scores"]),
                                             dtype=torch.float64)
    elif name == "nlvr2":
        out["nlvr2_pred"] = torch.tensor(nlvr2_predictions(generated), dtype=torch.long)
        if "nlvr2_labels" in batch:
            out["nlvr2_labels"] = torch.as_tensor(batch["nlvr2_labels"]).long().cpu()
    return out


@dataclass(frozen=True)
class GenerativeTask(Task):
    """A task answered by the backbone's ``generate``; ``options`` = the generation keywords (beams, length)."""

    needs: frozenset[str] = frozenset({"generate"})
    single_pass: bool = False  # decoding is not a feature pass another plan could share
    generative: bool = True
    options: tuple[tuple[str, Any], ...] = (("num_beams", 1), ("max_new_tokens", 20))

    @property
    def heads(self) -> tuple[str, ...]:
        return ()  # the LM head is the backbone's

    def with_options(self, **options: Any) -> "GenerativeTask":
        opts = dict(self.options)
        unknown = sorted(set(options) - set(opts))
        if unknown:
            raise ValueError(f"generation options {unknown} unknown; use {sorted(opts)}")
        opts.update({k: int(v) for k, v in options.items() if v is not None})
        bad = {k: v for k, v in opts.items() if v < 1}
        if bad:
            raise ValueError(f"generation options must be >= 1 (config num_beams / gen_max_length), got {bad}")
        frozen = tuple(sorted(opts.items()))
        return replace(self, options=frozen, compute=_Compute(self.name, frozen))

    def search_score(self, out: Mapping[str, Any]) -> float:
        """Search reward without decoding: minus the LM loss of the batch (higher is better)."""
        key = f"{self.name}_loss"
        if key not in out:
            raise KeyError(f"search reward of generative task {self.name!r} needs {key!r} (a batch with target_ids)")
        return -float(out[key])

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """Rows for the test dumps: vqa ``{question_id, answer}``, gqa ``{questionId, answer}``, nlvr2
        ``{identifier | image_key, prediction, label}``, caption ``{image_id, caption}`` (COCO ids as ints)."""
        gen = out.get(f"{self.name}_generated")
        if gen is None:  # another task's batch in a multi-task run
            return []
        if self.name == "vqa":
            return [{"question_id": int(q), "answer": a} for q, a in zip(batch["qid"], gen)]
        if self.name == "gqa":
            return [{"questionId": str(q), "answer": a} for q, a in zip(batch["qid"], gen)]
        if self.name == "caption":
            return [{"image_id": coco_image_id(i), "caption": c} for i, c in zip(batch["image_id"], gen)]
        rows = []
        labels = out.get("nlvr2_labels")
        for i, g in enumerate(gen):
            r: dict[str, Any] = {k: batch[k][i] for k in ("identifier", "table_name", "image_key", "text")
                                 if k in batch}
            r["prediction"] = g
            if labels is not None:
                r["label"] = int(labels[i])
            rows.append(r)
        return rows


class _Compute:
    """Picklable ``compute`` bound to a task name and its generation options (a closure would not pickle)."""

    def __init__(self, name: str, options: tuple[tuple[str, Any], ...]):
        self.name, self.options = name, dict(options)

    def __call__(self, infer, heads, batch: Mapping[str, Any], generate: bool = False) -> dict[str, Any]:
        return _compute(self.name, self.options, infer, heads, batch, generate)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Compute) and (self.name, self.options) == (other.name, other.options)

    def __hash__(self) -> int:
        return hash((self.name, tuple(sorted(self.options.items()))))


# config keys the generative tasks and their data read (collected by vlpeft.config.registry_keys)
GENERATIVE_KEYS: dict[str, Any] = {
    "num_beams": 1,  # beam width of validation / test decoding (VL-Adapter scripts: 5)
    "gen_max_length": 20,  # most generated tokens, and the caption target truncation (the originals' flag)
    "use_tasks_prompts": True,  # the originals' textual task prefixes ("vqa: ", "gpa: ", "nlvr: ", "caption: ")
    "visual_features": "",  # VL-Adapter .h5 features: a folder / file, or {dataset: folder}; "" = images
    "n_boxes": 36,  # visual tokens per image (grid features max-pooled to this square grid)
    "multitask_sampling": "roundrobin",  # roundrobin | balanced (VL-Adapter's --multitask_sampling)
}

GEN_TASKS: Registry[GenerativeTask] = Registry("generative task", "loss_names")
for _name in GEN_TASK_NAMES:
    _t = GenerativeTask(_name, _Compute(_name, GenerativeTask.options))
    GEN_TASKS.register(_name, keys=GENERATIVE_KEYS)(lambda t=_t: t)


def generation_options(config: Mapping[str, Any]) -> dict[str, int]:
    """The originals' flags: ``num_beams`` (scripts: 5) and ``gen_max_length`` (default 20) → generate()'s keys."""
    return {"num_beams": int(config.get("num_beams", 1) or 1),
            "max_new_tokens": int(config.get("gen_max_length", 20) or 20)}


__all__ = ["GENERATIVE_KEYS", "GEN_TASKS", "GEN_TASK_NAMES", "GenerativeTask", "coco_image_id", "generation_options", "nlvr2_predictions",
           "soft_scores"]

"""LaVIN-DAS's generative QA (BoolQ, CommonsenseQA, GSM8K, ScienceQA): the LM is trained on the answer text
(``lm_loss`` of ``target_ids``) and scored on what it generates, the answer read back with the regular expressions
of LaVIN-DAS's evaluation scripts (``eval_mmlu.py`` for the language tasks, ``eval_scienceqa.py``).

Each task's generative dataset (``vlpeft.data.generative``) puts the prompt in ``text``, the training answer in
``target_text`` and the gold answer *as the scorer compares it* (a letter, a number string) in ``<task>_gold``; the
task extracts the generated answer (``extract``) and scores exact equality, as the originals do.
"""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch

from vlpeft.tasks._classify import ClassifierTask

FAILED = "FAILED"  # eval_mmlu.py / eval_scienceqa.py: what an unreadable generation counts as (never a gold answer)
# eval_mmlu.py (BoolQ, CSQA): "answer is X" first, else "Answer: X"; "." is any character, as there
ANSWER_IS_LETTER = re.compile(r"answer is ([A-Z]).")
ANSWER_LINE_LETTER = re.compile(r"Answer: ([A-Z])")


def answer_letter(generated: str) -> str:
    """The option letter eval_mmlu.py reads from a generation ("FAILED" when neither of its patterns matches)."""
    for pattern in (ANSWER_IS_LETTER, ANSWER_LINE_LETTER):
        found = pattern.findall(str(generated))
        if found:
            return found[0]
    return FAILED


class LavinQATask(ClassifierTask):
    """Generate mode of a LaVIN-DAS benchmark: ``<task>_accuracy`` = exact match of ``extract(generated)`` with the
    batch's ``<task>_gold``; test rows ``{qid, answer (generated text), pred (extracted), label (gold)}``."""

    prompt = ""  # the dataset's text is the whole LaVIN prompt
    target_max_length = None  # the answer is cut with the prompt (joint_tokens), not on its own
    joint_tokens = True

    @property
    def gold_key(self) -> str:
        return f"{self.name}_gold"

    def extract(self, generated: str, index: int, batch: Mapping[str, Any]) -> str:
        return answer_letter(generated)

    def score_generated(self, generated: list[str], batch: Mapping[str, Any]) -> dict[str, Any]:
        if self.gold_key not in batch:
            return {}
        preds = [self.extract(g, i, batch) for i, g in enumerate(generated)]
        gold = [str(g) for g in batch[self.gold_key]]
        return {f"{self.name}_pred": preds,
                f"{self.name}_gen_scores": torch.tensor([float(p == g) for p, g in zip(preds, gold)],
                                                        dtype=torch.float64)}

    def generated_rows(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        gen = out.get(f"{self.name}_generated")
        if gen is None:
            return []
        preds = out.get(f"{self.name}_pred") or [self.extract(g, i, batch) for i, g in enumerate(gen)]
        gold = batch.get(self.gold_key) or [None] * len(gen)
        qids = batch.get("qid") or [None] * len(gen)
        return [{"qid": q, "answer": g, "pred": p, "label": y} for q, g, p, y in zip(qids, gen, preds, gold)]


__all__ = ["ANSWER_IS_LETTER", "ANSWER_LINE_LETTER", "FAILED", "LavinQATask", "answer_letter"]

"""CommonsenseQA (LaVIN-DAS's ``commonsense_qa``): five options A–E, generate mode only. The LM learns
"Answer: The answer is X. <option>." and is scored on the letter it writes (``eval_mmlu.py``: exact match with the
answer key); the prompt is LaVIN-DAS's (``language_datasets.extract_csqa_dataset`` = ``OrgCommonSenseQA.py``)."""

from __future__ import annotations

from typing import Sequence

from vlpeft.tasks._base import register_task
from vlpeft.tasks._lavin import LavinQATask

CSQA_OPTIONS = "ABCDE"


def lavin_prompt(concept: str, question: str, choices: Sequence[str], labels: Sequence[str] = CSQA_OPTIONS) -> str:
    """The header naming the question's concept, the question, and one "X. <text>" line per option."""
    options = "".join(f"{lab}. {text}\n" for lab, text in zip(labels, choices))
    return (f"The following are multiple choice questions (with answers) about {concept}.\n\n"
            f"Question: {question}\nOptions: {options}")


def lavin_target(answer_key: str, choices: Sequence[str], labels: Sequence[str] = CSQA_OPTIONS) -> str:
    return f"Answer: The answer is {answer_key}. {choices[list(labels).index(answer_key)]}."


@register_task
class CSQATask(LavinQATask):
    """CommonsenseQA (generate: the generated option letter against ``answerKey``)."""
    test_backbone = "test_lavin"

    name = "csqa"
    modes = ("generate",)
    needs = frozenset({"generate"})
    list_fields = ("csqa_gold",)


__all__ = ["CSQATask", "CSQA_OPTIONS", "lavin_prompt", "lavin_target"]

"""GSM8K (LaVIN-DAS's ``gsm8k``): grade-school maths, generate mode only. The LM learns "Answer: The answer is N.
\\n\\nBecause: <reasoning>" (the release's reasoning without its ``<<…>>`` calculator notes) and is scored by exact
match of the number it writes with the number after "#### " in the release's answer, read as ``eval_mmlu.py``
reads it: the first "answer is … <digits, commas, dots>", commas dropped, one trailing "." dropped."""

from __future__ import annotations

import re
from typing import Any, Mapping

from vlpeft.tasks._base import register_task
from vlpeft.tasks._lavin import FAILED, LavinQATask

HEADER = "The following are linguistically diverse grade school math word problems (with answers).\n\n"
ANSWER_NUMBER = re.compile(r"answer is [^\d]*([\d,.]+)\s*[A-Za-z]*\.?")  # eval_mmlu.py, gsm8k
CALCULATOR = re.compile(r"<<.*?>>")


def split_answer(answer: str) -> tuple[str, str]:
    """The release's answer "<reasoning>#### <number>" → (reasoning, number as written)."""
    if "#### " not in str(answer):
        raise ValueError(f"a GSM8K answer must end with '#### <number>', got {str(answer)[-60:]!r}")
    reason, number = str(answer).split("#### ")[:2]
    return reason, number


def gold_number(answer: str) -> str:
    """What the 0-shot test file stores as the output (OrgGSM8K.py): the number after "#### ", commas removed."""
    return split_answer(answer)[1].replace(",", "").strip()


def lavin_prompt(question: str, test: bool = False) -> str:
    """Training (language_datasets.py) ends the question with a blank line, the test file (OrgGSM8K.py) with one
    newline."""
    return f"{HEADER}Question: {question}\n" + ("" if test else "\n")


def lavin_target(answer: str) -> str:
    reason, number = split_answer(answer)
    return f"Answer: The answer is {number}.\n\nBecause: {CALCULATOR.sub('', reason)}"


def extract_number(generated: str) -> str:
    found = ANSWER_NUMBER.findall(str(generated))
    if not found:
        return FAILED
    pred = found[0].replace(",", "")
    return pred[:-1] if pred.endswith(".") else pred


@register_task
class GSM8KTask(LavinQATask):
    """GSM8K (generate: the final number's exact match)."""
    test_backbone = "test_lavin"

    name = "gsm8k"
    modes = ("generate",)
    needs = frozenset({"generate"})
    list_fields = ("gsm8k_gold",)

    def extract(self, generated: str, index: int, batch: Mapping[str, Any]) -> str:
        return extract_number(generated)


__all__ = ["GSM8KTask", "extract_number", "gold_number", "lavin_prompt", "lavin_target", "split_answer"]

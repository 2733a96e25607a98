"""BoolQ: yes/no QA on text alone (LaVIN-DAS's language-only setting). Classify mode: a head on a text-only
backbone's features (``text_only``: the PLM backbones), the batches carry no image. Generate mode (LaVIN): the LM
learns LaVIN-DAS's answer text and is scored on the option letter it writes (``eval_mmlu.py``)."""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from vlpeft.tasks._base import Infer, register_task
from vlpeft.tasks._lavin import LavinQATask

BOOLQ_CLASSES = 2  # no 0, yes 1
# language_datasets.py (training) and OrgBoolQ.py (the 0-shot test file): the same prompt but for the header's
# final "." that the test file lacks
HEADER = "The following are yes/no questions (with answers) based on the given passage.\n\n"
TEST_HEADER = "The following are yes/no questions (with answers) based on the given passage\n\n"


def lavin_prompt(passage: str, question: str, test: bool = False) -> str:
    """LaVIN-DAS's BoolQ prompt (``test``: the evaluation file's header)."""
    return (f"{TEST_HEADER if test else HEADER}Passage: {passage}\n\nQuestion: {question}\n\n"
            "Options: A. True\nB. False\n\n")


def lavin_target(answer: bool) -> str:
    """The training answer text; the scorer compares its letter (A = yes / True, B = no / False)."""
    return f"Answer: The answer is {'A. True' if answer else 'B. False'}."


def lavin_gold(answer: bool) -> str:
    return "A" if answer else "B"


@register_task
class BoolQTask(LavinQATask):
    """BoolQ (classify: ``boolq_classifier``, CE over {no, yes} from the backbone's cls features; generate: LaVIN's
    "The answer is A. True." / "B. False.", the generated letter against the gold one)."""
    test_backbone = "test_plm_bert"

    name = "boolq"
    modes = ("classify", "generate")
    needs = frozenset({"classify", "text_only"})
    heads = ("boolq_classifier",)
    lr_mult_heads = ("boolq_classifier",)
    num_classes = BOOLQ_CLASSES
    list_fields = ("boolq_gold",)


def compute_boolq(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return BoolQTask().classify_step(infer, heads, batch)


__all__ = ["BOOLQ_CLASSES", "BoolQTask", "compute_boolq", "lavin_gold", "lavin_prompt", "lavin_target"]

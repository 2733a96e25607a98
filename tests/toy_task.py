"""A toy task in one file, registered like any task: ``toy_qtype`` — the question's type from its opening words
("how …" → 0, "what …" → 1, "is there …" → 2, anything else → 3) — on the synthetic VQAv2 arrow files.
``test_task_axis.py`` imports this file before the config is read and runs it through ``run.py`` (search, train,
test); nothing else in the project names it."""

from __future__ import annotations

from typing import Any

from vlpeft.data.datasets import VQADataset, register_dataset
from vlpeft.data.splits import SPLITS
from vlpeft.tasks import register_task
from vlpeft.tasks._classify import ClassifierTask

NAME = "toy_qtype"
OPENINGS = ("how ", "what ", "is there ")  # class i; any other opening is class len(OPENINGS)
CLASSES = len(OPENINGS) + 1


def question_type(text: str) -> int:
    t = text.lower()
    return next((i for i, o in enumerate(OPENINGS) if t.startswith(o)), len(OPENINGS))


class ToyQTypeDataset(VQADataset):
    """The VQAv2 files' questions; the label is the question's type."""

    key = NAME
    task = NAME

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        item[f"{NAME}_label"] = question_type(item["text"])
        item["qid"] = int(self.table.list_item("question_id", row, cap))


@register_task
class ToyQTypeTask(ClassifierTask):
    """Question type (``toy_qtype_classifier``, CE over 4 classes)."""
    test_backbone = "test_vilt"

    name = NAME
    heads = (f"{NAME}_classifier",)
    num_classes = CLASSES


register_dataset(ToyQTypeDataset, {s: list(v) for s, v in SPLITS[VQADataset.key].items()})

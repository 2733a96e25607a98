"""A toy task in one file, registered like any task: ``toy_count`` — how many words the question has (1, 2, 3 or
≥ 4 → classes 0..3) — on the synthetic VQAv2 arrow files. ``test_task_axis.py`` imports this file before the
config is read and runs it through ``run.py`` (search and train); nothing else in the project names it."""

from __future__ import annotations

from typing import Any

from vlpeft.data.datasets import VQADataset, register_dataset
from vlpeft.data.splits import SPLITS
from vlpeft.tasks import register_task
from vlpeft.tasks._classify import ClassifierTask

NAME = "toy_count"
CLASSES = 4


def word_count_class(text: str) -> int:
    return min(len(text.split()), CLASSES) - 1


class ToyCountDataset(VQADataset):
    """The VQAv2 files' questions; the label is the question's word-count class."""

    key = NAME
    task = NAME

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        item[f"{NAME}_label"] = word_count_class(item["text"])
        item["qid"] = int(self.table.list_item("question_id", row, cap))


@register_task
class ToyCountTask(ClassifierTask):
    """Word-count class of the question (``toy_count_classifier``, CE over 4 classes)."""

    name = NAME
    heads = (f"{NAME}_classifier",)
    num_classes = CLASSES


register_dataset(ToyCountDataset, {s: list(v) for s, v in SPLITS[VQADataset.key].items()})

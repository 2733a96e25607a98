"""GQA: a classifier over the answer vocabulary (DVP), or generated answers (VL-T5: the ``gpa: `` prompt, sic);
``gqa_predict_<run>.json`` in the official evaluation script's format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vlpeft.tasks._base import Infer, OfficialScorer, check_label_range, register_task
from vlpeft.tasks._classify import ClassifierTask
from vlpeft.tasks.dumps import answers_of_rows, write_gqa_predictions
from vlpeft.tasks.generative import soft_scores


@register_task
class GQATask(ClassifierTask):
    """GQA balanced (classify: ``gqa_classifier``, CE on the one labelled answer; generate: exact match, as GQA
    labels hold one answer of score 1)."""
    test_backbone = "test_vilt"

    name = "gqa"
    modes = ("classify", "generate")
    heads = ("gqa_classifier",)
    lr_mult_heads = ("gqa_classifier",)
    option_keys = {"label_size": ("gqa_label_size", 1843)}
    answer_vocab_file = "gqa_label_vocab.json"
    answer_vocab_option = "label_size"
    list_fields = ("gqa_answer", "gqa_scores")
    api_role = "answer"
    official = OfficialScorer("GQA accuracy", "gqa_accuracy_files", (
        ("--questions", True, "official GQA questions JSON (e.g. testdev_balanced)"),))
    prompt = "gpa: "  # the originals' GQA prefix has this typo; models trained with it expect it
    text_max_length = 20  # gqa_clip_data.py: encode(prompt + question, max_length=20)
    target_max_length = None  # GQA targets are not truncated
    multitask_ratio = (100, 60)  # multitask.py: gqa batch = int(bs * 100 / 60)

    def collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], label_size: int | None) -> None:
        if "gqa_labels" not in items[0]:
            return
        check_label_range("gqa", "gqa_label_size", label_size, [lab for it in items for lab in it["gqa_labels"]])
        batch["gqa_labels"] = torch.tensor([it["gqa_labels"][0] if it["gqa_labels"] else -100 for it in items],
                                           dtype=torch.long)

    def blank_targets(self) -> dict[str, Any]:
        return {"gqa_labels": []}

    def score_generated(self, generated: list[str], batch: Mapping[str, Any]) -> dict[str, Any]:
        if "gqa_answer" not in batch:
            return {}
        return {"gqa_gen_scores": torch.tensor(soft_scores(generated, batch["gqa_answer"], batch["gqa_scores"]),
                                               dtype=torch.float64)}

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{questionId, pred}`` (class id) or ``{questionId, answer}`` (generated)."""
        return self.question_predictions(out, batch, "questionId", str)

    def write_dump(self, rows, out_dir: Path, run_name: str, vocab, expected: Any = None, **_: Any) -> Path:
        return write_gqa_predictions([r["questionId"] for r in rows], answers_of_rows(rows, vocab or ()),
                                     Path(out_dir) / f"gqa_predict_{run_name}.json", expected_qids=expected)


def compute_gqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return GQATask().classify_step(infer, heads, batch)


__all__ = ["GQATask", "compute_gqa"]

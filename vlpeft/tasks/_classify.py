"""The shared shape of classification tasks (GQA, SNLI-VE, NLVR2, BoolQ, ScienceQA): a classifier head on
``cls_feats``, cross-entropy against ``<task>_labels``, accuracy (and its dev / test parts where a split file mixes
them), per-sample rows for ``<task>_predict_<run>.json``. A task file subclasses it and sets what differs."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from vlpeft.tasks._base import (Infer, Task, ce_and_accuracy, classifier, head, labels_of, positive_int,
                                split_rows, value_of)
from vlpeft.tasks.dumps import write_other_predictions
from vlpeft.tasks.metrics import Accuracy, Scalar, Scores

SPLITS = ("dev", "test")


class ClassifierTask(Task):
    num_classes: ClassVar[int] = 2  # or the option ``answer_vocab_option`` names
    head_inputs: ClassVar[int] = 1  # cls_feats concatenated per pass (NLVR2: 2)
    dev_test: ClassVar[bool] = False  # also <task>_dev_accuracy / _test_accuracy (files mixing dev and test)
    row_fields: ClassVar[tuple[str, ...]] = ("table_name", "image_key", "image_0_key", "text", "qid")

    @property
    def head_name(self) -> str:
        return self.heads[0]

    @property
    def labels_key(self) -> str:
        return f"{self.name}_labels"

    def classes(self) -> int:
        if self.answer_vocab_option:
            key = self.option_keys[self.answer_vocab_option][0]
            return positive_int(self.option(self.answer_vocab_option), key)
        return self.num_classes

    def build_heads(self, in_dim: int, inner: int) -> dict[str, nn.Module]:
        return {self.head_name: classifier(self.head_inputs * in_dim, inner, self.classes())}

    def features(self, infer: Infer, batch: Mapping[str, Any]) -> torch.Tensor:
        return infer(batch)["cls_feats"]

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        return head(heads, self.head_name, self.name)(feats)

    def classify_step(self, infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
        logits = self.logits(heads, self.features(infer, batch), batch)
        labels = labels_of(batch, self.labels_key, self.name, logits.device)
        loss, acc = ce_and_accuracy(logits, labels)
        return {self.loss_key: loss, f"{self.name}_logits": logits, self.labels_key: labels,
                f"{self.name}_accuracy": acc}

    # ------------------------------------------------------------------ selection and metrics
    def selection_key(self) -> str:
        return self.score_key or f"{self.name}_accuracy"

    def selection(self, values: Mapping[str, Any]) -> list[tuple[str, float]]:
        if self.dev_test and value_of(values, f"{self.name}_dev_accuracy") is not None:
            return [(f"{self.name}_dev_accuracy", value_of(values, f"{self.name}_dev_accuracy"))]
        return super().selection(values)

    def metric_names(self) -> list[str]:
        names = [f"{self.name}_accuracy"]
        return names + [f"{self.name}_{s}_accuracy" for s in SPLITS] if self.dev_test else names

    def make_metrics(self) -> dict[str, nn.Module]:
        kind = Scores if self.generative else Accuracy
        return {self.loss_key: Scalar(), **{n: kind() for n in self.metric_names()}}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if self.generative:
            if self.loss_key in out:
                metrics[self.loss_key].update(out[self.loss_key])
            if f"{self.name}_generated" in out:
                self.update_generated(metrics, out, batch)
            return
        metrics[self.loss_key].update(out[self.loss_key])
        logits, labels = out[f"{self.name}_logits"], out[self.labels_key]
        metrics[f"{self.name}_accuracy"].update(logits, labels)
        if self.dev_test and "table_name" in batch:
            for split in SPLITS:
                sel = split_rows(batch, split).to(logits.device)
                if bool(sel.any()):
                    metrics[f"{self.name}_{split}_accuracy"].update(logits[sel], labels[sel])

    def update_generated(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        """Generate mode: the per-sample scores ``score_generated`` put in ``<task>_gen_scores``."""
        if f"{self.name}_gen_scores" in out:
            metrics[f"{self.name}_accuracy"].update(out[f"{self.name}_gen_scores"])

    # ------------------------------------------------------------------ data, predictions, dump
    def collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], label_size: int | None) -> None:
        src = f"{self.name}_label"
        if src in items[0]:
            batch[self.labels_key] = torch.tensor([int(it[src]) for it in items], dtype=torch.long)

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{table_name, image_key, text, qid…, pred, label}`` (the fields the batch has)."""
        if self.generative:
            return self.generated_rows(out, batch)
        pred = out[f"{self.name}_logits"].detach().argmax(-1).cpu().tolist()
        labels = out[self.labels_key].detach().cpu().tolist()
        rows = []
        for i, (p, y) in enumerate(zip(pred, labels)):
            r: dict[str, Any] = {k: batch[k][i] for k in self.row_fields if k in batch}
            r.update(pred=p, label=y)
            rows.append(r)
        return rows

    def generated_rows(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        return []

    def write_dump(self, rows, out_dir: Path, run_name: str, vocab, expected: Any = None, **_: Any) -> Path:
        return write_other_predictions(self.name, rows, out_dir, run_name, vocab)


__all__ = ["ClassifierTask"]

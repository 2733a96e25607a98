"""NLVR2: is a sentence true of a pair of images? Classify: two full passes (image_0 with token type 1, image_1
with token type 2) and a classifier on the concatenation (ViLT, METER); generate: "true" / "false" (VL-T5)."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vlpeft.tasks._base import Infer, OfficialScorer, register_task, split_rows
from vlpeft.tasks._classify import SPLITS, ClassifierTask
from vlpeft.tasks.generative import nlvr2_predictions

NLVR2_CLASSES = 2


@register_task
class NLVR2Task(ClassifierTask):
    """NLVR2 (``nlvr2_classifier`` on [cls(image_0); cls(image_1)]); selection on dev."""
    test_backbone = "test_vilt"

    name = "nlvr2"
    modes = ("classify", "generate")
    needs = frozenset({"classify", "pair_images"})
    heads = ("nlvr2_classifier",)
    lr_mult_heads = ("nlvr2_classifier",)
    single_pass = False
    num_classes = NLVR2_CLASSES
    head_inputs = 2
    dev_test = True
    official = OfficialScorer("NLVR2 accuracy", "nlvr2_accuracy_files", (("--annotations", False, "official JSON lines file (default: the rows' own 'label')"),))
    prompt = "nlvr: "
    target_max_length = None  # nlvr targets are not truncated
    multitask_ratio = (20, 60)  # multitask.py: nlvr batch = int(bs * 20 / 60)

    def features(self, infer: Infer, batch: Mapping[str, Any]) -> torch.Tensor:
        f0 = infer(batch, image_key="image_0", image_token_type_idx=1)["cls_feats"]
        f1 = infer(batch, image_key="image_1", image_token_type_idx=2)["cls_feats"]
        return torch.cat([f0, f1], dim=-1)

    def score_generated(self, generated: list[str], batch: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {"nlvr2_pred": torch.tensor(nlvr2_predictions(generated), dtype=torch.long)}
        if "nlvr2_labels" in batch:
            out["nlvr2_labels"] = torch.as_tensor(batch["nlvr2_labels"]).long().cpu()
        return out

    def update_generated(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if "nlvr2_labels" not in out:
            return
        correct = (out["nlvr2_pred"] == out["nlvr2_labels"]).double()
        metrics["nlvr2_accuracy"].update(correct)
        for split in SPLITS:
            sel = split_rows(batch, split)
            if bool(sel.any()):
                metrics[f"nlvr2_{split}_accuracy"].update(correct[sel])

    def generative_collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any]) -> None:
        if "nlvr2_label" in items[0]:
            batch["nlvr2_labels"] = torch.tensor([int(it["nlvr2_label"]) for it in items], dtype=torch.long)

    def generated_rows(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{identifier | image_key, table_name, text, prediction, label}``."""
        gen = out.get("nlvr2_generated")
        if gen is None:  # another task's batch in a multi-task run
            return []
        rows, labels = [], out.get("nlvr2_labels")
        for i, g in enumerate(gen):
            r: dict[str, Any] = {k: batch[k][i] for k in ("identifier", "table_name", "image_key", "text")
                                 if k in batch}
            r["prediction"] = g
            if labels is not None:
                r["label"] = int(labels[i])
            rows.append(r)
        return rows


def compute_nlvr2(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return NLVR2Task().classify_step(infer, heads, batch)


__all__ = ["NLVR2Task", "NLVR2_CLASSES", "compute_nlvr2"]

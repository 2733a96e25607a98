"""Image-text matching (METER's F30K / COCO lines train it beside irtr, ``itm=0.5``): half the texts keep their
image, half get a drawn false image (``draw_false_image``); CE of ``itm_score`` (logits [no match, match])."""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.tasks._base import Infer, Task, head, register_task
from vlpeft.tasks.heads import ITMHead
from vlpeft.tasks.metrics import Accuracy, Scalar


def itm_labels(draws: torch.Tensor) -> torch.Tensor:
    """1 (the item's own image) for the ``B // 2`` items with the smallest draws, 0 (a drawn false image) for the
    rest: METER's exactly-half split (``randperm`` of B//2 ones then zeros), as a function of the per-item draws the
    dataset makes from (seed, epoch, index) — the same labels in every worker, rank and re-run of that batch."""
    draws = torch.as_tensor(draws).reshape(-1)
    labels = torch.zeros(draws.shape[0], dtype=torch.long, device=draws.device)
    labels[torch.argsort(draws, stable=True)[: draws.shape[0] // 2]] = 1
    return labels


def itm_batch(batch: Mapping[str, Any]) -> tuple[dict[str, Any], torch.Tensor]:
    """The ITM pairs: each text with its own image where its label is 1, else with ``false_image_0``."""
    for key in ("image", "false_image_0", "itm_draw"):
        if key not in batch:
            fix = " (draw_false_image >= 1 and a caption dataset: f30k / coco)" if key != "image" else ""
            raise KeyError(f"task 'itm' needs batch[{key!r}]{fix}")
    labels = itm_labels(batch["itm_draw"])
    pairs = {k: v for k, v in batch.items() if k != "image_key"}  # the image no longer is the row's own one
    keep = labels.to(batch["image"].device).bool()
    pairs["image"] = torch.where(keep[:, None, None, None], batch["image"], batch["false_image_0"])
    if "image_mask" in batch and "false_image_0_mask" in batch:
        pairs["image_mask"] = torch.where(keep[:, None, None], batch["image_mask"], batch["false_image_0_mask"])
    if "image_sizes" in batch and "false_image_0_sizes" in batch:
        pairs["image_sizes"] = [t if bool(k) else f for t, f, k in zip(batch["image_sizes"],
                                                                     batch["false_image_0_sizes"], keep.tolist())]
    return pairs, labels


@register_task
class ITMTask(Task):
    """ITM (``itm_score``); its pairs are not the batch as given (false images swapped in per row)."""
    test_backbone = "test_meter"

    name = "itm"
    needs = frozenset({"itm"})
    heads = ("itm_score",)
    single_pass = False
    false_images = True

    def build_heads(self, in_dim: int, inner: int) -> dict[str, nn.Module]:
        return {"itm_score": ITMHead(in_dim)}

    def classify_step(self, infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
        pairs, labels = itm_batch(batch)
        logits = head(heads, "itm_score", "itm")(infer(pairs)["cls_feats"])
        labels = labels.to(logits.device)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.detach().argmax(-1) == labels).float().mean()
        return {"itm_loss": loss, "itm_logits": logits, "itm_labels": labels, "itm_accuracy": acc}

    def make_metrics(self) -> dict[str, nn.Module]:
        return {"itm_loss": Scalar(), "itm_accuracy": Accuracy()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        metrics["itm_loss"].update(out["itm_loss"])
        metrics["itm_accuracy"].update(out["itm_logits"], out["itm_labels"])


def compute_itm(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return ITMTask().classify_step(infer, heads, batch)


__all__ = ["ITMTask", "compute_itm", "itm_batch", "itm_labels"]

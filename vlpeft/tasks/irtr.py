"""Image-text retrieval (Flickr30K / COCO Karpathy): rank the positive caption among 1 + ``draw_false_text``
captions per image with ``rank_output`` (seeded from ITM's "match" row); recall@1/5/10 over the whole split at
epoch end (``get_recall_metric``) through the backbone's ``encode_images`` / ``image_cache`` capability."""

from __future__ import annotations

import re
from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.tasks._base import IGNORE_INDEX, Infer, Task, batch_key, head, register_task, value_of
from vlpeft.tasks.heads import ITMHead, init_rank_output_from_itm
from vlpeft.tasks.metrics import Accuracy, Scalar, recall_at_k

_FALSE_TEXT = re.compile(r"^false_text_(\d+)_ids$")


def num_false_texts(batch: Mapping[str, Any]) -> int:
    """Number of ``false_text_{i}_ids`` entries; they must be numbered 0..n-1."""
    idx = sorted(int(m.group(1)) for k in batch if (m := _FALSE_TEXT.match(str(k))))
    if idx != list(range(len(idx))):
        raise KeyError(f"false_text_i_ids keys must be numbered 0..n-1, found indices {idx}")
    return len(idx)


def irtr_batch(batch: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """The B·(1+n) image-text pairs of an IRTR batch: each image repeated, its positive caption first.

    Row ``b·(1+n) + j`` pairs image b with caption j (0 = positive, j ≥ 1 = ``false_text_{j-1}``).
    """
    n = num_false_texts(batch)
    if n == 0:
        raise ValueError("irtr needs negative captions: set draw_false_text >= 1 (the originals use 15)")
    ids = torch.stack([batch_key(batch, "text_ids", "irtr")] + [batch[f"false_text_{i}_ids"] for i in range(n)], 1)
    masks = torch.stack(
        [batch_key(batch, "text_masks", "irtr")] + [batch_key(batch, f"false_text_{i}_masks", "irtr")
                                                    for i in range(n)], 1)
    cands = ids.shape[1]
    ids, masks = ids.flatten(0, 1), masks.flatten(0, 1)
    pairs: dict[str, Any] = {"text_ids": ids, "text_masks": masks, "text_labels": torch.full_like(ids, IGNORE_INDEX)}
    for key in ("image", "image_mask"):
        if key in batch:
            pairs[key] = batch[key].repeat_interleave(cands, dim=0)
    if "image" not in pairs:
        raise KeyError("task 'irtr' needs batch['image']")
    for key in ("image_key", "table_name", "image_sizes"):
        if key in batch:
            pairs[key] = [v for v in batch[key] for _ in range(cands)]
    return pairs, cands


@register_task
class RetrievalTask(Task):
    """IR/TR (``itm_score`` + ``rank_output``): CE of the positive caption's rank score; the selection metric is
    ``ir_r1 + tr_r1`` when recall was computed."""
    test_backbone = "test_vilt"

    name = "irtr"
    needs = frozenset({"score_pairs"})
    heads = ("itm_score", "rank_output")
    single_pass = False

    def build_heads(self, in_dim: int, inner: int) -> dict[str, nn.Module]:
        # one itm_score serves irtr and itm (METER's F30K / COCO lines run the two)
        return {"itm_score": ITMHead(in_dim), "rank_output": nn.Linear(in_dim, 1)}

    def init_heads(self, heads: nn.ModuleDict) -> None:
        init_rank_output_from_itm(heads)

    def classify_step(self, infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
        """Rank the positive caption (index 0) among 1 + draw_false_text captions per image; one infer call."""
        pairs, cands = irtr_batch(batch)
        scores = head(heads, "rank_output", "irtr")(infer(pairs)["cls_feats"])[:, 0]
        logits = scores.view(-1, cands)
        labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
        loss = F.cross_entropy(logits.float(), labels)
        acc = (logits.detach().argmax(-1) == 0).float().mean()
        return {"irtr_loss": loss, "irtr_logits": logits, "irtr_labels": labels, "irtr_accuracy": acc}

    def selection(self, values: Mapping[str, Any]) -> list[tuple[str, float]]:
        ir, tr = value_of(values, "ir_r1"), value_of(values, "tr_r1")
        return [] if ir is None or tr is None else [("ir_r1", ir), ("tr_r1", tr)]

    def make_metrics(self) -> dict[str, nn.Module]:
        return {"irtr_loss": Scalar(), "irtr_accuracy": Accuracy()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        metrics["irtr_loss"].update(out["irtr_loss"])
        metrics["irtr_accuracy"].update(out["irtr_logits"], out["irtr_labels"])

    def epoch_metrics(self, module: Any, split: str) -> dict[str, float]:
        """IR/TR recall@1/5/10 over every (image, caption) pair of the split (``get_recall_metric=True``): each
        image is encoded once and scored against every caption batch; every rank scores the whole split (small
        next to training), so no gather is needed."""
        if not self.settings.get_recall_metric or module.trainer.sanity_checking:
            return {}
        dm, bb, dev = module.trainer.datamodule, module.backbone, module.device
        texts = [module.transfer_batch_to_device(b, dev, 0)
                 for b in dm.recall_loader(dm.recall_text_dataset(split), batch_size=64)]
        txt_iids = torch.cat([b["iid"] for b in texts]).cpu()
        plan = module.plan()
        rows, img_iids = [], []
        for ib in dm.recall_loader(dm.recall_image_dataset(split), batch_size=1):
            cache = bb.encode_images(module.transfer_batch_to_device(ib, dev, 0))
            scores = [module.heads["rank_output"](bb(tb, plan, image_cache=cache)["cls_feats"])[:, 0].float().cpu()
                      for tb in texts]
            rows.append(torch.cat(scores))
            img_iids.append(int(ib["iid"][0]))
        recalls = recall_at_k(torch.stack(rows), img_iids, txt_iids)
        if module.trainer.is_global_zero:
            print(f"[vlpeft] {split} recall: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(recalls.items())),
                  flush=True)
        return recalls


def compute_irtr(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return RetrievalTask().classify_step(infer, heads, batch)


__all__ = ["RetrievalTask", "compute_irtr", "irtr_batch", "num_false_texts"]

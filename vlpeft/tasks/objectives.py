"""Task objectives: one function per task, ``compute_<task>(infer, heads, batch) -> dict``.

``infer(batch, **kw) -> {"cls_feats": (B, d), ...}`` is the backbone's bound ``infer`` with the placement
already applied. Every result holds ``<task>_loss`` (scalar), ``<task>_logits`` and what the metrics need;
``compute_tasks`` sums every key containing "loss" into ``loss`` (unweighted, as the originals).
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.tasks.heads import active_tasks

Infer = Callable[..., Mapping[str, torch.Tensor]]
IGNORE_INDEX = -100


def _head(heads: nn.ModuleDict, name: str, task: str) -> nn.Module:
    if name not in heads:
        raise KeyError(f"task {task!r} needs head {name!r}; build heads with loss_names[{task!r}] active")
    return heads[name]


def _batch_key(batch: Mapping[str, Any], key: str, task: str) -> Any:
    if key not in batch:
        raise KeyError(f"task {task!r} needs batch[{key!r}]; the datamodule/collate for this task must provide it")
    return batch[key]


def _labels(batch: Mapping[str, Any], key: str, task: str, device: torch.device) -> torch.Tensor:
    labels = _batch_key(batch, key, task)
    return torch.as_tensor(labels, dtype=torch.long).to(device)


def _ce_and_accuracy(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy ignoring -100 and the batch accuracy over the kept samples.

    A batch without any label (e.g. a test split) gives loss 0 (still attached to the graph) and NaN accuracy,
    instead of cross_entropy's NaN loss.
    """
    keep = labels != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0, torch.tensor(float("nan"), device=logits.device)
    loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
    acc = (logits.detach().argmax(-1)[keep] == labels[keep]).float().mean()
    return loss, acc


def vqa_batch_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the target soft score at the argmax class (in [0, 1])."""
    pred = logits.detach().argmax(-1, keepdim=True)
    return targets.gather(1, pred).float().mean()


def compute_vqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    feats = infer(batch)["cls_feats"]
    logits = _head(heads, "vqa_classifier", "vqa")(feats)
    targets = _batch_key(batch, "vqa_targets", "vqa").to(device=logits.device, dtype=torch.float32)
    if targets.shape != logits.shape:
        raise ValueError(
            f"vqa_targets has shape {tuple(targets.shape)} but the classifier gives {tuple(logits.shape)}; "
            "vqav2_label_size must equal the answer vocabulary size of the arrow files"
        )
    # mean over B×C, × C: the originals' scaling (= sum over labels, mean over samples)
    loss = F.binary_cross_entropy_with_logits(logits.float(), targets) * targets.shape[1]
    return {"vqa_loss": loss, "vqa_logits": logits, "vqa_targets": targets,
            "vqa_score": vqa_batch_score(logits, targets)}


def _compute_classification(task: str, head: str, label_key: str, infer: Infer, heads: nn.ModuleDict,
                            batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    feats = infer(batch)["cls_feats"]
    logits = _head(heads, head, task)(feats)
    labels = _labels(batch, label_key, task, logits.device)
    loss, acc = _ce_and_accuracy(logits, labels)
    return {f"{task}_loss": loss, f"{task}_logits": logits, f"{task}_labels": labels, f"{task}_accuracy": acc}


def compute_gqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _compute_classification("gqa", "gqa_classifier", "gqa_labels", infer, heads, batch)


def compute_snli_ve(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return _compute_classification("snli_ve", "snli_ve_classifier", "snli_ve_labels", infer, heads, batch)


def compute_boolq(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Yes/no QA on text alone (BoolQ): CE over {no, yes} from the backbone's cls features."""
    return _compute_classification("boolq", "boolq_classifier", "boolq_labels", infer, heads, batch)


def compute_scienceqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Multiple choice (ScienceQA): one logit per choice slot, slots past a problem's own number of choices
    (``scienceqa_num_choices``) masked out, CE against the answer's index."""
    feats = infer(batch)["cls_feats"]
    logits = _head(heads, "scienceqa_classifier", "scienceqa")(feats)
    labels = _labels(batch, "scienceqa_labels", "scienceqa", logits.device)
    n = _labels(batch, "scienceqa_num_choices", "scienceqa", logits.device)
    if bool((n > logits.shape[1]).any()):
        raise ValueError(f"a ScienceQA problem has {int(n.max())} choices but scienceqa_label_size="
                         f"{logits.shape[1]}; raise scienceqa_label_size")
    valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < n[:, None]
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    loss, acc = _ce_and_accuracy(logits, labels)
    return {"scienceqa_loss": loss, "scienceqa_logits": logits, "scienceqa_labels": labels,
            "scienceqa_accuracy": acc}


def compute_nlvr2(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Two full passes (image_0 with token type 1, image_1 with token type 2), classifier on the concatenation."""
    f0 = infer(batch, image_key="image_0", image_token_type_idx=1)["cls_feats"]
    f1 = infer(batch, image_key="image_1", image_token_type_idx=2)["cls_feats"]
    logits = _head(heads, "nlvr2_classifier", "nlvr2")(torch.cat([f0, f1], dim=-1))
    labels = _labels(batch, "nlvr2_labels", "nlvr2", logits.device)
    loss, acc = _ce_and_accuracy(logits, labels)
    return {"nlvr2_loss": loss, "nlvr2_logits": logits, "nlvr2_labels": labels, "nlvr2_accuracy": acc}


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
    ids = torch.stack([_batch_key(batch, "text_ids", "irtr")] + [batch[f"false_text_{i}_ids"] for i in range(n)], 1)
    masks = torch.stack(
        [_batch_key(batch, "text_masks", "irtr")] + [_batch_key(batch, f"false_text_{i}_masks", "irtr")
                                                     for i in range(n)], 1)
    bsz, cands = ids.shape[:2]
    ids, masks = ids.flatten(0, 1), masks.flatten(0, 1)
    pairs: dict[str, Any] = {
        "text_ids": ids,
        "text_masks": masks,
        "text_labels": torch.full_like(ids, IGNORE_INDEX),
    }
    for key in ("image", "image_mask"):
        if key in batch:
            pairs[key] = batch[key].repeat_interleave(cands, dim=0)
    if "image" not in pairs:
        raise KeyError("task 'irtr' needs batch['image']")
    for key in ("image_key", "table_name", "image_sizes"):
        if key in batch:
            pairs[key] = [v for v in batch[key] for _ in range(cands)]
    return pairs, cands


def compute_irtr(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Rank the positive caption (index 0) among 1 + draw_false_text captions per image; one infer call."""
    pairs, cands = irtr_batch(batch)
    feats = infer(pairs)["cls_feats"]
    scores = _head(heads, "rank_output", "irtr")(feats)[:, 0]
    logits = scores.view(-1, cands)
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.detach().argmax(-1) == 0).float().mean()
    return {"irtr_loss": loss, "irtr_logits": logits, "irtr_labels": labels, "irtr_accuracy": acc}


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


def compute_itm(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """METER's image-text matching: half the texts keep their image, half get ``false_image_0``; CE of
    ``itm_score`` (logits [no match, match]) against those labels. One infer call."""
    pairs, labels = itm_batch(batch)
    logits = _head(heads, "itm_score", "itm")(infer(pairs)["cls_feats"])
    labels = labels.to(logits.device)
    loss = F.cross_entropy(logits.float(), labels)
    acc = (logits.detach().argmax(-1) == labels).float().mean()
    return {"itm_loss": loss, "itm_logits": logits, "itm_labels": labels, "itm_accuracy": acc}


TASK_FUNCTIONS: dict[str, Callable[[Infer, nn.ModuleDict, Mapping[str, Any]], dict[str, torch.Tensor]]] = {
    "vqa": compute_vqa,
    "gqa": compute_gqa,
    "snli_ve": compute_snli_ve,
    "nlvr2": compute_nlvr2,
    "irtr": compute_irtr,
    "itm": compute_itm,
    "boolq": compute_boolq,
    "scienceqa": compute_scienceqa,
}


def compute_tasks(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any],
                  loss_names: Mapping[str, float], gate: str = ">=1") -> dict[str, torch.Tensor]:
    """Run every active task (``gate``: ">=1" ViLT / DVP, ">0" METER); ``loss`` = unweighted sum of all values
    whose key contains "loss"."""
    tasks = active_tasks(loss_names, gate)
    if not tasks:
        raise ValueError(f"no active task in loss_names (a task is active when its weight is {gate})")
    out: dict[str, torch.Tensor] = {}
    for task in tasks:
        out.update(TASK_FUNCTIONS[task](infer, heads, batch))
    out["loss"] = sum(v for k, v in out.items() if "loss" in k)
    return out


def score_for_search(task: str, out: Mapping[str, Any]) -> float:
    """The KAB reward in percent: VQA soft score ×100 at the argmax; top-1 accuracy ×100 otherwise."""
    key = "vqa_score" if task == "vqa" else f"{task}_accuracy"
    if key not in out:
        raise KeyError(f"score_for_search({task!r}) needs {key!r} in the objective's output; got {sorted(out)}")
    return float(out[key]) * 100.0

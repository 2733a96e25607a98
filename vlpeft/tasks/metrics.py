"""Metrics (torchmetrics, sum-reduced states so DDP gives exact global values), recall@k and the_metric.

``TaskMetrics`` is the per-phase collection the LightningModule updates with an objective's output;
``compute_and_reset()`` returns flat keys (``vqa_score``, ``nlvr2_dev_accuracy``, ...) that ``the_metric`` reads.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchmetrics import Metric

from vlpeft.tasks.caption_eval import caption_scores
from vlpeft.tasks.dumps import gather_predictions
from vlpeft.tasks._base import TASKS, all_tasks

IGNORE_INDEX = -100


class _SumCount(Metric):
    """``total / count`` with both states summed across processes; NaN when nothing was counted."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self.add_state("total", default=torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    def compute(self) -> torch.Tensor:
        if int(self.count) == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count


class VQAScore(_SumCount):
    """Per sample: the target soft score at the argmax class; compute = sum / number of annotated samples.

    A proxy of the official VQA accuracy (``vlpeft.evaluate vqa`` computes that one): the targets are the
    converter's soft scores over the answer vocabulary, so questions the converter dropped are not counted and
    answers are always normalised; see DATA.md "Evaluation" for the measured gap."""

    def update(self, logits: torch.Tensor, targets: torch.Tensor, annotated: list[bool] | None = None) -> None:
        """``annotated``: which samples have answers at all (None: all); the others are not counted."""
        logits, targets = logits.detach(), targets.detach().to(logits.device)
        if logits.shape != targets.shape:
            raise ValueError(f"VQAScore: logits {tuple(logits.shape)} and targets {tuple(targets.shape)} differ")
        score = targets.gather(1, logits.argmax(-1, keepdim=True))[:, 0].double()
        if annotated is not None:
            score = score[torch.tensor(annotated, dtype=torch.bool, device=score.device)]
        self.total += score.sum()
        self.count += score.shape[0] if annotated is None else sum(annotated)


class Accuracy(_SumCount):
    """Top-1 accuracy over the last dim; targets equal to -100 are dropped (micro average)."""

    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        logits = logits.detach()
        targets = torch.as_tensor(targets, device=logits.device).long()
        keep = targets != IGNORE_INDEX
        pred = logits.argmax(-1)
        self.total += (pred[keep] == targets[keep]).double().sum()
        self.count += int(keep.sum())


class Scalar(_SumCount):
    """Running mean of logged scalars (each update counts once, as the originals' loss meters)."""

    def update(self, value: torch.Tensor | float) -> None:
        v = torch.as_tensor(value).detach().double().to(self.total.device)
        if v.numel() != 1:
            raise ValueError(f"Scalar metric takes one value per update, got shape {tuple(v.shape)}")
        self.total += v.reshape(())
        self.count += 1


def recall_at_k(scores: torch.Tensor, img_ids: Sequence[int] | torch.Tensor,
                txt_img_ids: Sequence[int] | torch.Tensor, ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
    """Image→text (tr) and text→image (ir) recall@k from an (N_img × N_txt) score matrix.

    ``tr_rk`` = fraction of images with a matching caption among their k best texts;
    ``ir_rk`` = fraction of texts whose image is among their k best images (k capped at the set size).
    """
    scores = torch.as_tensor(scores)
    if scores.dim() != 2:
        raise ValueError(f"recall_at_k needs a 2-D (N_img, N_txt) score matrix, got shape {tuple(scores.shape)}")
    iids = torch.as_tensor(img_ids, dtype=torch.long, device=scores.device)
    tiids = torch.as_tensor(txt_img_ids, dtype=torch.long, device=scores.device)
    n_img, n_txt = scores.shape
    if iids.numel() != n_img or tiids.numel() != n_txt:
        raise ValueError(f"recall_at_k: scores {tuple(scores.shape)} but {iids.numel()} image ids and "
                         f"{tiids.numel()} text image-ids")
    out: dict[str, float] = {}
    for k in ks:
        top_txt = scores.topk(min(k, n_txt), dim=1).indices  # (N_img, k)
        tr = (tiids[top_txt] == iids[:, None]).any(dim=1).float().mean()
        top_img = scores.topk(min(k, n_img), dim=0).indices  # (k, N_txt)
        ir = (iids[top_img] == tiids[None, :]).any(dim=0).float().mean()
        out[f"ir_r{k}"] = float(ir)
        out[f"tr_r{k}"] = float(tr)
    return out


def the_metric(task_scores: Mapping[str, Any], tasks: Sequence[Any] | None = None) -> float:
    """Sum of each task's selection metric (the checkpoint monitor ``val/the_metric``): each registered task (or
    ``tasks``) names its own (``Task.selection``): ``vqa_score``; ``<task>_accuracy``; nlvr2 / snli_ve their
    ``_dev_accuracy`` when present; irtr ``ir_r1 + tr_r1`` when recall was computed; caption ``caption_cider``.
    Fix: the originals used the *test* accuracy for ViLT-NLVR2 and DVP-SNLI-VE (selection on the test set);
    we select on dev (held-out). NaN entries (metrics that saw no sample) count as absent.
    """
    return float(sum(v for _, v in selection_metrics(task_scores, tasks)))


def selection_metrics(task_scores: Mapping[str, Any], tasks: Sequence[Any] | None = None) -> list[tuple[str, float]]:
    """The named metrics ``the_metric`` sums, task by task (absent and NaN ones left out)."""
    seen: dict[str, float] = {}
    for t in (all_tasks() if tasks is None else tasks):
        for k, v in t.selection(task_scores):
            seen.setdefault(k, v)  # a metric two tasks would name counts once
    return list(seen.items())


class Scores(_SumCount):
    """Mean of per-sample scores computed on the host (generated answers); NaN entries are not counted."""

    def update(self, scores: torch.Tensor) -> None:
        s = torch.as_tensor(scores, dtype=torch.float64).detach().reshape(-1).to(self.total.device)
        keep = ~torch.isnan(s)
        self.total += s[keep].sum()
        self.count += keep.sum()


class CaptionScores(nn.Module):
    """Corpus caption metrics of a split: generated captions and references collected per image id, gathered
    from every rank at ``compute`` (``all_gather_object``), scored with pycocoevalcap
    (``caption_eval.caption_scores``): ``{"cider", "bleu4", "rouge_l"[, "meteor"]}``; ``{}`` when nothing was seen."""

    def __init__(self):
        super().__init__()
        self.reset()

    def reset(self) -> None:
        self.rows: list[tuple[Any, str, list[str]]] = []

    def update(self, image_ids: Sequence[Any], generated: Sequence[str], references: Sequence[Sequence[str]]) -> None:
        if not len(image_ids) == len(generated) == len(references):
            raise ValueError(f"CaptionScores: {len(image_ids)} image ids, {len(generated)} captions, "
                             f"{len(references)} reference lists")
        self.rows.extend((i, str(g), [str(r) for r in refs]) for i, g, refs in zip(image_ids, generated, references))

    def compute(self) -> dict[str, float]:
        rows = gather_predictions(self.rows)
        if not rows:
            return {}
        refs, preds = {}, {}
        for i, g, r in rows:  # the same image twice (sampler padding) keeps its first prediction
            if i not in preds:
                preds[i], refs[i] = g, r
        return caption_scores(refs, preds)


class TaskMetrics(nn.Module):
    """The metrics of one phase for the active tasks; an ``nn.Module`` so Lightning moves it to the device.

    Each task names its metrics (``Task.make_metrics``: ``<task>_loss`` and its score, e.g. ``vqa_score``,
    ``nlvr2_dev_accuracy``, ``caption`` corpus scores) and updates them from a step's output
    (``Task.update_metrics``); a multi-task batch updates only its own task."""

    def __init__(self, tasks: Sequence[Any], prefix: str = ""):
        super().__init__()
        # task objects (their mode decides the metrics); a name means the registered task in its first mode
        self.task_objects = [TASKS.build(t) if isinstance(t, str) else t for t in tasks]
        self.prefix = prefix
        self.tasks = [t.name for t in self.task_objects]
        m: dict[str, Any] = {}
        for t in self.task_objects:
            m.update(t.make_metrics())
        self.metrics = nn.ModuleDict(m)

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        for t in self.task_objects:
            if t.owns(batch, len(self.task_objects)):
                t.update_metrics(self.metrics, out, batch)

    def compute_and_reset(self) -> dict[str, float]:
        """Every metric is computed on every rank (keeps DDP syncs aligned); NaN (nothing seen) is dropped."""
        values: dict[str, float] = {}
        with warnings.catch_warnings():
            # "compute called before update" is expected for split metrics a phase never fills
            warnings.filterwarnings("ignore", message=".*compute.*before.*update.*")
            for name, metric in self.metrics.items():
                result = metric.compute()
                metric.reset()
                if isinstance(result, Mapping):  # corpus metrics of one task (captioning): caption_<metric>
                    values.update({f"{name}_{k}": float(v) for k, v in result.items()})
                    continue
                v = float(result)
                if not math.isnan(v):
                    values[name] = v
        return values


def predictions(out: Mapping[str, Any], batch: Mapping[str, Any], tasks: Sequence[Any]) -> dict[str, list[dict]]:
    """Per-sample prediction rows of each task (``Task.predictions``; task objects, or names in classify mode) for
    the test dumps (CPU Python objects, ready for all_gather_object); a task without per-sample answers (retrieval)
    gives none."""
    rows: dict[str, list[dict]] = {}
    for t in tasks:
        task = TASKS.build(t) if isinstance(t, str) else t
        got = task.predictions(out, batch)
        if got:
            rows[task.name] = got
    return rows

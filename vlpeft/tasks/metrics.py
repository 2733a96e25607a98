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
from vlpeft.scores import SPLIT_TASKS  # (with the named scores a run reports, which the_metric sums)

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


def the_metric(task_scores: Mapping[str, Any]) -> float:
    """Sum of each task's selection metric (the checkpoint monitor ``val/the_metric``).

    vqa → ``vqa_score``; gqa / boolq / scienceqa → ``<task>_accuracy``; nlvr2 / snli_ve → ``<task>_dev_accuracy`` when present, else
    ``<task>_accuracy``; irtr → ``ir_r1 + tr_r1`` when recall was computed (else 0); itm → ``itm_accuracy`` (METER's
    F30K / COCO lines select on recall + ITM accuracy).
    Fix: the originals used the *test* accuracy for ViLT-NLVR2 and DVP-SNLI-VE (selection on the test set);
    we select on dev (held-out). NaN entries (metrics that saw no sample) count as absent.
    """
    def get(key: str) -> float | None:
        v = task_scores.get(key)
        if v is None:
            return None
        v = float(v)
        return None if math.isnan(v) else v

    total = 0.0
    for key in ("vqa_score", "gqa_accuracy", "boolq_accuracy", "scienceqa_accuracy", "itm_accuracy"):
        v = get(key)
        total += v if v is not None else 0.0
    for task in SPLIT_TASKS:
        v = get(f"{task}_dev_accuracy")
        if v is None:
            v = get(f"{task}_accuracy")
        total += v if v is not None else 0.0
    if get("ir_r1") is not None and get("tr_r1") is not None:
        total += get("ir_r1") + get("tr_r1")
    v = get("caption_cider")
    total += v if v is not None else 0.0
    return total


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


def _task_name(t: Any) -> str:
    return t if isinstance(t, str) else t.name


class TaskMetrics(nn.Module):
    """The metrics of one phase for the active tasks; an ``nn.Module`` so Lightning moves it to the device.

    Keys: ``vqa_score, vqa_loss``; ``gqa_accuracy, gqa_loss``; for nlvr2 / snli_ve ``<t>_accuracy, <t>_loss`` and
    ``<t>_dev_accuracy`` / ``<t>_test_accuracy`` over samples whose ``table_name`` contains "dev" / "test";
    ``irtr_loss, irtr_accuracy`` (positive caption ranked first). Generative tasks (``Task`` objects with
    ``generative=True``; pass the task objects, not names) have the same keys from their decoded answers, filled
    only in phases that decode (validation, test), plus ``caption_loss`` and ``caption_{cider, bleu4, rouge_l,
    meteor}``; a multi-task batch updates only its own task.
    """

    def __init__(self, tasks: Sequence[Any], prefix: str = ""):
        super().__init__()
        self.tasks, self.prefix = [_task_name(t) for t in tasks], prefix
        self.generative = {_task_name(t) for t in tasks if getattr(t, "generative", False)}
        m: dict[str, Any] = {}
        for t in self.tasks:
            m[f"{t}_loss"] = Scalar()
            if t in self.generative:
                if t == "vqa":
                    m["vqa_score"] = Scores()
                elif t == "gqa":
                    m["gqa_accuracy"] = Scores()
                elif t == "nlvr2":
                    for name in ("nlvr2_accuracy", "nlvr2_dev_accuracy", "nlvr2_test_accuracy"):
                        m[name] = Scores()
                elif t == "caption":
                    m["caption"] = CaptionScores()
                else:
                    raise ValueError(f"TaskMetrics: no metrics defined for generative task {t!r}")
                continue
            if t == "vqa":
                m["vqa_score"] = VQAScore()
            elif t in ("gqa", "irtr", "itm", "boolq", "scienceqa"):
                m[f"{t}_accuracy"] = Accuracy()
            elif t in SPLIT_TASKS:
                for name in (f"{t}_accuracy", f"{t}_dev_accuracy", f"{t}_test_accuracy"):
                    m[name] = Accuracy()
            else:
                raise ValueError(f"TaskMetrics: no metrics defined for task {t!r}")
        self.metrics = nn.ModuleDict(m)

    def _update_generative(self, t: str, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if f"{t}_loss" in out:
            self.metrics[f"{t}_loss"].update(out[f"{t}_loss"])
        if f"{t}_generated" not in out:
            return  # training step, or another task's batch
        if t in ("vqa", "gqa") and f"{t}_gen_scores" in out:
            self.metrics["vqa_score" if t == "vqa" else "gqa_accuracy"].update(out[f"{t}_gen_scores"])
        elif t == "nlvr2" and "nlvr2_labels" in out:
            correct = (out["nlvr2_pred"] == out["nlvr2_labels"]).double()
            self.metrics["nlvr2_accuracy"].update(correct)
            names = list(batch.get("table_name") or [])
            for split in ("dev", "test"):
                sel = torch.tensor([split in n for n in names], dtype=torch.bool)
                if bool(sel.any()):
                    self.metrics[f"nlvr2_{split}_accuracy"].update(correct[sel])
        elif t == "caption" and "references" in batch:
            self.metrics["caption"].update(batch["image_id"], out["caption_generated"], batch["references"])

    def update(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        own = batch.get("task") if isinstance(batch, Mapping) else None
        for t in self.tasks:
            if t in self.generative:
                if not own or own == t or len(self.tasks) == 1:
                    self._update_generative(t, out, batch)
                continue
            if t == "vqa":
                annotated = batch.get("vqa_has_answers")
                if annotated is None or any(annotated):  # a batch without annotations has no loss to report
                    self.metrics["vqa_loss"].update(out["vqa_loss"])
                self.metrics["vqa_score"].update(out["vqa_logits"], out["vqa_targets"], annotated)
                continue
            self.metrics[f"{t}_loss"].update(out[f"{t}_loss"])
            logits, labels = out[f"{t}_logits"], out[f"{t}_labels"]
            self.metrics[f"{t}_accuracy"].update(logits, labels)
            if t in SPLIT_TASKS and "table_name" in batch:
                names = list(batch["table_name"])
                for split in ("dev", "test"):
                    sel = torch.tensor([split in n for n in names], dtype=torch.bool, device=logits.device)
                    if bool(sel.any()):
                        self.metrics[f"{t}_{split}_accuracy"].update(logits[sel], labels[sel])

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


def predictions(out: Mapping[str, Any], batch: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, list[dict]]:
    """Per-sample predicted class ids for the test dumps (CPU Python objects, ready for all_gather_object).

    vqa → ``{"question_id": int, "pred": int}``; gqa → ``{"questionId": str, "pred": int}``;
    snli_ve / nlvr2 → ``{"table_name", "image_key", "text", "pred", "label"}`` (fields the batch has).
    Ids are mapped to answer strings by the caller (it owns the label vocabulary).
    """
    rows: dict[str, list[dict]] = {}
    for t in tasks:
        if t in ("irtr", "itm"):  # no per-sample answers to dump (recall is the retrieval result)
            continue
        pred = out[f"{t}_logits"].detach().argmax(-1).cpu().tolist()
        if t == "vqa":
            rows[t] = [{"question_id": int(q), "pred": p} for q, p in zip(batch["qid"], pred)]
        elif t == "gqa":
            rows[t] = [{"questionId": str(q), "pred": p} for q, p in zip(batch["qid"], pred)]
        else:
            labels = out[f"{t}_labels"].detach().cpu().tolist()
            per = []
            for i, (p, y) in enumerate(zip(pred, labels)):
                r: dict[str, Any] = {}
                for key in ("table_name", "image_key", "image_0_key", "text", "qid"):
                    if key in batch:
                        r[key] = batch[key][i]
                r.update(pred=p, label=y)
                per.append(r)
            rows[t] = per
    return rows

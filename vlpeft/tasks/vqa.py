"""VQAv2: a classifier over the answer vocabulary trained on soft scores (ViLT / METER / DVP), or generated answers
(VL-BART / VL-T5) scored against the same soft labels; the EvalAI submission ``vqa_submit_<run>.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.tasks._base import (Infer, OfficialScorer, Task, batch_key, check_label_range, classifier, head,
                                positive_int, register_task)
from vlpeft.tasks.dumps import answers_of_rows, read_question_ids, write_vqa_submission
from vlpeft.tasks.generative import soft_scores
from vlpeft.tasks.metrics import Scalar, Scores, VQAScore


def vqa_batch_score(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean over samples of the target soft score at the argmax class (in [0, 1])."""
    pred = logits.detach().argmax(-1, keepdim=True)
    return targets.gather(1, pred).float().mean()


@register_task
class VQATask(Task):
    """VQAv2 (classify: ``vqa_classifier``, BCE on the soft targets × the label count; generate: VL-T5's
    ``vqa: `` prompt, an answer drawn ∝ its score as the target)."""
    test_backbone = "test_vilt"

    name = "vqa"
    modes = ("classify", "generate")
    heads = ("vqa_classifier",)
    lr_mult_heads = ("vqa_classifier",)
    score_key = "vqa_score"
    option_keys = {"label_size": ("vqav2_label_size", 3129), "fill_questions": ("vqa_fill_questions", ""),
                   "fill_answer": ("vqa_fill_answer", "yes")}
    answer_vocab_file = "vqav2_label_vocab.json"
    answer_vocab_option = "label_size"
    submission = True
    api_role = "answer"
    official = OfficialScorer("official VQAv2 accuracy", "vqa_accuracy_files", (
        ("--questions", True, "v2_OpenEnded_mscoco_*_questions.json"),
        ("--annotations", True, "v2_mscoco_*_annotations.json")))
    list_fields = ("vqa_labels", "vqa_scores", "vqa_answer")
    prompt = "vqa: "
    text_max_length = 20  # vqa_clip_data.py: encode(prompt + question, max_length=20)
    target_max_length = 10  # and the answer to 10 tokens

    def build_heads(self, in_dim: int, inner: int) -> dict[str, nn.Module]:
        return {"vqa_classifier": classifier(in_dim, inner, positive_int(self.option("label_size"),
                                                                          "vqav2_label_size"))}

    def classify_step(self, infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
        feats = infer(batch)["cls_feats"]
        logits = head(heads, "vqa_classifier", "vqa")(feats)
        targets = batch_key(batch, "vqa_targets", "vqa").to(device=logits.device, dtype=torch.float32)
        if targets.shape != logits.shape:
            raise ValueError(
                f"vqa_targets has shape {tuple(targets.shape)} but the classifier gives {tuple(logits.shape)}; "
                "vqav2_label_size must equal the answer vocabulary size of the arrow files"
            )
        # mean over B×C, × C: the originals' scaling (= sum over labels, mean over samples)
        loss = F.binary_cross_entropy_with_logits(logits.float(), targets) * targets.shape[1]
        return {"vqa_loss": loss, "vqa_logits": logits, "vqa_targets": targets,
                "vqa_score": vqa_batch_score(logits, targets)}

    def score_generated(self, generated: list[str], batch: Mapping[str, Any]) -> dict[str, Any]:
        if "vqa_answer" not in batch:
            return {}
        return {"vqa_gen_scores": torch.tensor(soft_scores(generated, batch["vqa_answer"], batch["vqa_scores"]),
                                               dtype=torch.float64)}

    # ------------------------------------------------------------------ metrics
    def make_metrics(self) -> dict[str, nn.Module]:
        return {"vqa_loss": Scalar(), "vqa_score": Scores() if self.generative else VQAScore()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if self.generative:
            if "vqa_loss" in out:
                metrics["vqa_loss"].update(out["vqa_loss"])
            if "vqa_generated" in out and "vqa_gen_scores" in out:
                metrics["vqa_score"].update(out["vqa_gen_scores"])
            return
        annotated = batch.get("vqa_has_answers")
        if annotated is None or any(annotated):  # a batch without annotations has no loss to report
            metrics["vqa_loss"].update(out["vqa_loss"])
        metrics["vqa_score"].update(out["vqa_logits"], out["vqa_targets"], annotated)

    # ------------------------------------------------------------------ data
    def collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], label_size: int | None) -> None:
        if "vqa_labels" not in items[0]:
            return
        size = check_label_range("vqa", "vqav2_label_size", label_size,
                                 [lab for it in items for lab in it["vqa_labels"]])
        targets = torch.zeros(len(items), size, dtype=torch.float32)
        for b, it in enumerate(items):
            for lab, score in zip(it["vqa_labels"], it["vqa_scores"]):
                targets[b, lab] = score
        batch["vqa_targets"] = targets
        # which questions are annotated at all (a Python list: stays on the host, no device sync to read it);
        # a test split has none, and its "score" must not be reported as 0
        batch["vqa_has_answers"] = [bool(it.get("vqa_answer")) for it in items]

    def blank_targets(self) -> dict[str, Any]:
        return {"vqa_labels": [], "vqa_scores": [], "vqa_answer": []}

    # ------------------------------------------------------------------ predictions and the submission
    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{question_id, pred}`` (class id; the dump maps it through the vocabulary) or ``{question_id, answer}``."""
        return self.question_predictions(out, batch, "question_id", int)

    def dump_options(self) -> dict[str, Any]:
        """``vqa_fill_questions`` (test2015 questions JSON) fills a test-dev submission to every test-std question,
        as EvalAI requires."""
        path = self.option("fill_questions")
        return {"fill_question_ids": read_question_ids(path) if path else None, "fill": self.option("fill_answer")}

    def write_dump(self, rows, out_dir: Path, run_name: str, vocab, expected: Any = None,
                   fill_question_ids: Any = None, fill: str = "yes", **_: Any) -> Path:
        return write_vqa_submission([r["question_id"] for r in rows], answers_of_rows(rows, vocab or ()),
                                    Path(out_dir) / f"vqa_submit_{run_name}.json", expected_qids=expected,
                                    fill_question_ids=fill_question_ids, fill=fill)


def compute_vqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return VQATask().classify_step(infer, heads, batch)


__all__ = ["VQATask", "compute_vqa", "vqa_batch_score"]

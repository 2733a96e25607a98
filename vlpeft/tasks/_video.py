"""Shared parts of the four VALUE video-text tasks (``tvqa``, ``how2qa``: multiple-choice QA; ``tvc``, ``yc2c``:
captioning), generate mode on VL-BART / VL-T5 with 512-d CLIP-ViT frame features, as VL-Adapter's
``multitask_video.py`` and ``video/*_data.py`` run them:

- the input is the data's text with the task prefix AFTER it (``f"{sent} {prompt}"``), 600 tokens at most;
  targets (``"a<k>"`` / the caption) are truncated to 20 tokens, both hard-coded in the originals;
- QA accuracy: a generated string is right when it equals the target ``"a<answer_idx>"`` exactly (the
  original's ``TVQAEvaluator``: no normalisation; anything else — ``"a 3"``, ``"3"`` — is wrong). Logged as
  ``<task>_accuracy`` (the original's ``all_type_accuracy``; its per-type split is not logged);
- caption scores: CIDEr-D, BLEU-4, METEOR (with Java), ROUGE-L through pycocoevalcap (``caption_eval``), one
  sample per description with that description as its only reference (the original's val: ``evaluate(predicts,
  answers)`` with one answer per sample) → ``<task>_cider`` …;
- test dumps in the originals' formats: QA ``{question_id: option index}`` (the index is the character after
  ``"a"``, 0 where that is no digit — the original's ``int(pred[1])`` with its fallback); captions one JSON line per
  clip ``{"vid_name", "clip_id"[, "ts"], "descs": [{"desc"}]}``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from vlpeft._io import atomic_path, write_json_atomic
from vlpeft.tasks._base import OfficialScorer, Task, value_of
from vlpeft.tasks.dumps import SubmissionError, _dedupe, _sort_key
from vlpeft.tasks.metrics import CaptionScores, Scalar, Scores

TEXT_MAX_LENGTH = 600  # video/*_data.py: tokenizer.encode(f"{sent} {prompt}", max_length=600, truncation=True)
TARGET_MAX_LENGTH = 20  # and encode(answer, max_length=20, truncation=True), captions included

# ``python -m vlpeft.evaluate <task>``: a dump scored against the VALUE annotations of a split with answers (val);
# the test splits are scored by the VALUE server
QA_SCORER = OfficialScorer("TVQA / How2QA accuracy of a {question_id: option} dump", "video_qa_accuracy_files", (
    ("--annotations", True, "VALUE QA JSON lines with answer_idx, e.g. ann/tvqa/tvqa_val.jsonl"),))
CAPTION_SCORER = OfficialScorer("TVC / YC2C caption scores of a JSON-lines dump (one caption per clip)",
                                "video_caption_scores_files", (
    ("--annotations", True, "VALUE caption JSON lines with descs, e.g. ann/tvc/tvc_val_release.jsonl"),))


def qa_correct(generated: Sequence[str], answers: Sequence[str | None]) -> list[float]:
    """Per sample 1.0 when the generated string equals the answer (``"a<k>"``), else 0.0; NaN without an answer."""
    if len(generated) != len(answers):
        raise ValueError(f"{len(generated)} answers generated for {len(answers)} questions")
    return [math.nan if a is None else float(str(g) == str(a)) for g, a in zip(generated, answers)]


def option_index(answer: str) -> int:
    """The option a generated answer names in the test dump: ``int(answer[1])``, 0 when that fails."""
    try:
        return int(str(answer)[1])
    except (IndexError, ValueError):
        return 0


class VideoQATask(Task):
    modes = ("generate",)
    needs = frozenset({"generate"})
    list_fields = ("video_id", "type", "answer")
    text_max_length = TEXT_MAX_LENGTH
    target_max_length = TARGET_MAX_LENGTH
    dump_file: ClassVar[str] = ""  # the original's test file name (the run name goes before the suffix)

    def input_text(self, text: str, prompt: str) -> str:
        return f"{text} {prompt}"

    def score_generated(self, generated: list[str], batch: Mapping[str, Any]) -> dict[str, Any]:
        if "answer" not in batch:
            return {}
        return {f"{self.name}_correct": torch.tensor(qa_correct(generated, batch["answer"]), dtype=torch.float64)}

    def make_metrics(self) -> dict[str, nn.Module]:
        return {self.loss_key: Scalar(), f"{self.name}_accuracy": Scores()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if self.loss_key in out:
            metrics[self.loss_key].update(out[self.loss_key])
        if f"{self.name}_correct" in out:
            metrics[f"{self.name}_accuracy"].update(out[f"{self.name}_correct"])

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{qid, answer}`` (the generated string)."""
        return self.question_predictions(out, batch, "qid", str)

    def write_dump(self, rows: Sequence[Mapping[str, Any]], out_dir: Path, run_name: str, vocab,
                   expected: Any = None, **_: Any) -> Path:
        return write_qa_dump(rows, Path(out_dir) / dump_name(self.dump_file, run_name))


class VideoCaptionTask(Task):
    modes = ("generate",)
    needs = frozenset({"generate"})
    single_pass = False
    list_fields = ("video_id", "type", "clip_id", "ts", "references")
    text_max_length = TEXT_MAX_LENGTH
    target_max_length = TARGET_MAX_LENGTH
    uses_ts: ClassVar[bool] = True  # TVC's dump rows carry the clip's time span; YC2C's do not
    dump_file: ClassVar[str] = ""

    def input_text(self, text: str, prompt: str) -> str:
        return f"{text} {prompt}"

    def make_metrics(self) -> dict[str, nn.Module]:
        return {self.loss_key: Scalar(), self.name: CaptionScores()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if self.loss_key in out:
            metrics[self.loss_key].update(out[self.loss_key])
        gen = out.get(f"{self.name}_generated")
        if gen is None or "references" not in batch:
            return
        keep = [i for i, r in enumerate(batch["references"]) if r]  # test clips carry no reference
        if keep:
            metrics[self.name].update([batch["qid"][i] for i in keep], [gen[i] for i in keep],
                                      [batch["references"][i] for i in keep])

    def selection(self, values: Mapping[str, Any]) -> list[tuple[str, float]]:
        v = value_of(values, self.score_key)
        return [] if v is None else [(self.score_key, v)]

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{qid, video_id, clip_id, ts, desc}`` (``qid``: the description id, or the clip id on test; ``desc``: the
        generated description, the originals' name)."""
        gen = out.get(f"{self.name}_generated")
        if gen is None:
            return []
        return [{"qid": q, "video_id": v, "clip_id": c, "ts": ts, "desc": g}
                for q, v, c, ts, g in zip(batch["qid"], batch["video_id"], batch["clip_id"], batch["ts"], gen)]

    def write_dump(self, rows: Sequence[Mapping[str, Any]], out_dir: Path, run_name: str, vocab,
                   expected: Any = None, **_: Any) -> Path:
        return write_caption_dump(rows, Path(out_dir) / dump_name(self.dump_file, run_name), self.uses_ts)


def dump_name(original: str, run_name: str) -> str:
    stem, dot, suffix = original.rpartition(".")
    return f"{stem}_{run_name}.{suffix}" if run_name else original


def write_qa_dump(rows: Sequence[Mapping[str, Any]], path: Path) -> Path:
    """``{question_id: option index}`` as ``multitask_video.py`` writes it (one JSON object, ids as text keys,
    sorted); duplicate rows (sampler padding) must agree."""
    by_id = _dedupe(((str(r["qid"]), option_index(r["answer"])) for r in rows), "qid")
    return write_json_atomic(path, {k: by_id[k] for k in sorted(by_id, key=_sort_key)}, indent=None)


def write_caption_dump(rows: Sequence[Mapping[str, Any]], path: Path, uses_ts: bool) -> Path:
    """One JSON line per sample, ``{"vid_name", "clip_id", "ts" (TVC: the raw value), "descs": [{"desc"}]}``, in
    (clip id, sample id) order; duplicates (sampler padding) must agree."""
    by_id = _dedupe(((str(r["qid"]), (r["clip_id"], r["video_id"], r.get("ts") or "", str(r["desc"])))
                     for r in rows), "qid")
    if not by_id:
        raise SubmissionError(f"no caption rows to write to {path}")
    ordered = sorted(by_id.items(), key=lambda kv: (_sort_key(kv[1][0]), _sort_key(kv[0])))
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for _, (clip, vid, ts, desc) in ordered:
                entry: dict[str, Any] = {"vid_name": vid, "clip_id": clip}
                if uses_ts:
                    entry["ts"] = json.loads(ts) if ts else None
                entry["descs"] = [{"desc": desc}]
                f.write(json.dumps(entry) + "\n")
    return path


__all__ = ["CAPTION_SCORER", "QA_SCORER", "TARGET_MAX_LENGTH", "TEXT_MAX_LENGTH", "VideoCaptionTask", "VideoQATask",
           "dump_name", "option_index",
           "qa_correct", "write_caption_dump", "write_qa_dump"]

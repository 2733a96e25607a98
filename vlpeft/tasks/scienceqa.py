"""ScienceQA: image + text multiple choice (LaVIN-DAS's multimodal setting). Classify mode: one logit per choice
slot, slots past a problem's own number of choices masked out. Generate mode (LaVIN, prompt format QCM-ALE): the
LM learns "The answer is X. BECAUSE: <lecture> <solution>" and is scored on the letter it writes, read back as
LaVIN's ``eval_scienceqa.py`` does. Both modes report the DAS README's per-category table (``ScienceQATable``)."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn
from torchmetrics import Metric

from vlpeft._io import write_json_atomic
from vlpeft.tasks._base import Infer, head, labels_of, register_task
from vlpeft.tasks._lavin import FAILED, LavinQATask

SCIENCEQA_CHOICES = 5  # ScienceQA problems have 2..5 choices; logits past a problem's own count are masked
OPTIONS = "ABCDE"  # eval_scienceqa.py's options (the prompt's letters)
# eval_scienceqa.py: "The answer is X" first, else the first capital A–E followed by any character
ANSWER_IS = re.compile(r"The answer is ([A-Z]).")
ANY_LETTER = re.compile(r"([A-E]).")
# the DAS README's columns, in its order: (key, what selects a problem)
CATEGORIES: tuple[str, ...] = ("nat", "soc", "lan", "txt", "img", "no", "g1_6", "g7_12", "avg")
TABLE_HEADER = ("NAT", "SOC", "LAN", "TXT", "IMG", "NO", "G1-6", "G7-12", "Avg")
_LOW = {f"grade{g}" for g in range(1, 7)}
_HIGH = {f"grade{g}" for g in range(7, 13)}


def lavin_prompt(question_text: str) -> str:
    """LaVIN's QCM input: the converter's "Question: …\\nContext: …\\nOptions: …" + "\\nResponse:", double blanks
    made single and the ends stripped (base_prompt.create_training_example)."""
    return f"{question_text}\nResponse:".replace("  ", " ").strip()


def lavin_target(answer: int, lecture: str, solution: str) -> str:
    """LaVIN's ALE output: "The answer is X. BECAUSE: <lecture> <solution>" (newlines written as a literal \\n).
    As the original, an empty lecture and solution leave the trailing "BECAUSE:" (its removal there is assigned to
    an unused variable)."""
    lec, sol = str(lecture).replace("\n", "\\n"), str(solution).replace("\n", "\\n")
    return f"The answer is {OPTIONS[int(answer)]}. BECAUSE: {lec} {sol}".replace("  ", " ").strip()


def answer_letter(generated: str) -> str:
    """The letter eval_scienceqa.py reads: that of "The answer is X", else the first "[A-E]" followed by any
    character; "FAILED" when neither matches."""
    found = ANSWER_IS.findall(str(generated)) or ANY_LETTER.findall(str(generated))
    return found[0] if found else FAILED


def extract_choice(generated: str, num_choices: int, qid: Any) -> int:
    """The choice index eval_scienceqa.py scores: ``answer_letter``'s; a letter past the problem's choices, or none,
    is a random choice (seeded by the problem id here, so a rerun scores the same)."""
    letter = answer_letter(generated)
    if letter in OPTIONS[:num_choices]:
        return OPTIONS.index(letter)
    return random.Random(f"scienceqa:{qid}").randrange(num_choices)


def categories(meta: Mapping[str, Any]) -> list[bool]:
    """Which table columns a problem counts in (eval_scienceqa.get_scores): subject NAT / SOC / LAN, context TXT
    (a hint), IMG (an image), NO (neither), grades 1–6 / 7–12, and Avg (every problem)."""
    subject, grade = str(meta.get("subject", "")), str(meta.get("grade", ""))
    hint, image = bool(meta.get("has_hint")), bool(meta.get("has_image"))
    return [subject == "natural science", subject == "social science", subject == "language science", hint, image,
            not hint and not image, grade in _LOW, grade in _HIGH, True]


def scienceqa_table(rows: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The DAS README's table from prediction rows ``{pred, label, meta}``: per column the accuracy in percent
    with two decimals, as eval_scienceqa.py prints it; a column without problems is left out."""
    correct = [0] * len(CATEGORIES)
    count = [0] * len(CATEGORIES)
    for r in rows:
        ok = int(r["pred"]) == int(r["label"])
        for k, inside in enumerate(categories(r["meta"])):
            count[k] += inside
            correct[k] += inside and ok
    return {h: f"{100.0 * c / n:.2f}" for h, c, n in zip(TABLE_HEADER, correct, count) if n}


class ScienceQATable(Metric):
    """The per-category accuracies (fractions) over a split, sum-reduced across processes:
    ``{nat, soc, lan, txt, img, no, g1_6, g7_12, avg}`` (columns without problems left out)."""

    full_state_update = False

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        n = len(CATEGORIES)
        self.add_state("correct", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(n, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, correct: Sequence[bool], metas: Sequence[Mapping[str, Any]]) -> None:
        if len(correct) != len(metas):
            raise ValueError(f"ScienceQATable: {len(correct)} answers for {len(metas)} problems")
        inside = torch.tensor([categories(m) for m in metas], dtype=torch.float64).reshape(-1, len(CATEGORIES))
        ok = torch.tensor([float(c) for c in correct], dtype=torch.float64)[:, None]
        self.count += inside.sum(0).to(self.count.device)
        self.correct += (inside * ok).sum(0).to(self.correct.device)

    def compute(self) -> dict[str, float]:
        return {k: float(c / n) for k, c, n in zip(CATEGORIES, self.correct.tolist(), self.count.tolist()) if n}


@register_task
class ScienceQATask(LavinQATask):
    """ScienceQA (classify: ``scienceqa_classifier``, CE against the answer's index over the problem's own choices;
    generate: LaVIN's QCM-ALE text, the generated letter's choice index against the answer)."""
    test_backbone = "test_clip_llama"

    name = "scienceqa"
    modes = ("classify", "generate")
    heads = ("scienceqa_classifier",)
    lr_mult_heads = ("scienceqa_classifier",)
    option_keys = {"label_size": ("scienceqa_label_size", SCIENCEQA_CHOICES)}
    answer_vocab_option = "label_size"
    list_fields = ("scienceqa_gold", "scienceqa_meta")

    def logits(self, heads: nn.ModuleDict, feats: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
        logits = head(heads, "scienceqa_classifier", "scienceqa")(feats)
        n = labels_of(batch, "scienceqa_num_choices", "scienceqa", logits.device)
        if bool((n > logits.shape[1]).any()):
            raise ValueError(f"a ScienceQA problem has {int(n.max())} choices but scienceqa_label_size="
                             f"{logits.shape[1]}; raise scienceqa_label_size")
        valid = torch.arange(logits.shape[1], device=logits.device)[None, :] < n[:, None]
        return logits.masked_fill(~valid, torch.finfo(logits.dtype).min)

    def collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], label_size: int | None) -> None:
        super().collate(items, batch, label_size)
        if "scienceqa_num_choices" in items[0]:
            batch["scienceqa_num_choices"] = torch.tensor([int(it["scienceqa_num_choices"]) for it in items],
                                                          dtype=torch.long)

    def generative_collate(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any]) -> None:
        """LaVIN's indicator: problems without an image (a blank one in the arrow file) read "Image: N/A"."""
        if "scienceqa_meta" in items[0]:
            batch["has_image"] = torch.tensor([int(bool(it["scienceqa_meta"]["has_image"])) for it in items],
                                              dtype=torch.long)

    # ------------------------------------------------------------------ generate mode: the choice index
    def extract(self, generated: str, index: int, batch: Mapping[str, Any]) -> str:
        meta = batch["scienceqa_meta"][index]
        return str(extract_choice(generated, int(meta["num_choices"]), meta["qid"]))

    # ------------------------------------------------------------------ the per-category table
    def make_metrics(self) -> dict[str, nn.Module]:
        return {**super().make_metrics(), "scienceqa": ScienceQATable()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        super().update_metrics(metrics, out, batch)
        metas = batch.get("scienceqa_meta")
        if not metas:
            return
        if self.generative:
            scores = out.get("scienceqa_gen_scores")
            correct = None if scores is None else [bool(s) for s in scores.tolist()]
        else:
            correct = (out["scienceqa_logits"].detach().argmax(-1) == out["scienceqa_labels"]).cpu().tolist()
        if correct is not None:
            metrics["scienceqa"].update(correct, metas)

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        rows = super().predictions(out, batch)
        metas = batch.get("scienceqa_meta")
        if metas:
            for r, m in zip(rows, metas):
                r["meta"] = dict(m)
                if self.generative:
                    r["pred"], r["label"] = int(r["pred"]), int(r["label"])
        return rows

    def write_dump(self, rows, out_dir: Path, run_name: str, vocab, expected: Any = None, **_: Any) -> Path:
        """``scienceqa_predict_<run>.json`` (the rows) and, where the rows carry the problems' metadata,
        ``scienceqa_scores_<run>.json``: LaVIN's ``{pid: choice index}`` and the DAS README's table."""
        path = super().write_dump(rows, out_dir, run_name, vocab, expected)
        if rows and all("meta" in r for r in rows):
            preds = {str(r["meta"]["qid"]): int(r["pred"]) for r in rows}
            write_json_atomic(Path(out_dir) / f"scienceqa_scores_{run_name}.json",
                              {"preds": preds, "table": scienceqa_table(rows)})
        return path


def compute_scienceqa(infer: Infer, heads: nn.ModuleDict, batch: Mapping[str, Any]) -> dict[str, Any]:
    return ScienceQATask().classify_step(infer, heads, batch)


__all__ = ["CATEGORIES", "SCIENCEQA_CHOICES", "ScienceQATable", "ScienceQATask", "TABLE_HEADER", "categories",
           "compute_scienceqa", "extract_choice", "lavin_prompt", "lavin_target", "scienceqa_table"]

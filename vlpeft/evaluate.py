"""Score prediction files the way the official evaluations do: VQAv2, GQA, SNLI-VE, NLVR2.

CLI (one ``error: …`` line and exit status 2 for bad input, never a traceback)::

    python -m vlpeft.evaluate vqa --questions Q.json --annotations A.json --predictions P.json [--json OUT.json]
    python -m vlpeft.evaluate gqa --questions testdev_balanced_questions.json --predictions P.json [--json OUT]
    python -m vlpeft.evaluate snli_ve --predictions P.json [--annotations snli_ve_test.jsonl] [--json OUT]
    python -m vlpeft.evaluate nlvr2 --predictions P.json [--annotations test1.json] [--json OUT]
    python -m vlpeft.evaluate fill-vqa --submission S.json --questions v2_OpenEnded_mscoco_test2015_questions.json
                                       --out OUT.json [--fill yes]

Every scorer is a plain function too: :func:`vqa_accuracy`, :func:`gqa_accuracy`, :func:`snli_ve_accuracy`,
:func:`nlvr2_accuracy` (loaded JSON in, a dict out); ``*_files`` variants take paths.

**VQAv2** — :func:`vqa_accuracy` equals the official evaluation (GT-Vision-Lab/VQA,
``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, master ``a013f00``) number for number, quirks included:

* prediction and the ten ground-truth answers get ``replace('\\n',' ').replace('\\t',' ').strip()``; only when
  the stripped ground-truth answers are *not all identical* are both sides normalised (punctuation, then
  lower-case / number words / articles / contractions — :mod:`vlpeft.data.normalize`). When all ten agree the
  prediction is compared raw: ``"Yes"`` scores 0 against ten ``"yes"``, ``"yes"`` scores 0 against ten ``"yes."``;
* a question's accuracy is the mean, over its answers, of ``min(1, #other answers equal to the prediction / 3)``,
  where "other" means every answer record (the whole ``{answer, answer_confidence, answer_id}`` object) that is
  not equal to the held-out one — with distinct ``answer_id`` s this is leave-one-annotator-out;
* ``overall``, ``perAnswerType`` and ``perQuestionType`` are ``round(100 * sum / n, 2)`` with sums accumulated
  left to right in annotation order and Python 2's ``round`` (half away from zero; the official code is Python 2
  — Python 3's ``round`` halves to even and gives e.g. 3.12 instead of 3.13 for 1 right out of 32).

Checked against the official code run under Python 2.7 on ``tests/fixtures/vqa_eval`` (42 edge-case questions)
and on a 3000-question random set (``tests/test_evaluate.py``): every number identical.

Coverage: like the official ``loadRes`` (which asserts it), the prediction question ids must equal the
annotated ones; otherwise one error gives the counts and the first missing / unexpected ids. With
``only_predicted=True`` (CLI ``--only-predicted``) the annotations are restricted to the predicted questions —
the official ``evaluate(quesIds=…)`` — for scoring a subset such as ``vqav2_rest_val``; unexpected ids are still
an error. The same policy holds for the other scorers. A question id predicted twice with the same answer counts
once; with different answers it is an error (the official code silently keeps the last).

**The in-training ``vqa_score`` is a proxy.** :class:`vlpeft.tasks.metrics.VQAScore` takes the soft target of
the argmax class, and the targets come from the arrow converter (``write_arrow/vqa.py``): ``min(1, count/3)``
style scores (0, .3, .6, .9, 1) of the *normalised* annotator answers that are in the answer vocabulary, over the
questions the converter keeps. It differs from the official number because (1) questions without any
vocabulary answer are dropped, where the official metric counts them (a classifier over that vocabulary
scores 0 on them), and (2) it always normalises, where the official code normalises neither side when all
ten answers are identical. :func:`vqa_proxy_accuracy` computes that proxy from files. On the test fixture
``tests/fixtures/vqa_eval`` (vocabulary = every normalised multiple-choice answer and prediction, so no question
is dropped and only effect 2 shows) the official overall is 71.19 and the proxy 90.24: +19.05 points, from the 8
of 42 questions whose ten identical answers match the prediction only after normalisation (``"Yes"`` vs ten
``"yes"``, ``"2"`` vs ten ``"two"``, ``"stop-sign"`` vs ten ``"stop sign"`` …). Issue 7 measured +1.67 points on
a 1130-question sample of real data (both effects). Report the official number.

**GQA** — accuracy = exact string match of ``prediction`` with the question's ``answer`` (no normalisation), over
the questions of the official questions file whose ``isBalanced`` is not false, as GQA's ``eval.py``.
Predictions: ``[{"questionId", "prediction"}]`` (what :func:`vlpeft.tasks.dumps.write_gqa_predictions` writes).

**SNLI-VE / NLVR2** — accuracy of prediction rows; a row's predicted label is ``prediction`` (a label string)
or ``pred`` (the class id of our dumps: SNLI-VE contradiction/neutral/entailment = 0/1/2, NLVR2 False/True =
0/1). Without ``annotations`` the rows' own ``label`` (what our dumps store) is the gold label. With the
official annotation file (SNLI-VE ``snli_ve_*.jsonl``: ``gold_label``, ``Flikr30kID``, ``pairID``,
``sentence2``; NLVR2 ``dev.json``/``test1.json`` JSON lines: ``identifier``, ``sentence``, ``label``) rows are
matched by ``pairID`` / the full NLVR2 ``identifier``, or by (image id or pair id, text): SNLI-VE
``Flikr30kID``/``identifier``/``image_id`` + ``text``/``sentence2``; NLVR2 the arrow pair ``identifier``
(``dev-850-0``) + ``text``/``sentence``. Rows holding only our ``table:row`` ``image_key`` cannot be matched to
the official files; score them without ``--annotations``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections import Counter
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

from vlpeft._io import DiskFullError, OutputPathError, parse_json_lines, write_json_atomic
from vlpeft.data.normalize import normalize_word, process_digit_article, process_punctuation
from vlpeft.tasks.dumps import SubmissionError, fill_vqa_submission
from vlpeft.tasks import TASKS
from vlpeft.tasks._base import OfficialScorer
from vlpeft.tasks.caption_eval import caption_scores


__all__ = [
    "EvaluationError",
    "gqa_accuracy",
    "gqa_accuracy_files",
    "nlvr2_accuracy",
    "nlvr2_accuracy_files",
    "official_round",
    "snli_ve_accuracy",
    "snli_ve_accuracy_files",
    "video_caption_scores_files",
    "video_qa_accuracy",
    "video_qa_accuracy_files",
    "vqa_accuracy",
    "vqa_accuracy_files",
    "vqa_proxy_accuracy",
    "vqa_question_accuracy",
]

SNLI_VE_LABELS = ("contradiction", "neutral", "entailment")  # class ids 0, 1, 2 (vlpeft.data.datasets)
NLVR2_LABELS = ("False", "True")  # class ids 0, 1


class EvaluationError(ValueError):
    """Input that cannot be scored; the message names the file or key and what was expected."""


# ------------------------------------------------------------------------------------------- helpers
def official_round(x: float, ndigits: int = 2) -> float:
    """Python 2's ``round``: the exact binary value rounded half away from zero (what the official code ran)."""
    return float(Decimal(x).quantize(Decimal(1).scaleb(-ndigits), rounding=ROUND_HALF_UP))


def _mean_percent(values: Sequence[float]) -> float:
    """``round(100*float(sum(v))/len(v), 2)`` with the official left-to-right float sum (not Python 3.12's)."""
    total = 0.0
    for v in values:
        total += v
    return official_round(100 * total / len(values), 2)


def _where(source: str | None) -> str:
    return f"{source}: " if source else ""


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _coverage(predicted: Iterable[Hashable], expected: Iterable[Hashable], what: str, source: str | None,
              only_predicted: bool) -> list:
    """The ids to score (in ``expected`` order); missing (unless ``only_predicted``) or extra ids raise."""
    expected = list(expected)
    pred_set, exp_set = set(predicted), set(expected)
    extra = sorted(pred_set - exp_set, key=str)
    missing = [] if only_predicted else sorted(exp_set - pred_set, key=str)
    if missing or extra:
        parts = [f"{len(pred_set)} predicted {what}s vs {len(exp_set)} annotated"]
        if missing:
            parts.append(f"{len(missing)} annotated {what}s have no prediction (first: {missing[:5]})")
        if extra:
            parts.append(f"{len(extra)} predicted {what}s are not in the annotations (first: {extra[:5]})")
        fix = ("predict every annotated question, or pass only_predicted / --only-predicted to score the "
               "predicted subset" if missing else "were the predictions made on another split?")
        raise EvaluationError(_where(source) + "; ".join(parts) + f"; {fix}")
    ids = [i for i in expected if i in pred_set] if only_predicted else expected
    if not ids:
        raise EvaluationError(f"{_where(source)}nothing to score: no predicted {what} is annotated")
    return ids


def _dedupe(pairs: Iterable[tuple[Hashable, Any]], what: str, source: str | None) -> dict:
    out: dict = {}
    for k, v in pairs:
        if k in out and out[k] != v:
            raise EvaluationError(f"{_where(source)}{what} {k!r} is predicted twice with different values "
                                  f"({out[k]!r} vs {v!r}); keep one prediction per {what}")
        out[k] = v
    return out


def load_json_file(path: str | Path, what: str) -> Any:
    """A JSON document; a missing file or bad JSON raises :class:`EvaluationError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: file not found; expected {what}")
    try:
        with open(path, "rb") as f:
            return json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EvaluationError(f"{path}: not valid JSON ({e}); expected {what}") from e


def load_records(path: str | Path, what: str) -> list:
    """A JSON list or JSON lines (one object per non-blank line), as the SNLI-VE / NLVR2 releases ship them."""
    path = Path(path)
    if not path.is_file():
        raise EvaluationError(f"{path}: file not found; expected {what}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise EvaluationError(f"{path}: not UTF-8 text ({e}); expected {what}") from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        return parse_json_lines(text.splitlines(), path, what, EvaluationError)
    if isinstance(data, dict):  # a one-line JSONL file
        return [data]
    if not isinstance(data, list):
        raise EvaluationError(f"{path}: the top level is a {type(data).__name__}; expected {what}")
    return data


def _require(record: Any, keys: Sequence[str], source: str | None, where: str) -> Mapping[str, Any]:
    if not isinstance(record, Mapping):
        raise EvaluationError(f"{_where(source)}{where} is a {type(record).__name__}; expected an object with "
                              f"keys {list(keys)}")
    missing = [k for k in keys if k not in record]
    if missing:
        raise EvaluationError(f"{_where(source)}{where} lacks key(s) {missing}; expected an object with keys "
                              f"{list(keys)}")
    return record


def _require_list(obj: Any, source: str | None, what: str) -> list:
    if not isinstance(obj, list):
        raise EvaluationError(f"{_where(source)}the top level is a {type(obj).__name__}; expected {what}")
    return obj


# ---------------------------------------------------------------------------------------------- VQA
VQA_PREDICTIONS = 'the VQAv2 submission format: a JSON list of {"question_id": int, "answer": str}'
VQA_ANNOTATIONS = ("the official v2_mscoco_*_annotations.json: an object whose 'annotations' list holds "
                   "{question_id, question_type, answer_type, answers: [{answer, …}]}")
VQA_QUESTIONS = ("the official v2_OpenEnded_mscoco_*_questions.json: an object whose 'questions' list holds "
                 "{question_id, …}")


def _clean(text: str) -> str:
    return text.replace("\n", " ").replace("\t", " ").strip()


def _normalise(text: str) -> str:
    return process_digit_article(process_punctuation(text))


def _record_key(record: Mapping[str, Any]) -> Hashable:
    try:
        key = tuple(sorted(record.items()))
        hash(key)
        return key
    except TypeError:  # unhashable values: fall back to the JSON text (equal dicts give equal text)
        return json.dumps(record, sort_keys=True)


def vqa_question_accuracy(answers: Sequence[Mapping[str, Any] | str], prediction: str) -> float:
    """One question's official accuracy in [0, 1]; ``answers`` are the annotation's answer records (or strings).

    Records are compared whole, as the official code does, so the held-out "annotator" is every record equal to
    it (exactly one when ``answer_id`` s differ).
    """
    records = [dict(a) if isinstance(a, Mapping) else {"answer": a} for a in answers]
    if not records:
        raise ValueError("a VQA question needs at least one ground-truth answer")
    for r in records:
        r["answer"] = _clean(r["answer"])
    pred = _clean(prediction)
    if len({r["answer"] for r in records}) > 1:
        for r in records:
            r["answer"] = _normalise(r["answer"])
        pred = _normalise(pred)
    keys = [_record_key(r) for r in records]
    copies = Counter(keys)
    matching = sum(1 for r in records if r["answer"] == pred)
    total = 0.0
    for r, k in zip(records, keys):
        others_matching = matching - (copies[k] if r["answer"] == pred else 0)
        total += min(1, float(others_matching) / 3)
    return float(total) / len(records)


def _vqa_annotations(annotations: Any, source: str | None) -> list[Mapping[str, Any]]:
    if isinstance(annotations, Mapping):
        _require(annotations, ["annotations"], source, "the top level")
        annotations = annotations["annotations"]
    records = _require_list(annotations, source, VQA_ANNOTATIONS)
    seen: set[int] = set()
    for i, r in enumerate(records):
        _require(r, ["question_id", "question_type", "answer_type", "answers"], source, f"annotations[{i}]")
        if not _is_int(r["question_id"]):
            raise EvaluationError(f"{_where(source)}annotations[{i}].question_id is {r['question_id']!r}; "
                                  f"expected an integer")
        if r["question_id"] in seen:
            raise EvaluationError(f"{_where(source)}question_id {r['question_id']} is annotated twice")
        seen.add(r["question_id"])
        if not isinstance(r["answers"], list) or not r["answers"]:
            raise EvaluationError(f"{_where(source)}annotations[{i}].answers must be a non-empty list of "
                                  f"{{answer: str}}")
        for j, a in enumerate(r["answers"]):
            _require(a, ["answer"], source, f"annotations[{i}].answers[{j}]")
            if not isinstance(a["answer"], str):
                raise EvaluationError(f"{_where(source)}annotations[{i}].answers[{j}].answer is not a string")
    return records


def _vqa_predictions(predictions: Any, source: str | None) -> dict[int, str]:
    rows = _require_list(predictions, source, VQA_PREDICTIONS)
    for i, r in enumerate(rows):
        _require(r, ["question_id", "answer"], source, f"predictions[{i}]")
        if not _is_int(r["question_id"]):
            raise EvaluationError(f"{_where(source)}predictions[{i}].question_id is {r['question_id']!r}; "
                                  f"expected an integer ({VQA_PREDICTIONS})")
        if not isinstance(r["answer"], str):
            raise EvaluationError(f"{_where(source)}predictions[{i}].answer is {r['answer']!r}; expected a "
                                  f"string ({VQA_PREDICTIONS})")
    return _dedupe(((r["question_id"], r["answer"]) for r in rows), "question_id", source)


def _check_questions(questions: Any, annotated: Iterable[int], source: str | None) -> None:
    if questions is None:
        return
    if isinstance(questions, Mapping):
        _require(questions, ["questions"], source, "the top level")
        questions = questions["questions"]
    records = _require_list(questions, source, VQA_QUESTIONS)
    qids = set()
    for i, q in enumerate(records):
        _require(q, ["question_id"], source, f"questions[{i}]")
        qids.add(q["question_id"])
    unknown = sorted(set(annotated) - qids)
    if unknown:
        raise EvaluationError(f"{_where(source)}{len(unknown)} annotated question ids are not in this questions "
                              f"file (first: {unknown[:5]}); pass the questions file of the annotations' split")


def vqa_accuracy(questions: Any, annotations: Any, predictions: Any, *, only_predicted: bool = False,
                 sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The official VQA ``accuracy``: ``{"overall", "perAnswerType", "perQuestionType"}`` in percent (2 decimals).

    ``questions`` / ``annotations``: the loaded official JSON objects (or their ``questions`` / ``annotations``
    lists; ``questions`` may be None — it is only checked to cover the annotations). ``predictions``: the
    submission list. ``sources`` names the files in error messages (keys ``questions``, ``annotations``,
    ``predictions``). See the module docstring for the coverage rules.
    """
    src = dict(sources or {})
    anns = _vqa_annotations(annotations, src.get("annotations"))
    _check_questions(questions, (a["question_id"] for a in anns), src.get("questions"))
    preds = _vqa_predictions(predictions, src.get("predictions"))
    by_qid = {a["question_id"]: a for a in anns}
    qids = _coverage(preds, by_qid, "question id", src.get("predictions"), only_predicted)

    acc_all: list[float] = []
    acc_qtype: dict[str, list[float]] = {}
    acc_atype: dict[str, list[float]] = {}
    for qid in qids:
        ann = by_qid[qid]
        acc = vqa_question_accuracy(ann["answers"], preds[qid])
        acc_all.append(acc)
        acc_qtype.setdefault(ann["question_type"], []).append(acc)
        acc_atype.setdefault(ann["answer_type"], []).append(acc)
    return {
        "overall": _mean_percent(acc_all),
        "perAnswerType": {k: _mean_percent(v) for k, v in acc_atype.items()},
        "perQuestionType": {k: _mean_percent(v) for k, v in acc_qtype.items()},
    }


def vqa_accuracy_files(questions: str | Path, annotations: str | Path, predictions: str | Path, *,
                       only_predicted: bool = False) -> dict[str, Any]:
    """:func:`vqa_accuracy` on file paths (the official evaluation's inputs)."""
    return vqa_accuracy(load_json_file(questions, VQA_QUESTIONS), load_json_file(annotations, VQA_ANNOTATIONS),
                        load_json_file(predictions, VQA_PREDICTIONS), only_predicted=only_predicted,
                        sources={"questions": str(questions), "annotations": str(annotations),
                                 "predictions": str(predictions)})


def vqa_proxy_accuracy(annotations: Any, predictions: Any, label2ans: Sequence[str]) -> dict[str, Any]:
    """The in-training ``vqa_score`` recomputed from files, in percent (unrounded): per question the converter's
    soft score (0/.3/.6/.9/1 for 0/1/2/3/≥4 annotators whose normalised answer equals the normalised prediction,
    ``write_arrow.vqa.soft_targets``), averaged over the questions the converter keeps (≥1 annotator answer in
    ``label2ans``). A prediction outside the vocabulary scores 0 (the classifier cannot output it).
    """
    from write_arrow._common import vqa_score  # the converter's score table (one definition)

    anns = _vqa_annotations(annotations, None)
    preds = _vqa_predictions(predictions, None)
    vocab = set(label2ans)
    scores, dropped = [], 0
    for ann in anns:
        counts = Counter(normalize_word(a["answer"]) for a in ann["answers"])
        if not any(a in vocab for a in counts):
            dropped += 1
            continue
        if ann["question_id"] not in preds:
            raise EvaluationError(f"no prediction for question_id {ann['question_id']}")
        pred = normalize_word(preds[ann["question_id"]])
        scores.append(vqa_score(counts[pred]) if pred in vocab else 0.0)
    return {"overall": 100 * math.fsum(scores) / len(scores) if scores else float("nan"),
            "questions": len(scores), "dropped": dropped}


# ---------------------------------------------------------------------------------------------- GQA
GQA_PREDICTIONS = 'a JSON list of {"questionId": str, "prediction": str} (vlpeft gqa_predict_*.json)'
GQA_QUESTIONS = ("the official GQA questions JSON (e.g. testdev_balanced_questions.json): an object mapping "
                 "question id → {answer, …}")


def gqa_accuracy(questions: Mapping[str, Any], predictions: Any, *, only_predicted: bool = False,
                 sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """GQA accuracy in percent: exact match of ``prediction`` and ``answer`` over the balanced questions."""
    src = dict(sources or {})
    qsrc, psrc = src.get("questions"), src.get("predictions")
    if not isinstance(questions, Mapping):
        raise EvaluationError(f"{_where(qsrc)}the top level is a {type(questions).__name__}; expected "
                              f"{GQA_QUESTIONS}")
    gold: dict[str, str] = {}
    for qid, q in questions.items():
        _require(q, ["answer"], qsrc, f"question {qid!r}")
        if q.get("isBalanced", True) is False:
            continue
        gold[str(qid)] = q["answer"]
    rows = _require_list(predictions, psrc, GQA_PREDICTIONS)
    for i, r in enumerate(rows):
        _require(r, ["questionId", "prediction"], psrc, f"predictions[{i}]")
    preds = _dedupe(((str(r["questionId"]), r["prediction"]) for r in rows), "questionId", psrc)
    ids = _coverage(preds, gold, "questionId", psrc, only_predicted)
    correct = sum(1 for q in ids if preds[q] == gold[q])
    return {"accuracy": 100 * correct / len(ids), "correct": correct, "total": len(ids)}


def gqa_accuracy_files(questions: str | Path, predictions: str | Path, *,
                       only_predicted: bool = False) -> dict[str, Any]:
    return gqa_accuracy(load_json_file(questions, GQA_QUESTIONS), load_json_file(predictions, GQA_PREDICTIONS),
                        only_predicted=only_predicted,
                        sources={"questions": str(questions), "predictions": str(predictions)})


# ---------------------------------------------------------------------------------- SNLI-VE and NLVR2
CLS_PREDICTIONS = ("a JSON list of prediction rows with 'prediction' (label string) or 'pred' (class id) "
                   "(vlpeft <task>_predict_*.json)")


def _predicted_label(row: Mapping[str, Any], labels: Sequence[str], source: str | None, i: int) -> str:
    if "prediction" in row:
        value = row["prediction"]
        if isinstance(value, bool) and tuple(labels) == NLVR2_LABELS:
            value = str(value)
        if value not in labels:
            raise EvaluationError(f"{_where(source)}predictions[{i}].prediction is {value!r}; expected one of "
                                  f"{list(labels)}")
        return value
    if "pred" in row:
        return _label_from_id(row["pred"], labels, source, f"predictions[{i}].pred")
    raise EvaluationError(f"{_where(source)}predictions[{i}] has neither 'prediction' nor 'pred'; expected "
                          f"{CLS_PREDICTIONS}")


def _label_from_id(value: Any, labels: Sequence[str], source: str | None, where: str) -> str:
    if not _is_int(value) or not 0 <= value < len(labels):
        raise EvaluationError(f"{_where(source)}{where} is {value!r}; expected a class id 0…{len(labels) - 1} "
                              f"({', '.join(labels)})")
    return labels[value]


def _embedded_accuracy(rows: list, labels: Sequence[str], source: str | None) -> dict[str, Any]:
    """Rows carrying their own gold ``label`` (class id, as our dumps do); no annotation file."""
    correct = 0
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or "label" not in r:
            raise EvaluationError(f"{_where(source)}predictions[{i}] has no 'label'; pass the official "
                                  f"annotation file (--annotations) to score rows without labels")
        gold = r["label"] if isinstance(r["label"], str) else _label_from_id(r["label"], labels, source,
                                                                              f"predictions[{i}].label")
        correct += _predicted_label(r, labels, source, i) == gold
    if not rows:
        raise EvaluationError(f"{_where(source)}no prediction rows")
    return {"accuracy": 100 * correct / len(rows), "correct": correct, "total": len(rows)}


def _joined_accuracy(gold: Mapping[Hashable, str], keyed: list[tuple[Hashable, str]], what: str,
                     source: str | None, only_predicted: bool) -> dict[str, Any]:
    preds = _dedupe(keyed, what, source)
    ids = _coverage(preds, gold, what, source, only_predicted)
    correct = sum(1 for k in ids if preds[k] == gold[k])
    return {"accuracy": 100 * correct / len(ids), "correct": correct, "total": len(ids)}


def _first(row: Mapping[str, Any], keys: Sequence[str]) -> Any:
    for k in keys:
        if k in row:
            return row[k]
    return None


def _image_stem(value: Any) -> str:
    s = str(value)
    return s[:-4] if s.lower().endswith(".jpg") else s


def _classification_rows(predictions: Any, sources: Mapping[str, str] | None) -> tuple[Any, Any, list]:
    """(annotation source, prediction source, prediction rows) for the SNLI-VE / NLVR2 scorers."""
    src = dict(sources or {})
    psrc = src.get("predictions")
    return src.get("annotations"), psrc, _require_list(predictions, psrc, CLS_PREDICTIONS)


def snli_ve_accuracy(annotations: Sequence[Mapping[str, Any]] | None, predictions: Any, *,
                     only_predicted: bool = False, sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """SNLI-VE accuracy in percent; ``annotations`` = records of the official ``snli_ve_*.jsonl`` or None
    (then the rows' own ``label`` is gold). Records whose ``gold_label`` is ``"-"`` (no consensus) are skipped."""
    asrc, psrc, rows = _classification_rows(predictions, sources)
    if annotations is None:
        return _embedded_accuracy(rows, SNLI_VE_LABELS, psrc)
    by_pair: dict[str, str] = {}
    by_text: dict[tuple[str, str], str] = {}
    for i, a in enumerate(_require_list(annotations, asrc, "SNLI-VE JSON lines")):
        _require(a, ["gold_label", "Flikr30kID", "pairID", "sentence2"], asrc, f"record {i}")
        if a["gold_label"] == "-":
            continue
        if a["gold_label"] not in SNLI_VE_LABELS:
            raise EvaluationError(f"{_where(asrc)}record {i} has gold_label {a['gold_label']!r}; expected one of "
                                  f"{list(SNLI_VE_LABELS)}")
        by_pair[str(a["pairID"])] = a["gold_label"]
        by_text[(_image_stem(a["Flikr30kID"]), str(a["sentence2"]))] = a["gold_label"]
    keyed_pair, keyed_text = [], []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise EvaluationError(f"{_where(psrc)}predictions[{i}] is a {type(r).__name__}; expected an object")
        label = _predicted_label(r, SNLI_VE_LABELS, psrc, i)
        image, text = _first(r, ("Flikr30kID", "identifier", "image_id")), _first(r, ("sentence2", "text"))
        if "pairID" in r:
            keyed_pair.append((str(r["pairID"]), label))
        elif image is not None and text is not None:
            keyed_text.append(((_image_stem(image), str(text)), label))
        else:
            raise EvaluationError(f"{_where(psrc)}predictions[{i}] names no SNLI-VE pair: it needs 'pairID' or an "
                                  f"image id ('Flikr30kID'/'identifier'/'image_id') and the hypothesis "
                                  f"('sentence2'/'text'); rows with only image_key cannot be matched to "
                                  f"{asrc or 'the annotations'} — score them without annotations")
    if keyed_pair and keyed_text:
        raise EvaluationError(f"{_where(psrc)}some rows are keyed by pairID and some by (image, hypothesis); "
                              f"use one")
    if keyed_pair:
        return _joined_accuracy(by_pair, keyed_pair, "pairID", psrc, only_predicted)
    return _joined_accuracy(by_text, keyed_text, "(image, hypothesis)", psrc, only_predicted)


def nlvr2_accuracy(annotations: Sequence[Mapping[str, Any]] | None, predictions: Any, *,
                   only_predicted: bool = False, sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """NLVR2 accuracy in percent; ``annotations`` = records of the official ``dev.json``/``test1.json`` (JSON
    lines) or None (then the rows' own ``label`` is gold)."""
    asrc, psrc, rows = _classification_rows(predictions, sources)
    if annotations is None:
        return _embedded_accuracy(rows, NLVR2_LABELS, psrc)
    gold: dict[str, str] = {}
    by_text: dict[tuple[str, str], list[str]] = {}
    for i, a in enumerate(_require_list(annotations, asrc, "NLVR2 JSON lines")):
        _require(a, ["identifier", "sentence", "label"], asrc, f"record {i}")
        label = str(a["label"])
        if label not in NLVR2_LABELS:
            raise EvaluationError(f"{_where(asrc)}record {i} has label {a['label']!r}; expected 'True' or 'False'")
        ident = str(a["identifier"])
        gold[ident] = label
        by_text.setdefault((ident.rsplit("-", 1)[0], str(a["sentence"])), []).append(ident)
    keyed = []
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping):
            raise EvaluationError(f"{_where(psrc)}predictions[{i}] is a {type(r).__name__}; expected an object")
        label = _predicted_label(r, NLVR2_LABELS, psrc, i)
        ident, text = r.get("identifier"), _first(r, ("sentence", "text"))
        if ident is None:
            raise EvaluationError(f"{_where(psrc)}predictions[{i}] has no 'identifier'; rows with only image_key "
                                  f"cannot be matched to {asrc or 'the annotations'} — score them without "
                                  f"annotations")
        ident = str(ident)
        if ident not in gold and text is not None:  # the arrow pair id (dev-850-0) + the sentence
            found = by_text.get((ident, str(text)), [])
            if len(found) > 1:
                raise EvaluationError(f"{_where(psrc)}predictions[{i}]: pair {ident} has the sentence "
                                      f"{text!r} {len(found)} times; predict by the full identifier")
            ident = found[0] if found else ident
        keyed.append((ident, label))
    return _joined_accuracy(gold, keyed, "identifier", psrc, only_predicted)


def _cls_files(fn: Any, annotations: str | Path | None, predictions: str | Path, what: str,
               only_predicted: bool) -> dict[str, Any]:
    anns = None if annotations is None else load_records(annotations, what)
    return fn(anns, load_json_file(predictions, CLS_PREDICTIONS), only_predicted=only_predicted,
              sources={"annotations": None if annotations is None else str(annotations),
                       "predictions": str(predictions)})


def snli_ve_accuracy_files(annotations: str | Path | None, predictions: str | Path, *,
                           only_predicted: bool = False) -> dict[str, Any]:
    return _cls_files(snli_ve_accuracy, annotations, predictions,
                      "the official SNLI-VE JSON lines (gold_label, Flikr30kID, pairID, sentence2)", only_predicted)


def nlvr2_accuracy_files(annotations: str | Path | None, predictions: str | Path, *,
                         only_predicted: bool = False) -> dict[str, Any]:
    return _cls_files(nlvr2_accuracy, annotations, predictions,
                      "the official NLVR2 JSON lines (identifier, sentence, label)", only_predicted)


# ---------------------------------------------------------------------------------------------- VALUE video-text
VIDEO_QA_ANNOTATIONS = ("VALUE QA JSON lines with answers (qid, answer_idx[, show_name]), e.g. "
                        "ann/tvqa/tvqa_val.jsonl or ann/how2qa/how2qa_val_release.jsonl")
VIDEO_QA_PREDICTIONS = "a JSON object {question_id: option index} (tvqa_test_predictions*.json)"
VIDEO_CAPTION_ANNOTATIONS = ("VALUE caption JSON lines with descriptions (clip_id, descs: [{desc}]), e.g. "
                             "ann/tvc/tvc_val_release.jsonl")
VIDEO_CAPTION_PREDICTIONS = "JSON lines {vid_name, clip_id, descs: [{desc}]} (tvc_test_predictions*.jsonl)"


def video_qa_accuracy(annotations: Sequence[Mapping[str, Any]], predictions: Any, *, only_predicted: bool = False,
                      sources: Mapping[str, str] | None = None) -> dict[str, Any]:
    """TVQA / How2QA accuracy (percent) of a ``{qid: option index}`` dump: the predicted index equals
    ``answer_idx`` (the original ``TVQAEvaluator`` compares ``"a<k>"`` strings: the same test), overall and per
    ``show_name`` (its per-type accuracies; How2QA has one type)."""
    src = dict(sources or {})
    asrc, psrc = src.get("annotations"), src.get("predictions")
    if not isinstance(predictions, Mapping):
        raise EvaluationError(f"{_where(psrc)}the top level is a {type(predictions).__name__}; expected "
                              f"{VIDEO_QA_PREDICTIONS}")
    gold: dict[str, int] = {}
    kind: dict[str, str] = {}
    for i, a in enumerate(annotations):
        _require(a, ["qid", "answer_idx"], asrc, f"record {i}")
        gold[str(a["qid"])] = int(a["answer_idx"])
        kind[str(a["qid"])] = str(a.get("show_name", "all"))
    keyed = []
    for k, v in predictions.items():
        if not _is_int(v):
            raise EvaluationError(f"{_where(psrc)}question {k!r} has {v!r}; expected an option index (int)")
        keyed.append((str(k), int(v)))
    result = _joined_accuracy(gold, keyed, "qid", psrc, only_predicted)
    preds = dict(keyed)
    per: dict[str, list[int]] = {}
    for q in (q for q in gold if q in preds or not only_predicted):
        per.setdefault(kind[q], []).append(int(preds.get(q) == gold[q]))
    result["per_type"] = {t: 100 * sum(v) / len(v) for t, v in sorted(per.items())}
    return result


def video_qa_accuracy_files(annotations: str | Path, predictions: str | Path, *,
                            only_predicted: bool = False) -> dict[str, Any]:
    return video_qa_accuracy(load_records(annotations, VIDEO_QA_ANNOTATIONS),
                             load_json_file(predictions, VIDEO_QA_PREDICTIONS), only_predicted=only_predicted,
                             sources={"annotations": str(annotations), "predictions": str(predictions)})


def video_caption_scores_files(annotations: str | Path, predictions: str | Path, *,
                               only_predicted: bool = False) -> dict[str, Any]:
    """TVC / YC2C caption scores (CIDEr-D, BLEU-4, ROUGE-L, METEOR with Java; ×100) of a dump, one caption per clip
    against every description of that clip in ``annotations`` (the clip-level protocol of a VALUE submission;
    training-time validation scores one sample per description instead, as the originals)."""
    anns = load_records(annotations, VIDEO_CAPTION_ANNOTATIONS)
    rows = load_records(predictions, VIDEO_CAPTION_PREDICTIONS)
    refs: dict[str, list[str]] = {}
    for i, a in enumerate(anns):
        _require(a, ["clip_id", "descs"], str(annotations), f"record {i}")
        refs[str(a["clip_id"])] = [str(d["desc"]) for d in a["descs"]]
    keyed = []
    for i, r in enumerate(rows):
        _require(r, ["clip_id", "descs"], str(predictions), f"line {i + 1}")
        if not r["descs"] or "desc" not in r["descs"][0]:
            raise EvaluationError(f"{predictions}: line {i + 1} has no descs[0].desc; expected "
                                  f"{VIDEO_CAPTION_PREDICTIONS}")
        keyed.append((str(r["clip_id"]), str(r["descs"][0]["desc"])))
    preds = _dedupe(keyed, "clip_id", str(predictions))
    ids = _coverage(preds, refs, "clip_id", str(predictions), only_predicted)
    scores = caption_scores({k: refs[k] for k in ids}, {k: preds[k] for k in ids})
    return {**{k: 100 * v for k, v in scores.items()}, "total": len(ids)}


# ---------------------------------------------------------------------------------------------- CLI
def official_scorers() -> dict[str, OfficialScorer]:
    """The tasks that declare an official scorer (``Task.official``), in registration order."""
    return {n: TASKS.build(n).official for n in TASKS.names() if TASKS.build(n).official is not None}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m vlpeft.evaluate",
                                description="Score prediction files like the official evaluations.")
    sub = p.add_subparsers(dest="command", required=True)
    for task, official in official_scorers().items():  # one subcommand per task with an official scorer
        q = sub.add_parser(task, help=official.help)
        for flag, required, text in official.flags:
            q.add_argument(flag, required=required, help=text)
        q.add_argument("--predictions", required=True, help="the prediction file")
        q.add_argument("--only-predicted", action="store_true",
                       help="score only the annotated questions that have a prediction")
        q.add_argument("--json", dest="json_out", help="also write the result to this JSON file")
    f = sub.add_parser("fill-vqa", help="fill a VQAv2 submission to cover every question of a questions file")
    f.add_argument("--submission", required=True, help="submission JSON ([{question_id, answer}])")
    f.add_argument("--questions", required=True, help="v2_OpenEnded_mscoco_test2015_questions.json")
    f.add_argument("--out", required=True, help="output submission file")
    f.add_argument("--fill", default="yes", help="answer given to the missing questions (default: yes)")
    return p


def _print_result(task: str, result: Mapping[str, Any]) -> None:
    if "perAnswerType" in result:  # the official VQA evaluation's report
        print(f"Overall Accuracy is: {result['overall']:.2f}")
        print("Per Answer Type Accuracy is the following:")
        for k in sorted(result["perAnswerType"]):
            print(f"  {k} : {result['perAnswerType'][k]:.2f}")
        print("Per Question Type Accuracy is the following:")
        for k in sorted(result["perQuestionType"]):
            print(f"  {k} : {result['perQuestionType'][k]:.2f}")
    elif "accuracy" not in result:  # caption scores
        print(f"{task} ({result['total']} clips): " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()
                                                             if k != "total"))
    else:
        print(f"{task} accuracy: {result['accuracy']:.2f}% ({result['correct']}/{result['total']})")
        for t, v in (result.get("per_type") or {}).items():
            print(f"  {t} : {v:.2f}")


def _fill(args: argparse.Namespace) -> int:
    sub = load_json_file(args.submission, VQA_PREDICTIONS)
    qs = load_json_file(args.questions, VQA_QUESTIONS)
    _require(qs, ["questions"], args.questions, "the top level")
    records = _require_list(qs["questions"], args.questions, VQA_QUESTIONS)
    qids = []
    for i, q in enumerate(records):
        _require(q, ["question_id"], args.questions, f"questions[{i}]")
        qids.append(q["question_id"])
    _vqa_predictions(sub, args.submission)  # format check with the file named
    try:
        rows, filled = fill_vqa_submission(sub, qids, fill=args.fill)
    except SubmissionError as e:
        raise EvaluationError(f"{args.submission}: {e}") from e
    write_json_atomic(args.out, rows, indent=None)
    print(f"{args.out}: {len(rows)} answers, {filled} missing question ids filled with {args.fill!r}")
    return 0


def _check_outputs(args: argparse.Namespace) -> None:
    """An output flag naming a folder is refused before any file is read (it would end in IsADirectoryError)."""
    for flag, dest in (("--json", "json_out"), ("--out", "out")):
        out = getattr(args, dest, None)
        if out and Path(out).is_dir():
            raise EvaluationError(f"{flag} {out} is a folder; name the file to write, e.g. {flag} "
                                  f"{Path(out) / 'result.json'}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_outputs(args)
        if args.command == "fill-vqa":
            return _fill(args)
        official = official_scorers()[args.command]
        files = [getattr(args, flag.lstrip("-").replace("-", "_")) for flag, _, _ in official.flags]
        result = globals()[official.score](*files, args.predictions, only_predicted=args.only_predicted)
    except (EvaluationError, OutputPathError, DiskFullError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_result(args.command, result)
    if args.json_out:
        try:
            write_json_atomic(args.json_out, result)
        except (OutputPathError, DiskFullError) as e:
            print(f"error: --json {args.json_out}: {e}", file=sys.stderr)
            return 2
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

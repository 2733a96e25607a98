"""vlpeft.evaluate: the official VQA evaluation, GQA / SNLI-VE / NLVR2 accuracy, fill-vqa, and their CLI.

How the expected VQA numbers were obtained: the official evaluation (GT-Vision-Lab/VQA master a013f00,
``PythonHelperTools/vqaTools/vqa.py`` + ``PythonEvaluationTools/vqaEvaluation/vqaEval.py``, unmodified) was run
with Python 2.7.18 — ``VQA(ann, ques)``, ``loadRes(pred, ques)``, ``VQAEval(vqa, res, n=2).evaluate()`` — on
``tests/fixtures/vqa_eval/{questions,annotations,predictions}.json`` and on the JSON dumps of
``_random_vqa()`` and ``_rounding_tie()`` below; ``OFFICIAL_*`` are its ``accuracy`` dicts (and ``evalQA`` for the
fixture) copied verbatim. The official code is not part of the project.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from vlpeft.evaluate import (
    EvaluationError,
    gqa_accuracy,
    gqa_accuracy_files,
    main,
    nlvr2_accuracy,
    official_round,
    snli_ve_accuracy,
    vqa_accuracy,
    vqa_accuracy_files,
    vqa_proxy_accuracy,
    vqa_question_accuracy,
)
from vlpeft.tasks.dumps import SubmissionError, fill_vqa_submission, write_vqa_submission

ROOT = Path(__file__).resolve().parents[1]
FIX = Path(__file__).parent / "fixtures" / "vqa_eval"
Q, A, P = FIX / "questions.json", FIX / "annotations.json", FIX / "predictions.json"
TOL = 1e-9

OFFICIAL_FIXTURE = {
    "overall": 71.19,
    "perAnswerType": {"number": 78.89, "other": 72.17, "yes/no": 62.0},
    "perQuestionType": {
        "are there": 100.0, "how many": 78.89, "is it": 0.0, "is the": 64.0, "is this": 50.0, "what brand": 100.0,
        "what color is the": 75.0, "what does the": 66.67, "what is in the": 100.0, "what is on the": 100.0,
        "what is the man": 100.0, "what is the woman": 0.0, "what is this": 50.0, "what room is": 90.0,
        "what sport is": 30.0, "what time": 90.0, "where is the": 90.0, "who is": 100.0,
    },
}
# official evalQA (per-question accuracy, round(100*acc, 2)) on the fixture
OFFICIAL_FIXTURE_QA = {
    1000: 100.0, 1007: 0.0, 1014: 0.0, 1021: 0.0, 1028: 100.0, 1035: 100.0, 1042: 90.0, 1049: 100.0, 1056: 100.0,
    1063: 30.0, 1070: 0.0, 1077: 100.0, 1084: 100.0, 1091: 100.0, 1098: 100.0, 1105: 100.0, 1112: 60.0,
    1119: 90.0, 1126: 60.0, 1133: 100.0, 1140: 0.0, 1147: 100.0, 1154: 100.0, 1161: 100.0, 1168: 100.0,
    1175: 0.0, 1182: 100.0, 1189: 0.0, 1196: 100.0, 1203: 90.0, 1210: 0.0, 1217: 0.0, 1224: 0.0, 1231: 100.0,
    1238: 100.0, 1245: 100.0, 1252: 90.0, 1259: 100.0, 1266: 100.0, 1273: 90.0, 1280: 100.0, 1287: 90.0,
}
OFFICIAL_RANDOM = {
    "overall": 51.2,
    "perAnswerType": {"number": 51.79, "other": 48.91, "yes/no": 53.0},
    "perQuestionType": {"are there": 50.29, "how many": 51.76, "is the": 50.32, "what color is the": 49.8,
                        "what is": 49.03, "what sport is": 50.92, "what time": 53.4, "where is the": 54.37},
}
# 1 right of 32: 100/32 = 3.125 exactly; Python 2's round gives 3.13 (Python 3's round would give 3.12)
OFFICIAL_TIE = {"overall": 3.13, "perAnswerType": {"yes/no": 3.13}, "perQuestionType": {"is there": 3.13}}

POOL = ["yes", "Yes", "yes.", "no", "No!", "2", "two", "Two.", "none", "0", "1,000", "1000", "3.5", "a dog",
        "dog", "the dog", "dogs", "dont", "don't", "do not", "t-shirt", "t shirt", "red", "Red", "red.", "oclock",
        "3 o'clock", "coca-cola", "coca cola", "mr. smith", "at (home)", "home", "ten", "10", "an apple",
        "apple", "  apple ", "kite!", "kite", "somebody'd", "well, yes"]
QTYPES = ["is the", "how many", "what color is the", "what is", "are there", "what sport is", "what time",
          "where is the"]
ATYPES = ["yes/no", "number", "other"]
META = {"info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco"}


def _random_vqa(seed: int = 0, n: int = 3000):
    """Deterministic random VQA set of confusable answers (30% of questions with ten identical answers)."""
    r = random.Random(seed)
    qs, anns, preds = [], [], []
    for i in range(n):
        qid = 2_000_000 + i
        if r.random() < 0.3:
            answers = [r.choice(POOL)] * 10
        else:
            k = r.randint(1, 4)
            choices = [r.choice(POOL) for _ in range(k)]
            answers = [r.choice(choices) for _ in range(10)]
        pred = r.choice(POOL) if r.random() < 0.5 else r.choice(answers)
        qt, at = r.choice(QTYPES), r.choice(ATYPES)
        qs.append({"image_id": i // 3, "question": f"q{i}?", "question_id": qid})
        anns.append({"question_type": qt, "multiple_choice_answer": answers[0], "image_id": i // 3,
                     "answer_type": at, "question_id": qid,
                     "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": j + 1}
                                 for j, a in enumerate(answers)]})
        preds.append({"question_id": qid, "answer": pred})
    return dict(META, task_type="Open-Ended", questions=qs), dict(META, annotations=anns), preds


def _rounding_tie(n: int = 32):
    qs, anns, preds = [], [], []
    for i in range(n):
        qid = 3_000_000 + i
        qs.append({"image_id": 1, "question": f"t{i}?", "question_id": qid})
        anns.append({"question_type": "is there", "multiple_choice_answer": "yes", "image_id": 1,
                     "answer_type": "yes/no", "question_id": qid,
                     "answers": [{"answer": "yes", "answer_confidence": "yes", "answer_id": j + 1}
                                 for j in range(10)]})
        preds.append({"question_id": qid, "answer": "yes" if i == 0 else "no"})
    return dict(META, task_type="Open-Ended", questions=qs), dict(META, annotations=anns), preds


def _assert_accuracy_equal(got: dict, expected: dict) -> None:
    assert set(got) == {"overall", "perAnswerType", "perQuestionType"}
    assert got["overall"] == pytest.approx(expected["overall"], abs=TOL)
    for key in ("perAnswerType", "perQuestionType"):
        assert set(got[key]) == set(expected[key])
        for k, v in expected[key].items():
            assert got[key][k] == pytest.approx(v, abs=TOL), (key, k)


def _load(path: Path):
    return json.loads(path.read_text())


def _write(path: Path, obj) -> Path:
    path.write_text(json.dumps(obj))
    return path


# ---------------------------------------------------------------------------------------------- VQA
def test_vqa_fixture_equals_official():
    _assert_accuracy_equal(vqa_accuracy_files(Q, A, P), OFFICIAL_FIXTURE)


def test_vqa_fixture_per_question_equals_official():
    preds = {p["question_id"]: p["answer"] for p in _load(P)}
    anns = _load(A)["annotations"]
    assert {a["question_id"] for a in anns} == set(OFFICIAL_FIXTURE_QA)
    for a in anns:
        got = official_round(100 * vqa_question_accuracy(a["answers"], preds[a["question_id"]]), 2)
        assert got == pytest.approx(OFFICIAL_FIXTURE_QA[a["question_id"]], abs=TOL), a["question_id"]


def test_vqa_random_set_equals_official():
    _assert_accuracy_equal(vqa_accuracy(*_random_vqa()), OFFICIAL_RANDOM)


def test_vqa_rounding_is_python2_half_away_from_zero():
    _assert_accuracy_equal(vqa_accuracy(*_rounding_tie()), OFFICIAL_TIE)
    # values checked against Python 2.7's round(x, 2)
    assert official_round(3.125) == 3.13 and official_round(0.125) == 0.13 and official_round(1.875) == 1.88
    assert official_round(2.675) == 2.67  # 2.675 is stored just below the tie
    assert official_round(66.66666666666667) == 66.67


def test_vqa_question_accuracy_quirks():
    ten = lambda a: [{"answer": a, "answer_id": j} for j in range(10)]  # noqa: E731
    # all ten identical: neither side is normalised
    assert vqa_question_accuracy(ten("yes"), "Yes") == 0.0
    assert vqa_question_accuracy(ten("two"), "2") == 0.0
    assert vqa_question_accuracy(ten("yes"), " yes\n") == 1.0  # the strip step still applies
    # not identical: both normalised ("Two." → "2", article dropped, contraction restored)
    assert vqa_question_accuracy(ten("two")[:9] + [{"answer": "Two.", "answer_id": 9}], "2") == 1.0
    mixed = [{"answer": a, "answer_id": j} for j, a in enumerate(["dont"] * 2 + ["don't"] + ["no"] * 7)]
    assert vqa_question_accuracy(mixed, "dont") == pytest.approx(0.9, abs=TOL)
    # 1, 2, 3 matching annotators: leave-one-out mean 0.3, 0.6, 0.9
    for k, exp in ((1, 0.3), (2, 0.6), (3, 0.9), (4, 1.0)):
        answers = [{"answer": "cat" if j < k else "dog", "answer_id": j} for j in range(10)]
        assert vqa_question_accuracy(answers, "cat") == pytest.approx(exp, abs=1e-12)


def test_vqa_missing_and_extra_ids_error():
    q, a, p = _load(Q), _load(A), _load(P)
    with pytest.raises(EvaluationError) as e:
        vqa_accuracy(q, a, p[3:])
    msg = str(e.value)
    assert "39 predicted question ids vs 42 annotated" in msg and "3 annotated question ids have no prediction" in msg
    assert "[1000, 1007, 1014]" in msg and "--only-predicted" in msg
    with pytest.raises(EvaluationError, match=r"1 predicted question ids are not in the annotations \(first: \[7\]\)"):
        vqa_accuracy(q, a, p + [{"question_id": 7, "answer": "yes"}])
    with pytest.raises(EvaluationError, match="predicted twice with different values"):
        vqa_accuracy(q, a, p + [{"question_id": 1000, "answer": "no"}])
    assert vqa_accuracy(q, a, p + [dict(p[0])]) == vqa_accuracy(q, a, p)  # identical duplicate: counted once


def test_vqa_only_predicted_scores_the_subset():
    q, a, p = _load(Q), _load(A), _load(P)
    sub = vqa_accuracy(q, a, p[:4], only_predicted=True)
    # first four fixture questions: 100, 0, 0, 0 (official evalQA)
    assert sub["overall"] == pytest.approx(25.0, abs=TOL)
    assert sub["perAnswerType"] == {"yes/no": 25.0}


def test_vqa_questions_file_must_cover_annotations():
    q, a, p = _load(Q), _load(A), _load(P)
    q["questions"] = q["questions"][1:]
    with pytest.raises(EvaluationError, match=r"1 annotated question ids are not in this questions file"):
        vqa_accuracy(q, a, p)


def test_vqa_proxy_gap_on_fixture():
    """The in-training proxy on the fixture (vocabulary = every normalised MC answer and prediction)."""
    from vlpeft.data.normalize import normalize_word
    from write_arrow.vqa import build_vocab

    a, p = _load(A), _load(P)
    vocab = build_vocab([a["annotations"]], 1) + [normalize_word(x["answer"]) for x in p]
    proxy = vqa_proxy_accuracy(a, p, vocab)
    assert proxy["questions"] == 42 and proxy["dropped"] == 0
    # official sum 2990/100 (71.19) vs proxy: the 8 ten-identical-answer questions score 1 instead of 0
    assert proxy["overall"] == pytest.approx(100 * 37.9 / 42, abs=1e-9)
    assert official_round(proxy["overall"]) - OFFICIAL_FIXTURE["overall"] == pytest.approx(19.05, abs=TOL)
    # a question without any vocabulary answer is dropped by the proxy
    # (vocabulary ["yes"]: 9 questions have an annotator answer normalising to "yes"; 7 of them are predicted
    # "yes" after normalisation — "Yes", "YES", "yes.", "  yes\n" included — with ≥4 matching annotators)
    small = vqa_proxy_accuracy(a, p, ["yes"])
    assert small["dropped"] == 33 and small["questions"] == 9
    assert small["overall"] == pytest.approx(700 / 9, abs=1e-9)


# ------------------------------------------------------------------------------------------ VQA CLI
def _shell(*args: str) -> subprocess.CompletedProcess:
    """``python -m vlpeft.evaluate ARGS`` in a fresh interpreter (the entry point itself)."""
    return subprocess.run([sys.executable, "-m", "vlpeft.evaluate", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _cli(*args: str) -> subprocess.CompletedProcess:
    """What ``python -m vlpeft.evaluate ARGS`` runs (``sys.exit(main())``), in this process: the exit code, stdout
    and stderr, without an interpreter start-up per call (``test_cli_vqa_json`` starts one). An exception escaping
    ``main`` fails the test, as its traceback (exit 1) would fail a returncode == 2 check."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return subprocess.CompletedProcess(["vlpeft.evaluate", *args], code, out.getvalue(), err.getvalue())


def test_cli_vqa_json(tmp_path):
    out = tmp_path / "acc.json"
    r = _shell("vqa", "--questions", str(Q), "--annotations", str(A), "--predictions", str(P), "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "Overall Accuracy is: 71.19" in r.stdout
    _assert_accuracy_equal(json.loads(out.read_text()), OFFICIAL_FIXTURE)


def test_cli_errors(tmp_path):
    missing = tmp_path / "nope.json"
    r = _cli("vqa", "--questions", str(Q), "--annotations", str(A), "--predictions", str(missing))
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "Traceback" not in r.stderr
    assert f"{missing}: file not found" in r.stderr

    bad = tmp_path / "bad.json"
    bad.write_text('[{"question_id": 1000, "answer": "yes"},')
    r = _cli("vqa", "--questions", str(Q), "--annotations", str(A), "--predictions", str(bad))
    assert r.returncode == 2 and "Traceback" not in r.stderr and f"{bad}: not valid JSON" in r.stderr

    wrong = _write(tmp_path / "wrong.json", {"1000": "yes"})
    r = _cli("vqa", "--questions", str(Q), "--annotations", str(A), "--predictions", str(wrong))
    assert r.returncode == 2 and "the top level is a dict" in r.stderr and "VQAv2 submission format" in r.stderr

    strid = _write(tmp_path / "strid.json", [{"question_id": "1000", "answer": "yes"}])
    r = _cli("vqa", "--questions", str(Q), "--annotations", str(A), "--predictions", str(strid))
    assert r.returncode == 2 and "predictions[0].question_id is '1000'; expected an integer" in r.stderr

    partial = _write(tmp_path / "partial.json", _load(P)[:40])
    r = _cli("vqa", "--questions", str(Q), "--annotations", str(A), "--predictions", str(partial))
    assert r.returncode == 2 and "2 annotated question ids have no prediction (first: [1280, 1287])" in r.stderr
    assert r.stderr.count("\n") == 1  # one line


# ---------------------------------------------------------------------------------------------- GQA
GQA_QUESTIONS = {
    "201": {"answer": "left", "isBalanced": True}, "202": {"answer": "no", "isBalanced": True},
    "203": {"answer": "red", "isBalanced": True}, "204": {"answer": "cat", "isBalanced": True},
    "205": {"answer": "yes", "isBalanced": False},  # not part of the balanced accuracy
}


def test_gqa_accuracy_hand_computed(tmp_path):
    preds = [{"questionId": "201", "prediction": "left"}, {"questionId": "202", "prediction": "yes"},
             {"questionId": "203", "prediction": "Red"},  # exact match only: wrong
             {"questionId": "204", "prediction": "cat"}]
    assert gqa_accuracy(GQA_QUESTIONS, preds) == {"accuracy": 50.0, "correct": 2, "total": 4}
    with pytest.raises(EvaluationError, match=r"1 annotated questionIds have no prediction \(first: \['204'\]\)"):
        gqa_accuracy(GQA_QUESTIONS, preds[:3])
    assert gqa_accuracy(GQA_QUESTIONS, preds[:3], only_predicted=True)["accuracy"] == pytest.approx(100 / 3, abs=TOL)
    qf, pf = _write(tmp_path / "q.json", GQA_QUESTIONS), _write(tmp_path / "p.json", preds)
    assert gqa_accuracy_files(qf, pf)["correct"] == 2
    r = _cli("gqa", "--questions", str(qf), "--predictions", str(pf), "--json", str(tmp_path / "o.json"))
    assert r.returncode == 0 and "gqa accuracy: 50.00% (2/4)" in r.stdout
    assert json.loads((tmp_path / "o.json").read_text()) == {"accuracy": 50.0, "correct": 2, "total": 4}


# ------------------------------------------------------------------------------------ SNLI-VE, NLVR2
SNLI_ANN = [
    {"gold_label": "entailment", "Flikr30kID": "111.jpg", "pairID": "111.jpg#0r1e", "sentence2": "A dog runs."},
    {"gold_label": "neutral", "Flikr30kID": "111.jpg", "pairID": "111.jpg#0r1n", "sentence2": "A dog plays."},
    {"gold_label": "contradiction", "Flikr30kID": "222.jpg", "pairID": "222.jpg#2r1c", "sentence2": "A dog runs."},
    {"gold_label": "-", "Flikr30kID": "222.jpg", "pairID": "222.jpg#2r1x", "sentence2": "Unclear."},  # skipped
]


def test_snli_ve_accuracy_hand_computed(tmp_path):
    # our dump rows (metrics.predictions): class ids, gold label embedded
    dump = [{"table_name": "snli_ve_test", "image_key": "snli_ve_test:0", "text": "A dog runs.", "pred": 2,
             "label": 2},
            {"table_name": "snli_ve_test", "image_key": "snli_ve_test:0", "text": "A dog plays.", "pred": 0,
             "label": 1},
            {"table_name": "snli_ve_test", "image_key": "snli_ve_test:1", "text": "A dog runs.", "pred": 0,
             "label": 0}]
    assert snli_ve_accuracy(None, dump) == {"accuracy": pytest.approx(200 / 3, abs=TOL), "correct": 2, "total": 3}
    # joined to the official file by (image id, hypothesis): same hypothesis, different images
    keyed = [dict(r, identifier=iid) for r, iid in zip(dump, (111, 111, 222))]
    assert snli_ve_accuracy(SNLI_ANN, keyed)["correct"] == 2
    by_pair = [{"pairID": "111.jpg#0r1e", "prediction": "entailment"},
               {"pairID": "111.jpg#0r1n", "prediction": "neutral"},
               {"pairID": "222.jpg#2r1c", "prediction": "entailment"}]
    assert snli_ve_accuracy(SNLI_ANN, by_pair) == {"accuracy": pytest.approx(200 / 3, abs=TOL), "correct": 2,
                                                   "total": 3}
    with pytest.raises(EvaluationError, match="rows with only image_key cannot be matched"):
        snli_ve_accuracy(SNLI_ANN, dump)
    with pytest.raises(EvaluationError, match="expected one of"):
        snli_ve_accuracy(None, [{"prediction": "yes", "label": 0}])
    # CLI with the official JSON lines file
    ann = tmp_path / "snli_ve_test.jsonl"
    ann.write_text("\n".join(json.dumps(r) for r in SNLI_ANN) + "\n")
    pf = _write(tmp_path / "p.json", by_pair)
    r = _cli("snli_ve", "--annotations", str(ann), "--predictions", str(pf))
    assert r.returncode == 0 and "snli_ve accuracy: 66.67% (2/3)" in r.stdout


NLVR2_ANN = [
    {"identifier": "dev-850-0-0", "sentence": "There are two dogs.", "label": "True"},
    {"identifier": "dev-850-1-0", "sentence": "There are two dogs.", "label": "False"},
    {"identifier": "dev-851-0-1", "sentence": "One bird flies.", "label": "True"},
    {"identifier": "dev-852-2-3", "sentence": "No cat is visible.", "label": "False"},
]


def test_nlvr2_accuracy_hand_computed(tmp_path):
    full = [{"identifier": "dev-850-0-0", "prediction": "True"}, {"identifier": "dev-850-1-0", "pred": 1},
            {"identifier": "dev-851-0-1", "pred": 1}, {"identifier": "dev-852-2-3", "prediction": False}]
    assert nlvr2_accuracy(NLVR2_ANN, full) == {"accuracy": 75.0, "correct": 3, "total": 4}
    # the arrow pair id + the sentence
    pair = [{"identifier": "dev-850-0", "text": "There are two dogs.", "pred": 1},
            {"identifier": "dev-850-1", "text": "There are two dogs.", "pred": 1},
            {"identifier": "dev-851-0", "text": "One bird flies.", "pred": 0},
            {"identifier": "dev-852-2", "text": "No cat is visible.", "pred": 0}]
    assert nlvr2_accuracy(NLVR2_ANN, pair) == {"accuracy": 50.0, "correct": 2, "total": 4}
    dump = [{"table_name": "nlvr2_dev", "image_key": "nlvr2_dev:3", "text": "x", "pred": 1, "label": 1},
            {"table_name": "nlvr2_dev", "image_key": "nlvr2_dev:4", "text": "y", "pred": 1, "label": 0}]
    assert nlvr2_accuracy(None, dump) == {"accuracy": 50.0, "correct": 1, "total": 2}
    with pytest.raises(EvaluationError, match="has no 'identifier'"):
        nlvr2_accuracy(NLVR2_ANN, dump)
    with pytest.raises(EvaluationError, match=r"1 annotated identifiers have no prediction \(first: \['dev-852-2-3'\]\)"):
        nlvr2_accuracy(NLVR2_ANN, full[:3])
    ann = tmp_path / "dev.json"
    ann.write_text("\n".join(json.dumps(r) for r in NLVR2_ANN) + "\n")
    pf = _write(tmp_path / "p.json", full)
    r = _cli("nlvr2", "--annotations", str(ann), "--predictions", str(pf))
    assert r.returncode == 0 and "nlvr2 accuracy: 75.00% (3/4)" in r.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(NLVR2_ANN[0]) + "\n{oops\n")
    r = _cli("nlvr2", "--annotations", str(bad), "--predictions", str(pf))
    assert r.returncode == 2 and f"{bad}, line 2: not valid JSON" in r.stderr and "Traceback" not in r.stderr


# ------------------------------------------------------------------------------------------ fill-vqa
def test_fill_vqa_submission():
    rows = [{"question_id": 5, "answer": "2"}, {"question_id": 1, "answer": "no"}]
    out, filled = fill_vqa_submission(rows, [1, 2, 3, 4, 5], fill="yes")
    assert filled == 3
    assert out == [{"question_id": 1, "answer": "no"}, {"question_id": 2, "answer": "yes"},
                   {"question_id": 3, "answer": "yes"}, {"question_id": 4, "answer": "yes"},
                   {"question_id": 5, "answer": "2"}]
    assert fill_vqa_submission(out, [1, 2, 3, 4, 5])[1] == 0
    with pytest.raises(SubmissionError, match=r"1 answered question ids are not among the 2 ids .*first: \[5\]"):
        fill_vqa_submission(rows, [1, 2])
    with pytest.raises(SubmissionError, match="different values"):
        fill_vqa_submission(rows + [{"question_id": 1, "answer": "yes"}], [1, 5])


def test_write_vqa_submission_fill(tmp_path):
    path = write_vqa_submission([3, 1], ["red", "no"], tmp_path / "s.json", fill_question_ids=[1, 2, 3], fill="x")
    assert json.loads(path.read_text()) == [{"question_id": 1, "answer": "no"}, {"question_id": 2, "answer": "x"},
                                            {"question_id": 3, "answer": "red"}]


def test_cli_fill_vqa(tmp_path):
    qs = _write(tmp_path / "test2015_questions.json",
                {"questions": [{"image_id": 1, "question": "?", "question_id": q} for q in (10, 11, 12, 13)]})
    sub = _write(tmp_path / "sub.json", [{"question_id": 11, "answer": "2"}])
    out = tmp_path / "full.json"
    r = _cli("fill-vqa", "--submission", str(sub), "--questions", str(qs), "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "4 answers, 3 missing question ids filled with 'yes'" in r.stdout
    assert json.loads(out.read_text()) == [{"question_id": 10, "answer": "yes"}, {"question_id": 11, "answer": "2"},
                                           {"question_id": 12, "answer": "yes"}, {"question_id": 13, "answer": "yes"}]
    extra = _write(tmp_path / "extra.json", [{"question_id": 99, "answer": "2"}])
    r = _cli("fill-vqa", "--submission", str(extra), "--questions", str(qs), "--out", str(out))
    assert r.returncode == 2 and r.stderr.startswith(f"error: {extra}: 1 answered question ids are not among")


def test_main_in_process_returns_2(capsys, tmp_path):
    assert main(["gqa", "--questions", str(tmp_path / "q.json"), "--predictions", str(tmp_path / "p.json")]) == 2
    assert "q.json: file not found" in capsys.readouterr().err

"""Test-only prediction files: the VQA EvalAI submission, GQA and SNLI-VE prediction lists, the COCO caption
results (``caption_result_<name>.json``). VQA / GQA rows carry a class id (``pred``, classifiers) or the
generated string (``answer``, generative tasks).

Fix of the originals (per-rank files in the CWD, a glob that merged stale files, duplicates from
DistributedSampler padding, non-atomic writes): predictions are gathered in memory, de-duplicated by
question id, checked against the expected id set, and written atomically to an explicit path.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Hashable, Iterable, Mapping, Sequence

import torch.distributed as dist

from vlpeft._io import write_json_atomic
from vlpeft.tasks._base import TASKS

UNKNOWN_ANSWER = "unknown"


class SubmissionError(ValueError):
    """Predictions that cannot form a valid submission file."""


def gather_predictions(local_list: Sequence[Any]) -> list[Any]:
    """All ranks' lists concatenated in rank order (``all_gather_object``); the list itself without a group."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, list(local_list))
        return [x for part in gathered for x in part]
    return list(local_list)


def answers_from_ids(pred_ids: Iterable[int], id2answer: Mapping[int, str] | Sequence[str]) -> list[str]:
    """Class ids → answer strings; ids outside the vocabulary become "unknown" (as the originals)."""
    out = []
    for i in pred_ids:
        i = int(i)
        try:
            out.append(str(id2answer[i]))
        except (KeyError, IndexError):
            out.append(UNKNOWN_ANSWER)
    return out


def _dedupe(pairs: Iterable[tuple[Hashable, Any]], what: str) -> dict[Hashable, Any]:
    """Same id twice with the same value is padding (kept once); with different values it is an error."""
    seen: dict[Hashable, Any] = {}
    for k, v in pairs:
        if k in seen and seen[k] != v:
            raise SubmissionError(f"{what} {k!r} predicted twice with different values: {seen[k]!r} vs {v!r}")
        seen[k] = v
    return seen


def _check_expected(got: Iterable[Hashable], expected: Iterable[Hashable] | None, what: str) -> None:
    if expected is None:
        return
    got_set, exp_set = set(got), set(expected)
    missing = sorted(exp_set - got_set, key=str)
    extra = sorted(got_set - exp_set, key=str)
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"{len(missing)} expected {what}s missing (first: {missing[:5]})")
        if extra:
            parts.append(f"{len(extra)} unexpected {what}s (first: {extra[:5]})")
        raise SubmissionError("; ".join(parts) + "; was the whole test split evaluated (limit_test_batches?)")


def write_vqa_submission(qids: Sequence[int], preds: Sequence[str], path: str | os.PathLike,
                         expected_qids: Iterable[int] | None = None, *,
                         fill_question_ids: Iterable[int] | None = None, fill: str = "yes") -> Path:
    """JSON list of ``{"question_id": int, "answer": str}`` sorted by question id (the EvalAI format).

    With ``fill_question_ids`` (all test2015 question ids, for a test-dev submission) the missing ids are
    answered ``fill`` — see :func:`fill_vqa_submission`; ``expected_qids`` is checked before filling.
    """
    if len(qids) != len(preds):
        raise SubmissionError(f"{len(qids)} question ids but {len(preds)} answers")
    by_qid = _dedupe(((int(q), str(a)) for q, a in zip(qids, preds)), "question_id")
    _check_expected(by_qid, None if expected_qids is None else (int(q) for q in expected_qids), "question_id")
    rows = [{"question_id": q, "answer": by_qid[q]} for q in sorted(by_qid)]
    if fill_question_ids is not None:
        rows, _ = fill_vqa_submission(rows, fill_question_ids, fill=fill)
    return write_json_atomic(path, rows, indent=4)


def fill_vqa_submission(rows: Iterable[Mapping[str, Any]], all_question_ids: Iterable[int],
                        fill: str = "yes") -> tuple[list[dict[str, Any]], int]:
    """Complete a VQAv2 submission: every id of ``all_question_ids`` missing from ``rows`` gets ``fill``.

    EvalAI scores a test-dev submission only if it answers every test2015 (test-std) question, so a test-dev
    run's ``vqa_submit_*.json`` must be filled with the full ``v2_OpenEnded_mscoco_test2015_questions.json`` ids.
    Returns ``(rows sorted by question id, number of ids filled)`` and logs the count. Rows whose id is not in
    ``all_question_ids`` (wrong questions file) and ids answered twice differently raise :class:`SubmissionError`.
    """
    rows = list(rows)
    for i, r in enumerate(rows):
        if not isinstance(r, Mapping) or "question_id" not in r or "answer" not in r:
            raise SubmissionError(f"row {i} is not an object with 'question_id' and 'answer'")
    by_qid = _dedupe(((int(r["question_id"]), str(r["answer"])) for r in rows), "question_id")
    all_ids = {int(q) for q in all_question_ids}
    extra = sorted(set(by_qid) - all_ids)
    if extra:
        raise SubmissionError(f"{len(extra)} answered question ids are not among the {len(all_ids)} ids to cover "
                              f"(first: {extra[:5]}); pass the questions file of the split that was predicted "
                              f"(test2015 includes test-dev2015)")
    missing = all_ids - set(by_qid)
    for q in missing:
        by_qid[q] = str(fill)
    logging.getLogger(__name__).info("VQA submission: %d of %d question ids filled with %r",
                                     len(missing), len(all_ids), fill)
    return [{"question_id": q, "answer": by_qid[q]} for q in sorted(by_qid)], len(missing)


def write_predictions(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, key: str | None = None,
                      expected_keys: Iterable[Hashable] | None = None) -> Path:
    """A JSON list of prediction rows, e.g. GQA ``{"questionId", "prediction"}`` or SNLI-VE rows.

    With ``key`` the rows are de-duplicated by ``row[key]`` (conflicting duplicates raise), checked against
    ``expected_keys`` and sorted by key; without it they are written in the given order.
    """
    rows = [dict(r) for r in rows]
    if key is not None:
        missing_key = [i for i, r in enumerate(rows) if key not in r]
        if missing_key:
            raise SubmissionError(f"{len(missing_key)} prediction rows lack the key {key!r} (first row {missing_key[0]})")
        by_key = _dedupe(((r[key], _frozen(r)) for r in rows), key)
        _check_expected(by_key, expected_keys, key)
        rows = [dict(by_key[k]) for k in sorted(by_key, key=_sort_key)]
    return write_json_atomic(path, rows, indent=4)


def write_gqa_predictions(qids: Sequence[str], preds: Sequence[str], path: str | os.PathLike,
                          expected_qids: Iterable[str] | None = None) -> Path:
    """GQA's ``[{"questionId": str, "prediction": str}]`` (the format of the official evaluation script)."""
    if len(qids) != len(preds):
        raise SubmissionError(f"{len(qids)} question ids but {len(preds)} predictions")
    rows = [{"questionId": str(q), "prediction": str(p)} for q, p in zip(qids, preds)]
    return write_predictions(rows, path, key="questionId",
                             expected_keys=None if expected_qids is None else [str(q) for q in expected_qids])


class _frozen(tuple):
    """A hashable, comparable view of a row (so identical duplicate rows compare equal)."""

    def __new__(cls, row: Mapping[str, Any]):
        return super().__new__(cls, sorted(row.items()))


def _sort_key(k: Any) -> tuple[int, Any]:
    # numeric ids in numeric order (GQA ids are digit strings), anything else as text
    try:
        return (0, int(k))
    except (TypeError, ValueError):
        return (1, str(k))


def write_caption_results(image_ids: Sequence[Any], captions: Sequence[str], path: str | os.PathLike,
                          expected_ids: Iterable[Hashable] | None = None) -> Path:
    """The COCO caption results file: ``[{"image_id": ..., "caption": str}]`` sorted by image id (what
    ``pycocotools.COCO.loadRes`` and the COCO caption server read). Ids keep their type (COCO: int, Karpathy
    file names: str); duplicates (sampler padding) must agree; written atomically."""
    if len(image_ids) != len(captions):
        raise SubmissionError(f"{len(image_ids)} image ids but {len(captions)} captions")
    by_id = _dedupe(((i, str(c)) for i, c in zip(image_ids, captions)), "image_id")
    _check_expected(by_id, expected_ids, "image_id")
    rows = [{"image_id": i, "caption": by_id[i]} for i in sorted(by_id, key=_sort_key)]
    return write_json_atomic(path, rows, indent=4)


def write_test_dumps(rows_by_task: Mapping[str, Sequence[Mapping[str, Any]]],
                     id2answer: Mapping[str, Mapping[int, str] | Sequence[str]],
                     out_dir: str | os.PathLike, name: str,
                     expected_qids: Mapping[str, Iterable[Hashable]] | None = None,
                     tasks: Mapping[str, Any] | None = None, **options: Any) -> dict[str, Path]:
    """Write every test dump a run produces, each by its task (``Task.write_dump``: ``vqa_submit_<name>.json`` in
    the VQAv2 server format, ``gqa_predict_<name>.json``, ``caption_result_<name>.json`` in the COCO results
    format, ``<task>_predict_<name>.json`` for the others).

    ``rows_by_task`` are the (already gathered) rows of ``Task.predictions``; ``id2answer`` maps a task to its label
    vocabulary; ``tasks``: the run's task objects by name (default: the registered task in its first mode);
    ``options``: passed to every writer (e.g. ``fill_question_ids`` / ``fill`` of the VQA submission).
    """
    out_dir = Path(out_dir)
    expected_qids = expected_qids or {}
    written: dict[str, Path] = {}
    for task, rows in rows_by_task.items():
        if not rows:
            continue
        t = (tasks or {}).get(task) or TASKS.build(task)
        path = t.write_dump(rows, out_dir, name, id2answer.get(task), expected_qids.get(task), **options)
        if path is not None:
            written[task] = path
    return written


def answers_of_rows(rows: Sequence[Mapping[str, Any]], vocab: Mapping[int, str] | Sequence[str]) -> list[str]:
    """Answer strings of prediction rows: generated (``answer``) as they are, class ids (``pred``) via ``vocab``."""
    if all("answer" in r for r in rows):
        return [str(r["answer"]) for r in rows]
    return answers_from_ids([r["pred"] for r in rows], vocab)


def read_question_ids(path: str | os.PathLike) -> list[int]:
    """Question ids of a VQA questions JSON (``{"questions": [...]}`` or a list of question objects)."""
    data = json.loads(Path(path).read_text())
    return [int(q["question_id"]) for q in (data["questions"] if isinstance(data, dict) else data)]


def write_other_predictions(task: str, rows: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, name: str,
                            vocab: Mapping[int, str] | Sequence[str] | None) -> Path:
    """``<task>_predict_<name>.json``: the rows, class ids mapped to ``prediction`` strings where a vocabulary
    exists (generative rows keep their generated ``prediction``)."""
    rows = [dict(r, prediction=answers_from_ids([r["pred"]], vocab)[0]) if vocab and "pred" in r else dict(r)
            for r in rows]
    return write_predictions(rows, Path(out_dir) / f"{task}_predict_{name}.json")


def write_run_dumps(parts: Sequence[Mapping[str, list[dict]]], datamodule: Any, tasks: Sequence[Any],
                    dump_dir: str | os.PathLike | None, dump_name: str, is_global_zero: bool) -> dict[str, Path]:
    """A test run's dumps: every rank's prediction rows gathered, rank 0 writes them into the run folder
    ``dump_dir`` (names from ``dump_name``); each task's ``dump_options`` (VQA: ``vqa_fill_questions``) apply."""
    merged: dict[str, list[dict]] = {}
    for part in parts:
        for task, rows in part.items():
            merged.setdefault(task, []).extend(rows)
    merged = {t: gather_predictions(rows) for t, rows in sorted(merged.items())}
    if not (is_global_zero and dump_dir):
        return {}
    by_name = {t.name: t for t in tasks}
    written: dict[str, Path] = {}
    for task, rows in merged.items():
        t = by_name.get(task) or TASKS.build(task)
        # class-id rows need the answer vocabulary; generated answers are strings already
        vocab = datamodule.id2answer(task) if t.answer_vocab_file and any("pred" in r for r in rows) else None
        written.update(write_test_dumps({task: rows}, {task: vocab} if vocab is not None else {}, dump_dir,
                                        dump_name, tasks=by_name, **t.dump_options()))
    for task, path in written.items():
        print(f"[vlpeft] wrote {task} test dump: {path}", flush=True)
    return written

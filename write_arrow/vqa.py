"""VQAv2 (COCO 2014/2015 images + v2 questions/annotations) → vqav2_*.arrow."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vlpeft.data.normalize import normalize_word

from ._common import (
    VQA_SCHEMA,
    WriteArrowError,
    Written,
    expect_type,
    list_images,
    load_json,
    missing_error,
    read_bytes,
    require_keys,
    seeded_order,
    vqa_score,
    write_rows,
    write_vocab,
)

# split → (name inside the question/annotation file names, image folder)
SPLITS: dict[str, tuple[str, str]] = {
    "train": ("train2014", "train2014"),
    "val": ("val2014", "val2014"),
    "test": ("test2015", "test2015"),
    "test-dev": ("test-dev2015", "test2015"),  # test-dev images are a subset of test2015
}
ANSWERED = ("train", "val")


def questions_path(src: Path, split: str) -> Path:
    return src / f"v2_OpenEnded_mscoco_{SPLITS[split][0]}_questions.json"


def annotations_path(src: Path, split: str) -> Path:
    return src / f"v2_mscoco_{SPLITS[split][0]}_annotations.json"


@dataclass
class _Question:
    qid: int
    text: str
    labels: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)


def _load_questions(path: Path) -> list[dict[str, Any]]:
    what = "the VQAv2 questions JSON: an object whose 'questions' list holds {image_id, question, question_id}"
    data = load_json(path, what)
    require_keys(data, ["questions"], path, "the top level")
    records = expect_type(data["questions"], list, path, "'questions'", "a list")
    for i, r in enumerate(records):
        require_keys(r, ["image_id", "question", "question_id"], path, f"questions[{i}]")
        expect_type(r["image_id"], int, path, f"questions[{i}].image_id", "an integer COCO image id")
        expect_type(r["question_id"], int, path, f"questions[{i}].question_id", "an integer question id")
        expect_type(r["question"], str, path, f"questions[{i}].question", "a string")
    return records


def _load_annotations(path: Path) -> list[dict[str, Any]]:
    what = ("the VQAv2 annotations JSON: an object whose 'annotations' list holds {question_id, image_id, "
            "multiple_choice_answer, answers: [{answer}, …]}")
    data = load_json(path, what)
    require_keys(data, ["annotations"], path, "the top level")
    records = expect_type(data["annotations"], list, path, "'annotations'", "a list")
    for i, r in enumerate(records):
        require_keys(r, ["question_id", "image_id", "multiple_choice_answer", "answers"], path, f"annotations[{i}]")
        expect_type(r["multiple_choice_answer"], str, path, f"annotations[{i}].multiple_choice_answer", "a string")
        answers = expect_type(r["answers"], list, path, f"annotations[{i}].answers", "a list of {answer}")
        for j, a in enumerate(answers):
            require_keys(a, ["answer"], path, f"annotations[{i}].answers[{j}]")
    return records


def build_vocab(annotations: list[list[dict[str, Any]]], min_count: int = 9) -> list[str]:
    """label2ans: normalised ``multiple_choice_answer`` seen ≥ ``min_count`` times, in first-occurrence order."""
    counts = Counter(normalize_word(a["multiple_choice_answer"]) for anns in annotations for a in anns)
    return [ans for ans, c in counts.items() if c >= min_count]


def soft_targets(answers: list[dict[str, Any]], ans2label: dict[str, int], *,
                 original_answer_matching: bool = False) -> tuple[list[int], list[float]]:
    """Labels and soft scores of one question from its annotators' answers.

    Each distinct annotator answer that is in the vocabulary gives one label, scored by how many annotators
    gave it. By default annotator answers are normalised like the vocabulary before matching (the official
    metric's view); ``original_answer_matching=True`` matches the raw strings, as the originals did.
    """
    key = (lambda s: s) if original_answer_matching else normalize_word
    counts = Counter(key(a["answer"]) for a in answers)
    labels, scores = [], []
    for ans, n in counts.items():
        if ans in ans2label:
            labels.append(ans2label[ans])
            scores.append(vqa_score(n))
    return labels, scores


def _image_paths(src: Path, folder: str) -> dict[int, Path]:
    """COCO image id → file, from names like ``COCO_val2014_000000391895.jpg``."""
    out: dict[int, Path] = {}
    for name, path in list_images(src / folder, f"the COCO {folder} image folder", (".jpg",)).items():
        tail = name.rsplit("_", 1)[-1][: -len(".jpg")]
        if tail.isdigit():
            out[int(tail)] = path
    return out


def write_vqa(src: str | Path, dst: str | Path, *, seed: int = 0, rest_val_images: int = 1000,
              min_answer_count: int = 9, original_answer_matching: bool = False, include_test: bool = True,
              progress: bool = True) -> dict[str, Written]:
    """Convert the VQAv2 release under ``src`` to ViLT-format arrow files under ``dst``.

    Writes ``vqav2_{train,val,trainable_val,rest_val}.arrow`` (+ ``vqav2_{test,test-dev}.arrow`` when
    ``include_test``) and ``vqav2_label_vocab.json``. Row order is a seeded shuffle of the sorted image ids, so
    the same ``seed`` always gives the same files; ``rest_val`` is the last ``rest_val_images`` rows of ``val``.
    """
    src, dst = Path(src), Path(dst)
    splits = list(SPLITS) if include_test else list(ANSWERED)
    # validate every input before writing anything
    questions = {s: _load_questions(questions_path(src, s)) for s in splits}
    annotations = {s: _load_annotations(annotations_path(src, s)) for s in ANSWERED}
    images = {folder: _image_paths(src, folder) for folder in dict.fromkeys(SPLITS[s][1] for s in splits)}

    label2ans = build_vocab([annotations[s] for s in ANSWERED], min_answer_count)
    if not label2ans:
        raise WriteArrowError(f"{annotations_path(src, 'train')}: no answer occurs {min_answer_count}+ times in "
                              f"train+val; lower min_answer_count for small data")
    ans2label = {a: i for i, a in enumerate(label2ans)}

    per_split: dict[str, dict[int, list[_Question]]] = {}
    for split in splits:
        by_qid = {}
        if split in ANSWERED:
            by_qid = {a["question_id"]: a for a in annotations[split]}
        by_image: dict[int, list[_Question]] = {}
        for q in questions[split]:
            item = _Question(q["question_id"], q["question"])
            if split in ANSWERED:
                ann = by_qid.get(q["question_id"])
                if ann is None:
                    raise WriteArrowError(f"{annotations_path(src, split)}: no annotation for question_id "
                                          f"{q['question_id']} of {questions_path(src, split).name}")
                item.labels, item.scores = soft_targets(ann["answers"], ans2label,
                                                        original_answer_matching=original_answer_matching)
                if not item.labels:  # no annotator answer in the vocabulary: unusable for training
                    continue
            by_image.setdefault(q["image_id"], []).append(item)
        folder = SPLITS[split][1]
        absent = sorted(set(by_image) - set(images[folder]))
        if absent:
            raise missing_error([f"COCO_{folder}_{i:012d}.jpg" for i in absent], src / folder,
                                f"images referenced by {questions_path(src, split).name}")
        per_split[split] = by_image

    def row_maker(split: str):
        by_image, folder = per_split[split], SPLITS[split][1]

        def make(image_id: int) -> dict[str, Any]:
            qs = by_image[image_id]
            answered = split in ANSWERED
            return {
                "image": read_bytes(images[folder][image_id]),
                "questions": [q.text for q in qs],
                "answers": [[label2ans[lab] for lab in q.labels] for q in qs] if answered else [],
                "answer_labels": [q.labels for q in qs] if answered else [],
                "answer_scores": [q.scores for q in qs] if answered else [],
                "image_id": image_id,
                "question_id": [q.qid for q in qs],
                "split": split,
            }

        return make

    val_order = seeded_order(per_split["val"], seed, "vqav2_val")
    if len(val_order) <= rest_val_images:
        raise WriteArrowError(f"{questions_path(src, 'val')}: {len(val_order)} val images with answers, not more "
                              f"than rest_val_images={rest_val_images}; lower rest_val_images")
    cut = len(val_order) - rest_val_images
    jobs: list[tuple[str, str, list[int]]] = [
        ("vqav2_train", "train", seeded_order(per_split["train"], seed, "vqav2_train")),
        ("vqav2_val", "val", val_order),
        ("vqav2_trainable_val", "val", val_order[:cut]),
        ("vqav2_rest_val", "val", val_order[cut:]),
    ]
    if include_test:
        jobs += [(f"vqav2_{s}", s, seeded_order(per_split[s], seed, f"vqav2_{s}")) for s in ("test", "test-dev")]
    written = {name: write_rows(dst / f"{name}.arrow", VQA_SCHEMA, order, row_maker(split), progress=progress)
               for name, split, order in jobs}
    write_vocab(dst, label2ans)
    return written

"""Tiny raw datasets in the real release formats, for the write_arrow tests.

Each builder writes a folder laid out like the public release (see DATA.md) and returns it. Images are tiny
solid-colour JPEG/PNG files whose colour encodes an integer, so a test can tell which image landed in which row
(``image_tag(bytes)``). The answer data is chosen so the expected labels and soft scores can be computed by hand
(see tests/test_write_arrow.py).
"""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

from PIL import Image


def image_bytes(tag: int, fmt: str = "JPEG") -> bytes:
    """An 8×8 image whose (lossless enough) colour encodes ``tag`` (0..215)."""
    if not 0 <= tag < 216:
        raise ValueError(tag)
    rgb = (40 * (tag // 36), 40 * ((tag // 6) % 6), 40 * (tag % 6))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), rgb).save(buf, format=fmt, quality=100)
    return buf.getvalue()


def image_tag(data: bytes) -> int:
    r, g, b = Image.open(io.BytesIO(data)).convert("RGB").getpixel((4, 4))
    q = [round(v / 40) for v in (r, g, b)]
    return 36 * q[0] + 6 * q[1] + q[2]


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def _put_image(path: Path, tag: int, fmt: str = "JPEG") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes(tag, fmt))


# ------------------------------------------------------------------------------------------------ VQA
def _ann(qid: int, image_id: int, mca: str, answers: list[str]) -> dict:
    assert len(answers) == 10
    return {"question_id": qid, "image_id": image_id, "multiple_choice_answer": mca, "question_type": "what",
            "answer_type": "other",
            "answers": [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(answers)]}


# (image_id, question_id, question, multiple_choice_answer, ten annotator answers)
VQA_TRAIN = [
    (1, 101, "What number is shown?", "Two", ["Two"] * 4 + ["2"] * 3 + ["two."] * 2 + ["yes"]),
    (1, 102, "Is it sunny?", "yes", ["yes"] * 10),
    (2, 201, "What color is the bus?", "red", ["red", "red", "Red"] + ["blue"] * 7),
    (2, 202, "How many people?", "1,000", ["1,000"] * 5 + ["none"] * 5),  # no answer in the vocabulary
    (3, 301, "What animal?", "zebra", ["zebra"] * 10),  # zebra occurs once: image 3 is dropped
]
VQA_VAL = [
    (10, 1001, "Is it raining?", "no", ["no"] * 10),
    (11, 1101, "Is there a dog?", "no", ["no"] * 3 + ["yes"] * 7),
    (12, 1201, "What color is the sky?", "blue", ["blue"] * 10),
    (13, 1301, "What color is the car?", "blue", ["blue", "Blue."] + ["green"] * 8),
    (14, 1401, "Is this a cat?", "Yes!", ["Yes!"] * 10),
    (15, 1501, "How many cats?", "two", ["two"] * 10),
    (16, 1601, "What color is the apple?", "Red", ["Red"] * 10),
]
VQA_TEST = [(20, 2001, "What is this?"), (20, 2002, "Who is there?"), (21, 2101, "Why?"), (22, 2201, "Where?")]
VQA_TEST_DEV = [(20, 2001, "What is this?"), (21, 2101, "Why?")]
# vocabulary at min_answer_count=2 (train then val multiple_choice_answer, normalised, first occurrence)
VQA_VOCAB = ["2", "yes", "red", "no", "blue"]


def coco_name(folder: str, image_id: int) -> str:
    return f"COCO_{folder}_{image_id:012d}.jpg"


def make_vqa(root: Path) -> Path:
    root = Path(root)
    for split, rows in (("train2014", VQA_TRAIN), ("val2014", VQA_VAL)):
        _write_json(root / f"v2_OpenEnded_mscoco_{split}_questions.json",
                    {"info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "data_subtype": split,
                     "questions": [{"image_id": i, "question": q, "question_id": qid} for i, qid, q, _, _ in rows]})
        _write_json(root / f"v2_mscoco_{split}_annotations.json",
                    {"info": {}, "data_subtype": split,
                     "annotations": [_ann(qid, i, mca, ans) for i, qid, _, mca, ans in rows]})
        for image_id in {r[0] for r in rows}:
            _put_image(root / split / coco_name(split, image_id), image_id)
    _put_image(root / "train2014" / coco_name("train2014", 99), 99)  # an image without questions: ignored
    for name, rows in (("test2015", VQA_TEST), ("test-dev2015", VQA_TEST_DEV)):
        _write_json(root / f"v2_OpenEnded_mscoco_{name}_questions.json",
                    {"questions": [{"image_id": i, "question": q, "question_id": qid} for i, qid, q in rows]})
    for image_id in {r[0] for r in VQA_TEST}:
        _put_image(root / "test2015" / coco_name("test2015", image_id), image_id)
    return root


# ------------------------------------------------------------------------------------------------ GQA
GQA_DICTS = [{"yes": 0, "no": 1, "left": 2, "red": 3},
             {"0": "yes", "1": "no", "2": "left", "3": "red"},
             {"what": 0, "is": 1}, 14]
GQA_QUESTIONS = {
    "train": {"q1": {"question": "Is it?", "imageId": "2354786", "answer": "Yes"},
              "q2": {"question": "Which color?", "imageId": "2354786", "answer": "the red"},
              "q3": {"question": "What hue?", "imageId": "n161313", "answer": "purple"},  # not in dicts: dropped
              "q4": {"question": "Which side?", "imageId": "100", "answer": "left."}},
    "testdev": {"t1": {"question": "Is it not?", "imageId": "n161313", "answer": "no"}},
    "val": {"v1": {"question": "Really?", "imageId": "100", "answer": "No!"}},
}
GQA_IMAGE_TAGS = {"2354786": 1, "n161313": 2, "100": 3}


def make_gqa(root: Path) -> Path:
    root = Path(root)
    for split, qs in GQA_QUESTIONS.items():
        _write_json(root / f"{split}_balanced_questions.json",
                    {k: dict(v, types={}, semantic=[], fullAnswer=v["answer"]) for k, v in qs.items()})
    for stem, tag in GQA_IMAGE_TAGS.items():
        _put_image(root / "images" / f"{stem}.jpg", tag)
    _write_json(root / "dicts.json", GQA_DICTS)
    return root


# -------------------------------------------------------------------------------------------- SNLI-VE
# (uniq-id, image id, image tag, hypothesis, premise, label) per split
SNLI_VE_ROWS = {
    "train": [("0", "111", 11, "A dog runs.", "A dog in a park.", "entailment"),
              ("1", "222", 22, "Two cats.", "Cats on a sofa.", "neutral"),
              ("2", "111", 11, "A cat sleeps.", "A dog in a park.", "contradiction"),
              ("3", "222", 22, "", "Cats on a sofa.", "neutral")],  # no hypothesis: dropped
    "dev": [("4", "333", 33, "People walk.", "A street.", "entailment")],
    "test": [("5", "abc", 44, "A car.", "A road.", "neutral")],  # non-integer id → string identifier
}


def make_snli_ve(root: Path) -> Path:
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for split, rows in SNLI_VE_ROWS.items():
        lines = ["\t".join([u, iid, base64.b64encode(image_bytes(tag)).decode(), h, p, lab])
                 for u, iid, tag, h, p, lab in rows]
        (root / f"snli_ve_{split}.tsv").write_text("\n".join(lines) + "\n")
    return root


# ---------------------------------------------------------------------------------------------- NLVR2
# file → records (identifier, sentence, label, directory or None)
NLVR2_RECORDS = {
    "nlvr2/data/train.json": [("train-10108-0-0", "The left image has two dogs.", "True", "57"),
                              ("train-10108-0-1", "There are no dogs.", "False", "57"),
                              ("train-20-1-0", "One bird.", "False", "3")],
    "nlvr2/data/dev.json": [("dev-1-0-0", "A cat.", "True", None), ("dev-2-3-0", "Two cats.", "False", None)],
    "nlvr2/data/test1.json": [("test1-5-1-0", "A boat.", "True", None)],
    "nlvr2/data/balanced/balanced_dev.json": [("dev-1-0-0", "A cat.", "True", None)],
    "nlvr2/data/balanced/balanced_test1.json": [("test1-5-1-0", "A boat.", "True", None)],
    "nlvr2/data/unbalanced/unbalanced_dev.json": [("dev-2-3-0", "Two cats.", "False", None)],
    "nlvr2/data/unbalanced/unbalanced_test1.json": [("test1-5-1-0", "A boat.", "True", None)],
}
# pair identifier → (left tag, right tag)
NLVR2_PAIRS = {"train-10108-0": (1, 2), "train-20-1": (3, 4), "dev-1-0": (5, 6), "dev-2-3": (7, 8),
               "test1-5-1": (9, 10)}


def make_nlvr2(root: Path) -> Path:
    root = Path(root)
    for rel, recs in NLVR2_RECORDS.items():
        lines = []
        for ident, sentence, label, directory in recs:
            r = {"identifier": ident, "sentence": sentence, "label": label, "left_url": "x", "right_url": "y",
                 "writer": "w1", "synset": "dog", "query": "dogs"}
            if directory is not None:
                r["directory"] = directory
            lines.append(json.dumps(r))
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n")
    directories = {ident.rsplit("-", 1)[0]: d for recs in NLVR2_RECORDS.values() for ident, _, _, d in recs}
    for iden, tags in NLVR2_PAIRS.items():
        base = root / "images" / "train" / directories[iden] if iden.startswith("train") else root / iden.split("-")[0]
        for k, tag in enumerate(tags):
            _put_image(base / f"{iden}-img{k}.png", tag, "PNG")
    return root


# ------------------------------------------------------------------------------------------- Karpathy
F30K_IMAGES = [("1000092795.jpg", "train", 1, ["Two young guys.", "Men outside."]),
               ("10002456.jpg", "train", 2, ["Workers on a roof."]),
               ("1000268201.jpg", "val", 3, ["A child in pink."]),
               ("1000344755.jpg", "test", 4, ["Someone on a ladder.", "A man paints."])]
COCO_IMAGES = [("train2014", "COCO_train2014_000000000009.jpg", "train", 5, ["Food in bowls."]),
               ("val2014", "COCO_val2014_000000391895.jpg", "val", 6, ["A man on a bike."]),
               ("val2014", "COCO_val2014_000000522418.jpg", "restval", 7, ["A woman cuts cake.", "Cake."]),
               ("val2014", "COCO_val2014_000000184613.jpg", "test", 8, ["A boy with cattle."])]


def _sentences(raws: list[str]) -> list[dict]:
    return [{"tokens": r.lower().strip(".").split(), "raw": r, "imgid": 0, "sentid": i} for i, r in enumerate(raws)]


def make_f30k(root: Path) -> Path:
    root = Path(root)
    _write_json(root / "karpathy" / "dataset_flickr30k.json",
                {"dataset": "flickr30k",
                 "images": [{"filename": f, "imgid": i, "split": s, "sentids": [], "sentences": _sentences(c)}
                            for i, (f, s, _, c) in enumerate(F30K_IMAGES)]})
    for f, _, tag, _ in F30K_IMAGES:
        _put_image(root / "flickr30k-images" / f, tag)
    return root


def make_coco(root: Path) -> Path:
    root = Path(root)
    _write_json(root / "karpathy" / "dataset_coco.json",
                {"dataset": "coco",
                 "images": [{"filepath": d, "filename": f, "imgid": i, "split": s, "sentids": [], "cocoid": i,
                             "sentences": _sentences(c)} for i, (d, f, s, _, c) in enumerate(COCO_IMAGES)]})
    for d, f, _, tag, _ in COCO_IMAGES:
        _put_image(root / d / f, tag)
    return root

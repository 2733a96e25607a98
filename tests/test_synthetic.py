"""The synthetic dataset: deterministic under its seed, real layouts, and answerable only from the image."""

from __future__ import annotations

import io
import json
import random
import re
from collections import Counter, defaultdict

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from write_arrow.__main__ import main as cli_main
from write_arrow._common import CAPTION_SCHEMA, NLVR2_SCHEMA, VQA_SCHEMA
from write_arrow.synthetic import ANSWERS, COLORS, GRID, SHAPES, sample_scene, vqa_questions, write_synthetic

N_IMAGES = 240
VQA_FILES = ["vqav2_train", "vqav2_val", "vqav2_trainable_val", "vqav2_rest_val", "vqav2_test-dev", "vqav2_test"]
OTHER_FILES = ["nlvr2_train", "nlvr2_dev", "nlvr2_test1", "f30k_caption_karpathy_train", "f30k_caption_karpathy_val",
               "f30k_caption_karpathy_test"]


def read(path) -> pa.Table:
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic")
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        write_synthetic(root / name, seed=seed, images=N_IMAGES)
    return root


# ---------------------------------------------------------------------------------- determinism, schema
def test_same_seed_same_bytes_other_seed_other_data(synth):
    for name in VQA_FILES + OTHER_FILES:
        a, b, c = ((synth / d / f"{name}.arrow").read_bytes() for d in "abc")
        assert a == b, name
        assert a != c, name
    assert read(synth / "a" / "vqav2_train.arrow")["questions"].to_pylist() != \
        read(synth / "c" / "vqav2_train.arrow")["questions"].to_pylist()


def test_files_schemas_and_vocabulary(synth):
    root = synth / "a"
    vocab = json.loads((root / "vqav2_label_vocab.json").read_text())
    assert vocab == list(ANSWERS) and len(vocab) == 18 < 64
    for name in VQA_FILES:
        assert read(root / f"{name}.arrow").schema.equals(VQA_SCHEMA), name
    for name in OTHER_FILES:
        expected = NLVR2_SCHEMA if name.startswith("nlvr2") else CAPTION_SCHEMA
        assert read(root / f"{name}.arrow").schema.equals(expected), name
    sizes = {n: read(root / f"{n}.arrow").num_rows for n in VQA_FILES + OTHER_FILES}
    assert sizes == {"vqav2_train": 240, "vqav2_val": 60, "vqav2_trainable_val": 30, "vqav2_rest_val": 30,
                     "vqav2_test-dev": 30, "vqav2_test": 30, "nlvr2_train": 120, "nlvr2_dev": 30, "nlvr2_test1": 30,
                     "f30k_caption_karpathy_train": 120, "f30k_caption_karpathy_val": 30,
                     "f30k_caption_karpathy_test": 30}
    val = read(root / "vqav2_val.arrow")["image_id"].to_pylist()
    assert read(root / "vqav2_trainable_val.arrow")["image_id"].to_pylist() + \
        read(root / "vqav2_rest_val.arrow")["image_id"].to_pylist() == val
    train = read(root / "vqav2_train.arrow").drop_columns(["image"]).to_pylist()
    qids = [q for r in train for q in r["question_id"]]
    assert len(qids) == len(set(qids))
    for r in train:
        assert len(r["questions"]) == len(r["answers"]) == len(r["answer_labels"]) == len(r["question_id"])
        for ans, labels, scores in zip(r["answers"], r["answer_labels"], r["answer_scores"]):
            assert [vocab[i] for i in labels] == ans and scores == [1.0]
    test = read(root / "vqav2_test.arrow").drop_columns(["image"]).to_pylist()
    assert all(r["answers"] == [] and r["answer_labels"] == [] and r["questions"] for r in test)
    img = Image.open(io.BytesIO(read(root / "vqav2_train.arrow")["image"][0].as_py()))
    assert img.format == "JPEG" and img.size == (96, 96)
    caps = read(root / "f30k_caption_karpathy_val.arrow")["caption"].to_pylist()
    assert all(len(c) == 5 for c in caps) and len({tuple(c) for c in caps}) == len(caps)


# ------------------------------------------------------------------------------------ balance by text
def test_every_question_template_has_near_uniform_answers():
    rng = random.Random(123)
    by_question: dict[str, Counter] = defaultdict(Counter)
    for _ in range(30000):
        for q, a in vqa_questions(sample_scene(rng), rng):
            by_question[q][a] += 1
    options = {"how": 4, "what color": len(COLORS), "what shape": len(SHAPES), "is the": 2, "is there": 2}
    for q, counts in by_question.items():
        k = next(v for p, v in options.items() if q.startswith(p))
        assert len(counts) == k, q
        n = sum(counts.values())
        # near-uniform: within ~4 binomial standard deviations (and 2 points) of 1/k
        tol = max(0.02, 4 * ((1 / k) * (1 - 1 / k) / n) ** 0.5)
        assert max(counts.values()) / n < 1 / k + tol, (q, dict(counts))


# ------------------------------------------------------------------------------ image beats text-only
PALETTE = np.array(list(COLORS.values()), dtype=float)
COLOR_NAMES = list(COLORS)


def parse_scene(data: bytes) -> dict[tuple[int, int], tuple[str, str]]:
    """A hand-written image rule: per grid cell, the dominant palette colour and a shape from its fill ratio."""
    a = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=float)
    ring = np.concatenate([a[0], a[-1], a[:, 0], a[:, -1]])
    bg = np.median(ring, axis=0)
    d_pal = np.linalg.norm(a[:, :, None, :] - PALETTE[None, None], axis=-1)
    nearest, d_min = d_pal.argmin(-1), d_pal.min(-1)
    fg = (d_min < np.linalg.norm(a - bg, axis=-1)) & (d_min < 90)
    cell = a.shape[0] / GRID
    scene = {}
    for r in range(GRID):
        for c in range(GRID):
            sl = (slice(int(r * cell), int((r + 1) * cell)), slice(int(c * cell), int((c + 1) * cell)))
            m = fg[sl]
            if m.sum() < 0.08 * cell * cell:
                continue
            ys, xs = np.nonzero(m)
            fill = m.sum() / ((ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1))
            shape = "square" if fill > 0.9 else "circle" if fill > 0.65 else "triangle"
            color = COLOR_NAMES[np.bincount(nearest[sl][m], minlength=len(COLOR_NAMES)).argmax()]
            scene[(r, c)] = (shape, color)
    return scene


def answer_from_image(scene, question: str) -> str:
    objs = [(rc, s, col) for rc, (s, col) in scene.items()]
    if m := re.fullmatch(r"how many (\w+)s are there\?", question):
        return str(sum(s == m[1] for _, s, _ in objs))
    if m := re.fullmatch(r"what color is the (\w+)\?", question):
        return next((col for _, s, col in objs if s == m[1]), "red")
    if m := re.fullmatch(r"what shape is the (\w+) object\?", question):
        return next((s for _, s, col in objs if col == m[1]), "circle")
    if m := re.fullmatch(r"is the (\w+) on the left or the right\?", question):
        c = next((rc[1] for rc, s, _ in objs if s == m[1]), 0)
        return "left" if c < GRID // 2 else "right"
    if m := re.fullmatch(r"is the (\w+) at the top or the bottom\?", question):
        r = next((rc[0] for rc, s, _ in objs if s == m[1]), 0)
        return "top" if r < GRID // 2 else "bottom"
    if m := re.fullmatch(r"is there a (\w+) (\w+)\?", question):
        return "yes" if any(col == m[1] and s == m[2] for _, s, col in objs) else "no"
    raise AssertionError(f"unknown template: {question}")


def test_image_rule_beats_best_text_only_predictor_by_a_wide_margin(synth):
    root = synth / "a"
    train = read(root / "vqav2_train.arrow").drop_columns(["image"]).to_pylist()
    per_question: dict[str, Counter] = defaultdict(Counter)
    for r in train:
        for q, (a,) in zip(r["questions"], r["answers"]):
            per_question[q][a] += 1
    overall = Counter(a for c in per_question.values() for a in c.elements()).most_common(1)[0][0]
    majority = {q: c.most_common(1)[0][0] for q, c in per_question.items()}

    val = read(root / "vqav2_val.arrow")
    text_hits = image_hits = n = 0
    for i, r in enumerate(val.drop_columns(["image"]).to_pylist()):
        scene = parse_scene(val["image"][i].as_py())
        for q, (a,) in zip(r["questions"], r["answers"]):
            text_hits += majority.get(q, overall) == a
            image_hits += answer_from_image(scene, q) == a
            n += 1
    text_acc, image_acc = text_hits / n, image_hits / n
    print(f"synthetic VQA val: image rule {100 * image_acc:.1f}% vs text-only {100 * text_acc:.1f}% (n={n})")
    assert text_acc < 0.45
    assert image_acc > 0.9
    assert image_acc - text_acc >= 0.25


def test_nlvr2_statements_hold_on_the_images_and_are_balanced(synth):
    t = read(synth / "a" / "nlvr2_train.arrow")
    rows = t.drop_columns(["image_0", "image_1"]).to_pylist()
    truth_by_template: dict[str, list[bool]] = defaultdict(list)
    hits = 0
    for i, r in enumerate(rows):
        (text,), (label,) = r["questions"], r["answers"]
        left, right = (parse_scene(t[k][i].as_py()) for k in ("image_0", "image_1"))
        count = {side: Counter(s for s, _ in sc.values()) for side, sc in (("l", left), ("r", right))}
        colors = {side: {col for _, col in sc.values()} for side, sc in (("l", left), ("r", right))}
        if m := re.fullmatch(r"the left image has more (\w+)s than the right image", text):
            holds, template = count["l"][m[1]] > count["r"][m[1]], "more"
        elif m := re.fullmatch(r"both images contain a (\w+) shape", text):
            holds, template = m[1] in colors["l"] and m[1] in colors["r"], "both"
        elif m := re.fullmatch(r"neither image contains a (\w+)", text):
            holds, template = count["l"][m[1]] + count["r"][m[1]] == 0, "total"
        else:
            m = re.fullmatch(r"there (?:is|are) exactly (\w+) (\w+?)s? in total", text)
            n = ("no", "one", "two", "three").index(m[1])
            holds, template = count["l"][m[2]] + count["r"][m[2]] == n, "total"
        hits += holds == (label == "True")
        truth_by_template[template].append(label == "True")
    assert hits / len(rows) > 0.9
    for template, labels in truth_by_template.items():
        # a fair coin per statement: within 3.5 binomial standard deviations of one half
        assert abs(sum(labels) / len(labels) - 0.5) < 3.5 * (0.25 / len(labels)) ** 0.5, template


def test_cli_synthetic(tmp_path, capsys):
    assert cli_main(["synthetic", "--dst", str(tmp_path), "--seed", "2", "--images", "16", "--no-progress"]) == 0
    assert read(tmp_path / "vqav2_train.arrow").num_rows == 16
    assert "vqav2_rest_val.arrow" in capsys.readouterr().out

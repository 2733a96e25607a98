"""A procedural toy dataset: coloured shapes on a plain background, in the real datasets' arrow layouts.

Every image is a 3×3 grid of cells, each empty or holding one shape (circle / square / triangle) in one of five
colours. The number of each shape is drawn uniformly from 0–3 and colours uniformly, and each question template
is only asked under conditions that do not depend on its answer, so **given the question text the answer is
(near-)uniform**: a text-only model is at chance, the image is needed. Variants:

* VQA — ``vqav2_{train,val,trainable_val,rest_val,test-dev,test}.arrow`` + ``vqav2_label_vocab.json``
  (colour / shape / count / position / yes-no questions; test splits without answers, as the real ones);
* NLVR2 — ``nlvr2_{train,dev,test1}.arrow``: image pairs with true/false statements (label drawn first, then
  the pair rejection-sampled, so each statement is 50/50);
* GQA — ``gqa_{train,val,test-dev}.arrow`` + ``gqa_label_vocab.json``: the same kind of questions in GQA's layout
  (string ids, one answer), for the generative four-task mixture;
* captions — ``f30k_caption_karpathy_{train,val,test}.arrow``: five generated captions per image, for retrieval;
* COCO captions — ``coco_caption_karpathy_{train,restval,val,test}.arrow`` with COCO file names, for captioning.

Everything comes from ``random.Random`` streams seeded by (seed, file name); same seed → identical bytes.
"""

from __future__ import annotations

import io
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from PIL import Image, ImageDraw

from ._common import (CAPTION_SCHEMA, GQA_SCHEMA, NLVR2_SCHEMA, VQA_SCHEMA, WriteArrowError, Written, write_rows,
                      write_vocab)

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 45, 45),
    "green": (40, 170, 70),
    "blue": (45, 90, 230),
    "yellow": (235, 200, 35),
    "purple": (150, 60, 195),
}
SHAPES = ("circle", "square", "triangle")
GRID = 3  # cells per side
MAX_COUNT = 3  # each shape appears 0..MAX_COUNT times (3 shapes × 3 ≤ 9 cells)
COUNT_WORDS = ("no", "one", "two", "three")

# Fixed answer vocabulary (normalised spellings: digits, no articles). Its order is the label order.
ANSWERS: tuple[str, ...] = (
    *COLORS, *SHAPES, *(str(n) for n in range(MAX_COUNT + 1)), "yes", "no", "left", "right", "top", "bottom",
)
LABEL = {a: i for i, a in enumerate(ANSWERS)}


@dataclass(frozen=True)
class Obj:
    shape: str
    color: str
    row: int
    col: int


Scene = tuple[Obj, ...]


def sample_scene(rng: random.Random) -> Scene:
    """Per-shape counts uniform in 0..MAX_COUNT (at least one object), distinct cells, uniform colours."""
    while True:
        counts = [rng.randint(0, MAX_COUNT) for _ in SHAPES]
        if sum(counts):
            break
    cells = rng.sample(range(GRID * GRID), sum(counts))
    shapes = [s for s, n in zip(SHAPES, counts) for _ in range(n)]
    return tuple(Obj(s, rng.choice(list(COLORS)), c // GRID, c % GRID) for s, c in zip(shapes, cells))


def count(scene: Scene, shape: str) -> int:
    return sum(o.shape == shape for o in scene)


def draw(scene: Scene, rng: random.Random, px: int, fmt: str = "JPEG") -> bytes:
    """Render a scene: light background, each shape near its cell centre with jittered size, place and tint."""
    bg = tuple(rng.randint(200, 245) for _ in range(3))
    img = Image.new("RGB", (px, px), bg)
    d = ImageDraw.Draw(img)
    cell = px / GRID
    for o in scene:
        size = cell * rng.uniform(0.55, 0.8)
        cx = (o.col + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        cy = (o.row + 0.5) * cell + rng.uniform(-0.08, 0.08) * cell
        x0, y0, x1, y1 = cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2
        fill = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLORS[o.color])
        if o.shape == "circle":
            d.ellipse((x0, y0, x1, y1), fill=fill)
        elif o.shape == "square":
            d.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            d.polygon([(cx, y0), (x1, y1), (x0, y1)], fill=fill)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.save(buf, format="JPEG", quality=92, subsampling=0)
    else:
        img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------- VQA
def vqa_questions(scene: Scene, rng: random.Random) -> list[tuple[str, str]]:
    """(question, answer) pairs for a scene. Whether a template is asked never depends on its answer."""
    qa: list[tuple[str, str]] = []
    for shape in SHAPES:
        n = count(scene, shape)
        qa.append((f"how many {shape}s are there?", str(n)))
        if n == 1:
            (o,) = [o for o in scene if o.shape == shape]
            qa.append((f"what color is the {shape}?", o.color))
            if o.col != GRID // 2:
                qa.append((f"is the {shape} on the left or the right?", "left" if o.col < GRID // 2 else "right"))
            if o.row != GRID // 2:
                qa.append((f"is the {shape} at the top or the bottom?", "top" if o.row < GRID // 2 else "bottom"))
    for color in COLORS:
        objs = [o for o in scene if o.color == color]
        if len(objs) == 1:
            qa.append((f"what shape is the {color} object?", objs[0].shape))
    # yes/no: coin first, then a (colour, shape) pair that makes it true; by symmetry each pair is equally
    # likely under both answers
    present = sorted({(o.color, o.shape) for o in scene})
    absent = [(c, s) for c in COLORS for s in SHAPES if (c, s) not in present]
    yes = rng.random() < 0.5
    c, s = rng.choice(present if yes else absent)
    qa.append((f"is there a {c} {s}?", "yes" if yes else "no"))
    return qa


def _vqa_items(rng: random.Random, n: int, first_id: int, px: int) -> list[dict[str, Any]]:
    items = []
    for k in range(n):
        scene = sample_scene(rng)
        image_id = first_id + k
        qa = vqa_questions(scene, rng)
        items.append({"image": draw(scene, rng, px), "image_id": image_id, "qa": qa,
                      "qids": [image_id * 100 + j for j in range(len(qa))]})
    return items


def _vqa_row(split: str, answered: bool) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def make(it: dict[str, Any]) -> dict[str, Any]:
        return {
            "image": it["image"],
            "questions": [q for q, _ in it["qa"]],
            "answers": [[a] for _, a in it["qa"]] if answered else [],
            "answer_labels": [[LABEL[a]] for _, a in it["qa"]] if answered else [],
            "answer_scores": [[1.0] for _ in it["qa"]] if answered else [],  # ten agreeing annotators
            "image_id": it["image_id"],
            "question_id": it["qids"],
            "split": split,
        }

    return make


# -------------------------------------------------------------------------------------------- NLVR2
def _nlvr2_statement(rng: random.Random) -> tuple[str, Callable[[Scene, Scene], bool]]:
    kind = rng.randrange(3)
    if kind == 0:
        shape = rng.choice(SHAPES)
        return (f"the left image has more {shape}s than the right image",
                lambda a, b: count(a, shape) > count(b, shape))
    if kind == 1:
        color = rng.choice(list(COLORS))
        return (f"both images contain a {color} shape",
                lambda a, b: any(o.color == color for o in a) and any(o.color == color for o in b))
    shape, n = rng.choice(SHAPES), rng.randint(0, MAX_COUNT)
    text = (f"neither image contains a {shape}" if n == 0 else f"there is exactly one {shape} in total" if n == 1
            else f"there are exactly {COUNT_WORDS[n]} {shape}s in total")
    return text, lambda a, b: count(a, shape) + count(b, shape) == n


def _nlvr2_items(rng: random.Random, n: int, prefix: str, px: int) -> list[dict[str, Any]]:
    items = []
    for k in range(n):
        text, holds = _nlvr2_statement(rng)
        label = rng.random() < 0.5  # drawn before the images: each statement is true half the time
        for _ in range(10_000):
            a, b = sample_scene(rng), sample_scene(rng)
            if holds(a, b) == label:
                break
        else:  # pragma: no cover - every statement is satisfiable both ways with high probability
            raise RuntimeError(f"could not sample a pair for {text!r} = {label}")
        items.append({"image_0": draw(a, rng, px, "PNG"), "image_1": draw(b, rng, px, "PNG"),
                      "questions": [text], "answers": [str(label)], "identifier": f"{prefix}-{k}-0"})
    return items


# ----------------------------------------------------------------------------------------- captions
def captions(scene: Scene, rng: random.Random, n: int = 5) -> list[str]:
    """Five differently worded descriptions of the same scene (object order and phrasing vary)."""
    def phrase(o: Obj) -> str:
        return f"a {o.color} {o.shape}"

    def where(o: Obj) -> str:
        v = ("top", "middle", "bottom")[o.row]
        h = ("left", "centre", "right")[o.col]
        return "the centre" if (v, h) == ("middle", "centre") else f"the {v} {h}"

    objs = list(scene)
    out = []
    for k in range(n):
        rng.shuffle(objs)
        style = k % 5
        if style == 0:
            out.append(", ".join(phrase(o) for o in objs) + " on a plain background")
        elif style == 1:
            out.append("; ".join(f"{phrase(o)} at {where(o)}" for o in objs))
        elif style == 2:
            parts = [f"{count(scene, s)} {s}{'' if count(scene, s) == 1 else 's'}" for s in SHAPES]
            out.append(f"{', '.join(parts)} in {' and '.join(sorted({o.color for o in scene}))}")
        elif style == 3:
            ordered = sorted(objs, key=lambda o: (o.row, o.col))
            out.append(f"{len(objs)} shape{'s' if len(objs) > 1 else ''} row by row: "
                       + ", then ".join(f"{o.color} {o.shape}" for o in ordered))
        else:
            out.append("a picture showing " + " and ".join(f"{o.shape} coloured {o.color}" for o in objs))
    return out


def _caption_items(rng: random.Random, n: int, split: str, px: int, coco: bool = False) -> list[dict[str, Any]]:
    items = []
    for k in range(n):
        scene = sample_scene(rng)
        # COCO Karpathy files name images as COCO does (the id VL-Adapter's caption features are keyed by)
        name = (f"COCO_{'train' if split in ('train', 'restval') else 'val'}2014_{_COCO_FIRST[split] + k:012d}.jpg"
                if coco else f"synthetic_{split}_{k:06d}.jpg")
        items.append({"image": draw(scene, rng, px), "caption": captions(scene, rng), "image_id": name,
                      "split": split})
    return items


_COCO_FIRST = {"train": 100_000, "restval": 200_000, "val": 300_000, "test": 400_000}


# --------------------------------------------------------------------------------------------- write
def _gqa_row(split: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """GQA's layout (string image / question ids, one answer of score 1 per question); test-dev is answered, as
    GQA's real test-dev is."""
    vqa = _vqa_row(split, True)

    def make(it: dict[str, Any]) -> dict[str, Any]:
        row = vqa(it)
        row["image_id"] = f"n{it['image_id']}"
        row["question_id"] = [f"{q:08d}" for q in it["qids"]]
        return row

    return make


VARIANTS = ("vqa", "gqa", "nlvr2", "captions", "coco_captions")


def write_synthetic(dst: str | Path, *, seed: int = 0, images: int = 400, image_px: int = 96,
                    variants: tuple[str, ...] = VARIANTS, progress: bool = False) -> dict[str, Written]:
    """Write the synthetic dataset under ``dst``; ``images`` = number of VQA training images.

    Sizes: VQA val = images/4 (half of it rest_val), test-dev = test = images/8; NLVR2 train = images/2 pairs,
    dev = test1 = images/8; captions (F30K and COCO Karpathy names) train = images/2, val = test (= COCO restval)
    = images/8 (each at least 4).
    """
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        raise ValueError(f"write_synthetic: unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    if images < 8:
        raise WriteArrowError(f"synthetic: --images {images} is too few; give at least 8 training images "
                              "(e.g. --images 400)")
    dst = Path(dst)
    small = max(4, images // 8)
    written: dict[str, Written] = {}

    def rng(name: str) -> random.Random:
        return random.Random(f"{seed}:synthetic:{name}")

    def put(name: str, schema, items, make=lambda it: it) -> None:
        written[name] = write_rows(dst / f"{name}.arrow", schema, items, make, progress=progress)

    if "vqa" in variants:
        n_val = max(8, images // 4)
        train = _vqa_items(rng("vqav2_train"), images, 1_000_000, image_px)
        val = _vqa_items(rng("vqav2_val"), n_val, 2_000_000, image_px)
        put("vqav2_train", VQA_SCHEMA, train, _vqa_row("train", True))
        put("vqav2_val", VQA_SCHEMA, val, _vqa_row("val", True))
        put("vqav2_trainable_val", VQA_SCHEMA, val[: n_val - n_val // 2], _vqa_row("val", True))
        put("vqav2_rest_val", VQA_SCHEMA, val[n_val - n_val // 2:], _vqa_row("val", True))
        for split, first in (("test-dev", 3_000_000), ("test", 4_000_000)):
            put(f"vqav2_{split}", VQA_SCHEMA, _vqa_items(rng(f"vqav2_{split}"), small, first, image_px),
                _vqa_row(split, False))
        write_vocab(dst, ANSWERS)
    if "gqa" in variants:  # the same kind of scenes and questions, in GQA's files (generative multi-task runs)
        for split, n in (("train", max(4, images // 2)), ("val", small), ("test-dev", small)):
            put(f"gqa_{split}", GQA_SCHEMA, _vqa_items(rng(f"gqa_{split}"), n, 5_000_000, image_px), _gqa_row(split))
        write_vocab(dst, ANSWERS, "gqa_label_vocab.json")
    if "nlvr2" in variants:
        for split, n in (("train", max(4, images // 2)), ("dev", small), ("test1", small)):
            put(f"nlvr2_{split}", NLVR2_SCHEMA, _nlvr2_items(rng(f"nlvr2_{split}"), n, split, image_px))
    if "captions" in variants:
        for split, n in (("train", max(4, images // 2)), ("val", small), ("test", small)):
            put(f"f30k_caption_karpathy_{split}", CAPTION_SCHEMA,
                _caption_items(rng(f"f30k_{split}"), n, split, image_px))
    if "coco_captions" in variants:  # COCO captioning (generative backbones' caption task)
        for split, n in (("train", max(4, images // 2)), ("restval", small), ("val", small), ("test", small)):
            put(f"coco_caption_karpathy_{split}", CAPTION_SCHEMA,
                _caption_items(rng(f"coco_{split}"), n, split, image_px, coco=True))
    return written

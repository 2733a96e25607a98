"""ScienceQA (``problems.json`` + ``pid_splits.json`` + ``images/<split>/<pid>/image.png``) →
scienceqa_{train,val,test}.arrow; and a synthetic ScienceQA-style set.

One arrow row per problem: ``image`` (the problem's image; problems without one get a blank 32×32 white PNG and
``has_image`` False — LaVIN feeds such problems a zero image and an indicator), ``questions`` [the formatted text],
``answers`` [answer index], ``choices`` [[choice strings]], ``question_id`` [pid], ``has_image``, ``subject``,
``grade``, and ``hint`` (the text context), ``lecture``, ``solution`` (LaVIN's generative target, QCM-ALE, and
the context-modality columns of the DAS README's table: TXT = hint given, IMG = image given, NO = neither). The
text follows LaVIN's ``QCM`` prompt: ``"Question: <q>\\nContext: <hint>\\nOptions: (A) <c0> (B) <c1>
…"`` (``Context: N/A`` when the hint is empty). Rows keep ``pid_splits.json``'s order.
"""

from __future__ import annotations

import io
import random
from pathlib import Path
from typing import Any

import pyarrow as pa
from PIL import Image

from ._common import WriteArrowError, Written, expect_type, load_json, read_bytes, require_keys, write_rows

SCIENCEQA_SCHEMA = pa.schema([
    ("image", pa.binary()),
    ("questions", pa.list_(pa.string())),
    ("answers", pa.list_(pa.int64())),
    ("choices", pa.list_(pa.list_(pa.string()))),
    ("question_id", pa.list_(pa.string())),
    ("has_image", pa.bool_()),
    ("subject", pa.string()),
    ("grade", pa.string()),
    ("hint", pa.string()),
    ("lecture", pa.string()),
    ("solution", pa.string()),
])
SPLITS = ("train", "val", "test")
LETTERS = "ABCDEFGHIJ"
PROBLEM_KEYS = ("question", "choices", "answer")


def format_text(question: str, hint: str, choices: list[str]) -> str:
    """LaVIN's QCM prompt (question, context, options)."""
    options = " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))
    return f"Question: {question}\nContext: {hint.strip() or 'N/A'}\nOptions: {options}"


def blank_image(px: int = 32) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (px, px), (255, 255, 255)).save(buf, format="PNG")
    return buf.getvalue()


def _row(image: bytes, has_image: bool, pid: str, prob: dict[str, Any]) -> dict[str, Any]:
    choices = [str(c) for c in prob["choices"]]
    return {"image": image, "questions": [format_text(str(prob["question"]), str(prob.get("hint") or ""), choices)],
            "answers": [int(prob["answer"])], "choices": [choices], "question_id": [pid], "has_image": has_image,
            "subject": str(prob.get("subject", "")), "grade": str(prob.get("grade", "")),
            "hint": str(prob.get("hint") or ""), "lecture": str(prob.get("lecture") or ""),
            "solution": str(prob.get("solution") or "")}


def write_scienceqa(src: str | Path, dst: str | Path, *, progress: bool = True) -> dict[str, Written]:
    """Convert the ScienceQA release under ``src`` (see the module docstring) into ``dst``."""
    src, dst = Path(src), Path(dst)
    problems = expect_type(load_json(src / "problems.json", "ScienceQA problems.json ({pid: problem})"), dict,
                           src / "problems.json", "the top level", "an object {pid: problem}")
    splits = expect_type(load_json(src / "pid_splits.json", 'ScienceQA pid_splits.json ({"train": [pid, …], …})'),
                         dict, src / "pid_splits.json", "the top level", 'an object {"train": [pid, …], …}')
    blank = blank_image()
    written = {}
    for split in SPLITS:
        pids = [str(p) for p in expect_type(splits.get(split), list, src / "pid_splits.json", f"split {split!r}",
                                            "a list of problem ids")]
        unknown = [p for p in pids if p not in problems]
        if unknown:
            raise WriteArrowError(f"{src / 'pid_splits.json'}: split {split!r} names {len(unknown)} pid(s) absent from "
                                  f"problems.json (e.g. {unknown[:3]})")
        for pid in pids:
            prob = require_keys(problems[pid], PROBLEM_KEYS, src / "problems.json", f"problem {pid}")
            n = len(prob["choices"]) if isinstance(prob["choices"], list) else 0
            if not isinstance(prob["answer"], int) or not 0 <= prob["answer"] < n:
                raise WriteArrowError(f"{src / 'problems.json'}: problem {pid} answer {prob['answer']!r} is not an "
                                      f"index into its {n} choices")
            if prob.get("image") and not (src / "images" / split / pid / str(prob["image"])).is_file():
                raise WriteArrowError(f"problem {pid} has image {prob['image']!r} but "
                                      f"{src / 'images' / split / pid / str(prob['image'])} does not exist")

        def make(pid: str, split=split) -> dict[str, Any]:
            prob = problems[pid]
            if prob.get("image"):
                return _row(read_bytes(src / "images" / split / pid / str(prob["image"])), True, pid, prob)
            return _row(blank, False, pid, prob)

        written[f"scienceqa_{split}"] = write_rows(dst / f"scienceqa_{split}.arrow", SCIENCEQA_SCHEMA, pids, make,
                                                   progress=progress, desc=f"scienceqa_{split}")
    return written


# ------------------------------------------------------------------------------------------- synthetic
def _grade(pid: str) -> str:
    # its own stream: the problems (and every test built on them) stay what they were before grades were drawn
    return f"grade{random.Random(f'{pid}:grade').randint(1, 12)}"


def synthetic_problems(rng: random.Random, n: int, first_id: int, px: int) -> list[tuple[str, dict, bytes | None]]:
    """ScienceQA-style problems over the synthetic shape scenes: "how many <shape>s are in the picture?" with 2–4
    numeric choices in random order (image problems), and text-only arithmetic problems whose context holds the
    answer ("Tom has 2 apples and gets 1 more."). Subjects and grades are real ScienceQA ones (image problems
    natural science, text ones social science; grades 1–12) so every column of the DAS README's table has problems;
    the lecture / solution name the rule, as ScienceQA's explanations do."""
    from .synthetic import SHAPES, count, draw, sample_scene

    out = []
    for k in range(n):
        pid = str(first_id + k)
        if rng.random() < 0.75:
            scene = sample_scene(rng)
            shape = rng.choice(SHAPES)
            right = count(scene, shape)
            wrong = rng.sample([c for c in range(4) if c != right], rng.randint(1, 3))
            choices = [str(c) for c in [right] + wrong]
            rng.shuffle(choices)
            prob = {"question": f"How many {shape}s are in the picture?", "hint": "", "choices": choices,
                    "answer": choices.index(str(right)), "subject": "natural science",
                    "grade": _grade(pid), "lecture": "Count the shapes of one kind.",
                    "solution": f"There are {right} {shape}s."}
            out.append((pid, prob, draw(scene, rng, px, fmt="PNG")))
        else:
            a, b = rng.randint(0, 4), rng.randint(0, 4)
            choices = [str(a + b)] + [str(c) for c in rng.sample([c for c in range(9) if c != a + b], 2)]
            rng.shuffle(choices)
            prob = {"question": "How many apples does Tom have now?", "hint": f"Tom has {a} apples and gets {b} more.",
                    "choices": choices, "answer": choices.index(str(a + b)), "subject": "social science",
                    "grade": _grade(pid), "lecture": "Adding means putting together.",
                    "solution": f"{a} + {b} = {a + b}."}
            out.append((pid, prob, None))
    return out


def write_scienceqa_synthetic(dst: str | Path, *, seed: int = 0, n_train: int = 64, n_small: int = 16,
                              image_px: int = 64, progress: bool = False) -> dict[str, Written]:
    """A synthetic ScienceQA-style set (scienceqa_train / _val / _test) in the converter's layout."""
    if n_train < 4 or n_small < 2:
        raise WriteArrowError(f"synthetic ScienceQA: n_train={n_train}, n_small={n_small} are too few (>= 4, >= 2)")
    dst = Path(dst)
    blank = blank_image()
    written = {}
    for j, (split, n) in enumerate((("train", n_train), ("val", n_small), ("test", n_small))):
        items = synthetic_problems(random.Random(f"{seed}:scienceqa:{split}"), n, 10_000 * (j + 1), image_px)
        written[f"scienceqa_{split}"] = write_rows(
            dst / f"scienceqa_{split}.arrow", SCIENCEQA_SCHEMA, items,
            lambda it: _row(it[2] if it[2] is not None else blank, it[2] is not None, it[0], it[1]),
            progress=progress)
    return written


__all__ = ["SCIENCEQA_SCHEMA", "format_text", "synthetic_problems", "write_scienceqa", "write_scienceqa_synthetic"]

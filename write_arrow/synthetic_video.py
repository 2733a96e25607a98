"""A synthetic video-text set in the VALUE layout (``python -m write_arrow synthetic_video --out DIR``), converted
by the same converters as the real sets (``write_arrow.video``), so tests and a demo run offline.

Each video is a short clip of one coloured shape moving in one direction. A frame is a 512-d feature vector
``code[colour] + code[shape] + P · position_encoding(x_t, y_t) + noise`` (fixed random codes and projection drawn
from the seed): colour and shape are in every frame, the motion only in how the frames change over time — a
model must read the frames to answer. Clips have 40–96 frames, so resizing to 64 both pads and pools. Subtitles
name the shape (never the colour or the motion). Questions (TVQA: 5 options with a show name; How2QA: 4) ask the
colour or the direction; captions (TVC with a time span, YC2C without) state all three.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from ._common import Written
from .video import VIDEO_SETS, write_video

COLOURS = ("red", "green", "blue", "yellow", "purple")
SHAPES = ("circle", "square", "triangle", "star")
MOTIONS = {"left": (-1.0, 0.0), "right": (1.0, 0.0), "up": (0.0, -1.0), "down": (0.0, 1.0)}
STILL = "it does not move"  # the fifth direction option (never the answer)
DIM = 512
N_FREQ = 8


class _World:
    """The fixed codes of one seed; ``clip`` draws one video."""

    def __init__(self, seed: int):
        rng = np.random.default_rng((seed, 7019))
        self.colour = rng.normal(size=(len(COLOURS), DIM)).astype(np.float32)
        self.shape = rng.normal(size=(len(SHAPES), DIM)).astype(np.float32)
        self.proj = (rng.normal(size=(4 * N_FREQ, DIM)) / np.sqrt(N_FREQ)).astype(np.float32)

    def frames(self, rng: np.random.Generator, colour: int, shape: int, motion: str) -> np.ndarray:
        n = int(rng.integers(40, 97))
        t = np.linspace(0.0, 1.0, n, dtype=np.float32)[:, None]
        start = rng.uniform(0.3, 0.7, size=2).astype(np.float32)
        pos = start + 0.5 * t * np.asarray(MOTIONS[motion], dtype=np.float32) - 0.25 * np.asarray(
            MOTIONS[motion], dtype=np.float32)
        freqs = (2.0 ** np.arange(N_FREQ, dtype=np.float32)) * np.pi
        ang = np.concatenate([pos[:, :1] * freqs, pos[:, 1:] * freqs], axis=1)
        enc = np.concatenate([np.sin(ang), np.cos(ang)], axis=1)
        feats = self.colour[colour] + self.shape[shape] + enc @ self.proj
        return (feats + 0.1 * rng.normal(size=feats.shape)).astype(np.float32)


def _options(rng: np.random.Generator, answer: str, pool: list[str], n: int) -> tuple[list[str], int]:
    others = [p for p in pool if p != answer]
    picks = [answer] + [others[int(k)] for k in rng.permutation(len(others))[: n - 1]]
    order = rng.permutation(n)
    return [picks[int(k)] for k in order], int(np.flatnonzero(order == 0)[0])


def _question(rng: np.random.Generator, v: dict[str, Any], n_options: int) -> tuple[str, list[str], int]:
    if rng.random() < 0.5:
        opts, idx = _options(rng, v["colour"], list(COLOURS), n_options)
        return f"What colour is the {v['shape']}?", [f"It is {o}" for o in opts], idx
    pool = [f"it moves {m}" for m in MOTIONS] + [STILL]
    opts, idx = _options(rng, f"it moves {v['motion']}", pool, n_options)
    return f"Which way does the {v['shape']} move?", opts, idx


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def write_value_synthetic(root: str | Path, *, seed: int = 0, n_train: int = 48) -> Path:
    """The VALUE-layout folder (annotations, subtitles, .npz features) of the synthetic set under ``root``."""
    root = Path(root)
    world = _World(seed)
    n_eval = max(4, n_train // 4)
    sizes = {"train": n_train, "val": n_eval, "test": n_eval}
    for source in ("tv", "how2", "yc2"):
        rng = np.random.default_rng((seed, len(source), 11))
        feat_dir = root / "vis_features" / source / "clip-vit"
        feat_dir.mkdir(parents=True, exist_ok=True)
        videos: dict[str, list[dict[str, Any]]] = {}
        subs = []
        for split, n in sizes.items():
            videos[split] = []
            for k in range(n):
                c, s = int(rng.integers(len(COLOURS))), int(rng.integers(len(SHAPES)))
                m = list(MOTIONS)[int(rng.integers(len(MOTIONS)))]
                vid = f"{source}_{split}_{k:04d}"
                feats = world.frames(rng, c, s, m)
                np.savez(feat_dir / f"{vid}.npz", features=feats)
                end = round(float(feats.shape[0]) / 3.0, 2)
                v = dict(vid=vid, colour=COLOURS[c], shape=SHAPES[s], motion=m, end=end)
                videos[split].append(v)
                subs.append({"vid_name": vid, "sub": [
                    {"start": 0.0, "end": 1.5, "text": f" Look at this {SHAPES[s]}. "},
                    {"start": 1.5, "end": 3.0, "text": "Keep watching it."}]})
        _write_jsonl(root / "ann" / f"{source}_subtitles.jsonl", subs)
        for spec in (s for s in VIDEO_SETS.values() if s.source == source):
            for split in spec.splits:
                base = "train" if split.startswith("train") else "val" if split.startswith("val") else "test"
                test = base == "test"
                rows = []
                for k, v in enumerate(videos[base]):
                    if spec.task == "tvqa" and test and (split == "test_release") == (k % 2 == 0):
                        continue  # TVQA's two test files split the test videos
                    rows.extend(_rows(spec, rng, v, k + 100_000 * ("train", "val", "test").index(base), test))
                _write_jsonl(root / "ann" / spec.task / f"{spec.task}_{split}.jsonl", rows)
    return root


def _rows(spec, rng: np.random.Generator, v: dict[str, Any], k: int, test: bool) -> list[dict[str, Any]]:
    ts = [round(v["end"] * 0.1, 2), v["end"]]
    if spec.kind == "qa":
        out = []
        for j in range(2):
            q, opts, idx = _question(rng, v, spec.n_options)
            # TVQA's qids are ints, How2QA's strings
            row = {"qid": f"{v['vid']}_q{j}" if spec.task == "how2qa" else 10 * k + j,
                   "vid_name": v["vid"], "q": q, "ts": f"{ts[0]}-{ts[1]}",
                   **{f"a{i}": o for i, o in enumerate(opts)}}
            if spec.task == "tvqa":
                row["show_name"] = "show_a" if v["shape"] in SHAPES[:2] else "show_b"
            if not test:
                row["answer_idx"] = idx
            out.append(row)
        return out
    row: dict[str, Any] = {"vid_name": v["vid"], "clip_id": f"{v['vid']}_c", "duration": v["end"]}
    if spec.uses_ts:
        row["ts"] = ts
    if not test:
        verb = "slides" if spec.task == "yc2c" else "moves"
        row["descs"] = [
            {"desc": f"A {v['colour']} {v['shape']} {verb} {v['motion']}.", "desc_id": f"{v['vid']}_d0", "type": "v"},
            {"desc": f"The {v['shape']} is {v['colour']} and goes {v['motion']}.", "desc_id": f"{v['vid']}_d1",
             "type": "vt"}]
        if spec.task == "yc2c":
            for d in row["descs"]:
                d.pop("type")
    return [row]


def write_synthetic_video(dst: str | Path, *, seed: int = 0, n_train: int = 48, src: str | Path | None = None,
                          progress: bool = True) -> dict[str, Written]:
    """Write the VALUE-layout synthetic set to ``src`` (default ``dst/value_synthetic``) and convert its four tasks
    into ``dst`` with ``write_video``."""
    root = write_value_synthetic(Path(src) if src else Path(dst) / "value_synthetic", seed=seed, n_train=n_train)
    written: dict[str, Written] = {}
    for task in VIDEO_SETS:
        written.update(write_video(task, root, dst, progress=progress))
    return written


__all__ = ["COLOURS", "MOTIONS", "SHAPES", "write_synthetic_video", "write_value_synthetic"]

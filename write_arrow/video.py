"""VALUE-benchmark video-text sets (TVQA, How2QA, TVC, YC2C) → arrow files (DATA.md, ``vlpeft.data.video``).

Reads the layout VL-Adapter's ``VL-T5/src/video/*_data.py`` read (``datasets/video/``)::

    ann/{tv,how2,yc2}_subtitles.jsonl            {"vid_name", "sub": [{"start", "end", "text"}, ...]}
    ann/tvqa/tvqa_{train,val,test_public,test_release}.jsonl
    ann/how2qa/how2qa_{train,val,test_public}_release.jsonl      {"qid", "vid_name", "q", "a0".., "answer_idx", "ts"}
    ann/tvc/tvc_{train,val,test}_release.jsonl                    {"vid_name", "clip_id", "ts", "duration", "descs"}
    ann/yc2c/yc2c_{train,val,test}_release.jsonl
    vis_features/{tv,how2,yc2}/clip-vit/<vid_name>.npz            "features": (n_frames, 512)

and writes ``<task>_<split>.arrow`` for every split file present, plus ``<source>_videos.arrow`` holding every
video of the feature folder once (frames as float32 bytes, subtitles). The frames are stored as extracted (not
resized): the dataset resizes them to the run's ``n_boxes``, as the original does per item.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ._common import (WriteArrowError, Written, expect_type, load_json_lines, missing_error, require_dir,
                      require_keys, write_rows)

QA_SCHEMA = pa.schema([("qid", pa.string()), ("video_id", pa.string()), ("question", pa.string()),
                       ("options", pa.list_(pa.string())), ("answer_idx", pa.int64()), ("ts", pa.string()),
                       ("type", pa.string())])
CAPTION_SCHEMA = pa.schema([("clip_id", pa.string()), ("video_id", pa.string()), ("ts", pa.string()),
                            ("duration", pa.float64()), ("captions", pa.list_(pa.string())),
                            ("desc_ids", pa.list_(pa.string())), ("desc_types", pa.list_(pa.string()))])
VIDEO_SCHEMA = pa.schema([("video_id", pa.string()), ("n_frames", pa.int64()), ("dim", pa.int64()),
                          ("features", pa.binary()), ("subtitles", pa.list_(pa.string()))])


@dataclass(frozen=True)
class VideoSet:
    task: str
    source: str  # the VALUE feature folder and subtitle file prefix
    splits: tuple[str, ...]
    kind: str  # "qa" | "caption"
    n_options: int = 0
    uses_ts: bool = True


VIDEO_SETS: dict[str, VideoSet] = {s.task: s for s in (
    VideoSet("tvqa", "tv", ("train", "val", "test_public", "test_release"), "qa", 5),
    VideoSet("how2qa", "how2", ("train_release", "val_release", "test_public_release"), "qa", 4),
    VideoSet("tvc", "tv", ("train_release", "val_release", "test_release"), "caption"),
    VideoSet("yc2c", "yc2", ("train_release", "val_release", "test_release"), "caption", uses_ts=False),
)}


def _qa_row(spec: VideoSet, d: Mapping[str, Any], path: Path, where: str) -> dict[str, Any]:
    keys = ["qid", "vid_name", "q", "ts"] + [f"a{i}" for i in range(spec.n_options)]
    require_keys(d, keys + (["show_name"] if spec.task == "tvqa" else []), path, where)
    idx = d.get("answer_idx", -1)
    if not isinstance(idx, int) or isinstance(idx, bool) or not -1 <= idx < spec.n_options:
        raise WriteArrowError(f"{path}: {where} answer_idx is {idx!r}; expected an int in [0, {spec.n_options})")
    return {"qid": str(d["qid"]), "video_id": str(d["vid_name"]), "question": str(d["q"]),
            "options": [str(d[f"a{i}"]) for i in range(spec.n_options)], "answer_idx": int(idx),
            "ts": json.dumps(d["ts"]), "type": str(d["show_name"]) if spec.task == "tvqa" else spec.task}


def _caption_row(spec: VideoSet, d: Mapping[str, Any], path: Path, where: str) -> dict[str, Any]:
    require_keys(d, ["vid_name", "duration"] + (["ts"] if spec.uses_ts else []), path, where)
    descs = expect_type(d.get("descs", []), list, path, f"{where} descs", "a list of {desc, desc_id} objects")
    for j, desc in enumerate(descs):
        require_keys(desc, ["desc", "desc_id"] + (["type"] if spec.task == "tvc" else []), path,
                     f"{where} descs[{j}]")
    if not descs and "clip_id" not in d:
        raise WriteArrowError(f"{path}: {where} has neither descs nor clip_id; a test clip needs its clip_id")
    return {"clip_id": str(d.get("clip_id", "")), "video_id": str(d["vid_name"]),
            "ts": json.dumps(d["ts"]) if spec.uses_ts else "", "duration": float(d["duration"]),
            "captions": [str(x["desc"]) for x in descs], "desc_ids": [str(x["desc_id"]) for x in descs],
            "desc_types": [str(x.get("type", spec.task)) if spec.task == "tvc" else spec.task for x in descs]}


def _subtitles(path: Path) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for i, d in enumerate(load_json_lines(path, "VALUE subtitles: {vid_name, sub: [{start, end, text}]} per line")):
        require_keys(d, ["vid_name", "sub"], path, f"line {i + 1}")
        lines = expect_type(d["sub"], list, path, f"line {i + 1} sub", "a list of {start, end, text}")
        out[str(d["vid_name"])] = [str(require_keys(t, ["text"], path, f"line {i + 1} sub")["text"]) for t in lines]
    return out


def _read_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path) as z:
            if "features" not in z.files:
                raise WriteArrowError(f"{path}: no array 'features' (has {z.files}); expected VALUE clip-vit "
                                      f"features (n_frames, dim)")
            feats = np.asarray(z["features"])
    except (OSError, ValueError) as e:
        raise WriteArrowError(f"{path}: cannot read ({e}); expected an .npz with 'features'") from e
    if feats.ndim != 2 or feats.shape[0] < 1:
        raise WriteArrowError(f"{path}: features have shape {feats.shape}; expected (n_frames >= 1, dim)")
    return feats


def write_video(task: str, src: str | Path, dst: str | Path, *, progress: bool = True) -> dict[str, Written]:
    """Convert one VALUE task (``tvqa``, ``how2qa``, ``tvc``, ``yc2c``) under ``src`` into ``dst``."""
    if task not in VIDEO_SETS:
        raise WriteArrowError(f"unknown video task {task!r}; choose one of {sorted(VIDEO_SETS)}")
    spec = VIDEO_SETS[task]
    src, dst = Path(src), Path(dst)
    ann = require_dir(src / "ann", "the VALUE 'ann' folder (annotations and subtitles)")
    files = {s: ann / task / f"{task}_{s}.jsonl" for s in spec.splits}
    present = {s: p for s, p in files.items() if p.is_file()}
    if not present:
        raise WriteArrowError(f"{ann / task}: none of the {task} annotation files found (expected "
                              f"{[p.name for p in files.values()]})")
    feat_dir = require_dir(src / "vis_features" / spec.source / "clip-vit",
                           f"VALUE CLIP-ViT features of {spec.source} (<vid_name>.npz)")
    subs = _subtitles(ann / f"{spec.source}_subtitles.jsonl")
    videos = {p.stem: p for p in feat_dir.iterdir() if p.suffix == ".npz"}
    make = _qa_row if spec.kind == "qa" else _caption_row
    rows: dict[str, list[dict[str, Any]]] = {}
    for split, path in present.items():
        rows[split] = [make(spec, d, path, f"line {i + 1}") for i, d in
                       enumerate(load_json_lines(path, f"{task} annotations, one object per line"))]
        used = sorted({r["video_id"] for r in rows[split]})
        for missing, where, what in (([v for v in used if v not in videos], feat_dir, "videos' features (.npz)"),
                                     ([v for v in used if v not in subs], ann / f"{spec.source}_subtitles.jsonl",
                                      "videos' subtitles")):
            if missing:
                raise missing_error(missing, where, f"{what} named in {path.name}")
    schema = QA_SCHEMA if spec.kind == "qa" else CAPTION_SCHEMA
    written = {f"{task}_{s}": write_rows(dst / f"{task}_{s}.arrow", schema, r, dict, progress=progress)
               for s, r in rows.items()}

    def video_row(vid: str) -> dict[str, Any]:
        feats = _read_npz(videos[vid]).astype("<f4", copy=False)
        return {"video_id": vid, "n_frames": feats.shape[0], "dim": feats.shape[1], "features": feats.tobytes(),
                "subtitles": subs.get(vid, [])}

    name = f"{spec.source}_videos"
    written[name] = write_rows(dst / f"{name}.arrow", VIDEO_SCHEMA, sorted(videos), video_row, progress=progress)
    return written


def write_tvqa(src, dst, *, progress: bool = True) -> dict[str, Written]:
    return write_video("tvqa", src, dst, progress=progress)


def write_how2qa(src, dst, *, progress: bool = True) -> dict[str, Written]:
    return write_video("how2qa", src, dst, progress=progress)


def write_tvc(src, dst, *, progress: bool = True) -> dict[str, Written]:
    return write_video("tvc", src, dst, progress=progress)


def write_yc2c(src, dst, *, progress: bool = True) -> dict[str, Written]:
    return write_video("yc2c", src, dst, progress=progress)


__all__ = ["VIDEO_SETS", "write_how2qa", "write_tvc", "write_tvqa", "write_video", "write_yc2c"]

"""Video-text data (VALUE benchmark: TVQA, How2QA, TVC, YC2C) as VL-Adapter's ``VL-T5/src/video/*_data.py`` reads
it, on the arrow files ``write_arrow tvqa|how2qa|tvc|yc2c`` writes (DATA.md).

Two kinds of file:

- ``<source>_videos.arrow`` (``source`` = the VALUE feature folder: ``tv`` for TVQA and TVC, ``how2``, ``yc2``):
  one row per video — ``video_id``, ``n_frames``, ``dim``, ``features`` (the CLIP-ViT frame features as raw
  little-endian float32 bytes, ``n_frames × dim``, read zero-copy from the memory map) and ``subtitles`` (the
  subtitle lines' texts). Frames live once per video, not once per question (TVQA has ~7 questions a video).
- ``<task>_<split>.arrow``: the annotations. QA: ``qid``, ``video_id``, ``question``, ``options``,
  ``answer_idx`` (-1 = unannotated), ``ts`` (JSON text of the raw value), ``type``. Captions: one row per clip —
  ``clip_id``, ``video_id``, ``ts``, ``duration``, ``captions`` / ``desc_ids`` / ``desc_types`` (empty on test).

An item is what the original's ``__getitem__`` builds:

- ``vis_feats`` = the frames resized to ``n_boxes`` (``resize_frames``: zero rows appended below ``n_boxes``,
  adaptive 1-d max pooling over time above it), ``vis_pos`` = zeros (n_boxes, 4);
- ``text`` = ``"[Subs] <lines, each stripped, joined by spaces>"``, then for QA ``"[Q] <q>"``, ``"[TS] (<ts>)"``
  and ``"[Choices] a0: <option stripped of '. '>. a1: …"``; for TVC ``"[TS] (<ts>)"``; for YC2C nothing more —
  all joined by single spaces. The task prefix goes after it (``Task.input_text``: ``f"{text} {prompt}"``);
- ``target_text`` = ``"a<answer_idx>"`` (QA) or the caption; captions: train and val give one item per
  description (``qid`` = its ``desc_id``, ``references`` = ``[caption]``, as the original scores val), a split
  without descriptions (test) one item per clip (``qid`` = ``clip_id``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from vlpeft.data.arrow import ArrowSchemaError, arrow_path, check_columns, open_arrow
from vlpeft.data.datasets import DATASETS, BaseDataset
from vlpeft.data.features import FeatureError

__all__ = ["VIDEO_DATASETS", "CaptionVideoDataset", "How2QADataset", "QAVideoDataset", "TVCDataset", "TVQADataset",
           "VideoStore", "YC2CDataset", "caption_text", "qa_text", "resize_frames", "subtitle_text", "ts_text"]

VIDEO_COLUMNS = ("video_id", "n_frames", "dim", "features", "subtitles")


def resize_frames(feats: torch.Tensor, length: int) -> torch.Tensor:
    """(L, D) → (length, D): zero rows appended when L < length, adaptive max pooling over time when L > length
    (each output frame the max over its window of input frames), unchanged when equal."""
    n, d = feats.shape
    if n < length:
        return torch.cat([feats, feats.new_zeros(length - n, d)], dim=0)
    if n > length:
        return F.adaptive_max_pool1d(feats.t().unsqueeze(0), length).squeeze(0).t().contiguous()
    return feats


def subtitle_text(lines: Any) -> str:
    return "[Subs] " + " ".join(str(t).strip() for t in (lines or []))


def ts_text(ts_json: str) -> str:
    """The original formats the raw ``ts`` value with an f-string: a string as is, a list as Python prints it."""
    return f"[TS] ({json.loads(ts_json)})" if ts_json else "[TS] (None)"


def qa_text(subtitles: Any, question: str, ts_json: str, options: Any) -> str:
    choices = " ".join(f"a{i}: {str(o).strip('. ')}." for i, o in enumerate(options))
    return " ".join([subtitle_text(subtitles), f"[Q] {str(question).strip()}", ts_text(ts_json),
                     f"[Choices] {choices}"])


def caption_text(subtitles: Any, ts_json: str | None) -> str:
    """TVC: subtitles + time span; YC2C (``ts_json`` None): subtitles alone."""
    parts = [subtitle_text(subtitles)]
    if ts_json is not None:
        parts.append(ts_text(ts_json))
    return " ".join(parts)


class VideoStore:
    """``<source>_videos.arrow`` opened lazily (memory-mapped; picklable for DataLoader workers): ``read(video_id,
    n_boxes)`` → (frames resized to n_boxes as float32, subtitle lines)."""

    def __init__(self, data_root: str | os.PathLike, source: str):
        self.data_root, self.source = str(data_root), source
        self._table = None
        self._rows: dict[str, int] | None = None

    @property
    def path(self):
        return arrow_path(self.data_root, f"{self.source}_videos")

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_table": None, "_rows": None}

    def _open(self) -> None:
        table = open_arrow(self.path)
        check_columns(table, self.path, VIDEO_COLUMNS,
                      {"video_id": "str", "n_frames": "int", "dim": "int", "features": "binary",
                       "subtitles": "list<str>"})
        self._rows = {v: i for i, v in enumerate(table.column("video_id").to_pylist())}
        self._table = table

    def rows(self) -> dict[str, int]:
        if self._rows is None:
            self._open()
        return self._rows

    def read(self, video_id: str, n_boxes: int) -> tuple[torch.Tensor, list[str]]:
        row = self.rows().get(str(video_id))
        if row is None:
            raise FeatureError(f"{self.path} has no video {video_id!r}; convert the annotations and the features "
                               f"of the same VALUE folder (write_arrow writes both)")
        t = self._table
        n, d = int(t.column("n_frames")[row].as_py()), int(t.column("dim")[row].as_py())
        buf = t.column("features")[row].as_buffer()
        if buf is None or buf.size != n * d * 4:
            raise FeatureError(f"{self.path} video {video_id!r}: {0 if buf is None else buf.size} feature bytes, "
                               f"expected n_frames × dim × 4 = {n * d * 4}; rewrite it with write_arrow")
        # a copy: the mapping is read-only and the tensor must own its memory across DataLoader workers
        feats = torch.from_numpy(np.frombuffer(buf, dtype="<f4").reshape(n, d).astype(np.float32, copy=True))
        return resize_frames(feats, int(n_boxes)), list(t.column("subtitles")[row].as_py() or [])


class _VideoDataset(BaseDataset):
    """Shared by the four: the item's frames and subtitles from the ``VideoStore`` of ``source``."""

    source: str = ""
    image_columns = ()
    column_types = {**BaseDataset.column_types, "video_id": "str", "ts": "str", "qid": "str", "question": "str",
                    "options": "list<str>", "answer_idx": "int", "type": "str", "clip_id": "str",
                    "captions": "list<str>", "desc_ids": "list<str>", "desc_types": "list<str>"}

    def __init__(self, data_root: str | os.PathLike, names, *, n_boxes: int = 64, **kwargs: Any):
        kwargs.pop("features", None)  # the frames come from the video table, never from visual_features
        kwargs["text_only"] = True  # no image column to decode
        self.n_boxes = int(n_boxes)
        self.videos = VideoStore(data_root, self.source)
        super().__init__(data_root, names, **kwargs)

    def encode(self, text: str) -> dict[str, list[int]]:
        return {}  # the generative collate tokenises prefix + text for the whole batch

    def video_item(self, row: int) -> dict[str, Any]:
        name, _, _ = self.table.locate(row)
        video_id = str(self.table.value("video_id", row))
        try:
            feats, subs = self.videos.read(video_id, self.n_boxes)
        except (FeatureError, ArrowSchemaError) as e:
            _, local, path = self.table.locate(row)
            raise type(e)(f"{path} row {local}: {e}") from e
        return {"task": self.task, "table_name": name, "row": row, "video_id": video_id, "vis_feats": feats,
                "vis_pos": torch.zeros(feats.shape[0], 4), "subtitles": subs}


class QAVideoDataset(_VideoDataset):
    text_column = None  # one item per question row
    required_columns = ("qid", "video_id", "question", "options", "answer_idx", "ts", "type")
    n_options: int = 5

    def __getitem__(self, i: int) -> dict[str, Any]:
        row, _ = self.index(i)
        item = self.video_item(row)
        v = {c: self.table.value(c, row) for c in ("qid", "question", "options", "answer_idx", "ts", "type")}
        if len(v["options"] or []) != self.n_options:
            raise self._label_error(row, f"{len(v['options'] or [])} options; {self.task} questions have "
                                         f"{self.n_options} (a0..a{self.n_options - 1})")
        item["text"] = qa_text(item.pop("subtitles"), v["question"], v["ts"], v["options"])
        item.update(qid=str(v["qid"]), type=str(v["type"]))
        idx = int(v["answer_idx"])
        if idx >= 0:  # test questions carry no answer, hence no target
            item["target_text"] = f"a{idx}"
            item["answer"] = f"a{idx}"
        return item


class TVQADataset(QAVideoDataset):
    key = task = "tvqa"
    source = "tv"


class How2QADataset(QAVideoDataset):
    key = task = "how2qa"
    source = "how2"
    n_options = 4


class CaptionVideoDataset(_VideoDataset):
    text_column = "captions"
    required_columns = ("clip_id", "video_id", "ts", "captions", "desc_ids", "desc_types")
    uses_ts: bool = True

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if self._n_items == 0 and len(self.table) > 0:  # test: no descriptions, one item per clip
            self._text_start, self._n_items = None, len(self.table)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row, cap = self.index(i)
        item = self.video_item(row)
        ts = str(self.table.value("ts", row))
        item["text"] = caption_text(item.pop("subtitles"), ts if self.uses_ts else None)
        item.update(clip_id=str(self.table.value("clip_id", row)), ts=ts)
        if cap >= 0:
            caption = self.text_at(row, cap)
            item.update(target_text=caption, references=[caption],
                        qid=str(self.table.list_item("desc_ids", row, cap)),
                        type=str(self.table.list_item("desc_types", row, cap)))
        else:
            item.update(qid=item["clip_id"], type=self.task)
        return item


class TVCDataset(CaptionVideoDataset):
    key = task = "tvc"
    source = "tv"


class YC2CDataset(CaptionVideoDataset):
    key = task = "yc2c"
    source = "yc2"
    uses_ts = False


VIDEO_DATASETS: dict[str, type[_VideoDataset]] = {c.key: c for c in (TVQADataset, How2QADataset, TVCDataset,
                                                                       YC2CDataset)}
DATASETS.update(VIDEO_DATASETS)  # their default arrow files are in vlpeft.data.splits.SPLITS

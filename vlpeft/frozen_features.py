"""Frozen visual features computed once, in large batches, before the first epoch (DVP's CLIP tokens).

A backbone whose image tower is frozen and whose features are cached per image (DVP, ``clip_plm``) otherwise
fills its cache lazily, one training batch at a time: the first epoch then runs the tower at the training
batch size on every image and gains nothing. ``precompute_frozen_features`` walks the distinct images of the
splits the backbone names (``frozen_feature_splits``: only those whose transform is deterministic, so a key's
features are the same every epoch) in batches of ``frozen_feature_batch`` and stores them through the same
cache call the lazy path makes, so every later read is a cache hit with the uncached path's bits.

Called from ``VLPeftModule.on_fit_start`` (the model is on its device then; Lightning built the datasets in
``setup``). Backbones without ``cache_frozen_features`` are left alone.

- Capacity: without a disk folder the in-memory cache keeps ``frozen_feature_capacity`` images; splits are taken
  in order (train, val) while they fit, the rest are left to the lazy path and one line says so and how to fix it.
- DDP: with an in-memory cache every rank computes every image (any rank may draw any image in a later epoch,
  and memory is per process); with a disk folder rank r computes rows r, r + W, … and writes them (atomic writes
  into the user's ``clip_cache_dir``), then all ranks wait at a barrier and read the others' rows from disk.
- Progress: one line at the start, every ``progress_interval`` seconds and at the end, from rank 0, whether or
  not the output is a terminal.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

__all__ = ["DistinctImages", "plan_precompute", "precompute_frozen_features"]


class DistinctImages(Dataset):
    """One item per image row of ``dataset`` (``rows``: a subset, e.g. a rank's shard): ``{"image", "image_key"}``,
    decoded and transformed by the dataset itself, keyed as its items are."""

    def __init__(self, dataset: Any, rows: Sequence[int] | None = None) -> None:
        self.dataset = dataset
        self.rows = list(range(len(dataset.table))) if rows is None else list(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = self.rows[i]
        return {"image": self.dataset.get_image(row), "image_key": self.dataset.image_key(row)}


def _collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"image": torch.stack([x["image"] for x in items]), "image_key": [x["image_key"] for x in items]}


def _single_image(ds: Any) -> bool:
    """Datasets whose items carry one image under ``image`` (the only kind the frozen-feature backbones read)."""
    return (tuple(getattr(ds, "image_columns", ())) == ("image",) and not getattr(ds, "text_only", False)
            and all(hasattr(ds, a) for a in ("get_image", "image_key", "table")))


def plan_precompute(backbone: Any, datasets: dict[str, dict[str, Any]]) -> tuple[list[tuple[str, Any]], list[str]]:
    """The (split, dataset) pairs to precompute, in order, and the notes on what is left to the lazy path."""
    splits = backbone.frozen_feature_splits()
    capacity = backbone.frozen_feature_capacity()
    todo: list[tuple[str, Any]] = []
    notes: list[str] = []
    total = 0
    for split in splits:
        parts = [ds for ds in (datasets.get(split) or {}).values() if _single_image(ds)]
        n = sum(len(ds.table) for ds in parts)
        if not parts or n == 0:
            continue
        if capacity is not None and total + n > capacity:
            gb = (total + n) * backbone.frozen_feature_bytes() / 1e9
            notes.append(f"{split} split ({n} images) left to the lazy cache: {total + n} images exceed "
                         f"clip_cache_max_items={capacity}; set clip_cache_dir=<folder> (about {gb:.1f} GB on disk) "
                         f"or clip_cache_max_items>={total + n} (about {gb:.1f} GB of memory)")
            continue
        total += n
        todo.extend((split, ds) for ds in parts)
    return todo, notes


def precompute_frozen_features(backbone: Any, datasets: dict[str, dict[str, Any]], *, rank: int = 0,
                               world_size: int = 1, barrier: Callable[[], None] | None = None,
                               num_workers: int = 0, interval: float = 30.0, stream: Any = None) -> dict[str, int]:
    """Fill ``backbone``'s frozen-feature cache for ``datasets`` (``{split: {name: dataset}}``); returns
    ``{"images": seen, "computed": n}`` for this rank. A no-op for backbones without the protocol."""
    if not hasattr(backbone, "cache_frozen_features"):
        return {"images": 0, "computed": 0}
    stream = sys.stdout if stream is None else stream
    say = (lambda msg: print(f"[vlpeft] {msg}", file=stream, flush=True)) if rank == 0 else (lambda msg: None)
    todo, notes = plan_precompute(backbone, datasets)
    for note in notes:
        say(f"frozen CLIP features: {note}")
    if not todo:
        return {"images": 0, "computed": 0}
    sharded = backbone.frozen_feature_capacity() is None and world_size > 1  # disk: each rank its stride
    parts = []
    for split, ds in todo:
        rows = range(len(ds.table))
        parts.append((split, DistinctImages(ds, rows[rank::world_size] if sharded else rows)))
    total = sum(len(p) for _, p in parts)
    bs = backbone.frozen_feature_batch()
    say(f"frozen CLIP features: computing {total} images ({', '.join(sorted({s for s, _ in parts}))}) in batches "
        f"of {bs}" + (f", this rank's share of {world_size}" if sharded else ""))
    seen = computed = 0
    start = last = time.perf_counter()
    with torch.no_grad():
        for split, part in parts:
            loader = DataLoader(part, batch_size=bs, shuffle=False, num_workers=num_workers, collate_fn=_collate)
            for batch in loader:
                computed += backbone.cache_frozen_features(batch["image"], batch["image_key"])
                seen += len(batch["image_key"])
                now = time.perf_counter()
                if now - last >= interval and seen < total:
                    last = now
                    rate = seen / max(now - start, 1e-9)
                    say(f"frozen CLIP features: {seen}/{total} images ({rate:.1f} images/s, "
                        f"ETA {_hms((total - seen) / rate)})")
    elapsed = time.perf_counter() - start
    say(f"frozen CLIP features: {seen}/{total} images done in {_hms(elapsed)} ({computed} computed, "
        f"{seen - computed} already cached)")
    if sharded and barrier is not None:
        barrier()  # the other ranks' rows are on disk before anyone reads them
    return {"images": seen, "computed": computed}


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"

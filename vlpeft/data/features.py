"""Pre-extracted visual features: VL-Adapter's ``datasets/*/clip_features/data_clip_<type>_att`` ``.h5`` files.

Layout of the originals (``VL-T5/src/*_clip_data.py``): a folder with one file ``<img_id>.h5`` per image, holding
the dataset ``<img_id>/features`` of shape (L, F) — the CLIP grid (RN101 at 224 px: 7×7 = 49 cells of 2048).
The originals read zero boxes for these grid features (``boxes = torch.zeros(L, 4)``) and max-pool the grid to
6×6 = 36 cells in the model (``--downsample``: ``AdaptiveMaxPool2d((6, 6))`` over the √L × √L grid). This reader
does that pooling itself (``n_boxes``, default 36; the pooled grid is what the backbone sees), so a backbone that
pools again sees a no-op. Also read: one ``.h5`` file holding every image's group (``<img_id>/features``), and
the Faster R-CNN layout (``<img_id>/boxes`` in pixels + ``img_h`` / ``img_w``), whose boxes are normalised to
[0, 1] as the originals' ``vqa_data.py`` does (region features are never pooled: L must equal ``n_boxes``).

``FeatureReader(path, n_boxes)`` → ``reader.read(candidates)`` = ``(vis_feats (V, F) float32, vis_pos (V, 4))`` for
the first candidate image id that exists; ``image_id_candidates(dataset_key, ...)`` maps an arrow row to the
names the originals gave the same image. The reader opens files lazily and is picklable (DataLoader workers).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["FeatureError", "FeatureReader", "image_id_candidates", "pool_grid"]


class FeatureError(ValueError):
    """A features file or image id that cannot give this sample's visual features."""


def pool_grid(feats: torch.Tensor, n_boxes: int, where: str = "") -> torch.Tensor:
    """(L, F) grid features → (n_boxes, F) by adaptive max pooling of the √L × √L grid (the originals' downsample).
    ``where`` (file and image) prefixes the error."""
    n = feats.shape[0]
    if n == n_boxes:
        return feats
    side, out = math.isqrt(n), math.isqrt(n_boxes)
    if side * side != n or out * out != n_boxes:
        raise FeatureError(f"{where + ': ' if where else ''}cannot pool {n} features to n_boxes={n_boxes}: both must "
                           f"be square grids (e.g. 49 = 7×7 → 36 = 6×6); set n_boxes={n} to keep them")
    grid = feats.t().reshape(1, feats.shape[1], side, side)
    return F.adaptive_max_pool2d(grid, (out, out)).reshape(feats.shape[1], n_boxes).t().contiguous()


def image_id_candidates(dataset_key: str, image_id: Any = None, split: str | None = None,
                        identifier: str | None = None, image_index: int = 0) -> list[str]:
    """The names an image may have in the originals' feature files, most specific first.

    - vqa (arrow ``image_id`` = COCO int, ``split`` = train/val/test): ``COCO_train2014_000000458752``, then the
      bare number; coco captions (``image_id`` = file name): the file stem, then its trailing number;
    - gqa: the string id as is; nlvr2 (``identifier`` ``dev-850-0-1``): ``dev-850-0-img0`` / ``-img1``.
    """
    if dataset_key == "nlvr2":
        if not identifier:
            raise FeatureError("nlvr2 features need the row's identifier (e.g. 'dev-850-0-1')")
        stem = str(identifier).rsplit("-", 1)[0]
        return [f"{stem}-img{int(image_index)}"]
    if image_id is None:
        raise FeatureError(f"{dataset_key} features need the row's image_id")
    if dataset_key == "vqa":
        num = int(image_id)
        coco_split = {"train": "train2014", "val": "val2014", "test": "test2015"}.get(str(split), None)
        out = [f"COCO_{coco_split}_{num:012d}"] if coco_split else []
        return out + [f"COCO_{s}_{num:012d}" for s in ("train2014", "val2014", "test2015") if s != coco_split] \
            + [str(num)]
    if dataset_key in ("coco", "f30k", "caption"):
        stem = Path(str(image_id)).stem
        tail = stem.rsplit("_", 1)[-1]
        return [stem] + ([str(int(tail))] if tail.isdigit() and str(int(tail)) != stem else [])
    return [str(image_id)]


def _float_array(ds: Any, what: str, fix: str) -> np.ndarray:
    """An h5 dataset as float32, refused unless it is a floating-point array of finite values (a check of
    one image's (49, 2048) grid costs microseconds)."""
    dtype = getattr(ds, "dtype", None)
    if dtype is None or dtype.kind != "f":
        raise FeatureError(f"{what} has dtype {dtype}; expected floating-point features; {fix}")
    a = np.asarray(ds[...], dtype=np.float32)
    if not np.isfinite(a).all():
        bad = int(a.size - np.isfinite(a).sum())
        raise FeatureError(f"{what} holds {bad} non-finite value(s) (NaN / inf) of {a.size}: they would train to a "
                           f"NaN loss; {fix}")
    return a


class FeatureReader:
    """Reads one image's features from a folder of ``<id>.h5`` files or one ``.h5`` file (see module doc)."""

    def __init__(self, path: str | os.PathLike, n_boxes: int = 36):
        self.path = Path(path)
        if not self.path.exists():
            raise FeatureError(f"visual_features={str(path)!r} does not exist; point it at VL-Adapter's "
                               f"clip_features/data_clip_<type>_att folder (one <img_id>.h5 per image) or at one .h5 "
                               f"file, or unset it to feed images")
        if self.path.is_file() and self.path.suffix not in (".h5", ".hdf5"):
            raise FeatureError(f"visual_features={str(path)!r} is a file but not .h5/.hdf5")
        self.n_boxes = int(n_boxes)
        if self.n_boxes <= 0:
            raise FeatureError(f"n_boxes={n_boxes} must be positive (the originals use 36)")
        self._file = None  # the single-file handle, opened per process
        self.feat_dim: int | None = None

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_file"] = None  # h5py handles are not picklable; each worker reopens
        return state

    def _h5(self):
        try:
            import h5py
        except ModuleNotFoundError as e:  # pragma: no cover - it is a requirement
            raise ModuleNotFoundError("reading .h5 visual features needs h5py: pip install h5py") from e
        return h5py

    def _locate(self, candidates: Sequence[str]) -> tuple[Any, str, bool]:
        """(an open h5 file, the id found, whether the caller must close the file)."""
        h5py = self._h5()
        if self.path.is_dir():
            for cid in candidates:
                f = self.path / f"{cid}.h5"
                if f.is_file():
                    h = h5py.File(f, "r")
                    if cid in h:
                        return h, cid, True
                    keys = sorted(h.keys())[:5]
                    h.close()
                    raise FeatureError(f"{f} has no group {cid!r} (holds {keys}); "
                                       f"expected the originals' layout <img_id>.h5 → <img_id>/features")
            raise FeatureError(f"no features for image {candidates[0]!r} under visual_features={str(self.path)!r} "
                               f"(looked for {[c + '.h5' for c in candidates]}); are these the features of this "
                               f"dataset's images?")
        if self._file is None:
            self._file = h5py.File(self.path, "r")
        for cid in candidates:
            if cid in self._file:
                return self._file, cid, False
        raise FeatureError(f"image {candidates[0]!r} is not in {self.path} (tried {list(candidates)}); are these "
                           f"the features of this dataset's images?")

    def read(self, candidates: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(vis_feats (n_boxes, F) float32, vis_pos (n_boxes, 4))`` of the first candidate id found.

        Every refusal names the ``.h5`` file and the image id: a dataset that is not a float (boxes, dim) array,
        non-finite values (NaN / inf features would train to a NaN loss), boxes that do not fit the features."""
        if isinstance(candidates, str):
            candidates = [candidates]
        h, cid, close = self._locate(list(candidates))
        where = f"{h.filename} image {cid!r}"
        fix = "re-extract this image's features (VL-Adapter's feature extraction writes float32 (boxes, dim) arrays)"
        try:
            g = h[cid]
            if not hasattr(g, "keys") or "features" not in g:
                has = sorted(g.keys()) if hasattr(g, "keys") else "a dataset, not a group"
                raise FeatureError(f"{where}: no '{cid}/features' dataset (has {has}); expected the originals' "
                                   f"layout <img_id>/features")
            feats = _float_array(g["features"], f"{where}: {cid}/features", fix)
            boxes = None
            if "boxes" in g:
                boxes = _float_array(g["boxes"], f"{where}: {cid}/boxes", fix)
                img_h, img_w = float(g["img_h"][()]), float(g["img_w"][()])
        finally:
            if close:
                h.close()
        if feats.ndim != 2:
            raise FeatureError(f"{where}: {cid}/features has shape {feats.shape}; expected (boxes, dim); {fix}")
        if self.feat_dim is None:
            self.feat_dim = feats.shape[1]
        elif feats.shape[1] != self.feat_dim:
            raise FeatureError(f"{where}: {cid}/features has dim {feats.shape[1]} but earlier images had "
                               f"{self.feat_dim}; mixed feature types in one folder")
        x = torch.from_numpy(feats)
        if boxes is None:
            # the originals' CLIP grid features carry zero boxes
            return pool_grid(x, self.n_boxes, where), torch.zeros(self.n_boxes, 4)
        if boxes.shape != (feats.shape[0], 4):
            raise FeatureError(f"{where}: {cid}/boxes has shape {boxes.shape}; expected ({feats.shape[0]}, 4)")
        if feats.shape[0] != self.n_boxes:
            raise FeatureError(f"{where}: {feats.shape[0]} region features but n_boxes={self.n_boxes}; "
                               f"region features are not pooled — set n_boxes={feats.shape[0]}")
        if not (math.isfinite(img_w) and math.isfinite(img_h) and img_w > 0 and img_h > 0):
            raise FeatureError(f"{where}: img_w={img_w}, img_h={img_h} cannot normalise the boxes; {fix}")
        pos = torch.from_numpy(boxes)
        pos[:, (0, 2)] /= img_w
        pos[:, (1, 3)] /= img_h
        return x, pos.clamp_(0.0, 1.0)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

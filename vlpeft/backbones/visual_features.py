"""Grid features from a frozen CLIP vision tower, for backbones that read region-like features (VL-BART / VL-T5).

Public API::

    GridFeatures(clip_spec, grid=6, cache=True, cache_max_items=4096, cache_dir=None)
    GridFeatures.width                      -> feature width F (the tower's hidden size)
    GridFeatures(images, keys=None)         -> (feats (B, grid², F), boxes (B, grid², 4: x1, y1, x2, y2 in [0, 1]))

The tower's patch tokens (CLS dropped, before the post-layernorm) are laid out on their patch grid and
adaptive-average-pooled to ``grid × grid`` (6 × 6 = 36, the originals' ``--n_boxes 36`` of pooled CLIP-RN101 grid
features); each pooled cell gets its grid-cell box, row-major. Features of each ``image_key`` are computed once and
reused (``vlpeft.backbones._clip.CLIPFeatureCache``, as ``clip_plm``'s ``clip_feature_cache``); callers pass
``keys=None`` where the images are not deterministic (random augmentation), which bypasses the cache.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones._clip import CLIPFeatureCache, FrozenCLIP, build_clip_visual


def grid_boxes(grid: int, batch: int, device: Any = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(B, grid², 4) boxes of a ``grid × grid`` partition of the unit square, row-major, (x1, y1, x2, y2)."""
    edges = torch.linspace(0.0, 1.0, grid + 1, device=device, dtype=dtype)
    y1, x1 = torch.meshgrid(edges[:-1], edges[:-1], indexing="ij")
    y2, x2 = torch.meshgrid(edges[1:], edges[1:], indexing="ij")
    boxes = torch.stack([x1, y1, x2, y2], dim=-1).reshape(1, grid * grid, 4)
    return boxes.expand(batch, -1, -1)


def _reset_fingerprint(module: "GridFeatures", incompatible_keys: Any) -> None:
    module._fingerprint = None


class GridFeatures(nn.Module):
    """Frozen CLIP → pooled grid features and their boxes (see the module docstring)."""

    def __init__(self, clip_spec: Any, grid: int = 6, cache: bool = True, cache_max_items: int = 4096,
                 cache_dir: str | None = None) -> None:
        super().__init__()
        if int(grid) < 1:
            raise ValueError(f"vl_grid={grid} must be >= 1 (6 gives the originals' 36 grid features)")
        self.clip = FrozenCLIP(build_clip_visual(clip_spec))
        self.grid = int(grid)
        self.use_cache = bool(cache)
        self.cache = CLIPFeatureCache(cache_max_items, cache_dir)
        self._fingerprint: str | None = None
        # loading weights may change CLIP: a new cache namespace on next use
        self.register_load_state_dict_post_hook(_reset_fingerprint)

    @property
    def width(self) -> int:
        return self.clip.width

    def train(self, mode: bool = True) -> "GridFeatures":
        super().train(mode)
        self.clip.train(False)
        return self

    @torch.no_grad()
    def pooled(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.clip(images)[:, 1:]  # patch tokens
        b, n, c = tokens.shape
        side = int(math.isqrt(n))
        if side * side != n:
            raise ValueError(f"the CLIP tower gave {n} patch tokens, not a square grid")
        grid = tokens.transpose(1, 2).reshape(b, c, side, side)
        return F.adaptive_avg_pool2d(grid, self.grid).flatten(2).transpose(1, 2)

    def forward(self, images: torch.Tensor, keys: Sequence[str] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.use_cache or keys is None:
            feats = self.pooled(images)
        else:
            if self._fingerprint is None:
                self._fingerprint = CLIPFeatureCache.fingerprint(self.clip.model, tuple(images.shape[1:]))
            rows = self.cache.features(self._fingerprint, keys, images, self.pooled, prefix=f"grid{self.grid}:")
            p = next(self.clip.parameters())
            feats = torch.stack([f.to(p.device) for f in rows])
        return feats, grid_boxes(self.grid, feats.shape[0], feats.device, feats.dtype)


__all__ = ["GridFeatures", "grid_boxes"]

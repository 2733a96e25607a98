"""Small utilities shared by tests."""

from __future__ import annotations

import torch


def proj_loss(x: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """A scalar loss with a non-zero gradient almost surely: a fixed random projection of ``x``.

    ``x.sum()`` or ``x.pow(2).sum()`` are no good when ``x`` is a LayerNorm output (BERT features with unit
    gain): both are (nearly) constant in the input, so their gradient is zero up to rounding noise.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape, generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return (x * w).sum()


def backbone_batch(bb, B: int = 2, L: int = 6) -> dict:
    """A small batch any test backbone takes (ViLT at 64 px, the CLIP-based ones at 32 px), with a padded row."""
    g = torch.Generator().manual_seed(0)
    size = 64 if bb.family == "vilt" else 32
    ids = torch.randint(5, 90, (B, L), generator=g)
    masks = torch.ones(B, L, dtype=torch.long)
    masks[1, -2:] = 0
    return {"text_ids": ids, "text_masks": masks, "image": torch.randn(B, 3, size, size, generator=g),
            "image_mask": torch.ones(B, size, size, dtype=torch.bool), "image_sizes": [(size, size)] * B}

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

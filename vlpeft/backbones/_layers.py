"""Small layers several backbone families share (kept in one place; the families keep their parameter names)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class Pooler(nn.Module):
    """``tanh(dense(h[:, 0]))`` — the BERT-style pooler ViLT and METER put on the first token (``pooler.dense``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


class PatchConv(nn.Conv2d):
    """A ViT patch embedding: a ``Conv2d`` whose stride equals its kernel (no padding, dilation or groups), computed
    as one matrix product over the non-overlapping patches. Same parameters, names and output (B, D, H/p, W/p) as the
    conv, equal within float rounding; on CPU oneDNN's convolution takes ~1.35× the matmul's time for ViT-B/32's
    patches — a fixed per-image cost that stays when DAS skips blocks, so it caps the speed-up (issue 21)."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if (tuple(self.stride) != tuple(self.kernel_size) or any(self.padding) or any(d != 1 for d in self.dilation)
                or self.groups != 1 or self.padding_mode != "zeros" or isinstance(self.padding, str)):
            raise ValueError(f"PatchConv needs stride == kernel_size, no padding, dilation 1, groups 1; got {self}")

    @classmethod
    def adopt(cls, conv: nn.Conv2d) -> "PatchConv":
        """A PatchConv sharing ``conv``'s parameters (built on ``meta``: no RNG draw, no copy)."""
        new = cls(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                  bias=conv.bias is not None, device="meta")
        new.weight = conv.weight
        new.bias = conv.bias
        return new

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, C, H, W = x.shape
        (ph, pw), D = self.kernel_size, self.out_channels
        gh, gw = H // ph, W // pw
        # (B, C, gh, ph, gw, pw) -> (B, gh·gw, C·ph·pw): the conv weight's (C, ph, pw) order; a trailing partial
        # patch is dropped as the strided conv drops it
        p = x[:, :, :gh * ph, :gw * pw].reshape(B, C, gh, ph, gw, pw).permute(0, 2, 4, 1, 3, 5)
        out = F.linear(p.reshape(B, gh * gw, C * ph * pw), self.weight.reshape(D, -1), self.bias)
        return out.transpose(1, 2).reshape(B, D, gh, gw)


class SublayerSlots(nn.Module):
    """The zoo's slots of one post-norm sublayer output module (METER's fusion layers): ``out_seq`` (a map of the
    sublayer output H with its own residual), ``out_par`` (a delta read from the sublayer input X) and ``gate``
    (VL-PET's G(X, Y)); ``compose(x, h)`` applies them in the fixed order of ``vlpeft.pet._sites_hf.compose_site``.
    Empty slots cost nothing and keep the host's function and parameter names."""

    SLOTS = ("out_seq", "out_par", "gate")

    def _init_slots(self) -> None:
        for name in self.SLOTS:
            self.register_module(name, None)

    def compose(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        if self.out_seq is not None:
            h = self.out_seq(h)
        if self.out_par is not None:
            h = h + self.out_par(x)
        if self.gate is not None:
            h = h * self.gate(x, h)
        return h

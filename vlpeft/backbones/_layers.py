"""Small layers several backbone families share (kept in one place; the families keep their parameter names)."""

from __future__ import annotations

import torch
from torch import nn


class Pooler(nn.Module):
    """``tanh(dense(h[:, 0]))`` — the BERT-style pooler ViLT and METER put on the first token (``pooler.dense``)."""

    def __init__(self, hidden_size: int):
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.activation = nn.Tanh()

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.activation(self.dense(hidden_states[:, 0]))


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

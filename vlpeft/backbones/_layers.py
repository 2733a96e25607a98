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

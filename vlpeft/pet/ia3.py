"""IA3: a learned vector rescaling a projection (Hugging Face peft's IA3; spec §7, §8.2 ``ScaleVector``).

``y = (W x + b) ⊙ l`` on attention projections (k, v), ``y = W (x ⊙ l) + b`` on feed-forward modules (the second FFN
linear, anchor ``proj:ff_out``), with ``l`` initialised to ones (the function is unchanged at init). Count: the
output width (``d_out``), or the input width on feed-forward modules. The parameter is ``ia3_l`` and sits beside
the projection's ``weight`` (``…value.ia3_l``; peft: ``…value.ia3_l.default``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.sharing import config_from, place


@dataclass
class IA3Config:
    feedforward: bool | None = None  # None: True on proj:ff_out sites (peft's feedforward_modules), else False
    init: float = 1.0


class IA3(nn.Module):
    def __init__(self, dim: int, feedforward: bool = False, init: float = 1.0):
        super().__init__()
        self.feedforward = bool(feedforward)
        self.role = "in_scale" if self.feedforward else "out_scale"
        self.ia3_l = nn.Parameter(torch.full((int(dim),), float(init)))

    def forward(self) -> torch.Tensor:
        return self.ia3_l

    def extra_repr(self) -> str:
        return f"dim={self.ia3_l.numel()}, scales the {'input' if self.feedforward else 'output'}"


@register_pet("ia3", test=dict(site=dict(anchor="proj:v", in_dim=16, out_dim=16), options={}, identity=True))
def build_ia3(site, **options) -> nn.Module:
    """IA3 vector on a projection site (``proj:*``); options: ``IA3Config`` + sharing keys."""
    cfg, placing = config_from(IA3Config, "ia3", options)
    ff = cfg.feedforward if cfg.feedforward is not None else site.anchor == "proj:ff_out"
    d_in, d_out = site_dims(site)
    return place(lambda: IA3(d_in if ff else d_out, ff, cfg.init), site, "ia3", **placing)


__all__ = ["IA3", "IA3Config", "build_ia3"]

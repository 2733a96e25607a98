"""VL-PET's multi-head down-projection adapter (spec §2 M2, §3.1, pitfall §9 item 1).

``mode="concat"`` (the released ``--use_encoder_adapter_down_multihead``): ``N_h`` heads ``D_i: d → r/N_h`` (with
bias), concatenated to R^r, gelu_new, one up map ``U: r → d``, inner skip ``Y = H + Δ``. Concatenating the heads is
one affine map whose weight is the row-stack of the heads, so this *is* the plain bottleneck M1 with width r (same
count A(r), same function: ``as_bottleneck()`` builds it). ``mode="pair"`` (``…down_up_pair_multihead``, unused by
the scripts) is the only structural variant: ``N_h`` independent adapters ``d → r/N_h → d/N_h`` whose outputs are
concatenated (block-diagonal up; count ``d r + r + r d / N_h + d``). Requires ``r % N_h == 0``.
Parameter names: ``down.{h}.{weight,bias}``, ``up.{weight,bias}`` (``up.{h}`` in pair mode).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.bottleneck import Bottleneck, activation, init_linears, resolve_r
from vlpeft.pet.sharing import config_from, place


@dataclass
class MultiHeadConfig:
    r: int | None = None
    reduction: float | None = 8
    heads: int = 4
    mode: str = "concat"
    act: str = "gelu_new"
    scale: float = 1.0
    init: str = "zero_up"


class MultiHeadAdapter(nn.Module):
    role = "seq"
    mergeable = False

    def __init__(self, d: int, r: int, heads: int = 4, mode: str = "concat", act: str = "gelu_new",
                 scale: float = 1.0, init: str = "zero_up"):
        super().__init__()
        if heads <= 0 or r % heads:
            raise ValueError(f"multi-head adapter: r={r} must be divisible by heads={heads}")
        if mode not in ("concat", "pair"):
            raise ValueError(f"multi-head adapter mode {mode!r} is not 'concat' or 'pair'")
        if mode == "pair" and d % heads:
            raise ValueError(f"pair mode needs d={d} divisible by heads={heads}")
        self.d, self.r, self.heads, self.mode, self.scale, self.act_name = d, r, heads, mode, float(scale), act
        self._act = activation(act)
        self.down = nn.ModuleList(nn.Linear(d, r // heads) for _ in range(heads))
        if mode == "concat":
            self.up = nn.Linear(r, d)
            ups = [self.up]
        else:
            self.up = nn.ModuleList(nn.Linear(r // heads, d // heads) for _ in range(heads))
            ups = list(self.up)
        init_linears(list(self.down), ups, init)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if self.mode == "concat":
            # the heads' concatenation is one affine map (row-stacked weights): one matmul and one activation
            # instead of N_h thin ones; each output column is the same dot product, so the outputs agree to float
            # rounding (bit for bit where BLAS picks the same kernel for the wide and the thin matrices)
            w = torch.cat([lin.weight for lin in self.down])
            b = torch.cat([lin.bias for lin in self.down])
            d = self.up(self._act(F.linear(z, w, b)))
        else:
            d = torch.cat([u(self._act(lin(z))) for u, lin in zip(self.up, self.down)], dim=-1)
        return z + (d if self.scale == 1.0 else d * self.scale)  # × 1.0 would be one more pass for nothing

    @torch.no_grad()
    def as_bottleneck(self) -> Bottleneck:
        """The plain M1 bottleneck computing the same function (concat mode): row-stacked down weights."""
        if self.mode != "concat":
            raise ValueError("only concat mode is a plain bottleneck")
        b = Bottleneck(self.d, self.r, self.d, act=self.act_name, inner_skip=True, scale=self.scale, init="torch")
        b.down.weight.copy_(torch.cat([lin.weight for lin in self.down], dim=0))
        b.down.bias.copy_(torch.cat([lin.bias for lin in self.down], dim=0))
        b.up.load_state_dict(self.up.state_dict())
        return b

    def extra_repr(self) -> str:
        return f"d={self.d}, r={self.r}, heads={self.heads}, mode={self.mode}"


@register_pet("multihead_adapter", test=dict(site={}, options=dict(r=8), identity=True))
def build_multihead_adapter(site, **options) -> nn.Module:
    """VL-PET multi-head down-projection adapter on ``out_seq`` (spec §2 M2)."""
    cfg, placing = config_from(MultiHeadConfig, "multihead_adapter", options)
    d, _ = site_dims(site)
    r = resolve_r(d, cfg.r, cfg.reduction)
    return place(lambda: MultiHeadAdapter(d, r, cfg.heads, cfg.mode, cfg.act, cfg.scale, cfg.init), site,
                 "multihead_adapter", **placing)


__all__ = ["MultiHeadAdapter", "MultiHeadConfig", "build_multihead_adapter"]

"""VL-PET's granularity-controlled gate G (spec §2 M4, §3.1, §3.3, §3.4, pitfalls §9 items 2–4).

At a sublayer site the host computes ``Y = H + ΔH`` (deltas add), then ``Y' = Y ⊙ G(X, Y)`` (gates multiply; anchor
``gate``; see ``_sites_hf.compose_site``), then its own dropout / residual / LN. ``G`` multiplies the frozen
sublayer's output too, not only the adapter's. This module returns ``s · G`` (``s`` = ``scale``: 0.3 in VL-PET's T5
scripts, 1 for BART), shaped to broadcast against ``Y ∈ R^{B×N×d}``:

| granularity | G                                              | shape  | count        |
|-------------|------------------------------------------------|--------|--------------|
| large       | q(U φ(D X + b_d) + b_u), low-rank r_g, X only   | B×N×d  | 2 d r_g + r_g + d |
| middle_x    | q(wᵀ (X + Y) + b)                              | B×N×1  | d + 1        |
| middle_y    | q(z), z ∈ R^d (input-independent)              | 1×1×d  | d            |
| small       | mean over all N positions of q(wᵀ [X; Y] + b)  | B×1×1  | 2d + 1       |

with ``q(u) = offset + squash(u)``. The code's forms (VL-PET): σ-gates (``squash="sigmoid"``, offset 0) for large,
middle_x, small; ``1 + z`` (``squash="none"``, offset 1) for middle_y (the paper's figure draws ``1 + σ(z)``: pass
``squash="sigmoid"``). The small gate averages over every token, padding and visual ones included (no mask).

Inits (``init``): ``"legacy_bart"`` — every Linear N(0, 0.02), zero bias, so σ-gates start at ≈ 0.5 and middle_y at
``1 + z``, z ~ N(0, 0.02); ``"legacy_t5"`` — PyTorch-default Linears with the last layer zero, so σ-gates are 0.5
exactly and middle_y is 1; ``"identity"`` (the library default) — ``squash="none"``, offset 1 and the last layer zero,
so ``G ≡ 1`` and the host's function is unchanged (a different method from VL-PET's; spec §3.4).
Parameter names: large ``down`` / ``up``; middle_x and small ``proj``; middle_y ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.bottleneck import activation
from vlpeft.pet.sharing import config_from, place

GRANULARITIES = ("large", "middle_x", "middle_y", "small")
GATE_INITS = ("identity", "legacy_bart", "legacy_t5")


@dataclass
class GateConfig:
    granularity: str = "large"
    rank: int | None = None  # large: r_g (default d // 8)
    act: str = "gelu_new"
    squash: str | None = None  # None: from init / granularity (see the module docstring)
    offset: float | None = None
    scale: float = 1.0
    init: str = "identity"


class Gate(nn.Module):
    role = "gate"

    def __init__(self, dim: int, granularity: str = "large", rank: int | None = None, act: str = "gelu_new",
                 squash: str | None = None, offset: float | None = None, scale: float = 1.0, init: str = "identity"):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"gate granularity {granularity!r} is not one of {GRANULARITIES}")
        if init not in GATE_INITS:
            raise ValueError(f"gate init {init!r} is not one of {GATE_INITS}")
        if init == "identity":
            squash_d, offset_d = "none", 1.0
        elif granularity == "middle_y":
            squash_d, offset_d = "none", 1.0
        else:
            squash_d, offset_d = "sigmoid", 0.0
        self.squash = squash if squash is not None else squash_d
        self.offset = float(offset if offset is not None else offset_d)
        if self.squash not in ("sigmoid", "none"):
            raise ValueError(f"gate squash {self.squash!r} is not 'sigmoid' or 'none'")
        self.dim, self.granularity, self.scale, self.init = int(dim), granularity, float(scale), init
        last: nn.Module | nn.Parameter
        if granularity == "large":
            self.rank = int(rank or dim // 8)
            self.down, self.up = nn.Linear(dim, self.rank), nn.Linear(self.rank, dim)
            self._act = activation(act)
            linears, last = [self.down, self.up], self.up
        elif granularity == "middle_y":
            self.z = nn.Parameter(torch.zeros(dim))
            linears, last = [], self.z
        else:
            self.proj = nn.Linear(dim if granularity == "middle_x" else 2 * dim, 1)
            linears, last = [self.proj], self.proj
        with torch.no_grad():
            if init == "legacy_bart":
                for lin in linears:
                    lin.weight.normal_(0.0, 0.02)
                    lin.bias.zero_()
                if granularity == "middle_y":
                    self.z.normal_(0.0, 0.02)
            elif isinstance(last, nn.Linear):  # legacy_t5 / identity: last layer zero
                last.weight.zero_()
                last.bias.zero_()

    def _q(self, u: torch.Tensor) -> torch.Tensor:
        v = torch.sigmoid(u) if self.squash == "sigmoid" else u
        return v if self.offset == 0.0 else self.offset + v  # + 0 would be one more pass for nothing

    def logits(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The pre-squash values (before the small gate's mean)."""
        if self.granularity == "large":
            return self.up(self._act(self.down(x)))
        if self.granularity == "middle_y":
            return self.z.view(*([1] * (y.dim() - 1)), -1)
        if self.granularity == "middle_x":
            return self.proj(x + y)
        return self.proj(torch.cat([x, y], dim=-1))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        g = self._q(self.logits(x, y))
        if self.granularity == "small":
            g = g.mean(dim=-2, keepdim=True)  # B×1×1: one scalar per example
        return g * self.scale if self.scale != 1.0 else g

    def extra_repr(self) -> str:
        return (f"{self.granularity}, dim={self.dim}, squash={self.squash}, offset={self.offset:g}, "
                f"scale={self.scale:g}, init={self.init}")


@register_pet("gate", test=dict(site=dict(anchor="gate"), options={}, identity=True))
def build_gate(site, **options) -> nn.Module:
    """VL-PET gate on a ``gate`` site (spec §2 M4); options: ``GateConfig`` + sharing keys."""
    cfg, placing = config_from(GateConfig, "gate", options)
    d, _ = site_dims(site)
    return place(lambda: Gate(d, cfg.granularity, cfg.rank, cfg.act, cfg.squash, cfg.offset, cfg.scale, cfg.init),
                 site, "gate", **placing)


__all__ = ["GATE_INITS", "GRANULARITIES", "Gate", "GateConfig", "build_gate"]

"""Compacter: a bottleneck adapter whose two linears are PHM layers (VL-Adapter / VL-PET baseline; spec §2 M5).

PHM layer ``k → m`` with hyper-complex division ``n``: ``W = Σ_{i=1..n} C_i ⊗ S_i ∈ R^{k×m}``, ``y = x W + b``, with
the "rule" ``C_i ∈ R^{n×n}`` (``phm_rule``, N(0, ``c_init_std`` = 0.01)) and ``S_i ∈ R^{(k/n)×(m/n)}`` (``W``,
Xavier-uniform gain √2 per slice; ``factorized=True``: ``S_i = s_i t_iᵀ`` of rank ``rank``), bias zero. Count per
layer ``k m / n + n³ + m`` (768→96, n = 2: 36,968; 96→768: 37,640; one compacter 74,608). The scripts use n = 2, an own
rule per layer (``shared_phm_rule False``), unfactorised, r = d/8 = 96, gelu_new, inner skip; BART's init does not
touch PHM layers. Parameter names: ``down.{phm_rule,W,b}``, ``up.{…}``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.bottleneck import activation, resolve_r
from vlpeft.pet.sharing import config_from, place


class PHMLinear(nn.Module):
    def __init__(self, k: int, m: int, n: int = 2, factorized: bool = False, rank: int = 1,
                 c_init_std: float = 0.01, zero: bool = False):
        super().__init__()
        if k % n or m % n:
            raise ValueError(f"PHM layer {k}→{m}: both widths must be divisible by n={n}")
        self.k, self.m, self.n, self.factorized = k, m, n, factorized
        self.phm_rule = nn.Parameter(torch.empty(n, n, n))
        nn.init.normal_(self.phm_rule, std=c_init_std)
        if factorized:
            self.W_left = nn.Parameter(torch.empty(n, k // n, rank))
            self.W_right = nn.Parameter(torch.empty(n, rank, m // n))
            for t in (self.W_left, self.W_right):
                for i in range(n):
                    nn.init.xavier_uniform_(t.data[i], gain=math.sqrt(2))
        else:
            self.W = nn.Parameter(torch.empty(n, k // n, m // n))
            for i in range(n):
                nn.init.xavier_uniform_(self.W.data[i], gain=math.sqrt(2))
            if zero:
                self.W.data.zero_()
        self.b = nn.Parameter(torch.zeros(m))

    def weight(self) -> torch.Tensor:
        s = self.W_left @ self.W_right if self.factorized else self.W
        # Σ_i C_i ⊗ S_i, batched Kronecker product
        kron = torch.einsum("iab,icd->iacbd", self.phm_rule, s).reshape(self.n, self.k, self.m)
        return kron.sum(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight() + self.b

    def extra_repr(self) -> str:
        return f"{self.k}→{self.m}, n={self.n}, factorized={self.factorized}"


@dataclass
class CompacterConfig:
    r: int | None = None
    reduction: float | None = 8
    n: int = 2
    factorized: bool = False
    rank: int = 1
    c_init_std: float = 0.01
    act: str = "gelu_new"
    scale: float = 1.0
    zero_up: bool = True  # the library default: identity at init; the papers' presets pass False (C ~ N(0, 0.01))
    inner_skip: bool = True  # False: return the delta alone (a parallel value adapter on ``proj:v``, VL-PET Table 9)


class Compacter(nn.Module):
    role = "seq"
    mergeable = False

    def __init__(self, d: int, r: int, n: int = 2, factorized: bool = False, rank: int = 1, c_init_std: float = 0.01,
                 act: str = "gelu_new", scale: float = 1.0, zero_up: bool = False, inner_skip: bool = True):
        super().__init__()
        self.inner_skip = bool(inner_skip)
        self.role = "seq" if self.inner_skip else "delta"
        self.down = PHMLinear(d, r, n, factorized, rank, c_init_std)
        self.up = PHMLinear(r, d, n, factorized, rank, c_init_std, zero=zero_up)
        if zero_up:
            with torch.no_grad():
                self.up.phm_rule.zero_()
        self._act, self.scale = activation(act), float(scale)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        delta = self.up(self._act(self.down(z))) * self.scale
        return z + delta if self.inner_skip else delta


# identity: the library default is zero-up; the presets pass the original init
@register_pet("compacter", test=dict(site={}, options={}, identity=True))
def build_compacter(site, **options) -> nn.Module:
    """Compacter (PHM bottleneck) on ``out_seq`` (spec §2 M5); with ``inner_skip=False`` a parallel delta, e.g. VL-PET
    Table 9's value adapter on ``proj:v`` of the decoder cross-attention."""
    cfg, placing = config_from(CompacterConfig, "compacter", options)
    d, _ = site_dims(site)
    r = resolve_r(d, cfg.r, cfg.reduction)
    return place(lambda: Compacter(d, r, cfg.n, cfg.factorized, cfg.rank, cfg.c_init_std, cfg.act, cfg.scale,
                                   cfg.zero_up, cfg.inner_skip), site, "compacter", **placing)


__all__ = ["Compacter", "CompacterConfig", "PHMLinear", "build_compacter"]

"""Bottleneck adapters: the sequential adapter of VL-Adapter (spec §2 M1), VL-PET's decoder value adapter (VPA,
spec §2 M3) and RT's routed adapter (spec §2 M10, "Adapter-routing").

``Δ = s · U φ(f(D z + b_d)) + b_u`` with ``D: d_in → r``, ``U: r → d_out``, ``φ`` = gelu_new (tanh GELU) unless set,
``f`` the optional routing with the visual context (``vlpeft.pet.routing``: the down map *with its bias* is applied
to ``x_v`` too). ``inner_skip=True`` returns ``z + Δ`` (M1 on a sublayer output, anchor ``out_seq``);
``inner_skip=False`` returns ``Δ`` (the VPA on ``proj:v`` of cross-attention, reading the encoder memory E; RT's
RoBERTa adapter without ``add_res``). Count: ``A(r) = d_in·r + r + r·d_out + d_out`` (2dr + r + d; d = 768:
A(64) = 99,136, A(96) = 148,320, A(128) = 197,504, A(192) = 295,872). ``r = d // reduction`` unless ``r`` is given.

Inits (spec §1.1, §3.4, §8.1 item 4): ``"legacy_bart"`` — N(0, 0.02) weights, zero biases (BART's ``_init_weights``;
*not* the identity: the up weights are small but non-zero); ``"torch"`` — PyTorch's default Linear init (new linears
inside T5); ``"zero_up"`` (default) — PyTorch default down, zero up, so ``Δ = 0`` at init (VL-PET's T5
``*_up_zero_init``; the library's identity-preserving default).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.context import context_value
from vlpeft.pet.routing import ROUTES, route
from vlpeft.pet.sharing import config_from, place

INITS = ("zero_up", "legacy_bart", "torch")


def activation(name: str):
    acts = {"gelu_new": lambda x: F.gelu(x, approximate="tanh"), "gelu": F.gelu, "relu": F.relu,
            "identity": lambda x: x, "silu": F.silu}
    if name not in acts:
        raise ValueError(f"activation {name!r} is not one of {sorted(acts)}")
    return acts[name]


@torch.no_grad()
def init_linears(down: list[nn.Module], up: list[nn.Module], init: str) -> None:
    """Apply an ``INITS`` rule to down / up Linears (PyTorch-default Linears on entry)."""
    if init not in INITS:
        raise ValueError(f"init {init!r} is not one of {INITS}")
    if init == "legacy_bart":
        for lin in [*down, *up]:
            lin.weight.normal_(0.0, 0.02)
            if lin.bias is not None:
                lin.bias.zero_()
    elif init == "zero_up":
        for lin in up:
            lin.weight.zero_()
            if lin.bias is not None:
                lin.bias.zero_()


def resolve_r(d: int, r: int | None, reduction: float | None) -> int:
    if r is not None:
        return int(r)
    if not reduction:
        raise ValueError("give the bottleneck width `r` or a `reduction` factor")
    if d % reduction:
        raise ValueError(f"width {d} is not divisible by reduction {reduction}; give `r` explicitly")
    return int(d // reduction)


@dataclass
class BottleneckConfig:
    r: int | None = None
    reduction: float | None = 8
    act: str = "gelu_new"
    inner_skip: bool = True
    scale: float = 1.0
    init: str = "zero_up"
    bias: bool = True
    pre_ln: bool = False
    post_ln: bool = False
    dropout: float = 0.0
    routing: str | None = None
    transpose_fix: bool = True
    context: str = "x_v"


class Bottleneck(nn.Module):
    def __init__(self, d_in: int, r: int, d_out: int | None = None, act: str = "gelu_new", inner_skip: bool = True,
                 scale: float = 1.0, init: str = "zero_up", bias: bool = True, pre_ln: bool = False,
                 post_ln: bool = False, dropout: float = 0.0, routing: str | None = None, transpose_fix: bool = True,
                 context: str = "x_v"):
        super().__init__()
        d_out = int(d_out or d_in)
        if inner_skip and d_out != d_in:
            raise ValueError(f"an inner skip needs d_out == d_in (got {d_in}→{d_out})")
        if routing is not None and routing not in ROUTES:
            raise ValueError(f"routing {routing!r} is not one of {ROUTES}")
        self.d_in, self.r, self.d_out = int(d_in), int(r), d_out
        self.inner_skip, self.scale, self.act_name = bool(inner_skip), float(scale), act
        self.routing, self.transpose_fix, self.context = routing, transpose_fix, context
        self.role = "seq" if inner_skip else "delta"
        self.pre_ln = nn.LayerNorm(d_in) if pre_ln else None
        self.down = nn.Linear(d_in, r, bias=bias)
        self.up = nn.Linear(r, d_out, bias=bias)
        self.post_ln = nn.LayerNorm(d_out) if post_ln else None
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self._act = activation(act)
        init_linears([self.down], [self.up], init)

    mergeable = False
    why_not_mergeable = "a bottleneck is non-linear"

    def code(self, z: torch.Tensor) -> torch.Tensor:
        c = self.down(z)
        if self.routing is not None:
            xv = context_value(self.context).to(z.dtype)
            if self.pre_ln is not None:
                xv = self.pre_ln(xv)
            c = route(self.routing, c, self.down(xv), self.transpose_fix)
        return c

    def delta(self, z: torch.Tensor) -> torch.Tensor:
        h = self.pre_ln(z) if self.pre_ln is not None else z
        d = self.up(self.dropout(self._act(self.code(h))))
        if self.post_ln is not None:
            d = self.post_ln(d)
        return d * self.scale if self.scale != 1.0 else d

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        d = self.delta(z)
        return z + d if self.inner_skip else d

    def extra_repr(self) -> str:
        return (f"{self.d_in}→{self.r}→{self.d_out}, act={self.act_name}, inner_skip={self.inner_skip}, "
                f"scale={self.scale:g}" + (f", routing={self.routing}" if self.routing else ""))


@register_pet("bottleneck", test=dict(site={}, options={}, identity=True))
def build_bottleneck(site, **options) -> nn.Module:
    """Bottleneck adapter (M1 on ``out_seq``; VPA with ``inner_skip=False`` on ``proj:v``; RT routed adapter)."""
    cfg, placing = config_from(BottleneckConfig, "bottleneck", options)
    d_in, d_out = site_dims(site)
    if cfg.inner_skip:
        d_out = d_in
    r = resolve_r(d_in, cfg.r, cfg.reduction)
    return place(lambda: Bottleneck(d_in, r, d_out, cfg.act, cfg.inner_skip, cfg.scale, cfg.init, cfg.bias, cfg.pre_ln,
                                    cfg.post_ln, cfg.dropout, cfg.routing, cfg.transpose_fix, cfg.context),
                 site, "bottleneck", **placing)


@register_pet("routing_adapter", test=dict(site={}, options=dict(routing="add"), identity=True))
def build_routing_adapter(site, **options) -> nn.Module:
    """Bottleneck adapter whose down code is routed with the visual context (RT adapter; spec §2 M10)."""
    if not options.get("routing"):
        raise ValueError(f"routing_adapter needs `routing` in {ROUTES}")
    return build_bottleneck(site, **options)


__all__ = ["Bottleneck", "BottleneckConfig", "INITS", "activation", "build_bottleneck", "build_routing_adapter",
           "init_linears", "resolve_r"]

"""Adapter modules.

``DASAdapter`` (VILT helper): the bottleneck adapter of DAS (seeds.md §3 "DAS adapter"), used twice per ViLT
block in parallel with attention and MLP (no residual) and once per block as the *skip adapter* that replaces a
skipped block (with residual).

``SequentialAdapter``: DVP's sequential adapter on sublayer outputs. Both are registered as PET modules
(``parallel_adapter``, ``skip_adapter``, ``sequential_adapter``) at the end of this file.
"""

from __future__ import annotations

import torch
from torch import nn

from vlpeft._protocol import Site
from vlpeft.pet._base import register_pet


class DASAdapter(nn.Module):
    """``scale · up_proj(ReLU(down_proj(LayerNorm(x))))`` (+ ``x`` when ``residual``).

    Parameter names follow the original checkpoints: ``adapter_layer_norm_before.{weight,bias}``,
    ``down_proj.*``, ``up_proj.*``. Parameters: ``2d + (d·b + b) + (b·d + d)``.

    Initialisation is BERT-style (weights N(0, 0.02), zero biases, LayerNorm 1/0). Note: when the adapter lives
    inside a timm ViT block, timm's ViT init later re-initialises its Linear layers with trunc-normal std 0.02,
    as in the original; for that reason this class deliberately has no ``init_weights`` method (timm would call it).
    """

    def __init__(self, dim: int, bottleneck: int, residual: bool = False, scale: float = 1.0, dropout: float = 0.0):
        super().__init__()
        if dim <= 0 or bottleneck <= 0:
            raise ValueError(f"DASAdapter needs positive dim and bottleneck, got dim={dim}, bottleneck={bottleneck}")
        self.dim, self.bottleneck, self.residual, self.scale = int(dim), int(bottleneck), bool(residual), float(scale)
        # eps 1e-5 (PyTorch default), unlike the ViT's 1e-6: as the original
        self.adapter_layer_norm_before = nn.LayerNorm(dim)
        self.down_proj = nn.Linear(dim, bottleneck)
        self.act = nn.ReLU()
        self.dropout = nn.Dropout(dropout)
        self.up_proj = nn.Linear(bottleneck, dim)
        self.reset_parameters_bert()

    @torch.no_grad()
    def reset_parameters_bert(self, std: float = 0.02) -> None:
        for lin in (self.down_proj, self.up_proj):
            lin.weight.normal_(mean=0.0, std=std)
            lin.bias.zero_()
        self.adapter_layer_norm_before.weight.fill_(1.0)
        self.adapter_layer_norm_before.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up_proj(self.dropout(self.act(self.down_proj(self.adapter_layer_norm_before(x)))))
        if self.scale != 1.0:  # ×1 is exact: skip the pass over the tokens
            h = h * self.scale
        return x + h if self.residual else h

    def extra_repr(self) -> str:
        return f"dim={self.dim}, bottleneck={self.bottleneck}, residual={self.residual}, scale={self.scale}"


class SequentialAdapter(nn.Module):
    """DVP's sequential bottleneck adapter: ``x + up(act(down(x)))`` on a sublayer output.

    BERT/T5 (seeds.md §3.3): ReLU, bottleneck ``d // 8``, weights N(0, 0.01), zero biases.
    LLaMA: SiLU, bottleneck ``d // 64`` (the caller floors it at 8 for small models), Xavier-uniform
    weights, zero biases. Near-identity at initialisation, so inserting it barely changes a pretrained PLM.
    """

    def __init__(self, dim: int, bottleneck: int, activation: str = "relu", init: str = "normal",
                 init_std: float = 0.01) -> None:
        super().__init__()
        acts = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}
        if activation not in acts:
            raise ValueError(f"SequentialAdapter activation {activation!r} is not one of {sorted(acts)}")
        if init not in ("normal", "xavier"):
            raise ValueError(f"SequentialAdapter init {init!r} is not 'normal' or 'xavier'")
        if bottleneck <= 0:
            raise ValueError(f"SequentialAdapter bottleneck must be positive, got {bottleneck}")
        self.down = nn.Linear(dim, bottleneck)
        self.act = acts[activation]()
        self.up = nn.Linear(bottleneck, dim)
        for lin in (self.down, self.up):
            if init == "normal":
                nn.init.normal_(lin.weight, std=init_std)
            else:
                nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.up(self.act(self.down(x)))


# --- registered PET modules (builders take the site and the preset's options) ---------------------------------
def _init_linears(module: nn.Module, init: str) -> nn.Module:
    """``bert``: N(0, 0.02) weights (the constructor's); ``trunc_normal``: timm's ViT init (trunc-normal 0.02),
    what the original DAS in-block adapters got from being built inside the ViT; biases zero either way."""
    if init == "trunc_normal":
        for lin in module.modules():
            if isinstance(lin, nn.Linear):
                nn.init.trunc_normal_(lin.weight, std=0.02)
                nn.init.zeros_(lin.bias)
    elif init != "bert":
        raise ValueError(f"adapter init {init!r} is not 'bert' or 'trunc_normal'")
    return module


@register_pet("parallel_adapter", test=dict(site=dict(anchor="par"), options=dict(bottleneck=4), identity=False))
def parallel_adapter(site: Site, bottleneck: int, init: str = "bert") -> DASAdapter:
    """DAS parallel adapter: a delta from the sublayer input, no own residual (anchor ``par``)."""
    return _init_linears(DASAdapter(site.dim, int(bottleneck), residual=False), init)


@register_pet("skip_adapter", test=dict(site=dict(anchor="skip"), options=dict(bottleneck=4), identity=False))
def skip_adapter(site: Site, bottleneck: int, init: str = "bert") -> DASAdapter:
    """DAS skip adapter: replaces a skipped unit, with its residual (anchor ``skip``)."""
    return _init_linears(DASAdapter(site.dim, int(bottleneck), residual=True), init)


@register_pet("sequential_adapter", test=dict(site={}, options=dict(reduction=4), identity=False))
def sequential_adapter(site: Site, reduction: int = 8, min_bottleneck: int = 1, activation: str = "relu",
                       init: str = "normal") -> SequentialAdapter:
    """DVP sequential adapter on a sublayer output: bottleneck ``max(dim // reduction, min_bottleneck)``."""
    return SequentialAdapter(site.dim, max(site.dim // int(reduction), int(min_bottleneck)), activation, init)

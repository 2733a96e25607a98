"""DAS on language models: LaVIN-DAS's adapters for LLaMA (DoubtedSteam/DAS ``LaVIN-DAS/das/pl_adapter.py`` and
``mm_adapter.py``; seeds.md §4.2), as PET modules, and the ``das_llama`` preset.

Public API::

    LaVINAdapter(dim, hidden, scale=1.0, residual=True)            # pl_adapter.Adapter
    LaVINRouterAdapter(dim, hidden, groups=2, scale=1.0, t=10.0)     # mm_adapter.RepAdapter_Router
    LaVINSkip(adapter, input_norm)   # the skip site module: out = x + adapter(input_norm(x))
    PETS: "lavin_adapter" (out_seq), "lavin_skip_adapter" (skip; needs site.meta["input_norm"])
    PRESETS: "das_llama"

The original forms (text-only ``pl_adapter``, the language-only BoolQ / CSQA / GSM8K runs; multimodal LaVIN
``mm_adapter``, ScienceQA):

- in-block adapter ``adapter_attn`` = ``x + s·up(ReLU(down(x)))`` of width ``adapter_dim`` (8), down Xavier-uniform
  with zero bias, **up zero** (so the block is unchanged at init); dropout(0.1) defined but unused in the text form.
  The router form: ``conv_A`` (1×1, d→b, Xavier, zero bias), two grouped 1×1 up-convs ``conv_B`` / ``conv_D``
  (b→d, ``groups=2``, zero), mixed by ``softmax(expert_weights(x[:, 0]) / t)`` (t = 10), dropout(0.1) after ``conv_A``;
- skip adapter ``replaced_adapter``: the same module of width ``4·adapter_dim`` (32) **without** its residual, applied
  to the skipped layer's ``attention_norm`` output: ``out = x + A(attention_norm(x))``. Zero up-projection: a freshly
  skipped layer is exactly the identity. Parameters at d = 4096: 266,272 (text form), 278,562 (router form; the
  seeds.md §7 check: swapping a hidden-8 router adapter (81,930) for the hidden-32 one adds 196,632 ≈ 0.2M per skipped
  layer).

``adapter_attn`` sits where LaVIN puts it: on the attention's input after ``attention_norm`` (the LLaMA wrapper's
``in_seq`` sites: a hook on ``input_layernorm``'s output). ``autocast`` / fp16 casts of the original are left to the
trainer's precision setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import nn

from vlpeft._protocol import Site
from vlpeft.pet._base import PetError, PetSpec, Recipe, register_pet, register_preset
from vlpeft.sections import declared_keys, take


class LaVINAdapter(nn.Module):
    """LaVIN-DAS's text adapter: ``s·up_sampler(ReLU(down_sampler(x)))`` (+ ``x`` when ``residual``).
    Parameter names as the original (``down_sampler.*``, ``up_sampler.*``): ``2·d·b + b + d`` parameters."""

    def __init__(self, dim: int, hidden: int, scale: float = 1.0, residual: bool = True) -> None:
        super().__init__()
        if dim <= 0 or hidden <= 0:
            raise ValueError(f"LaVINAdapter needs positive dim and hidden, got dim={dim}, hidden={hidden}")
        self.down_sampler = nn.Linear(dim, hidden)
        self.up_sampler = nn.Linear(hidden, dim)
        self.relu = nn.ReLU()
        self.scale, self.residual = float(scale), bool(residual)
        nn.init.xavier_uniform_(self.down_sampler.weight)
        nn.init.zeros_(self.down_sampler.bias)
        nn.init.zeros_(self.up_sampler.weight)
        nn.init.zeros_(self.up_sampler.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.scale * self.up_sampler(self.relu(self.down_sampler(x)))
        return x + h if self.residual else h


class LaVINRouterAdapter(nn.Module):
    """LaVIN's ``RepAdapter_Router``: ``conv_A`` down to ``hidden``, dropout, two grouped up-convs mixed per sample by
    ``softmax(expert_weights(x[:, 0]) / t)`` (the first token routes); ``residual`` adds ``x``. Original names."""

    def __init__(self, dim: int, hidden: int, groups: int = 2, scale: float = 1.0, t: float = 10.0,
                 residual: bool = True, dropout: float = 0.1) -> None:
        super().__init__()
        if dim <= 0 or hidden <= 0 or groups <= 0 or hidden % groups or dim % groups:
            raise ValueError(f"LaVINRouterAdapter: dim={dim} and hidden={hidden} must be positive multiples of "
                             f"groups={groups}")
        if not t > 0:
            raise ValueError(f"LaVINRouterAdapter: temperature t={t} must be positive")
        self.conv_A = nn.Conv1d(dim, hidden, 1, groups=1, bias=True)
        self.conv_B = nn.Conv1d(hidden, dim, 1, groups=groups, bias=True)
        self.conv_D = nn.Conv1d(hidden, dim, 1, groups=groups, bias=True)
        self.expert_weights = nn.Linear(dim, 2)
        self.dropout = nn.Dropout(dropout)
        self.scale, self.t, self.residual = float(scale), float(t), bool(residual)
        nn.init.xavier_uniform_(self.conv_A.weight)
        nn.init.zeros_(self.conv_A.bias)
        for conv in (self.conv_B, self.conv_D):
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def route(self, x: torch.Tensor) -> torch.Tensor:
        """The mixing weights (B, 2) from each sample's first token."""
        return torch.softmax(self.expert_weights(x[:, 0]) / self.t, dim=-1).to(x.dtype)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        """``weights``: (B, 2) per sample (default: ``route(x)``) or (B | 1, L, 2) per position (LaVIN's CLIP blocks,
        whose sequence-first layout makes the router read batch item 0 at every position)."""
        w = self.route(x) if weights is None else weights.to(x.dtype)
        if w.dim() == 2:
            w = w[:, None, :]
        h = self.dropout(self.conv_A(x.transpose(1, 2)))
        hb, hd = self.conv_B(h).transpose(1, 2), self.conv_D(h).transpose(1, 2)
        out = (hb * w[..., 0:1] + hd * w[..., 1:2]) * self.scale
        return x + out if self.residual else out


class LaVINSkip(nn.Module):
    """What runs in place of a skipped LLaMA layer: ``x + adapter(input_norm(x))``. ``input_norm`` is the layer's
    own ``input_layernorm`` (kept, as LaVIN keeps ``attention_norm`` when it deletes a skipped layer's attention and
    FFN); it is referenced, not registered, so its weights keep their HF names and are saved once. The norm runs
    without its hooks: the skipped layer's in-block adapter (a hook on that norm) is not on the skip path."""

    def __init__(self, adapter: nn.Module, input_norm: nn.Module) -> None:
        super().__init__()
        self.adapter = adapter
        object.__setattr__(self, "_input_norm", input_norm)  # not a submodule: no second name for its weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # ``forward``, not ``__call__``: the norm's hooks belong to the layer's own path (the in-block adapter is an
        # ``in_seq`` hook on this norm), which LaVIN's skip path does not run: out = x + A(attention_norm(x)).
        return x + self.adapter(self._input_norm.forward(x))


def _adapter(dim: int, hidden: int, router: bool, scale: float, t: float, residual: bool) -> nn.Module:
    if router:
        return LaVINRouterAdapter(dim, hidden, scale=scale, t=t, residual=residual)
    return LaVINAdapter(dim, hidden, scale=scale, residual=residual)


@register_pet("lavin_adapter", test=dict(site=dict(anchor="in_seq", family="llama"), options=dict(hidden=4),
                                           identity=True))
def lavin_adapter(site: Site, hidden: int = 8, router: bool = False, scale: float = 1.0, t: float = 10.0) -> nn.Module:
    """LaVIN's in-block adapter (with residual) on the normed input of a sublayer (``in_seq``)."""
    return _adapter(site.dim, int(hidden), bool(router), float(scale), float(t), residual=True)


# input_norm=True: the test gives the site a LayerNorm as the layer's pre-attention norm
@register_pet("lavin_skip_adapter", test=dict(site=dict(anchor="skip", family="llama", input_norm=True),
                                             options=dict(hidden=4), identity=True))
def lavin_skip_adapter(site: Site, hidden: int = 32, router: bool = False, scale: float = 1.0,
                       t: float = 10.0) -> LaVINSkip:
    """LaVIN-DAS's skip adapter on a LLaMA skip site (reads the site's ``input_norm``)."""
    norm = (site.meta or {}).get("input_norm")
    if norm is None:
        raise PetError(f"lavin_skip_adapter needs a skip site that names its layer's pre-attention norm "
                       f"(meta['input_norm']); site {site.name} of family {site.family!r} has none — use pet=das "
                       f"(the DAS skip adapter with its own LayerNorm) on this backbone")
    return LaVINSkip(_adapter(site.dim, int(hidden), bool(router), float(scale), float(t), residual=False), norm)


@dataclass(frozen=True)
class DasLlamaSettings:
    """LaVIN-DAS's adapter keys (its scripts: adapter_dim 8, text router off for BoolQ, scale 1, temperature 10)."""

    das_llama_adapter_dim: int = 8
    das_llama_router: bool = False
    das_llama_scale: float = 1.0
    das_llama_temperature: float = 10.0
    das_llama_in_block: bool = True


DAS_LLAMA_KEYS = declared_keys(DasLlamaSettings)


@register_preset("das_llama", spec=DasLlamaSettings,
                   test=dict(backbone="test_plm_llama", config=dict(das_llama_adapter_dim=4)))
def das_llama(settings: DasLlamaSettings | Mapping[str, Any]) -> Recipe:
    """LaVIN-DAS on LLaMA: skip adapters of width ``4·das_llama_adapter_dim`` on every layer's skip site, in-block
    adapters of width ``das_llama_adapter_dim`` on the attention's normed input (``das_llama_in_block``; LaVIN's
    ``--adapter_type attn``);
    ``das_llama_router`` picks the multimodal router form (ScienceQA) over the text form (BoolQ & co.).
    Only LLaMA sites match; the backbone's own parameters stay frozen (LaVIN trains only ``adapter`` / ``lora``)."""
    s = take(DasLlamaSettings, settings)
    b = s.das_llama_adapter_dim
    if isinstance(b, bool) or not isinstance(b, int) or b <= 0:
        raise PetError(f"das_llama_adapter_dim={b!r} must be a positive int (LaVIN-DAS: --adapter_dim 8)")
    for name in ("das_llama_router", "das_llama_in_block"):
        if not isinstance(getattr(s, name), bool):
            raise PetError(f"{name}={getattr(s, name)!r} must be True or False")
    opts = dict(router=s.das_llama_router, scale=float(s.das_llama_scale), t=float(s.das_llama_temperature))
    specs = [PetSpec("lavin_skip_adapter", ("skip",), dict(opts, hidden=4 * b), families=("llama",))]
    if s.das_llama_in_block:
        specs.append(PetSpec("lavin_adapter", ("in_seq",), dict(opts, hidden=b), sublayers=("attn",),
                             families=("llama",), required=False))
    # LaVIN's train stage deletes a skipped layer's adapter_attn and a kept layer's replaced_adapter (mm_adaptation;
    # the text form keeps them but they get no gradient): only what the placement runs trains.
    return Recipe("das_llama", tuple(specs), base_policy="none", original_trains_used=True)


__all__ = ["DAS_LLAMA_KEYS", "DasLlamaSettings", "LaVINAdapter", "LaVINRouterAdapter", "LaVINSkip", "das_llama", "lavin_adapter",
           "lavin_skip_adapter"]

"""LoRA on a projection (VL-Adapter / VL-PET baseline and Routing-VLPEFT; spec §2 M7, §2 M10, §8.2 ``LoRA``).

``y = W x + b + s · B A drop(x)`` with ``A ∈ R^{r×d_in}`` (kaiming-uniform, a = √5), ``B ∈ R^{d_out×r}`` (zero), so the
function is unchanged at init; ``s = α / r`` (``scale_mode="rs"``: ``α / √r``, rsLoRA). Count: ``r (d_in + d_out)``.

Fused q|k|v projections (timm ``attn.qkv``, GPT-2 ``c_attn`` Conv1D): ``qkv_mask=(True, False, True)`` adapts only the
q and v thirds, as loralib's ``MergedLinear`` (RT ``enable_lora``): ``A ∈ R^{(g·r)×d_in}`` and ``B ∈ R^{(g·d_out/3)×r}``
for ``g`` enabled slices; the j-th r-block of the code feeds the j-th enabled slice (a grouped 1×1 conv), disabled
slices get zero. Count: ``g · r · (d_in + d_out/3)`` (GPT-2, r = 128: 393,216 per layer).

``routing=fn`` (RT "beforeB"): the code ``A drop(x)`` is replaced by ``route(fn, A drop(x), A drop(x_v))`` over the
whole ``g·r`` code (spec §2 M10), ``x_v`` read from the per-forward context; there is no separate ``B A x`` term.
``after_b=True``: RT's "afterB", see ``vlpeft.pet.routing``. Routed LoRA cannot be merged.

Parameters are ``lora_A`` / ``lora_B``; on a projection they sit beside ``weight`` (``…query.lora_A``, see ``_wrap``).
``merge()`` / ``unmerge()`` live on the projection wrapper (``_wrap.ProjWrap``), which folds ``delta_weight()`` in.

Differences from Hugging Face peft: the base weight keeps its name (peft: ``base_layer.weight``), and the q/v mask on a
fused projection exists (peft adapts all of ``c_attn``; its equivalent is rank ``g·r`` with block-structured A, B).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.context import context_value
from vlpeft.pet.routing import ROUTES, route
from vlpeft.pet.sharing import config_from, place


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 8.0
    dropout: float = 0.0
    qkv_mask: tuple[bool, ...] | None = None  # on proj:qkv sites: which thirds are adapted (q, k, v)
    scale_mode: str = "alpha_r"  # or "rs"
    init: str = "kaiming"  # A kaiming-uniform(√5), B zero; "gaussian": A ~ N(0, 1/r) (peft), B zero
    routing: str | None = None
    transpose_fix: bool = True
    context: str = "x_v"
    after_b: bool = False


class LoRA(nn.Module):
    role = "delta"

    def __init__(self, in_features: int, out_features: int, r: int = 8, alpha: float = 8.0, dropout: float = 0.0,
                 mask: tuple[bool, ...] | None = None, scale_mode: str = "alpha_r", init: str = "kaiming",
                 routing: str | None = None, transpose_fix: bool = True, context: str = "x_v", after_b: bool = False):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank must be positive, got r={r}")
        mask = tuple(bool(m) for m in mask) if mask is not None else (True,)
        if out_features % len(mask) or not any(mask):
            raise ValueError(f"LoRA mask {mask} must enable a slice and split out_features={out_features} evenly")
        if routing is not None and routing not in ROUTES:
            raise ValueError(f"LoRA routing {routing!r} is not one of {ROUTES}")
        if after_b and routing is None:
            raise ValueError("after_b=True routes in output space; it needs `routing`")
        self.in_features, self.out_features, self.r = int(in_features), int(out_features), int(r)
        self.mask, self.slice = mask, out_features // len(mask)
        self.groups = sum(mask)
        if scale_mode not in ("alpha_r", "rs"):
            raise ValueError(f"LoRA scale_mode {scale_mode!r} is not 'alpha_r' or 'rs'")
        self.scaling = float(alpha) / (math.sqrt(r) if scale_mode == "rs" else r)
        self.routing, self.transpose_fix, self.context, self.after_b = routing, transpose_fix, context, after_b
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.lora_A = nn.Parameter(torch.empty(self.groups * r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(self.groups * self.slice, r))
        if init == "kaiming":
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        elif init == "gaussian":
            nn.init.normal_(self.lora_A, std=1.0 / r)
        else:
            raise ValueError(f"LoRA init {init!r} is not 'kaiming' or 'gaussian'")

    @property
    def mergeable(self) -> bool:
        return self.routing is None

    why_not_mergeable = "a routed LoRA depends on x_v"

    def _up(self, code: torch.Tensor) -> torch.Tensor:
        """Grouped B: the j-th r-block of ``code`` → the j-th enabled slice; disabled slices are zero."""
        outs, j = [], 0
        for on in self.mask:
            if on:
                c = code[..., j * self.r:(j + 1) * self.r]
                outs.append(c @ self.lora_B[j * self.slice:(j + 1) * self.slice].t())
                j += 1
            else:
                outs.append(code.new_zeros(*code.shape[:-1], self.slice))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.lora_dropout(x) @ self.lora_A.t()
        if self.routing is not None:
            xv = context_value(self.context).to(x.dtype)
            v = self.lora_dropout(xv) @ self.lora_A.t()
            if self.after_b:
                bt, bv = self._up(t), self._up(v)
                return route(self.routing, bt, bv, self.transpose_fix) * self.scaling
            t = route(self.routing, t, v, self.transpose_fix)
        return self._up(t) * self.scaling

    def delta_weight(self) -> torch.Tensor:
        """``s · B A`` as an (out, in) matrix (zero rows for disabled slices)."""
        if not self.mergeable:
            raise RuntimeError(self.why_not_mergeable)
        rows, j = [], 0
        for on in self.mask:
            if on:
                a = self.lora_A[j * self.r:(j + 1) * self.r]
                rows.append(self.lora_B[j * self.slice:(j + 1) * self.slice] @ a)
                j += 1
            else:
                rows.append(self.lora_A.new_zeros(self.slice, self.in_features))
        return torch.cat(rows, dim=0) * self.scaling

    def extra_repr(self) -> str:
        routed = f", routing={self.routing}" if self.routing else ""
        return f"{self.in_features}→{self.out_features}, r={self.r}, scaling={self.scaling:g}, mask={self.mask}{routed}"


@register_pet("lora", test=dict(site=dict(anchor="proj:q", in_dim=16, out_dim=16), options={}, identity=True))
def build_lora(site, **options) -> nn.Module:
    """LoRA on a projection site (anchors ``proj:*``); options: ``LoRAConfig`` + sharing keys (spec §2 M7)."""
    cfg, placing = config_from(LoRAConfig, "lora", options)
    d_in, d_out = site_dims(site)
    mask = None
    if site.anchor == "proj:qkv":
        mask = cfg.qkv_mask  # None: one LoRA over the whole fused output (peft's behaviour)
        if mask is not None and len(mask) != int(site.meta.get("qkv_slices", 3)):
            raise ValueError(f"lora qkv_mask {mask} needs one flag per slice ({site.meta.get('qkv_slices', 3)})")
    elif cfg.qkv_mask is not None and not site.anchor.startswith("proj:"):
        raise ValueError(f"lora qkv_mask applies to proj:qkv sites, not {site.anchor}")
    return place(lambda: LoRA(d_in, d_out, cfg.r, cfg.alpha, cfg.dropout, mask, cfg.scale_mode, cfg.init, cfg.routing,
                              cfg.transpose_fix, cfg.context, cfg.after_b), site, "lora", **placing)


@register_pet("routing_lora", test=dict(site=dict(anchor="proj:q", in_dim=16, out_dim=16),
                                       options=dict(routing="mul"), identity=True))
def build_routing_lora(site, **options) -> nn.Module:
    """LoRA whose code is routed with the visual context (RT "beforeB"; spec §2 M10)."""
    if not options.get("routing"):
        raise ValueError(f"routing_lora needs `routing` in {ROUTES}")
    return build_lora(site, **options)


__all__ = ["LoRA", "LoRAConfig", "build_lora", "build_routing_lora"]

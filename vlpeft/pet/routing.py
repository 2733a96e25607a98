"""Routing functions inside low-rank bottlenecks (Routing-VLPEFT; spec §2 M10 and §5).

The bottleneck's down map ``D`` (LoRA's ``A``, or an adapter's down Linear *with its bias*) is applied to the text
hidden state and to the visual context ``x_v`` with the same weights: ``t = D x ∈ R^{…×N×r}``,
``v = D x_v ∈ R^{…×M×r}``. ``route(fn, t, v)`` combines the two codes before the up map:

| fn          | f(t, v)                    | needs          |
|-------------|----------------------------|----------------|
| add         | t + v                      | M = 1          |
| mul         | t ∘ v                      | M = 1 or M = N |
| mul_expand  | (Σ_k t_k) · v              | M = 1          |
| vl          | t · R(v) · v = (t·v) v     | (M = 1 in RT)  |
| vl_relu     | relu(t) · R(relu(v)) · v   |                |
| ones        | t · R(v) · 1               | (RT: "bad results") |

``R(v)`` is the transpose ``vᵀ`` (``transpose_fix=True``, the default). ``transpose_fix=False`` reproduces RT's
*reshape* B×M×r → B×r×M, which equals the transpose only for M = 1 (spec §9 item 10). RT's ``x_v`` is the frozen ViT
pooler output, one vector per example (M = 1), the same at every layer; modules read it from the per-forward context:
``with pet_context(x_v=pooled): ...`` (``vlpeft.pet.context``). A 2-D ``x_v`` (B×d) is treated as M = 1.

Routed modules are ``LoRA(..., routing=fn)`` (``vlpeft.pet.lora``, "beforeB": the routed code *replaces* ``A x``, there
is no separate ``B A x`` term) and ``Bottleneck(..., routing=fn)`` (``vlpeft.pet.bottleneck``). They are registered
here as ``routing_lora`` and ``routing_adapter`` (the same builders with ``routing`` required). RT's "afterB" form
(``LoRA(after_b=True)``) routes in output space, ``Δ = s (BAx) R(BAx_v) (BAx_v)``; with B = 0 at init its gradient
is exactly zero, so it never trains (spec §2 M10) — it exists for the documentation test only.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

ROUTES = ("add", "mul", "mul_expand", "vl", "vl_relu", "ones")


def _r(v: torch.Tensor, transpose_fix: bool) -> torch.Tensor:
    if transpose_fix:
        return v.transpose(-1, -2)
    return v.reshape(*v.shape[:-2], v.shape[-1], v.shape[-2])  # RT's reshape; wrong unless M = 1


def as_context(t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Give ``v`` a token axis (M) matching ``t``'s rank: B×r → B×1×r."""
    if v.dim() == t.dim() - 1:
        v = v.unsqueeze(-2)
    if v.dim() != t.dim():
        raise ValueError(f"routing context of shape {tuple(v.shape)} does not fit codes of shape {tuple(t.shape)}")
    return v


def route(fn: str, t: torch.Tensor, v: torch.Tensor, transpose_fix: bool = True) -> torch.Tensor:
    """``f(t, v)`` of the table above; ``t``: …×N×r text codes, ``v``: …×M×r (or …×r) context codes."""
    v = as_context(t, v)
    m, n = v.shape[-2], t.shape[-2]
    if fn == "add":
        if m != 1:
            raise ValueError(f"routing 'add' needs one context token (M = 1), got M = {m}")
        return t + v
    if fn == "mul":
        if m not in (1, n):
            raise ValueError(f"routing 'mul' needs M = 1 or M = N = {n}, got M = {m}")
        return t * v
    if fn == "mul_expand":
        if m != 1:
            raise ValueError(f"routing 'mul_expand' needs one context token (M = 1), got M = {m}")
        return t.sum(-1, keepdim=True) * v
    if fn == "vl":
        return t @ _r(v, transpose_fix) @ v
    if fn == "vl_relu":
        return F.relu(t) @ _r(F.relu(v), transpose_fix) @ v
    if fn == "ones":
        return t @ _r(v, transpose_fix) @ torch.ones_like(v)
    raise ValueError(f"routing {fn!r} is not one of {ROUTES}")


def _register() -> None:
    from vlpeft.pet._base import register_pet

    @register_pet("routing_lora", test=dict(site=dict(anchor="proj:q", in_dim=16, out_dim=16),
                                           options=dict(routing="mul"), identity=True))
    def build_routing_lora(site, **options):
        """LoRA whose code is routed with the visual context (RT "beforeB"; spec §2 M10)."""
        from vlpeft.pet.lora import build_lora

        if not options.get("routing"):
            raise ValueError(f"routing_lora needs `routing` in {ROUTES}")
        return build_lora(site, **options)

    @register_pet("routing_adapter", test=dict(site={}, options=dict(routing="add"), identity=True))
    def build_routing_adapter(site, **options):
        """Bottleneck adapter whose down code is routed with the visual context (RT adapter; spec §2 M10)."""
        from vlpeft.pet.bottleneck import build_bottleneck

        if not options.get("routing"):
            raise ValueError(f"routing_adapter needs `routing` in {ROUTES}")
        return build_bottleneck(site, **options)


_register()

__all__ = ["ROUTES", "as_context", "route"]

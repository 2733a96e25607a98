"""Stop-gap site machinery for the module zoo, until ``_protocol.py`` / ``_base.py`` grow the same (see the report
of issue 9 part 1). Everything here is meant to move into those files; nothing else depends on the details.

- ``EXT_ANCHORS``: today's anchors (``par``, ``out_seq``, ``skip``) plus the proposed ones (spec §8.3):
  ``out_par`` (delta on H reading X), ``proj:q|k|v|o|qkv|ff_in|ff_out`` (a module on a projection, see
  ``_wrap.ProjWrap``; ``proj:qkv`` is a fused q|k|v projection with ``meta["qkv_slices"] = 3``), ``gate`` (a module
  ``G(X, Y)`` multiplying the sublayer output after every delta) and ``input`` (prompt tokens prepended to the
  embedding sequence).
- ``ZooSite`` / ``ZooSpec``: ``Site`` / ``PetSpec`` that accept ``EXT_ANCHORS``; ``ZooSpec`` also selects by
  ``stacks`` (``encoder`` / ``decoder`` / ``main``), which VL-PET needs (encoder-only gates, decoder-only VPA).
- ``ProjHost``: the projection sites of *any* ``nn.Module`` found by name (like peft's ``target_modules`` suffix
  rules, but giving anchors), with ``sites()`` / ``attach()`` so ``inject`` works on plain Hugging Face / timm models.
- ``compose_site``: the fixed order at a sublayer site — sequential modules, then parallel deltas, then gates.
- ``SharePool``: one object per recipe build; builders fetch modules shared between sites from it (the
  Hyperformer's hyper-network per stack, RT's one adapter per GPT-2 block).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import torch
from torch import nn

from vlpeft._protocol import ANCHORS, PROJ_ANCHORS, Site  # noqa: F401  (PROJ_ANCHORS: re-exported)
from vlpeft.pet._base import PetError, PetSpec
from vlpeft.pet._wrap import attach_to_linear, is_projection, projection_dims

EXT_ANCHORS = tuple(ANCHORS)


@dataclass(frozen=True)
class ZooSite(Site):
    """A ``Site`` whose anchor may be any of ``EXT_ANCHORS``."""

    def __post_init__(self) -> None:
        if self.anchor not in EXT_ANCHORS:
            raise ValueError(f"site anchor {self.anchor!r} is not one of {EXT_ANCHORS}")


@dataclass(frozen=True)
class ZooSpec(PetSpec):
    """A ``PetSpec`` with the extended anchors, a ``stacks`` selector (empty: every stack; a site matches by its
    stack name or by its ``Site.role``, so ``encoder`` selects ViLT's ``vit`` and CLIP+BERT's ``plm``) and ``not_families``
    (families excluded; lets a preset give T5 its own options and every other family the default ones)."""

    stacks: tuple[str, ...] = ()
    not_families: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        bad = [a for a in self.anchors if a not in EXT_ANCHORS]
        if bad or not self.anchors:
            raise PetError(f"PET spec {self.module!r}: anchors {list(self.anchors)} must be a non-empty subset of "
                           f"{EXT_ANCHORS}")

    def matches(self, site: Site) -> bool:
        role = site.role if hasattr(site, "role") else site.stack
        return (super().matches(site) and (not self.stacks or site.stack in self.stacks or role in self.stacks)
                and site.family not in self.not_families)


# --- projection sites of any model, found by name ---------------------------------------------------------------
# (pattern on the module's full name, anchor); first match wins. Covers BERT/RoBERTa/HF-ViT, BART, T5, GPT-2,
# LLaMA and timm ViT names (spec §1.3, §8.3).
_PROJ_RULES: tuple[tuple[str, str], ...] = (
    (r"(^|\.)(qkv|c_attn)$", "proj:qkv"),
    (r"(^|\.)(q_proj|query|q)$", "proj:q"),
    (r"(^|\.)(k_proj|key|k)$", "proj:k"),
    (r"(^|\.)(v_proj|value|v)$", "proj:v"),
    (r"(^|\.)mlp\.c_proj$", "proj:ff_out"),
    (r"(^|\.)(out_proj|o_proj|o|(cross)?attention\.output\.dense|attn\.proj|c_proj)$", "proj:o"),
    (r"(^|\.)(fc1|intermediate\.dense|c_fc|wi|wi_0|wi_1|gate_proj|up_proj)$", "proj:ff_in"),
    (r"(^|\.)(fc2|output\.dense|wo|down_proj)$", "proj:ff_out"),
)
_CROSS = re.compile(r"(encoder_attn|EncDecAttention|crossattention|cross_attn)")
_LAYER = re.compile(r"(?:^|\.)(?:layer|layers|block|blocks|h)\.(\d+)(?:\.|$)")


def projection_anchor(name: str) -> str | None:
    for pat, anchor in _PROJ_RULES:
        if re.search(pat, name):
            return anchor
    return None


def _stack(name: str) -> str:
    parts = name.split(".")
    return "decoder" if "decoder" in parts else "encoder" if "encoder" in parts else "main"


class ProjHost:
    """``sites()`` / ``attach()`` over the projections of ``model`` (names relative to ``model``).

    Args:
        model: any module (a Hugging Face model, a timm block, a backbone's tower).
        family: written into every site (presets select per-family options with it).
        include: optional regex; only projections whose full name matches (``re.search``) become sites.
    """

    def __init__(self, model: nn.Module, family: str = "", include: str | None = None):
        self.model, self.family, self.include = model, family, include

    def sites(self) -> list[ZooSite]:
        out = []
        for name, mod in self.model.named_modules():
            if not name or not is_projection(mod) or (self.include and not re.search(self.include, name)):
                continue
            anchor = projection_anchor(name)
            if anchor is None:
                continue
            d_in, d_out, fifo = projection_dims(mod)
            m = _LAYER.search(name)
            sub = "ffn" if anchor.startswith("proj:ff") else "cross_attn" if _CROSS.search(name) else "attn"
            meta = {"in_dim": d_in, "out_dim": d_out, "fan_in_fan_out": fifo}
            if anchor == "proj:qkv":
                meta["qkv_slices"] = 3
            out.append(ZooSite(stack=_stack(name), layer=int(m.group(1)) if m else -1, sublayer=sub, anchor=anchor,
                               dim=d_in, name=name, family=self.family, meta=meta))
        return out

    def attach(self, site: Site, module: nn.Module) -> None:
        attach_to_linear(self.model, site.name, module)

    def named_parameters(self, *args, **kwargs):
        # where attach registered the modules: ``inject`` records their parameter names from here
        return self.model.named_parameters(*args, **kwargs)


# --- the fixed order at a sublayer site --------------------------------------------------------------------------
def compose_site(x: torch.Tensor, h: torch.Tensor, seq: Iterable[nn.Module] = (), par: Iterable[nn.Module] = (),
                 gates: Iterable[nn.Module] = ()) -> torch.Tensor:
    """``Y = seq(H)`` (sequential modules include their own residual), ``Y += Σ par(X)``, ``Y ← Y ⊙ Π G(X, Y)``.

    Every gate sees the same pre-gating ``Y`` (VL-PET: G reads X and the adapted output, spec §2 M4 / §3.1); a
    gate's own scale ``s`` is part of what it returns. The host's dropout / residual / LN follow outside.
    """
    y = h
    for m in seq:
        y = m(y)
    for m in par:
        y = y + m(x)
    gates = list(gates)
    if gates:
        y0 = y
        for g in gates:
            y = y * g(x, y0)
    return y


# --- modules shared between sites ---------------------------------------------------------------------------------
class SharePool:
    """Modules shared between sites of one injection, by key (spec §8.2 ``share.sites``). One pool per recipe."""

    def __init__(self) -> None:
        self._items: dict[Any, nn.Module] = {}

    def get(self, key: Any, factory: Callable[[], nn.Module]) -> nn.Module:
        if key not in self._items:
            self._items[key] = factory()
        return self._items[key]

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:  # recipes print their options
        return f"SharePool({len(self._items)} shared)"


def site_dims(site: Site) -> tuple[int, int]:
    """(in, out) width of the tensor a module at ``site`` reads and writes (projection sites carry both)."""
    meta: Mapping[str, Any] = site.meta or {}
    return int(meta.get("in_dim", site.dim)), int(meta.get("out_dim", site.dim))


__all__ = ["EXT_ANCHORS", "PROJ_ANCHORS", "ProjHost", "SharePool", "ZooSite", "ZooSpec", "compose_site",
           "projection_anchor", "site_dims"]

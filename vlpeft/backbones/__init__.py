"""Backbone registry: ``build_backbone(config)`` dispatches on ``config["method"]``.

- ``"das"`` → ViLT with DAS adapters (``vlpeft.backbones.vilt.build_vilt``).
- ``"dvp"`` → CLIP + PLM with a dynamic visual prompt (``vlpeft.backbones.clip_plm.build_dvp_backbone``).

Imports are lazy so that using one backbone never imports the other's dependencies.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn


def _build_das(config: dict[str, Any]) -> nn.Module:
    from vlpeft.backbones.vilt import build_vilt

    return build_vilt(config)


def _build_dvp(config: dict[str, Any]) -> nn.Module:
    # --- DVP branch: the file belongs to the DVP helper ---
    from vlpeft.backbones.clip_plm import build_dvp_backbone

    return build_dvp_backbone(config)


BACKBONES: dict[str, Callable[[dict[str, Any]], nn.Module]] = {"das": _build_das, "dvp": _build_dvp}


def build_backbone(config: dict[str, Any]) -> nn.Module:
    """Build the backbone that ``config["method"]`` names (see ``BACKBONES``)."""
    method = config.get("method")
    if method not in BACKBONES:
        raise ValueError(f"config method={method!r} has no backbone; use one of {sorted(BACKBONES)}")
    return BACKBONES[method](config)


__all__ = ["BACKBONES", "build_backbone"]

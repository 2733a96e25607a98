"""The helpers backbones use to place PET sites and to answer ``base_trainable(policy)``; the contract itself
(``Site``, ``LayerPlan``, anchors, ``Backbone``) is ``vlpeft._protocol``.

- ``attach_skip`` / ``projection_sites`` / ``attach_projection``: skip slots and ``proj:*`` sites;
- ``base_policy_params``: the generic policies (none / norms / bias / all, and ``kind:scope`` terms through
  ``vlpeft.pet.unfreeze.unfreeze_params``) over a backbone's parameters.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Iterable, Mapping

from torch import nn

from vlpeft._protocol import PLAIN_POLICIES, Site, is_scoped_policy, parse_policy
from vlpeft.pet._sites_hf import ProjHost
from vlpeft.pet._wrap import attach_to_linear
from vlpeft.pet.unfreeze import unfreeze_params


def attach_skip(slots: nn.ModuleList, site: Site, module: nn.Module) -> None:
    """Put ``module`` in the skip slot of candidate ``site.layer`` (an empty ``nn.Sequential``: identity until
    then), so its parameters are named ``<slots>.<layer>.0.*``."""
    slot = slots[site.layer]
    if len(slot):
        raise ValueError(f"skip site {site.name} is taken; one skip module per unit")
    slot.append(module)


def projection_sites(model: nn.Module, family: str, include: str, encoder_layer: int | None = None) -> list[Site]:
    """The ``proj:*`` sites of ``model``'s projections whose name matches ``include`` (names relative to ``model``);
    ``encoder_layer``: the candidate index given to sites of an ``encoder`` stack (T5's encoder runs before the
    candidates: -1)."""
    sites = ProjHost(model, family, include).sites()
    if encoder_layer is not None:
        sites = [replace(s, layer=encoder_layer) if s.stack == "encoder" else s for s in sites]
    return sites


def attach_projection(model: nn.Module, site: Site, module: nn.Module) -> None:
    """Wrap the projection at ``site.name`` (its weight keeps its name) and attach ``module`` to it."""
    attach_to_linear(model, site.name, module)


# --- shared helpers for base_trainable policies -------------------------------------------------------------
def is_norm_param(module_of: Mapping[str, nn.Module], name: str) -> bool:
    owner = module_of.get(name.rsplit(".", 1)[0])
    return owner is not None and ("norm" in type(owner).__name__.lower() or "LayerNorm" in name)


def scoped_policy_params(model: nn.Module, policy: str,
                         aliases: Mapping[str, str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """A ``kind:scope`` policy over ``model`` through ``vlpeft.pet.unfreeze.unfreeze_params``; ``aliases`` rewrite
    scope words (``{"encoder": "transformer"}``) before matching. Raises a ValueError naming the bad term."""
    terms = []
    for kind, scope in parse_policy(policy):
        if scope and aliases and scope in aliases:
            scope = aliases[scope]
        terms.append(f"{kind}:{scope}" if scope else kind)
    return unfreeze_params(model, "+".join(terms))


def base_policy_params(model: nn.Module, policy: str, extra: Iterable[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """The generic policies over a backbone's parameters: none / norms / bias / all (``extra`` names always in),
    and ``kind:scope`` combinations (delegated to ``vlpeft.pet.unfreeze``; scope aliases from
    ``model.policy_scope_aliases``)."""
    extra = tuple(extra)
    if policy not in PLAIN_POLICIES and is_scoped_policy(policy):
        chosen = {n for n, _ in scoped_policy_params(model, policy, getattr(model, "policy_scope_aliases", None))}
        return [(n, p) for n, p in model.named_parameters() if n in chosen or (extra and n.startswith(extra))]
    mods = dict(model.named_modules())
    out = []
    for n, p in model.named_parameters():
        if n.startswith(extra) and extra:
            out.append((n, p))
        elif policy == "all" or (policy == "bias" and n.endswith("bias")) or (
                policy == "norms" and is_norm_param(mods, n)):
            out.append((n, p))
        elif policy not in PLAIN_POLICIES:
            raise ValueError(f"base_trainable policy {policy!r} is not one of none/norms/bias/all nor a "
                             f"kind:scope policy such as 'norms:encoder' or 'norms+bias:c_attn' (vlpeft.pet.unfreeze)")
    return out


__all__ = ["attach_projection", "attach_skip", "base_policy_params", "is_norm_param", "projection_sites",
           "scoped_policy_params"]

"""The backbone protocol: what the Lightning module, PET injection, searches and tasks may ask of a backbone.

A backbone is an ``nn.Module`` subclassing ``Backbone`` and implementing:

- ``hidden_size``; ``candidates()`` → the units a search may act on (``Candidates``: how many, and whether they
  can be skipped and/or take an inserted prompt);
- ``sites()`` → where PET modules may attach (``Site``); ``attach(site, module)`` puts a module there. Sites in
  blocks we own are explicit slots (free when empty); sites inside Hugging Face modules are hooks. Only
  ``vlpeft.pet.inject`` calls ``attach``;
- ``forward(batch, plan, **ctx)`` → a features dict (at least ``cls_feats``); ``plan`` is a ``LayerPlan``: a skipped
  unit is not computed (its skip site runs instead: identity when empty);
- ``base_trainable(policy)`` → the backbone parameters a policy unfreezes (``none``, ``norms``, ``bias``, ``all``,
  plus backbone-specific ones such as ViLT's ``das_original``, plus ``kind:scope`` terms joined by ``+`` such as
  ``norms:encoder`` through ``vlpeft.pet.unfreeze``; ``knows_policy(policy)`` says whether one is accepted); modules every run trains (DVP's prompt generator)
  belong to every policy;
- ``checkpoint_filter_fn(state_dict)`` → foreign key names and shapes adapted to this backbone (timm style);
  ``hf_model_types()`` → the Hugging Face folder families ``load_path`` may name for it;
- ``capabilities`` → what tasks may ask: ``classify`` (cls features), ``pair_images`` (NLVR2: two images per text),
  ``score_pairs`` (retrieval: ``encode_images`` once, then ``forward(..., image_cache=...)`` per caption batch),
  ``text_only`` (batches without an image: the language model alone, BoolQ-style tasks), ``itm`` (image-text
  matching as METER computes it: ``itm_score`` on the cls features of half true, half drawn-false images).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

# par: a delta from the sublayer input added to its output; out_seq: a map of the sublayer output (own residual);
# skip: replaces a skipped unit; proj:*: a module on a projection (LoRA, IA3; parameters beside the weight, which
# keeps its name); out_par / gate / input: the zoo's sublayer-output delta, gate and input-prompt anchors; in_seq: a
# map of the sublayer's (normed) input, own residual, before the sublayer runs (LaVIN-DAS's adapter_attn).
PROJ_ANCHORS = ("proj:q", "proj:k", "proj:v", "proj:o", "proj:qkv", "proj:ff_in", "proj:ff_out")
ANCHORS = ("par", "out_seq", "skip", "out_par", "gate", "input", "in_seq") + PROJ_ANCHORS


@dataclass(frozen=True)
class LayerPlan:
    """The runtime form of a placement: candidate units to skip, and where a prompt enters (None: no prompt)."""

    skip: frozenset[int] = frozenset()
    insert_layer: int | None = None

    @classmethod
    def of(cls, skip: Iterable[int] = (), insert_layer: int | None = None) -> "LayerPlan":
        return cls(frozenset(int(i) for i in skip), None if insert_layer is None else int(insert_layer))

    def replace(self, **kw: Any) -> "LayerPlan":
        d = {"skip": self.skip, "insert_layer": self.insert_layer}
        d.update(kw)
        return LayerPlan.of(d["skip"], d["insert_layer"])


@dataclass(frozen=True)
class Candidates:
    """The units a search may act on: ``count`` of them; ``skip``: each can be skipped; ``insert``: a prompt can
    enter before each."""

    count: int
    skip: bool = True
    insert: bool = False

    def kinds(self) -> list[str]:
        return [k for k, ok in (("skip", self.skip), ("insert", self.insert)) if ok]


@dataclass(frozen=True)
class Site:
    """One place a PET module may attach.

    ``stack`` (e.g. ``vit``, ``plm``, ``plm_encoder``), ``layer`` (candidate index, or -1 for the part before the
    candidates), ``sublayer`` (``attn``, ``cross_attn``, ``ffn``, ``block``), ``anchor`` (see ``ANCHORS``),
    ``dim`` (width of the tensor the module sees) and ``name`` (where the module is registered, relative to the
    backbone: it fixes the parameter names in checkpoints). ``family`` says which kind of model hosts the site
    (``vilt``, ``bert``, ``t5``, ``llama``, …) so presets can pick per-family widths.
    """

    stack: str
    layer: int
    sublayer: str
    anchor: str
    dim: int
    name: str
    family: str = ""
    meta: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.anchor not in ANCHORS:
            raise ValueError(f"site anchor {self.anchor!r} is not one of {ANCHORS}")

    @property
    def role(self) -> str:
        """What the site's stack is for presets that select ``encoder`` / ``decoder`` stacks (VL-PET):
        ``meta["stack_role"]`` when the backbone sets it, else the stack name. Single-stream ViLT's ``vit``
        stack and CLIP+BERT's ``plm`` stack are encoders; CLIP+T5's ``plm_encoder`` is the encoder and its
        ``plm`` (decoder blocks) the decoder; CLIP+LLaMA's ``plm`` is a decoder (a decoder-only LM)."""
        return str((self.meta or {}).get("stack_role", self.stack))


class Backbone(nn.Module):
    """Base class with the protocol's defaults; see the module docstring."""

    capabilities: frozenset[str] = frozenset({"classify"})
    family: str = ""

    @property
    def hidden_size(self) -> int:  # pragma: no cover - every backbone overrides
        raise NotImplementedError

    @property
    def cls_dim(self) -> int:
        """Width of ``cls_feats`` (what task heads read): ``hidden_size`` unless the backbone says otherwise."""
        return self.hidden_size

    def candidates(self) -> Candidates:  # pragma: no cover
        raise NotImplementedError

    def candidate_module(self, index: int) -> nn.Module:
        """The module that computes candidate ``index`` (what skipping it must not run)."""
        return self.get_submodule(self.candidate_name(index))

    def candidate_name(self, index: int) -> str:  # pragma: no cover
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return self.candidates().count

    def sites(self) -> list[Site]:  # pragma: no cover
        raise NotImplementedError

    def attach(self, site: Site, module: nn.Module) -> None:  # pragma: no cover
        raise NotImplementedError

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan, **ctx: Any) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def forward_many(self, batch: Mapping[str, Any], plans: Sequence[LayerPlan]) -> list[dict[str, Any]]:
        """One forward per plan; backbones that can share work between plans override this."""
        return [self(batch, p) for p in plans]

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:  # pragma: no cover
        raise NotImplementedError

    def base_policies(self) -> tuple[str, ...]:
        """The named policies; ``kind:scope`` terms joined by ``+`` (``vlpeft.pet.unfreeze``) are accepted too."""
        return ("none", "norms", "bias", "all")

    # scope words a ``kind:scope`` policy may use that mean a differently named part of this backbone
    # (ViLT: ``encoder`` = its single-stream ``transformer``); applied by ``policy_params``
    policy_scope_aliases: Mapping[str, str] = {}

    def knows_policy(self, policy: str) -> bool:
        """Whether ``base_trainable(policy)`` is defined: a named policy, or a ``kind:scope`` combination."""
        return policy in self.base_policies() or is_scoped_policy(policy)

    def checkpoint_filter_fn(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(state_dict)

    def hf_model_types(self) -> tuple[str, ...]:
        """The ``config.json`` ``model_type``s of Hugging Face folders ``load_path`` may name for this backbone
        (their names then go through ``checkpoint_filter_fn``); none by default."""
        return ()

    def check_plan(self, plan: LayerPlan) -> LayerPlan:
        """Raise a clear error unless ``plan`` fits this backbone's candidates."""
        from vlpeft.search.placement import validate_insert_layer, validate_skip

        c = self.candidates()
        if plan.skip and not c.skip:
            raise ValueError(f"{type(self).__name__} cannot skip units (skip={sorted(plan.skip)})")
        validate_skip(sorted(plan.skip), c.count)
        if plan.insert_layer is not None:
            if not c.insert:
                raise ValueError(f"{type(self).__name__} takes no inserted prompt (insert_layer={plan.insert_layer})")
            validate_insert_layer(plan.insert_layer, c.count)
        elif c.insert:
            raise ValueError(f"{type(self).__name__} needs insert_layer (where the visual prompt enters)")
        return plan


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
    from dataclasses import replace

    from vlpeft.pet._sites_hf import ProjHost

    sites = ProjHost(model, family, include).sites()
    if encoder_layer is not None:
        sites = [replace(s, layer=encoder_layer) if s.stack == "encoder" else s for s in sites]
    return sites


def attach_projection(model: nn.Module, site: Site, module: nn.Module) -> None:
    """Wrap the projection at ``site.name`` (its weight keeps its name) and attach ``module`` to it."""
    from vlpeft.pet._wrap import attach_to_linear

    attach_to_linear(model, site.name, module)


# --- shared helpers for base_trainable policies -------------------------------------------------------------
def is_norm_param(module_of: Mapping[str, nn.Module], name: str) -> bool:
    owner = module_of.get(name.rsplit(".", 1)[0])
    return owner is not None and ("norm" in type(owner).__name__.lower() or "LayerNorm" in name)


PLAIN_POLICIES = ("none", "norms", "bias", "all")


def is_scoped_policy(policy: str) -> bool:
    """True for a valid ``vlpeft.pet.unfreeze`` policy string that is not one of the plain names
    (``norms:encoder``, ``norms+bias:c_attn``, …)."""
    from vlpeft.pet.unfreeze import parse_policy

    if not isinstance(policy, str) or policy in PLAIN_POLICIES:
        return False
    try:
        parse_policy(policy)
    except ValueError:
        return False
    return True


def scoped_policy_params(model: nn.Module, policy: str,
                         aliases: Mapping[str, str] | None = None) -> list[tuple[str, nn.Parameter]]:
    """A ``kind:scope`` policy over ``model`` through ``vlpeft.pet.unfreeze.policy_params``; ``aliases`` rewrite
    scope words (``{"encoder": "transformer"}``) before matching. Raises a ValueError naming the bad term."""
    from vlpeft.pet.unfreeze import parse_policy, policy_params as unfreeze_params

    terms = []
    for kind, scope in parse_policy(policy):
        if scope and aliases and scope in aliases:
            scope = aliases[scope]
        terms.append(f"{kind}:{scope}" if scope else kind)
    return unfreeze_params(model, "+".join(terms))


def policy_params(model: nn.Module, policy: str, extra: Iterable[str] = ()) -> list[tuple[str, nn.Parameter]]:
    """The generic policies over ``model``'s parameters: none / norms / bias / all (``extra`` names always in),
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
        elif policy not in ("none", "norms", "bias", "all"):
            raise ValueError(f"base_trainable policy {policy!r} is not one of none/norms/bias/all nor a "
                             f"kind:scope policy such as 'norms:encoder' or 'norms+bias:c_attn' (vlpeft.pet.unfreeze)")
    return out


__all__ = ["ANCHORS", "PROJ_ANCHORS", "Backbone", "attach_projection", "attach_skip", "projection_sites", "Candidates", "LayerPlan", "Site", "is_norm_param", "is_scoped_policy", "policy_params",
           "scoped_policy_params"]

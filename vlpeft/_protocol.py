"""The contract at the ground floor: plans, candidates, sites, anchors, and what the Lightning module, PET
injection, searches and tasks may ask of a backbone.

It imports nothing of vlpeft, so ``pet/``, ``search/``, ``tasks/`` and ``backbones/`` all import it and it
imports none of them (``tests/test_architecture.py``). The helpers backbones use to place sites live in
``vlpeft.backbones._sites``.

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
  ``norms:encoder`` (the grammar: ``parse_policy`` here; applied by ``vlpeft.pet.unfreeze``);
  ``knows_policy(policy)`` says whether one is accepted); modules every run trains (DVP's prompt generator)
  belong to every policy;
- ``checkpoint_filter_fn(state_dict)`` → foreign key names and shapes adapted to this backbone (timm style);
  ``hf_model_types()`` → the Hugging Face folder families ``load_path`` may name for it;
- ``capabilities`` → what tasks may ask: ``classify`` (cls features), ``pair_images`` (NLVR2: two images per text),
  ``score_pairs`` (retrieval: ``encode_images`` once, then ``forward(..., image_cache=...)`` per caption batch),
  ``text_only`` (batches without an image: the language model alone, BoolQ-style tasks), ``itm`` (image-text
  matching as METER computes it: ``itm_score`` on the cls features of half true, half drawn-false images).
"""

from __future__ import annotations

import numbers
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
        """The named policies; ``kind:scope`` terms joined by ``+`` (``parse_policy``) are accepted too."""
        return ("none", "norms", "bias", "all")

    # scope words a ``kind:scope`` policy may use that mean a differently named part of this backbone
    # (ViLT: ``encoder`` = its single-stream ``transformer``); applied by ``vlpeft.backbones._sites.base_policy_params``
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



# --- plans: what fits a backbone's candidates --------------------------------------------------------------
class PlacementError(ValueError):
    """A placement that does not fit the backbone or is malformed."""


def check_skip_types(skip: Sequence[Any]) -> None:
    bad_type = [i for i in skip if isinstance(i, bool) or not isinstance(i, numbers.Integral)]
    if bad_type:  # int() would read 1.7 and True as layer 1
        raise PlacementError(f"skip_module {list(skip)}: {bad_type} are not layer indices; give integers, e.g. "
                             "skip_module=[3,7]")


def validate_skip(skip: Sequence[int], num_layers: int) -> tuple[int, ...]:
    check_skip_types(skip)
    skip = tuple(int(i) for i in skip)
    bad = [i for i in skip if not 0 <= i < num_layers]
    if bad:
        raise PlacementError(
            f"skip_module {list(skip)}: layer(s) {bad} out of range; this backbone has layers 0..{num_layers - 1}"
        )
    if len(set(skip)) != len(skip):
        dup = sorted({i for i in skip if skip.count(i) > 1})
        raise PlacementError(f"skip_module {list(skip)}: layer(s) {dup} listed more than once")
    return skip


def validate_insert_layer(k: int | None, num_layers: int) -> int:
    if k is None or isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < num_layers:
        raise PlacementError(
            f"insert_layer={k!r} is out of range; this backbone has layers 0..{num_layers - 1}"
        )
    return k


# --- base policies: the grammar of ``base_trainable(policy)`` ----------------------------------------------
PLAIN_POLICIES = ("none", "norms", "bias", "all")
POLICY_KINDS = ("none", "bias", "norms", "nn_layernorm", "all")


def parse_policy(policy: str) -> list[tuple[str, str | None]]:
    """``"norms:encoder+bias"`` → ``[("norms", "encoder"), ("bias", None)]``; a ValueError names a bad kind."""
    terms = []
    for term in str(policy).split("+"):
        kind, _, scope = term.strip().partition(":")
        if kind not in POLICY_KINDS:
            raise ValueError(f"base policy term {term!r}: kind {kind!r} is not one of {POLICY_KINDS} "
                             f"(write e.g. 'norms:encoder+bias')")
        terms.append((kind, scope or None))
    return terms


def is_scoped_policy(policy: str) -> bool:
    """True for a valid ``kind:scope`` policy string that is not one of the plain names
    (``norms:encoder``, ``norms+bias:c_attn``, …)."""
    if not isinstance(policy, str) or policy in PLAIN_POLICIES:
        return False
    try:
        parse_policy(policy)
    except ValueError:
        return False
    return True


__all__ = ["ANCHORS", "PLAIN_POLICIES", "POLICY_KINDS", "PROJ_ANCHORS", "Backbone", "Candidates", "LayerPlan",
           "PlacementError", "Site", "check_skip_types", "is_scoped_policy", "parse_policy", "validate_insert_layer",
           "validate_skip"]

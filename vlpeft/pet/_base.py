"""The one injection path: ``inject(backbone, recipe) → PetReport``.

A **PET module** is registered in ``PETS`` with a builder ``build(site, **options) -> nn.Module``; what it does at
a site is fixed by the site's anchor (see ``vlpeft._protocol``):

- ``par``: the module reads the sublayer *input* and returns a delta added next to the sublayer's output
  (DAS parallel adapters);
- ``out_seq``: the module maps the sublayer *output* to a new output (it includes its own residual: DVP's
  sequential adapters);
- ``skip``: the module replaces a skipped unit (with its own residual; an empty skip site is the identity).

A **recipe** (``Recipe``) lists which modules go on which sites (``PetSpec``: module name, options, anchor /
sublayer / layer / family selectors — the analogue of peft's ``target_modules`` + ``layers_to_transform``) and the
backbone policy for its own parameters (``base_policy``). Presets are registered in ``PRESETS`` as functions of the
flat config (``vlpeft.pet.presets``). The ``PetReport`` knows which module sits on which site and candidate, so
"train only what the placement runs" needs no name parsing, and the trainable set is
heads ∪ injected modules ∪ ``backbone.base_trainable(policy)``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from vlpeft._registry import Registry
from vlpeft._protocol import ANCHORS, LayerPlan, Site

PETS: Registry[nn.Module] = Registry("PET module", "pet module")
PRESETS: Registry["Recipe"] = Registry("PET preset", "pet")


class PetError(ValueError):
    """A recipe that does not fit the backbone; the message names the module, the selector and the fix."""


@dataclass(frozen=True)
class PetSpec:
    module: str
    anchors: tuple[str, ...]
    options: Mapping[str, Any] = field(default_factory=dict)
    sublayers: tuple[str, ...] = ()  # empty: every sublayer
    layers: tuple[int, ...] | None = None  # None: every layer
    families: tuple[str, ...] = ()  # empty: every family
    required: bool = True  # an entry that matches no site is an error (else it is reported and skipped)

    def __post_init__(self) -> None:
        bad = [a for a in self.anchors if a not in ANCHORS]
        if bad or not self.anchors:
            raise PetError(f"PET spec {self.module!r}: anchors {list(self.anchors)} must be a non-empty subset of {ANCHORS}")

    def matches(self, site: Site) -> bool:
        return (site.anchor in self.anchors and (not self.sublayers or site.sublayer in self.sublayers)
                and (self.layers is None or site.layer in self.layers)
                and (not self.families or site.family in self.families))


@dataclass(frozen=True)
class Recipe:
    name: str
    modules: tuple[PetSpec, ...] = ()
    base_policy: str = "none"
    # The original trains only what the placement runs (LaVIN-DAS deletes a skipped layer's in-block adapter and a
    # kept layer's skip adapter before training), so ``trainable=original`` in the train stage means ``used``.
    original_trains_used: bool = False


@dataclass
class Injected:
    site: Site
    module: str
    param_names: list[str]  # relative to the backbone: where ``attach`` really registered the module's parameters


@dataclass
class PetReport:
    recipe: Recipe
    injected: list[Injected] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def param_names(self) -> set[str]:
        return {n for i in self.injected for n in i.param_names}

    def used_param_names(self, plan: LayerPlan) -> set[str]:
        """Parameters of modules the plan runs: a skip module runs iff its unit is skipped, any other iff not."""
        out = set()
        for i in self.injected:
            skipped = i.site.layer in plan.skip
            if skipped == (i.site.anchor == "skip"):
                out.update(i.param_names)
        return out

    def summary(self) -> str:
        by: dict[str, int] = {}
        for i in self.injected:
            by[f"{i.module}@{i.site.anchor}"] = by.get(f"{i.module}@{i.site.anchor}", 0) + 1
        parts = ", ".join(f"{k} ×{v}" for k, v in sorted(by.items())) or "no modules"
        placed = {i.module for i in self.injected}
        unmatched = sorted(set(self.unmatched) - placed)
        extra = f"; matched no site: {', '.join(unmatched)}" if unmatched else ""
        return f"pet={self.recipe.name}: {parts}; backbone policy {self.recipe.base_policy!r}{extra}"


def inject(backbone: nn.Module, recipe: Recipe) -> PetReport:
    """Build every module of ``recipe`` on every matching site of ``backbone`` and attach it there."""
    sites = backbone.sites()
    report = PetReport(recipe)
    built: list[nn.Module] = []
    for spec in recipe.modules:
        matched = [s for s in sites if spec.matches(s)]
        if not matched:
            if spec.required:
                raise PetError(
                    f"pet={recipe.name}: module {spec.module!r} matches no site of {type(backbone).__name__} "
                    f"(anchors {list(spec.anchors)}, sublayers {list(spec.sublayers) or 'any'}); this backbone offers "
                    f"{sorted({(s.anchor, s.sublayer) for s in sites})}")
            report.unmatched.append(spec.module)
            continue
        for site in matched:
            module = PETS.build(spec.module, site, **dict(spec.options))
            backbone.attach(site, module)
            built.append(module)
            report.injected.append(Injected(site, spec.module, []))
    _record_landing(backbone, report.injected, built)
    if recipe.modules and not report.injected:
        raise PetError(
            f"pet={recipe.name}: none of its modules ({', '.join(dict.fromkeys(report.unmatched))}) matches a site of "
            f"{type(backbone).__name__}; this backbone offers {sorted({(s.anchor, s.sublayer, s.role) for s in sites})} "
            f"(anchor, sublayer, stack role); choose another pet for it")
    return report


def _record_landing(backbone: nn.Module, injected: list[Injected], modules: list[nn.Module]) -> None:
    """Fill each ``Injected.param_names`` from where ``attach`` really registered the module's parameters (found by
    identity), so the trainable set never depends on a site's name predicting that place. A parameter registered
    under several names (a module shared between sites) is named under its own site where it sits there.

    A host with no parameters of its own to search (a plain object placing modules into a model it holds, as the
    zoo tests' stand-ins do) keeps the names its sites predict."""
    if not hasattr(backbone, "named_parameters"):
        for inj, module in zip(injected, modules):
            inj.param_names = [f"{inj.site.name}.{n}" for n, _ in module.named_parameters()]
        return
    where: dict[int, list[str]] = {}
    for n, p in backbone.named_parameters(remove_duplicate=False):
        where.setdefault(id(p), []).append(n)
    for inj, module in zip(injected, modules):
        names: list[str] = []
        for pname, p in module.named_parameters():
            found = where.get(id(p))
            if not found:
                raise PetError(f"{type(backbone).__name__}.attach put {inj.module!r} on site {inj.site.name!r} without "
                               f"registering its parameter {pname!r} in the backbone (it would never train nor be "
                               f"saved); attach must add the module as a submodule")
            own = [n for n in found if n.startswith(f"{inj.site.name}.")]
            names.extend(own or found)
        inj.param_names = list(dict.fromkeys(names))


def register_pet(name: str, **meta: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    return PETS.register(name, **meta)


def register_preset(name: str, *, keys: Mapping[str, Any] | None = None, spec: type | None = None,
                    **meta: Any) -> Callable:
    """``spec``: the preset's settings dataclass (``vlpeft.sections``); its builder then gets the typed settings."""
    return PRESETS.register(name, keys=dict(keys or {}), spec=spec, **meta)


def build_recipe(config: Mapping[str, Any], name: str) -> Recipe:
    return PRESETS.build(name, config)


__all__ = ["PETS", "PRESETS", "PetError", "PetReport", "PetSpec", "Recipe", "Injected", "build_recipe", "inject",
           "register_pet", "register_preset"]

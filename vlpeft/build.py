"""Assembling a run's model from the four axes: backbone × PET recipe × search × tasks (``vlpeft.config.Axes``).

``build_with_pet(config)`` → the backbone with its PET modules injected and the trainable set applied (what tests
and benches use); ``assemble(config, placement)`` adds the tasks' heads, the base ``LayerPlan`` and, in the search
stage, the search strategy. Nothing here branches on a backbone, module or search name: each comes from its
registry, and a combination that cannot work is refused with the reason before anything heavy is built.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from torch import nn

from vlpeft.backbones import BACKBONES, Backbone, LayerPlan, task_gate
from vlpeft.config import ConfigError, RunConfig, sections
from vlpeft.pet import PetReport, build_recipe, inject
from vlpeft.pet.trainable import apply_trainable
from vlpeft.search import SearchStrategy, build_search
from vlpeft.search.placement import Placement, validate_skip
from vlpeft.tasks import Task, build_task_heads, build_tasks


@dataclass
class Assembly:
    backbone: Backbone
    report: PetReport
    policy: str
    tasks: list[Task]
    heads: nn.ModuleDict
    search: SearchStrategy | None
    base_plan: LayerPlan


def build_with_pet(config: RunConfig | Mapping[str, Any],
                   plan: LayerPlan | None = None) -> tuple[Backbone, PetReport, str]:
    """Backbone + injected PET modules + trainable set (``plan``: with ``trainable=used``, or a recipe whose original
    trains only what the placement runs, only what it runs)."""
    rc = sections(config)
    backbone = BACKBONES.build(rc.axes.backbone, rc.flat)  # the registry turns the keys into the entry's settings
    report, policy = _inject(backbone, rc, plan)
    return backbone, report, policy


def _inject(backbone: Backbone, rc: RunConfig | Mapping[str, Any], plan: LayerPlan | None) -> tuple[PetReport, str]:
    rc = sections(rc)  # a RunConfig passes through; a flat dict (tests, benches) gets its sections
    axes = rc.axes
    recipe = build_recipe(rc.pet, axes.pet)
    report = inject(backbone, recipe)
    policy = axes.train_base or recipe.base_policy
    if not axes.train_base and not backbone.knows_policy(policy):
        policy = "none"  # a preset's backbone-specific default (das_original) on a backbone without it
    used = rc.build.trainable == "used" or recipe.original_trains_used  # trainable=original: as the original
    apply_trainable(backbone, report, policy, plan if used else None)
    return report, policy


def base_plan(config: RunConfig | Mapping[str, Any], backbone: Backbone, placement: Placement | None) -> LayerPlan:
    """The plan from the config (``skip_module``; ``insert_layer`` where the backbone takes a prompt), then the
    placement's decided fields on top."""
    b = sections(config).build
    skip = b.skip_module
    if not isinstance(skip, (list, tuple)):
        raise ConfigError(f"skip_module={skip!r} must be a list, e.g. skip_module=[3,7] or skip_module=[]")
    validate_skip(skip, backbone.num_layers)  # duplicates and range, before the plan makes it a set
    plan = LayerPlan.of(skip, b.insert_layer if backbone.candidates().insert else None)
    if placement is not None:
        placement.validate(backbone.num_layers)
        plan = placement.plan(plan)
    return backbone.check_plan(plan)


def assemble(config: RunConfig | Mapping[str, Any], placement: Placement | None = None) -> Assembly:
    rc = sections(config)  # the Lightning module passes its flat keys (what its checkpoint stores)
    axes, b = rc.axes, rc.build
    searching = bool(axes.search)
    backbone = BACKBONES.build(axes.backbone, rc.flat)  # the registry turns the keys into the entry's settings
    gate = task_gate(axes.backbone)  # the family's loss_names rule (METER: weight > 0; ViLT / DVP: >= 1)
    settings = rc.tasks  # the tasks' typed settings (label sizes, generation, dumps)
    tasks = build_tasks(b.loss_names, backbone.capabilities, axes.backbone, settings, gate=gate)
    if not tasks:
        raise ConfigError("no active task: set loss_names, e.g. with task_finetune_vqa_randaug or a dvp_* config")
    search = build_search(axes.search, rc.search, backbone.candidates()) if searching else None
    if search is not None:
        search.record_history()  # the plot starts from the initial preferences (also keeps the buffer non-empty)
    if search is None:
        plan = base_plan(rc, backbone, placement)
    elif search.plan_field == "skip":  # the search decides the skip set; a prompt (if any) enters where configured
        plan = backbone.check_plan(LayerPlan.of((), b.insert_layer if backbone.candidates().insert else None))
    else:  # the search decides insert_layer (0 is a placeholder it replaces at every forward)
        plan = backbone.check_plan(LayerPlan.of(b.skip_module, 0))
    report, policy = _inject(backbone, rc, None if searching else plan)
    heads = build_task_heads(tasks, backbone.hidden_size, backbone.cls_dim, settings.head_hidden)
    return Assembly(backbone, report, policy, tasks, heads, search, plan)


def false_images(config: RunConfig | Mapping[str, Any]) -> int:
    """False images per item the data must draw: ``draw_false_image`` when an active task reads them (METER's
    ITM), else 0 — the originals decoded them whenever draw_false_image > 0 (its default 1), used or not."""
    rc = sections(config)
    axes = rc.axes
    entry = BACKBONES.get(axes.backbone)
    caps = frozenset(BACKBONES.get(entry.meta.get("family", entry.name)).meta.get("capabilities", ()))
    tasks = build_tasks(rc.build.loss_names, caps, axes.backbone, rc.tasks,
                        gate=task_gate(axes.backbone))
    return int(rc.build.draw_false_image or 0) if any(t.false_images for t in tasks) else 0


# The old name, which ``vlpeft.backbones`` also used for the bare build (two meanings); kept for code written
# against it on other branches. New code calls build_with_pet.
build_backbone = build_with_pet

__all__ = ["Assembly", "assemble", "base_plan", "build_backbone", "build_with_pet", "false_images"]

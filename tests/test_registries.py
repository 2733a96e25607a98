"""Every registry entry declares its tiny test entry where it registers, and the conformance tests iterate the
registries (issue 17 item 4): a PET module, preset, backbone family, search or task added without one fails here.

- coverage: ``Registry.untested(EXEMPT)`` is empty for each registry, and every exemption (``helpers.EXEMPT``,
  with its reason) still names an entry that needs it; a throwaway PET module / preset / backbone / search / task
  registered with no test entry is reported (the fixture unregisters them);
- presets: each is built with its test config, injected into its test backbone; the trainable set is exactly
  injected ∪ the preset's backbone policy; once those weights are moved off their init the output changes and every
  trainable parameter gets a gradient (over a plan that skips nothing and one that skips every unit, so skip
  modules run too);
- searches: built for their test backbone, they propose runnable plans, an update moves their state, a twin loaded
  from that state proposes the same next plans, and the placement matches ``eval_plan``;
- tasks: the test backbone offers what the task needs and ``build_tasks`` accepts it there.
(PET modules: ``test_pet_zoo.py::test_pet_module_conformance``; backbones: ``test_backbones.py``.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import EXEMPT, backbone_batch, proj_loss
from vlpeft._registry import Registry, RegistryError
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.pet import PETS, PRESETS, Recipe, inject
from vlpeft.pet._base import register_pet, register_preset
from vlpeft.pet.context import pet_context
from vlpeft.pet.trainable import apply_trainable
from vlpeft.search import SEARCHES, build_search
from vlpeft.search._base import ROUND_TIMINGS
from vlpeft.tasks._base import TASKS, build_tasks

REGISTRIES: dict[str, Registry] = {r.kind: r for r in (BACKBONES, PETS, PRESETS, SEARCHES, TASKS)}


def _check_covered(registry: Registry) -> None:
    exempt = EXEMPT[registry.kind]
    missing = registry.untested(exempt)
    assert not missing, (f"{registry.kind} entries without a test entry: {missing}; register each with "
                         f"test=dict(...) (or a test_* entry of its family), or exempt it in tests/helpers.py "
                         f"with the reason")
    stale = [n for n in exempt if n not in registry.untested()]  # gone, or it has a test entry now
    assert not stale, f"{registry.kind} exemptions no longer needed: {stale}"


def test_exemptions_cover_every_registry_and_give_a_reason():
    assert set(EXEMPT) == set(REGISTRIES)
    assert all(isinstance(why, str) and why.strip() for ex in EXEMPT.values() for why in ex.values())


@pytest.mark.parametrize("kind", sorted(REGISTRIES))
def test_every_entry_has_a_test_entry(kind):
    _check_covered(REGISTRIES[kind])


@pytest.fixture
def throwaways():
    """A PET module, a preset, a backbone family, a search and a task registered with no test entry; removed again
    afterwards."""
    register_pet("throwaway_pet")(lambda site, **options: nn.Identity())
    register_preset("throwaway_preset")(lambda config: Recipe("throwaway_preset"))
    BACKBONES.register("throwaway_backbone", capabilities=("classify",))(lambda config: None)
    SEARCHES.register("throwaway_search")(lambda config, candidates: None)
    TASKS.register("throwaway_task")(lambda: None)
    try:
        yield
    finally:
        for registry, name in ((PETS, "throwaway_pet"), (PRESETS, "throwaway_preset"),
                               (BACKBONES, "throwaway_backbone"), (BACKBONES, "test_throwaway_backbone"),
                               (SEARCHES, "throwaway_search"), (TASKS, "throwaway_task")):
            if name in registry:
                registry.unregister(name)


def test_a_new_entry_without_a_test_entry_fails_the_suite(throwaways):
    assert PETS.untested(EXEMPT["PET module"]) == ["throwaway_pet"]
    assert PRESETS.untested(EXEMPT["PET preset"]) == ["throwaway_preset"]
    assert BACKBONES.untested(EXEMPT["backbone"]) == ["throwaway_backbone"]
    assert SEARCHES.untested(EXEMPT["search"]) == ["throwaway_search"]
    assert TASKS.untested(EXEMPT["task"]) == ["throwaway_task"]
    for registry, name in ((PETS, "throwaway_pet"), (PRESETS, "throwaway_preset"), (BACKBONES, "throwaway_backbone"),
                           (SEARCHES, "throwaway_search"), (TASKS, "throwaway_task")):
        with pytest.raises(AssertionError, match=name):
            _check_covered(registry)
    # the conformance tests, parametrized over names(), ask for the options and get the fix
    assert "throwaway_pet" in PETS.names() and "throwaway_preset" in PRESETS.names()
    with pytest.raises(RegistryError, match=r"PET module 'throwaway_pet' registered no test options: add test="):
        PETS.test_options("throwaway_pet")
    # a tiny test_* entry of its family covers a backbone, as timm's test variants do
    BACKBONES.register("test_throwaway_backbone", family="throwaway_backbone")(lambda config=None: None)
    assert BACKBONES.untested(EXEMPT["backbone"]) == []


def test_test_options_and_unregister():
    reg: Registry = Registry("widget", "widget")
    reg.register("a", test=dict(size=2))(lambda: 1)
    reg.register("b")(lambda: 2)
    opts = reg.test_options("a")
    opts["size"] = 3  # a copy: the registered options stay as declared
    assert reg.test_options("a") == {"size": 2} and reg.untested() == ["b"] and reg.untested({"b": "why"}) == []
    with pytest.raises(TypeError, match="test= must be a dict"):
        reg.register("c", test=["size"])
    assert reg.unregister("b").name == "b" and reg.names() == ["a"]
    with pytest.raises(RegistryError, match="widget='b' is not a registered widget"):
        reg.unregister("b")


# --- presets ------------------------------------------------------------------------------------------------------
def _plan(bb, skip=()) -> LayerPlan:
    return LayerPlan.of(skip, 0 if bb.candidates().insert else None)


def _batch(bb) -> dict:
    batch = backbone_batch(bb)
    if "generate" in bb.capabilities:
        batch["target_ids"] = torch.randint(5, 90, (2, 3), generator=torch.Generator().manual_seed(1))
    return batch


def _out(bb, batch, plan) -> torch.Tensor:
    out = bb(batch, plan)
    return out["lm_logits"] if "generate" in bb.capabilities else out["cls_feats"]


@pytest.mark.parametrize("name", [n for n in PRESETS.names() if n not in EXEMPT["PET preset"]])
def test_preset_conformance(name):
    test = PRESETS.test_options(name)
    config = {**PRESETS.get(name).keys, **test["config"]}
    recipe = PRESETS.build(name, config)
    torch.manual_seed(0)
    bb = BACKBONES.build(test["backbone"]).eval()
    report = inject(bb, recipe)
    assert bool(report.injected) == bool(recipe.modules)
    assert bb.knows_policy(recipe.base_policy)  # the test backbone takes the preset's own backbone policy
    trainable = set(apply_trainable(bb, report, recipe.base_policy))
    params = dict(bb.named_parameters(remove_duplicate=False))  # a module shared by sites has one name per site
    for inj in report.injected:  # every reported parameter lives under its site's registration name
        assert inj.param_names and all(n in params and n.startswith(inj.site.name + ".") for n in inj.param_names)
    # trainable set = injected ∪ the preset's policy, exactly (by identity: shared modules have several names)
    expected = report.param_names() | {n for n, _ in bb.base_trainable(recipe.base_policy)}
    assert {id(p) for p in bb.parameters() if p.requires_grad} == {id(params[n]) for n in expected} \
        == {id(params[n]) for n in trainable}
    if not trainable:  # pet=none on a backbone that trains nothing of its own: only the heads would train
        assert not recipe.modules and recipe.base_policy == "none"
        return

    batch, tasks = _batch(bb), list(config.get("datasets") or ["vqa"])
    plans = [_plan(bb), _plan(bb, range(bb.candidates().count))]  # skip modules run only in skipped units
    with torch.no_grad(), pet_context(task=tasks[0]):
        before = [_out(bb, batch, p) for p in plans]
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():  # off their init: zero up-projections and B = 0 would hide a module from the output
        for n in sorted(trainable):
            params[n].add_(0.05 * torch.randn(params[n].shape, generator=g))
    for task in tasks:  # per-task modules: each task's own branch
        with pet_context(task=task):
            after = [_out(bb, batch, p) for p in plans]
            sum(proj_loss(a) for a in after).backward()
    assert any(not torch.equal(a.detach(), b) for a, b in zip(after, before))
    no_grad = sorted(n for n in trainable if params[n].grad is None or not params[n].grad.abs().max() > 0)
    assert not no_grad, f"trainable parameters off the compute path: {no_grad[:5]}"


# --- searches -----------------------------------------------------------------------------------------------------
def _valid(plan: LayerPlan, bb) -> bool:
    n = bb.candidates().count
    return all(0 <= i < n for i in plan.skip) and (plan.insert_layer is None or 0 <= plan.insert_layer < n)


@pytest.mark.parametrize("name", [n for n in SEARCHES.names() if n not in EXEMPT["search"]])
def test_search_conformance(name):
    test = SEARCHES.test_options(name)
    config = {**SEARCHES.get(name).keys, **test["config"], "seed": 0}
    torch.manual_seed(0)
    bb = BACKBONES.build(test["backbone"]).eval()
    search = build_search(name, config, bb.candidates())
    assert search.plan_field in ("skip", "insert_layer") and search.round_timing in ROUND_TIMINGS
    base = _plan(bb)
    plans = search.propose(base)  # (KAB draws with replacement: the seed-0 draw holds two layers)
    assert len(set(plans)) > 1 and all(_valid(p, bb) for p in plans)
    assert _valid(search.train_plan(0, base), bb) and _valid(search.eval_plan(base), bb)
    other = {"skip": "insert_layer", "insert_layer": "skip"}[search.plan_field]
    assert all(getattr(p, other) == getattr(base, other) for p in plans)  # a search decides its own field only
    batch = _batch(bb)
    with torch.no_grad():  # the plans run on the backbone; their outputs differ, so their values do
        values = torch.stack([_out(bb, batch, p).float().abs().mean() for p in plans])
    assert all(values[i] != values[j] for i in range(len(plans)) for j in range(i) if plans[i] != plans[j])
    state = {k: v.clone() for k, v in search.state_dict().items()}
    search.update_plans(plans, values)
    search.record_history()
    moved = [k for k, v in search.state_dict().items() if k in state and state[k].shape == v.shape
             and not torch.equal(state[k], v)]
    assert moved and search.history.shape[0] == 1
    twin = build_search(name, config, bb.candidates())
    twin.load_state_dict(search.state_dict())  # the state lives in buffers: a twin continues the same stream
    assert twin.propose(base) == search.propose(base)
    placement, chosen = search.placement(), search.eval_plan(base)
    if search.plan_field == "skip":
        assert tuple(placement.skip) == tuple(sorted(chosen.skip))
    else:
        assert placement.insert_layer == chosen.insert_layer


# --- tasks --------------------------------------------------------------------------------------------------------
def _capabilities(backbone: str) -> frozenset[str]:
    entry = BACKBONES.get(backbone)
    return frozenset(BACKBONES.get(entry.meta.get("family", backbone)).meta.get("capabilities", ()))


@pytest.mark.parametrize("name", [n for n in TASKS.names() if n not in EXEMPT["task"]])
def test_task_runs_on_its_test_backbone(name):
    backbone = TASKS.test_options(name)["backbone"]
    caps = _capabilities(backbone)
    assert TASKS.build(name).needs <= caps
    assert [t.name for t in build_tasks({name: 1}, caps, backbone)] == [name]


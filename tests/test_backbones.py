"""Conformance of every registered backbone (its tiny ``test_*`` entry) with the protocol of
``vlpeft/backbones/_protocol.py``: candidates, sites, skipping removes compute, base_trainable policies, and a
save → load round trip through the one checkpoint loader. Generative backbones (``vlpeft.backbones._generative``: no
``cls_feats``) are checked on their ``lm_logits`` / ``lm_loss`` over a batch with ``target_ids``, and generate.
That every family has a ``test_*`` entry is checked by ``test_registries.py``."""

from __future__ import annotations

import pytest
import torch

from helpers import backbone_batch as _batch
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.checkpoint import load_state
from vlpeft.pet import PRESETS, inject
from vlpeft.pet.trainable import apply_trainable

NAMES = BACKBONES.names("test_*")
SKIP_RECIPE = {"das_adapter_dim": 8, "das_skip_adapter_dim": 12}




def _plan(bb, skip=()) -> LayerPlan:
    return LayerPlan.of(skip, 0 if bb.candidates().insert else None)


def _generative(bb) -> bool:
    return "generate" in bb.capabilities


def _gen_batch(bb) -> dict:
    batch = _batch(bb)
    if _generative(bb):  # the answer tokens, one row padded with -100
        targets = torch.randint(5, 90, (2, 4), generator=torch.Generator().manual_seed(1))
        targets[1, -1] = -100
        batch["target_ids"] = targets
    return batch


def _out(bb, batch, plan) -> torch.Tensor:
    """What the conformance checks compare: ``cls_feats``, or a generative backbone's ``lm_logits``."""
    feats = bb(batch, plan)
    if _generative(bb):
        assert "cls_feats" not in feats or "classify" in bb.capabilities
        assert feats["lm_logits"].shape[0] == batch["target_ids"].shape[0] and feats["lm_loss"].dim() == 0
        return feats["lm_logits"]
    assert feats["cls_feats"].shape == (2, bb.cls_dim)
    return feats["cls_feats"]


def _build(name: str, seed: int = 0):
    torch.manual_seed(seed)
    bb = BACKBONES.build(name)
    report = inject(bb, PRESETS.build("das", SKIP_RECIPE))
    return bb.eval(), report


@pytest.mark.parametrize("name", NAMES)
def test_candidates_and_sites(name):
    bb, report = _build(name)
    c = bb.candidates()
    assert c.count == bb.num_layers > 0 and c.skip
    sites = bb.sites()
    assert len({s.name for s in sites}) == len(sites)  # one registration name per site
    skip_sites = [s for s in sites if s.anchor == "skip"]
    assert sorted(s.layer for s in skip_sites) == list(range(c.count))  # one skip site per candidate
    modules = dict(bb.named_modules())
    for inj in report.injected:  # every injected module sits where its site says
        assert inj.site.name in modules and inj.param_names
    assert all(0 <= s.layer < c.count or s.layer == -1 for s in sites)


@pytest.mark.parametrize("name", NAMES)
def test_skipping_a_candidate_removes_its_compute(name):
    bb, _ = _build(name)
    batch = _gen_batch(bb)
    for i in range(bb.num_layers):
        calls = []
        h = bb.candidate_module(i).register_forward_hook(lambda *a: calls.append(1))
        with torch.no_grad():
            full = _out(bb, batch, _plan(bb))
            ran = len(calls)
            skipped = _out(bb, batch, _plan(bb, [i]))
            if _generative(bb):  # generation runs the same plan: the skipped unit is never called there either
                text = bb(batch, _plan(bb, [i]), generate=True, max_new_tokens=3)["generated"]
                assert len(text) == 2 and all(isinstance(t, str) for t in text)
        h.remove()
        assert ran >= 1 and len(calls) == ran  # the skipped run never called candidate i
        assert full.shape == skipped.shape and not torch.equal(full, skipped)
        assert full.shape == (2, bb.cls_dim) if "classify" in bb.capabilities else full.shape[0] == 2


@pytest.mark.parametrize("name", NAMES)
def test_base_trainable_policies(name):
    bb, report = _build(name)
    everything = {n for n, _ in bb.named_parameters()}
    per = {pol: {n for n, _ in bb.base_trainable(pol)} for pol in bb.base_policies()}
    for pol, names in per.items():
        assert names <= everything, pol
    assert per["norms"] <= per["all"] and per["bias"] <= per["all"] and per["none"] <= per["norms"]
    assert per["norms"] and all("norm" in n.lower() or "ln" in n.lower() for n in per["norms"] - per["none"])
    trainable = set(apply_trainable(bb, report, "none"))
    assert trainable == report.param_names() | per["none"]
    assert {n for n, p in bb.named_parameters() if p.requires_grad} == trainable
    # trainable=used: only the modules the plan runs (skip adapter of a skipped unit, others of the rest)
    plan = _plan(bb, [0])
    used = set(apply_trainable(bb, report, "none", plan))
    assert used == report.used_param_names(plan) | per["none"]
    skip0 = {n for i in report.injected if i.site.anchor == "skip" and i.site.layer == 0 for n in i.param_names}
    par0 = {n for i in report.injected if i.site.anchor != "skip" and i.site.layer == 0 for n in i.param_names}
    skip1 = {n for i in report.injected if i.site.anchor == "skip" and i.site.layer == 1 for n in i.param_names}
    assert skip0 and skip0 <= used and not (par0 & used) and not (skip1 & used)


@pytest.mark.parametrize("name", NAMES)
def test_save_load_round_trip(name):
    a, _ = _build(name, seed=0)
    b, _ = _build(name, seed=1)
    batch = _gen_batch(a)
    with torch.no_grad():
        assert not torch.equal(_out(a, batch, _plan(a, [1])), _out(b, batch, _plan(b, [1])))
    report = load_state(b, a.state_dict(), "a.ckpt", "test")
    assert report.missing == [] and report.unexpected == [] and report.loaded == len(a.state_dict())
    with torch.no_grad():
        for skip in ([], [0], [1]):
            assert torch.equal(_out(a, batch, _plan(a, skip)), _out(b, batch, _plan(b, skip)))


@pytest.mark.parametrize("name", NAMES)
def test_forward_many_gives_one_forward_per_plan(name):
    """``forward(batch, plan)`` is the one way to run a backbone (the pre-protocol ``infer`` / ``infer_many`` entry
    points are gone), and ``forward_many``, which a backbone may override to share work between plans (METER's
    encoders, DVP's CLIP and text prefix), gives what one ``forward`` per plan gives, repeated plans included."""
    bb, _ = _build(name)
    assert [a for a in ("infer", "infer_many") if hasattr(bb, a)] == []
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # off their init: zero up-projections would make every skip module the same
        for p in bb.parameters():
            if p.is_floating_point():
                p.add_(0.02 * torch.randn(p.shape, generator=g).to(p.dtype))
    c = bb.candidates()
    last = c.count - 1
    plans = [_plan(bb), _plan(bb, [last]), _plan(bb), _plan(bb, [0])]
    if c.insert:  # every insertion layer, one twice, none skipping: DVP's shared-prefix path
        plans += [LayerPlan.of((), k) for k in (last, 0, last, *range(1, last))]
    batch = _gen_batch(bb)
    key = "lm_logits" if _generative(bb) else "cls_feats"
    with torch.no_grad():
        many = bb.forward_many(batch, plans)
        assert len(many) == len(plans)
        for plan, out in zip(plans, many):
            torch.testing.assert_close(out[key], _out(bb, batch, plan), atol=1e-5, rtol=1e-5)
        assert not torch.allclose(many[0][key], many[1][key], atol=1e-4)  # the plans really differ

"""When the DAS reward round scores its candidates (issue 16 item 4).

The DAS originals (ViLT / METER ``forward``, LaVIN-DAS ``engine.py``) score the candidates inside the training step:
after the step's forward and before its backward and optimizer step, so every candidate is scored with the very
weights the step's forward used. ``das_round_timing=after_step`` scores once that step's update is done (one update
newer). DVP's KAB scores after the optimizer step (its ``optimizer_step`` hook), and keeps doing so.

A callback records every trainable parameter when a step starts and when it ends; a wrapper on the search's
``update_plans`` records, at scoring time, whether the parameters still are the step-start ones and whether its
gradients already are the step's own (those the step ends with). Weights are moved off their init before training
(and Adam moves them every step).
"""

from __future__ import annotations

import sys
import zlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402
from vlpeft.search.das import DASSearch  # noqa: E402
from vlpeft.search.kab import KABSearch  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

STEPS = 5


@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("timing_arrows")
    write_synthetic(root, seed=5, images=24, variants=("vqa",))
    return root


class _Watch(pl.Callback):
    def __init__(self):
        self.rounds: list[dict] = []
        self.steps: list[tuple[dict, dict]] = []
        self.grads: list[dict] = []  # per step: the gradients when it ends

    @staticmethod
    def _trainable(module) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in module.named_parameters() if p.requires_grad}

    def setup(self, trainer, pl_module, stage):
        with torch.no_grad():  # off the init: every parameter gets a name-seeded perturbation
            for n, p in pl_module.named_parameters():
                g = torch.Generator().manual_seed(zlib.crc32(n.encode()))
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
        search, update = pl_module.search, pl_module.search.update_plans

        def recording_update(plans, values):
            now = self._trainable(pl_module)
            start = self.steps[-1][0]
            self.rounds.append({
                "step": len(self.steps) - 1,
                "as_step_start": all(torch.equal(now[n], start[n]) for n in now),
                "grads": self._grads(pl_module),
            })
            return update(plans, values)

        search.update_plans = recording_update

    @staticmethod
    def _grads(module) -> dict[str, torch.Tensor | None]:
        return {n: None if p.grad is None else p.grad.detach().clone()
                for n, p in module.named_parameters() if p.requires_grad}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.steps.append((self._trainable(pl_module), {}))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.steps[-1] = (self.steps[-1][0], self._trainable(pl_module))
        self.grads.append(self._grads(pl_module))

    def grads_are_the_steps(self, r: dict) -> bool:
        """Whether the gradients at scoring time are those the scoring step ended with (its backward had run)."""
        end = self.grads[r["step"]]
        assert any(g is not None for g in end.values())
        return all((r["grads"][n] is None) == (end[n] is None)
                   and (end[n] is None or torch.equal(r["grads"][n], end[n])) for n in end)


def _search(arrows: Path, log: Path, monkeypatch, **updates) -> _Watch:
    from vlpeft import runner

    watch = _Watch()
    real = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer", lambda *a, **kw: real(*a, **dict(kw, extra_callbacks=[watch])))
    cfg = dict(data_root=str(arrows), log_dir=str(log), per_gpu_batchsize=8, batch_size=8, max_epoch=1,
               max_steps=STEPS, num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=3,
               stage="search", das_warmup_epoch=0, das_turn=2, drop_rate=0.0, **updates)
    run_py.ex.run(named_configs=["demo"], config_updates=cfg, options={"--loglevel": "ERROR"})
    monkeypatch.setattr(runner, "build_trainer", real)
    assert watch.rounds, "no reward round ran"
    for start, end in watch.steps:  # every step really moves the weights
        assert any(not torch.equal(start[n], end[n]) for n in start)
    return watch


def test_das_scores_candidates_before_backward_and_the_optimizer_step(arrows, tmp_path, monkeypatch):
    watch = _search(arrows, tmp_path / "r", monkeypatch)
    # das_turn=2: a round in steps 1 and 3 (the count restarts after each), each on the step-start weights
    assert [r["step"] for r in watch.rounds] == [1, 3]
    assert all(r["as_step_start"] for r in watch.rounds)
    assert not any(watch.grads_are_the_steps(r) for r in watch.rounds)  # the step's backward has not run yet


def test_after_step_option_scores_one_update_later(arrows, tmp_path, monkeypatch):
    watch = _search(arrows, tmp_path / "r", monkeypatch, das_round_timing="after_step")
    assert [r["step"] for r in watch.rounds] == [1, 3]
    assert not any(r["as_step_start"] for r in watch.rounds)
    assert all(watch.grads_are_the_steps(r) for r in watch.rounds)  # after the step's backward and update


def test_each_search_declares_its_originals_timing():
    assert DASSearch(4, 1).round_timing == "before_backward"
    assert DASSearch(4, 1, round_timing="after_step").round_timing == "after_step"
    assert KABSearch(4, search_sample=3).round_timing == "after_step"  # DVP: in optimizer_step, after the step
    with pytest.raises(ValueError, match="das_round_timing"):
        DASSearch(4, 1, round_timing="later")

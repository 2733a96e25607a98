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

import zlib

import pytest
import pytorch_lightning as pl
import torch

from vlpeft.search.das import DASSearch
from vlpeft.search.kab import KABSearch


STEPS = 5
SYNTHETIC = dict(seed=5, images=24)  # this module's arrows (tests/conftest.py)


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


@pytest.fixture
def search_watched(sacred, arrows, tmp_path, trainer_callbacks):
    """``search_watched(**updates)``: a short demo search on this module's arrows under the ``_Watch`` callback."""

    def run(**updates) -> _Watch:
        watch = _Watch()
        trainer_callbacks[:] = [watch]
        sacred("demo", data_root=str(arrows), log_dir=str(tmp_path / "r"), per_gpu_batchsize=8, batch_size=8,
               max_epoch=1, max_steps=STEPS, num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=3,
               stage="search", das_warmup_epoch=0, das_turn=2, drop_rate=0.0, **updates)
        assert watch.rounds, "no reward round ran"
        for start, end in watch.steps:  # every step really moves the weights
            assert any(not torch.equal(start[n], end[n]) for n in start)
        return watch

    return run


def test_das_scores_candidates_before_backward_and_the_optimizer_step(search_watched):
    watch = search_watched()
    # das_turn=2: a round in steps 1 and 3 (the count restarts after each), each on the step-start weights
    assert [r["step"] for r in watch.rounds] == [1, 3]
    assert all(r["as_step_start"] for r in watch.rounds)
    assert not any(watch.grads_are_the_steps(r) for r in watch.rounds)  # the step's backward has not run yet


def test_after_step_option_scores_one_update_later(search_watched):
    watch = search_watched(das_round_timing="after_step")
    assert [r["step"] for r in watch.rounds] == [1, 3]
    assert not any(r["as_step_start"] for r in watch.rounds)
    assert all(watch.grads_are_the_steps(r) for r in watch.rounds)  # after the step's backward and update


def test_each_search_declares_its_originals_timing():
    assert DASSearch(4, 1).round_timing == "before_backward"
    assert DASSearch(4, 1, round_timing="after_step").round_timing == "after_step"
    assert KABSearch(4, search_sample=3).round_timing == "after_step"  # DVP: in optimizer_step, after the step
    with pytest.raises(ValueError, match="das_round_timing"):
        DASSearch(4, 1, round_timing="later")

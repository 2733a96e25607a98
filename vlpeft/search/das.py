"""DAS — Dynamic Architecture Skipping: which ``skip_num`` of ``num_layers`` blocks to replace by skip adapters.

The search state (gates, counters, the RNG position and the gate history) lives in registered buffers, so it
is saved in checkpoints, broadcast by DDP and restored on resume. All random draws come from a
``torch.Generator`` seeded from ``(seed, draw_count)``: every DDP rank makes the same draws without talking
to the others, and a resumed run continues the same stream. Probabilities are computed in float64 on the CPU
so the draws do not depend on the device or dtype the buffers were moved to.

This module never imports a backbone: the caller runs the forwards and passes the (all-reduced) losses in.
Reward rounds are counted in training forwards (micro-batches), as the original; ``das_count_unit=optimizer_step``
counts optimizer steps instead (4×, 2× and 64× fewer rounds on the original VQA / NLVR2 / F30K scripts, whose
gradient accumulation is 4, 2 and 64). A due round is scored inside the training step, after its forward and
before its backward and optimizer step, as every DAS original (ViLT / METER ``forward``, LaVIN-DAS ``engine.py``);
``das_round_timing=after_step`` scores once the step's update is done (one update newer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from vlpeft._protocol import LayerPlan
from vlpeft.search._base import ROUND_TIMINGS, SEARCHES, SearchStrategy
from vlpeft.search._base import SearchBatch
from vlpeft.search.placement import Placement
from vlpeft.sections import declared_keys, take

_MAX_REJECTIONS = 10_000  # see propose_candidates

class DASSearch(SearchStrategy):
    """DAS gate search (spec: search_algorithms.md "DAS", seeds.md §4.1).

    Buffers: ``das_gate`` (float32, zeros, length num_layers), ``skip_num`` (long scalar), ``das_count``
    (long; training forwards since the last reward round), ``round_count`` (long; reward rounds done),
    ``draw_count`` (long; RNG position), ``history`` (float32 [T, num_layers] raw gates).
    """

    def __init__(self, num_layers: int, skip_num: int, das_step: int = 3, das_turn: int = 10,
                 das_epoch: int = 3, warmup_epochs: int = 1, lr: float = 1.0, seed: int = 0,
                 count_unit: str = "micro_batch", rounds_per_epoch: int = 0, reward_batch_mult: int = 1,
                 round_timing: str = "before_backward") -> None:
        super().__init__(num_layers, seed)
        if count_unit not in ("micro_batch", "optimizer_step"):
            raise ValueError(f"das_count_unit={count_unit!r}; use micro_batch (the original DAS) or optimizer_step")
        if round_timing not in ROUND_TIMINGS:
            raise ValueError(f"das_round_timing={round_timing!r}; use before_backward (the original DAS) or after_step")
        self.count_unit = count_unit
        self.round_timing = round_timing
        for name, value, low in (("skip_num", skip_num, 1), ("das_step", das_step, 2), ("das_turn", das_turn, 1),
                                 ("das_epoch", das_epoch, 0), ("warmup_epochs", warmup_epochs, 0),
                                 ("das_rounds_per_epoch", rounds_per_epoch, 0),
                                 ("das_reward_batch_mult", reward_batch_mult, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                why = " (the reward baseline is the mean over candidates, so one candidate never learns)" \
                    if name == "das_step" else ""
                raise ValueError(f"DAS: {name}={value!r} must be an int >= {low}{why}")
        if skip_num > num_layers:
            raise ValueError(
                f"DAS: skip_num={skip_num} is larger than the number of layers ({num_layers}); "
                f"choose skip_num <= {num_layers}"
            )
        n_sets = math.comb(num_layers, skip_num)
        if n_sets < das_step:
            raise ValueError(
                f"DAS: das_step={das_step} distinct candidate skip sets are needed per reward round, but only "
                f"C({num_layers}, skip_num={skip_num}) = {n_sets} exist with {num_layers} layers; "
                f"lower das_step or change skip_num"
            )
        if not math.isfinite(lr):
            raise ValueError(f"DAS: lr={lr!r} must be finite")
        self.das_step = das_step
        self.das_turn = das_turn
        self.rounds_per_epoch = rounds_per_epoch  # > 0: das_turn = epoch length // this (fit_epoch_length)
        self._count_epoch: int | None = None  # the epoch das_count counts in (LaVIN's cadence only)
        self.reward_batch_mult = reward_batch_mult
        self.das_epoch = das_epoch
        self.warmup_epochs = warmup_epochs
        self.lr = float(lr)
        self.register_buffer("das_gate", torch.zeros(num_layers, dtype=torch.float32))
        self.register_buffer("skip_num", torch.tensor(skip_num, dtype=torch.long))
        self.register_buffer("das_count", torch.zeros((), dtype=torch.long))
        self.register_buffer("round_count", torch.zeros((), dtype=torch.long))

    # --- helpers --------------------------------------------------------------------------------------------
    @property
    def k(self) -> int:
        return int(self.skip_num)

    def probabilities(self) -> Tensor:
        """Skip probabilities ``sigmoid(das_gate)`` in float64 on the CPU (not normalised)."""
        g = self.das_gate.detach().to("cpu", torch.float64)
        if not torch.isfinite(g).all():
            raise RuntimeError(f"DAS: das_gate has non-finite values {g.tolist()}; the search state is corrupt")
        # Clamp so multinomial without replacement always has k non-zero categories to choose from.
        return torch.sigmoid(g).clamp_min(torch.finfo(torch.float64).tiny)

    def _current_vector(self) -> Tensor:
        return self.das_gate

    # --- schedule -------------------------------------------------------------------------------------------
    def in_search(self, epoch: int) -> bool:
        """True while epoch < das_epoch: training forwards sample skip sets and reward rounds may run."""
        return epoch < self.das_epoch

    @torch.no_grad()
    def step_counter(self, epoch: int) -> bool:
        """Count one training forward; True when a reward round is due (then the count restarts).

        As in the original, the count also grows during the warm-up epochs, so the first forward after the
        warm-up starts a round at once, then every ``das_turn``-th forward. Outside the search nothing is
        counted. The caller decides the unit it calls this in (micro-batches in the original).
        With ``das_rounds_per_epoch`` (LaVIN-DAS's cadence) the count restarts at each epoch, as LaVIN's
        ``nas_count`` is local to its epoch loop.
        """
        if not self.in_search(epoch):
            return False
        if self.rounds_per_epoch > 0:
            if self._count_epoch is not None and epoch != self._count_epoch:
                self.das_count.zero_()
            self._count_epoch = epoch  # not a buffer: a resumed run keeps the saved count for its epoch
        self.das_count += 1
        if int(self.das_count) >= self.das_turn and epoch >= self.warmup_epochs:
            self.das_count.zero_()
            return True
        return False

    should_score = step_counter

    # --- draws ----------------------------------------------------------------------------------------------
    def _draw_subset(self, probs: Tensor, gen: torch.Generator) -> list[int]:
        return sorted(int(i) for i in torch.multinomial(probs, self.k, replacement=False, generator=gen))

    @torch.no_grad()
    def sample_train_skip(self) -> list[int]:
        """``skip_num`` distinct blocks ~ multinomial(sigmoid(gate)) without replacement, sorted ascending."""
        return self._draw_subset(self.probabilities(), self._next_generator())

    @torch.no_grad()
    def propose_candidates(self) -> list[list[int]]:
        """``das_step`` distinct sorted skip sets, each re-drawn until it differs from the earlier ones."""
        probs = self.probabilities()
        gen = self._next_generator()
        seen: list[list[int]] = []
        tries = 0
        while len(seen) < self.das_step:
            tries += 1
            # Fallback for near-degenerate gates, where new sets would take practically forever to appear;
            # C(n, k) >= das_step (checked at construction) makes uniform draws finish.
            weights = probs if tries <= _MAX_REJECTIONS else torch.ones_like(probs)
            subset = self._draw_subset(weights, gen)
            if subset not in seen:
                seen.append(subset)
        return seen

    # --- update ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, candidates: Sequence[Sequence[int]], losses: Tensor | Sequence[float]) -> dict[str, Any]:
        """One REINFORCE-style gate update from the candidates' summed task losses.

        ``R_s = exp(-loss_s)``, ``b = mean_s R_s``; for every block i of candidate s:
        ``das_gate[i] += lr * (R_s - b) * p_i * (1 - p_i)`` with p = sigmoid(das_gate) from before the update
        (a block in several candidates accumulates). Pass losses already reduced across DDP ranks.
        Returns ``{"rewards": list[float], "baseline": float, "losses": list[float]}``.
        """
        loss = torch.as_tensor(losses).detach().to("cpu", torch.float64).reshape(-1)
        if loss.numel() != len(candidates) or loss.numel() == 0:
            raise ValueError(
                f"DAS update: got {len(candidates)} candidate sets but {loss.numel()} losses; pass one loss per set"
            )
        if not torch.isfinite(loss).all():
            raise ValueError(f"DAS update: non-finite candidate losses {loss.tolist()}; check the scoring forward")
        for cand in candidates:
            bad = [i for i in cand if not 0 <= int(i) < self.num_layers]
            if bad:
                raise ValueError(f"DAS update: candidate {list(cand)} has block(s) {bad} outside 0..{self.num_layers - 1}")
        p = torch.sigmoid(self.das_gate.detach().to("cpu", torch.float64))
        weight = p * (1.0 - p)
        rewards = torch.exp(-loss)
        baseline = rewards.mean()
        delta = torch.zeros_like(p)
        for reward, cand in zip(rewards, candidates):
            for i in cand:
                delta[int(i)] += self.lr * (reward - baseline) * weight[int(i)]
        new_gate = self.das_gate.detach().to("cpu", torch.float64) + delta
        self.das_gate.copy_(new_gate.to(self.das_gate.device, self.das_gate.dtype))
        self.round_count += 1
        return {"rewards": rewards.tolist(), "baseline": float(baseline), "losses": loss.tolist()}

    # --- result ---------------------------------------------------------------------------------------------
    def best(self) -> list[int]:
        """The ``skip_num`` blocks with the largest gates, sorted by block index.

        Ties go to the **higher** index, as the original (``torch.sort(das_gate)[1][-skip_num:]``: an ascending
        sort keeps equal gates in index order, so the last ones taken are the highest indices).
        """
        g = self.das_gate.detach().to("cpu", torch.float64)
        order = torch.sort(g, stable=True).indices  # stable: equal gates keep index order
        return sorted(int(i) for i in order[-self.k:])

    def placement(self, meta: dict[str, Any] | None = None, base: LayerPlan | None = None) -> Placement:
        return Placement.das(self.best(), insert_layer=None if base is None else base.insert_layer,
                             num_layers=self.num_layers,
                             scores=tuple(self.das_gate.detach().cpu().tolist()), meta=dict(meta or {}))

    def save_plot(self, path: str | Path, title: str = "DAS skip probabilities") -> Path:
        """Plot sigmoid(gate) per block over the recorded history, the current choice highlighted."""
        return self._save_plot(path, title, "skip probability sigmoid(gate)", self.best(), torch.sigmoid)

    # --- the search strategy protocol -------------------------------------------------------------------------
    plan_field = "skip"

    def search_batch_size(self, batch: SearchBatch | Mapping[str, Any]) -> int:
        """``search_val_batch_size``, else ``das_reward_batch_mult × per_gpu_batchsize`` (LaVIN-DAS: 4 × the batch)."""
        b = take(SearchBatch, batch)
        return int(b.search_val_batch_size or self.reward_batch_mult * b.per_gpu_batchsize)

    def fit_epoch_length(self, batches_per_epoch: int, accumulate: int) -> str | None:
        """With ``das_rounds_per_epoch`` = R > 0: ``das_turn = max(1, n // R)``, n = this rank's training loader
        length in the counted unit (micro-batches, or optimizer steps with ``das_count_unit=optimizer_step``).
        LaVIN-DAS: ``nas_turn = len(data_loader) // 150``; a quotient of 0 there starts a round every iteration,
        which ``max(1, ·)`` gives too."""
        if self.rounds_per_epoch <= 0 or not math.isfinite(batches_per_epoch):
            return None
        n = int(batches_per_epoch) // (max(1, int(accumulate)) if self.count_unit == "optimizer_step" else 1)
        self.das_turn = max(1, n // self.rounds_per_epoch)
        return (f"[DAS] das_turn = max(1, {n} // das_rounds_per_epoch={self.rounds_per_epoch}) = {self.das_turn} "
                f"{self.count_unit}s between reward rounds (das_rounds_per_epoch=0 uses das_turn)")

    def train_plan(self, epoch: int, base: LayerPlan) -> LayerPlan:
        return base.replace(skip=self.sample_train_skip() if self.in_search(epoch) else self.best())

    def eval_plan(self, base: LayerPlan) -> LayerPlan:
        return base.replace(skip=self.best())

    def round_due(self, epoch: int, optimizer_step: bool) -> bool:
        if self.count_unit == "optimizer_step" and not optimizer_step:
            return False
        return self.in_search(epoch) and self.step_counter(epoch)

    def propose(self, base: LayerPlan) -> list[LayerPlan]:
        return [base.replace(skip=c) for c in self.propose_candidates()]

    def reward_value(self, out: dict[str, Any], task: Any) -> Tensor:
        return out["loss"].detach().float()  # the reward exp(-loss) is formed in update, after the rank mean

    def update_plans(self, plans: Sequence[LayerPlan], values: Tensor) -> dict[str, Any]:
        return self.update([sorted(p.skip) for p in plans], values)

    def epoch_message(self, epoch: int) -> str:
        return f"[DAS] epoch {epoch}: skip {self.best()}  gates {[round(float(g), 4) for g in self.das_gate]}"

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, skip_num={self.k}, das_step={self.das_step}, "
                f"das_turn={self.das_turn}, das_epoch={self.das_epoch}, warmup_epochs={self.warmup_epochs}, "
                f"lr={self.lr}, seed={self.seed}")


@dataclass(frozen=True)
class DasSettings:
    """The keys the DAS search reads; the defaults are the keys' defaults (ViLT-DAS ``vilt/config.py``, ours for
    the LaVIN-DAS ones)."""

    seed: int
    skip_num: int = 4
    das_step: int = 3
    das_turn: int = 10
    das_epoch: int = 3
    das_warmup_epoch: int = 1
    das_lr: float = 1.0
    das_count_unit: str = "micro_batch"  # micro_batch (the original) | optimizer_step
    das_round_timing: str = "before_backward"  # before_backward (the original) | after_step
    das_rounds_per_epoch: int = 0  # > 0: das_turn = len(train loader) // this (LaVIN-DAS: 150); 0: das_turn
    das_reward_batch_mult: int = 1  # reward batch = this × per_gpu_batchsize (LaVIN-DAS: 4)


DAS_KEYS = declared_keys(DasSettings)  # the keys with their defaults (kept for callers of the old name)


@SEARCHES.register("das", spec=DasSettings, needs="skip",
                   test=dict(backbone="test_vilt", config=dict(skip_num=1, das_step=2)))
def build_das(settings: DasSettings | Mapping[str, Any], num_layers: int) -> DASSearch:
    s = take(DasSettings, settings)
    return DASSearch(num_layers, s.skip_num, das_step=s.das_step, das_turn=s.das_turn, das_epoch=s.das_epoch,
                     warmup_epochs=s.das_warmup_epoch, lr=s.das_lr, seed=s.seed, count_unit=s.das_count_unit,
                     rounds_per_epoch=s.das_rounds_per_epoch, reward_batch_mult=s.das_reward_batch_mult,
                     round_timing=s.das_round_timing)

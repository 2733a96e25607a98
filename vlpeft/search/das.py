"""DAS — Dynamic Architecture Skipping: which ``skip_num`` of ``num_layers`` blocks to replace by skip adapters.

The search state (gates, counters, the RNG position and the gate history) lives in registered buffers, so it
is saved in checkpoints, broadcast by DDP and restored on resume. All random draws come from a
``torch.Generator`` seeded from ``(seed, draw_count)``: every DDP rank makes the same draws without talking
to the others, and a resumed run continues the same stream. Probabilities are computed in float64 on the CPU
so the draws do not depend on the device or dtype the buffers were moved to.

This module never imports a backbone: the caller runs the forwards and passes the (all-reduced) losses in.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import Tensor, nn

from vlpeft.search.placement import Placement

# Multiplier that spreads (seed, counter) pairs apart; any odd constant larger than the number of draws works.
_SEED_STRIDE = 1_000_003
# Rejection sampling of distinct candidate sets gives up on the gate distribution after this many tries
# (only reachable when a few gates have become overwhelmingly large) and falls back to uniform weights.
_MAX_REJECTIONS = 10_000


class SearchState(nn.Module):
    """Shared machinery of the two searches: seeded draws and a growable ``history`` buffer."""

    def __init__(self, num_layers: int, seed: int) -> None:
        super().__init__()
        if isinstance(num_layers, bool) or not isinstance(num_layers, int) or num_layers < 1:
            raise ValueError(f"num_layers={num_layers!r}: must be a positive int (read it from the backbone)")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise ValueError(f"seed={seed!r}: must be an int")
        self.num_layers = num_layers
        self.seed = seed
        # Number of generator draws made so far; the next draw is seeded from (seed, draw_count).
        self.register_buffer("draw_count", torch.zeros((), dtype=torch.long))
        # Reward/mini-validation batches consumed so far: a resumed run continues the batch stream from here.
        self.register_buffer("reward_batches", torch.zeros((), dtype=torch.long))
        # One row per record_history() call; re-registered on append, resized on load.
        self.register_buffer("history", torch.zeros(0, num_layers, dtype=torch.float32))

    # --- randomness ---------------------------------------------------------------------------------------
    def _next_generator(self) -> torch.Generator:
        counter = int(self.draw_count)
        self.draw_count += 1
        # manual_seed needs a non-negative value below 2**64; the modulus keeps huge/negative seeds valid.
        return torch.Generator(device="cpu").manual_seed((self.seed * _SEED_STRIDE + counter) % (2**63))

    # --- history --------------------------------------------------------------------------------------------
    def _current_vector(self) -> Tensor:  # pragma: no cover - overridden
        raise NotImplementedError

    @torch.no_grad()
    def record_history(self) -> None:
        """Append the current raw gate/preference vector as one row of ``history``."""
        row = self._current_vector().detach().to(self.history.device, self.history.dtype).reshape(1, -1)
        self.history = torch.cat([self.history, row], dim=0)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs) -> None:
        # The saved history usually has more rows than a freshly built module's: resize ours first so the
        # ordinary shape-checked copy accepts it. A different layer count is left to fail loudly.
        saved = state_dict.get(prefix + "history")
        if isinstance(saved, Tensor) and saved.dim() == 2 and saved.shape[1] == self.num_layers:
            self.history = torch.empty(saved.shape, dtype=self.history.dtype, device=self.history.device)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)

    def _save_plot(self, path: str | Path, title: str, ylabel: str, chosen: Sequence[int],
                   transform: Callable[[Tensor], Tensor]) -> Path:
        from vlpeft.search.plot import save_history_plot  # matplotlib only when a plot is asked for

        return save_history_plot(self.history, path, title=title, ylabel=ylabel, chosen=list(chosen),
                                 transform=transform)


class DASSearch(SearchState):
    """DAS gate search (spec: search_algorithms.md "DAS", seeds.md §4.1).

    Buffers: ``das_gate`` (float32, zeros, length num_layers), ``skip_num`` (long scalar), ``das_count``
    (long; training forwards since the last reward round), ``round_count`` (long; reward rounds done),
    ``draw_count`` (long; RNG position), ``history`` (float32 [T, num_layers] raw gates).
    """

    def __init__(self, num_layers: int, skip_num: int, das_step: int = 3, das_turn: int = 10,
                 das_epoch: int = 3, warmup_epochs: int = 1, lr: float = 1.0, seed: int = 0) -> None:
        super().__init__(num_layers, seed)
        for name, value, low in (("skip_num", skip_num, 1), ("das_step", das_step, 2), ("das_turn", das_turn, 1),
                                 ("das_epoch", das_epoch, 0), ("warmup_epochs", warmup_epochs, 0)):
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
        """
        if not self.in_search(epoch):
            return False
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

    def placement(self, meta: dict[str, Any] | None = None) -> Placement:
        return Placement.das(self.best(), num_layers=self.num_layers,
                             scores=tuple(self.das_gate.detach().cpu().tolist()), meta=dict(meta or {}))

    def save_plot(self, path: str | Path, title: str = "DAS skip probabilities") -> Path:
        """Plot sigmoid(gate) per block over the recorded history, the current choice highlighted."""
        return self._save_plot(path, title, "skip probability sigmoid(gate)", self.best(), torch.sigmoid)

    def extra_repr(self) -> str:
        return (f"num_layers={self.num_layers}, skip_num={self.k}, das_step={self.das_step}, "
                f"das_turn={self.das_turn}, das_epoch={self.das_epoch}, warmup_epochs={self.warmup_epochs}, "
                f"lr={self.lr}, seed={self.seed}")

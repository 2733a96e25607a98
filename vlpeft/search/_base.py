"""The search strategy protocol and its registry; the state machinery both searches share.

A strategy decides one field of a ``LayerPlan`` (``plan_field``: ``skip`` for DAS, ``insert_layer`` for KAB) and
keeps every piece of its state in buffers (saved in checkpoints, identical on every rank, restored on resume).
The Lightning module runs one generic round: ``round_due`` → ``propose(base)`` → score each plan on one reward
batch → ``reward_value`` per plan → mean across ranks → ``update_plans`` → ``record_history``, at the point of the
training step the strategy's ``round_timing`` names (DAS: before backward; KAB: after the optimizer step); steps use
``train_plan(epoch, base)`` and evaluation ``eval_plan(base)``; a run ends with ``placement()`` and ``save_plot``.
Entries of ``SEARCHES`` declare the candidate kind they need (``needs``: ``skip`` or ``insert``), so a backbone
that lacks it is refused with the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from vlpeft._registry import Registry
from vlpeft._protocol import LayerPlan
from vlpeft.sections import key, take

SEARCHES: Registry["SearchStrategy"] = Registry("search", "search")
ROUND_TIMINGS = ("before_backward", "after_step")

# Multiplier that spreads (seed, counter) pairs apart; any odd constant larger than the number of draws works.
_SEED_STRIDE = 1_000_003


class SearchState(nn.Module):
    """Shared machinery of the two searches: seeded draws and a growable ``history`` buffer."""

    resizable_buffers = ("history",)  # the checkpoint loader lets these differ in shape (resized on load)

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

    def _apply(self, fn, recurse: bool = True):
        """The search state stays on the host whatever device the model moves to: its draws and updates are
        CPU float64 work, so keeping it there means no device→host copy on any training step (the rewards cross
        once per round). DDP is told to leave these buffers alone (``ddp_ignore``); ranks agree by construction."""
        return self

    @staticmethod
    def ddp_ignore(module: nn.Module, prefix: str = "search") -> None:
        from torch.nn.parallel import DistributedDataParallel

        names = [f"{prefix}.{n}" for n, _ in module.get_submodule(prefix).named_buffers()]
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(module, names)

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




class SearchStrategy(SearchState):
    """The interface the Lightning module drives (see the module docstring); subclasses implement it."""

    plan_field = ""
    # When the Lightning module runs a due round (``ROUND_TIMINGS``): "before_backward" = inside the training step,
    # after its forward and before its backward and optimizer step (DAS: ViLT / METER / LaVIN-DAS score there);
    # "after_step" = once the training step's optimizer step is done (DVP's KAB scores in optimizer_step).
    round_timing = "after_step"

    def search_batch_size(self, batch: "SearchBatch | Mapping[str, Any]") -> int:
        b = take(SearchBatch, batch)
        return int(b.search_val_batch_size or b.per_gpu_batchsize)

    def fit_epoch_length(self, batches_per_epoch: int, accumulate: int) -> str | None:
        """Told the training loader's length on this rank (micro-batches) when training starts, for a cadence given
        as a share of the epoch; returns a line to print, or None. Default: nothing depends on it."""
        return None

    def train_plan(self, epoch: int, base: LayerPlan) -> LayerPlan:  # pragma: no cover - abstract
        raise NotImplementedError

    def eval_plan(self, base: LayerPlan) -> LayerPlan:  # pragma: no cover
        raise NotImplementedError

    def round_due(self, epoch: int, optimizer_step: bool) -> bool:  # pragma: no cover
        raise NotImplementedError

    def propose(self, base: LayerPlan) -> list[LayerPlan]:  # pragma: no cover
        raise NotImplementedError

    def reward_value(self, out: dict[str, Any], task: Any) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    def update_plans(self, plans: Sequence[LayerPlan], values: Tensor) -> dict[str, Any]:  # pragma: no cover
        raise NotImplementedError

    def round_message(self, epoch: int, info: dict[str, Any], mean_loss: float) -> str | None:
        return None

    def epoch_message(self, epoch: int) -> str | None:
        return None

    def val_message(self, epoch: int) -> str | None:
        return None

    def placement(self, meta: dict[str, Any] | None = None):  # pragma: no cover
        raise NotImplementedError

    def save_plot(self, path: str | Path) -> Path:  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class SearchBatch:
    """The batch keys a search's reward / mini-validation batch derives from (defaults: the base config's)."""

    per_gpu_batchsize: int
    batch_size: int
    search_val_batch_size: int
    score_mode: str = key("search_score_mode", default="eval", shared=True)  # eval: dropout off while scoring


def build_search(name: str, config: Any, candidates) -> SearchStrategy:
    """The strategy ``name`` for a backbone with ``candidates``; refuses a backbone that lacks the candidate kind."""
    entry = SEARCHES.get(name)
    need = entry.meta.get("needs")
    if need and need not in candidates.kinds():
        what = {"skip": "skips units (needs units that can be skipped)",
                "insert": "places a prompt before a unit (needs units a prompt can enter before)"}[need]
        raise ValueError(f"search={name} {what}; this backbone offers only {candidates.kinds()} candidates — "
                         f"choose another search or backbone")
    return SEARCHES.build(name, config, candidates.count)





def finish_search(search: SearchStrategy, base: LayerPlan, run_dir: Path, is_global_zero: bool):
    """A search ends by checking that every rank holds the same state, then printing and saving its placement
    (``placement.json`` + the PNG of per-layer preferences) in the run folder. Returns the placement (rank 0)."""
    import torch.distributed as dist

    state = torch.cat([b.detach().double().flatten().cpu() for _, b in search.named_buffers()])
    agree, world = True, 1
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        world = dist.get_world_size()
        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, state.tolist())
        agree = all(g == gathered[0] for g in gathered)
        if not agree:
            raise RuntimeError(f"search state differs across DDP ranks: {gathered}")
    if not is_global_zero:
        return None
    placement = search.placement(meta={"world_size": world, "ranks_agree": agree,
                                       "rounds": int(search.reward_batches)}, base=base)
    placement.save(run_dir / "placement.json")
    search.save_plot(run_dir / "placement.png")
    chosen = (f"skip layers {list(placement.skip)}" if search.plan_field == "skip"
              else f"insert the visual prompt at layer {placement.insert_layer}")
    print(f"\n[vlpeft] search finished: {chosen}\n[vlpeft] wrote {run_dir / 'placement.json'} and "
          f"{run_dir / 'placement.png'}", flush=True)
    return placement

def reward_stream(loader, start_pass: int = 0, skip_batches: int = 0) -> Iterator:
    """Endless passes over the reward/mini-val loader, a new seeded order each pass (the originals reused one
    batch), starting ``skip_batches`` into pass ``start_pass`` (a resumed search continues where it stood)."""
    epoch = start_pass
    while True:
        loader.sampler.set_epoch(epoch)
        loader.sampler.skip, skip_batches = skip_batches * loader.batch_size, 0
        yielded = False
        for b in loader:
            yielded = True
            yield b
        if not yielded:
            raise ValueError("the search split is empty; check the val split files under data_root")
        epoch += 1


def mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    """Reward values averaged over DDP ranks before the update, so every rank updates the same way."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


__all__ = ["ROUND_TIMINGS", "SEARCHES", "SearchBatch", "SearchState", "SearchStrategy", "build_search", "finish_search", "mean_across_ranks",
           "reward_stream"]

"""KAB-APP — k-armed-bandit automatic prompt placement (DVP): the one layer where the visual prompt goes in.

State in buffers (saved, DDP-broadcast, resumable): ``layer_alphas`` (preferences; π = softmax(α)),
``draw_count`` (RNG position), ``stage_count`` (sampling stages done), ``history`` (α per record).
Draws use a generator seeded from ``(seed, draw_count)`` so all ranks and a resumed run agree.
The caller runs the scoring forwards and passes the (all-reduced) scores in; no backbone is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from vlpeft._protocol import LayerPlan
from vlpeft.search._base import SEARCHES, SearchStrategy
from vlpeft.search._base import SearchBatch
from vlpeft.search.placement import Placement
from vlpeft.sections import take


class KABSearch(SearchStrategy):
    """KAB-APP (spec: search_algorithms.md "DVP", seeds.md §4.3)."""

    def __init__(self, num_layers: int, search_sample: int = 5, lr: float = 0.005, seed: int = 0) -> None:
        super().__init__(num_layers, seed)
        if isinstance(search_sample, bool) or not isinstance(search_sample, int) or search_sample < 2:
            raise ValueError(
                f"KAB: search_sample={search_sample!r} must be an int >= 2 (the reward is the score minus the "
                "mean score of the stage, so a single draw never learns)"
            )
        if not math.isfinite(lr):
            raise ValueError(f"KAB: lr={lr!r} must be finite")
        self.search_sample = search_sample
        self.lr = float(lr)
        self.register_buffer("layer_alphas", torch.zeros(num_layers, dtype=torch.float32))
        self.register_buffer("stage_count", torch.zeros((), dtype=torch.long))

    def _current_vector(self) -> Tensor:
        return self.layer_alphas

    def probabilities(self) -> Tensor:
        """Layer preferences softmax(layer_alphas), float64 on the CPU."""
        a = self.layer_alphas.detach().to("cpu", torch.float64)
        if not torch.isfinite(a).all():
            raise RuntimeError(f"KAB: layer_alphas has non-finite values {a.tolist()}; the search state is corrupt")
        return torch.softmax(a, dim=0)

    # --- draws ----------------------------------------------------------------------------------------------
    @torch.no_grad()
    def sample_train_layer(self) -> int:
        """Insertion layer for one training step, uniform over 0..num_layers-1."""
        return int(torch.randint(self.num_layers, (1,), generator=self._next_generator()))

    @torch.no_grad()
    def propose_layers(self) -> list[int]:
        """``search_sample`` layers drawn with replacement from softmax(layer_alphas) (repeats allowed)."""
        probs = self.probabilities()
        draws = torch.multinomial(probs, self.search_sample, replacement=True, generator=self._next_generator())
        return [int(i) for i in draws]

    # --- update ---------------------------------------------------------------------------------------------
    @torch.no_grad()
    def update(self, layers: Sequence[int], scores: Tensor | Sequence[float]) -> dict[str, Any]:
        """``r_j = s_j - mean(s)``; ``α[K_j] += lr · r_j · π_{K_j}(1 − π_{K_j})`` with π from before the update.

        Repeated arms accumulate. Pass scores (task score in percent) already reduced across DDP ranks.
        Returns ``{"mean_score", "max_reward", "arch_loss" (mean −log π_{K_j}), "rewards", "best"}``.
        """
        s = torch.as_tensor(scores).detach().to("cpu", torch.float64).reshape(-1)
        if s.numel() != len(layers) or s.numel() == 0:
            raise ValueError(f"KAB update: got {len(layers)} layers but {s.numel()} scores; pass one score per draw")
        if not torch.isfinite(s).all():
            raise ValueError(f"KAB update: non-finite scores {s.tolist()}; check the scoring forward")
        bad = [k for k in layers if not 0 <= int(k) < self.num_layers]
        if bad:
            raise ValueError(f"KAB update: layer(s) {bad} outside 0..{self.num_layers - 1}")
        pi = self.probabilities()
        idx = torch.tensor([int(k) for k in layers], dtype=torch.long)
        rewards = s - s.mean()
        weight = pi[idx] * (1.0 - pi[idx])
        delta = torch.zeros_like(pi).index_add_(0, idx, self.lr * rewards * weight)  # repeats accumulate
        new_alpha = self.layer_alphas.detach().to("cpu", torch.float64) + delta
        self.layer_alphas.copy_(new_alpha.to(self.layer_alphas.device, self.layer_alphas.dtype))
        self.stage_count += 1
        return {
            "mean_score": float(s.mean()),
            "max_reward": float(rewards.max()),
            "arch_loss": float((-torch.log(pi[idx])).mean()),
            "rewards": rewards.tolist(),
            "best": self.best(),
        }

    def progress_due(self, every: int = 100) -> bool:
        """True after every ``every``-th sampling stage (the original prints its progress line then)."""
        n = int(self.stage_count)
        return n > 0 and n % every == 0

    # --- result ---------------------------------------------------------------------------------------------
    def best(self) -> int:
        """argmax of layer_alphas; ties → lowest index (so 0 before any update)."""
        a = self.layer_alphas.detach().to("cpu", torch.float64)
        return int(torch.nonzero(a == a.max())[0])

    def placement(self, meta: dict[str, Any] | None = None, base: LayerPlan | None = None) -> Placement:
        return Placement.kab(self.best(), skip=() if base is None else tuple(sorted(base.skip)),
                             num_layers=self.num_layers,
                             scores=tuple(self.layer_alphas.detach().cpu().tolist()), meta=dict(meta or {}))

    def save_plot(self, path: str | Path, title: str = "KAB layer preferences") -> Path:
        """Plot softmax(α) per layer over the recorded history, the current best layer highlighted."""
        return self._save_plot(path, title, "preference softmax(alpha)", [self.best()],
                               lambda h: torch.softmax(h, dim=-1))

    # --- the search strategy protocol -------------------------------------------------------------------------
    plan_field = "insert_layer"
    round_timing = "after_step"  # DVP samples in optimizer_step, after optimizer.step

    def search_batch_size(self, batch: SearchBatch | Mapping[str, Any]) -> int:
        # the original's mini-validation batch is half its global batch size (batch_size // 2)
        b = take(SearchBatch, batch)
        return int(b.search_val_batch_size or max(1, b.batch_size // 2))

    def train_plan(self, epoch: int, base: LayerPlan) -> LayerPlan:
        return base.replace(insert_layer=self.sample_train_layer())

    def eval_plan(self, base: LayerPlan) -> LayerPlan:
        return base.replace(insert_layer=self.best())

    def round_due(self, epoch: int, optimizer_step: bool) -> bool:
        return optimizer_step  # a sampling stage after every optimizer step, as the original

    def propose(self, base: LayerPlan) -> list[LayerPlan]:
        return [base.replace(insert_layer=k) for k in self.propose_layers()]

    def reward_value(self, out: dict[str, Any], task: Any) -> Tensor:
        return torch.tensor(task.search_score(out), dtype=torch.float64)

    def update_plans(self, plans: Sequence[LayerPlan], values: Tensor) -> dict[str, Any]:
        return self.update([p.insert_layer for p in plans], values)

    def round_message(self, epoch: int, info: dict[str, Any], mean_loss: float) -> str | None:
        return format_progress(epoch, int(self.reward_batches), info, mean_loss) if self.progress_due(100) else None

    def val_message(self, epoch: int) -> str | None:
        return f"\n{'=' * 20} Current Architecture [{epoch}] Insert Layer is {self.best()} !"

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, search_sample={self.search_sample}, lr={self.lr}, seed={self.seed}"


def format_progress(epoch: int, batch_idx: int, stats: dict[str, Any], ce_loss: float | None = None) -> str:
    """The every-100-stages progress line: arch loss, CE loss, average score, max reward, best layer."""
    parts = [f"Architecture [{epoch}-{batch_idx}]", f"Arch Loss {stats['arch_loss']:.4f}"]
    if ce_loss is not None:
        parts.append(f"CE Loss {ce_loss:.4f}")
    parts += [f"Ave Score {stats['mean_score']:.2f}", f"Max Reward {stats['max_reward']:.2f}",
              f"Insert Layer is {stats['best']} !"]
    return "  ".join(parts)


@dataclass(frozen=True)
class KabSettings:
    """The keys DVP's KAB-APP search reads (DVP ``dvp/config.py`` defaults)."""

    seed: int
    search_sample: int = 5
    kab_lr: float = 0.005


@SEARCHES.register("kab", spec=KabSettings, needs="insert",
                   test=dict(backbone="test_clip_bert", config=dict(search_sample=4)))
def build_kab(settings: KabSettings | Mapping[str, Any], num_layers: int) -> KABSearch:
    s = take(KabSettings, settings)
    return KABSearch(num_layers, search_sample=s.search_sample, lr=s.kab_lr, seed=s.seed)

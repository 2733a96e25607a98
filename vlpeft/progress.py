"""Progress lines for runs whose output is not a terminal (CI, nohup, a log file).

Lightning's progress bar redraws one line in place; written to a file it shows only its final state, so a
long run looks dead for minutes. When ``sys.stdout`` is not a terminal, :class:`ProgressLines` prints a plain
line every ``progress_interval`` seconds (and at every epoch end) from rank 0:

    [vlpeft] train epoch 1/10 step 120/2500 (batch 37/250) loss 1.2345 | 312.4 samples/s | ETA 0:12:31

The loss is read from the device only when a line is printed (no host sync on other steps).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any

import pytorch_lightning as pl
import torch

from vlpeft.config import ConfigError
from vlpeft.sections import key, take


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except (ValueError, OSError):  # a closed stream
        return False


@dataclass(frozen=True)
class ProgressKeys:
    """What the progress lines read (the trainer section has both)."""

    progress_interval: float = key(default=30.0, shared=True)  # the key's default is the base config's
    stage: str = key(default="train", shared=True)


def progress_callbacks(config: ProgressKeys | Any, stream: Any = None) -> list[pl.Callback]:
    """``[ProgressLines]`` when the output is not a terminal; ``[]`` on a terminal (Lightning's bar shows it)."""
    stream = sys.stdout if stream is None else stream
    if _is_terminal(stream):
        return []
    keys = take(ProgressKeys, config)
    return [ProgressLines(keys.progress_interval, stage=keys.stage)]


def _batch_size(batch: Any) -> int | None:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else None
    if isinstance(batch, dict):
        for k in ("text_ids", "image", "image_0"):  # the ViLT/DVP batch keys first
            if k in batch:
                n = _batch_size(batch[k])
                if n:
                    return n
        batch = list(batch.values())
    if isinstance(batch, (list, tuple)):
        for v in batch:
            n = _batch_size(v)
            if n:
                return n
    return None


def _loss_value(outputs: Any, trainer: pl.Trainer) -> float | None:
    loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
    if not isinstance(loss, torch.Tensor):
        loss = trainer.callback_metrics.get("train/loss")
    if isinstance(loss, torch.Tensor) and loss.numel() == 1:
        return float(loss.detach())
    return None


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class ProgressLines(pl.Callback):
    """Prints a progress line every ``interval`` seconds (0: every batch) and at each training epoch end."""

    def __init__(self, interval: float = 30.0, *, stage: str = "train", stream: Any = None):
        if isinstance(interval, bool) or not isinstance(interval, (int, float)) or interval < 0:
            raise ConfigError(f"progress_interval={interval!r} must be a number of seconds ≥ 0, "
                              "e.g. progress_interval=30 (0 prints every step)")
        self.interval = float(interval)
        self.stage = stage
        self.stream = stream
        self._t0 = self._last = 0.0
        self._samples = 0
        self._start_step = 0

    # -------------------------------------------------------------- hooks
    def on_train_start(self, trainer, pl_module) -> None:
        self._t0 = self._last = time.monotonic()
        self._samples = 0
        self._start_step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self._samples += _batch_size(batch) or 0
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._print(trainer, outputs, batch_idx + 1, now)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._print(trainer, None, None, time.monotonic(), epoch_end=True)

    # -------------------------------------------------------------- the line
    def _print(self, trainer, outputs, batches: int | None, now: float, epoch_end: bool = False) -> None:
        self._last = now
        if not trainer.is_global_zero:
            return
        parts = [f"[vlpeft] {self.stage} epoch {trainer.current_epoch + 1}"
                 + (f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else "")]
        total = trainer.estimated_stepping_batches
        finite = isinstance(total, (int, float)) and math.isfinite(total)
        parts.append(f"step {trainer.global_step}" + (f"/{int(total)}" if finite else ""))
        n_batches = trainer.num_training_batches
        if batches is not None:
            parts[-1] += f" (batch {batches}" + (f"/{n_batches})" if math.isfinite(n_batches) else ")")
        loss = _loss_value(outputs, trainer)
        parts[-1] += f" loss {loss:.4f}" if loss is not None else " loss n/a"
        elapsed = max(now - self._t0, 1e-9)
        rate = self._samples * trainer.world_size / elapsed
        parts.append(f"{rate:.1f} samples/s")
        done = trainer.global_step - self._start_step
        eta = (total - trainer.global_step) * elapsed / done if finite and done > 0 else float("nan")
        parts.append(f"ETA {_hms(eta)}")
        line = " | ".join(parts) + (" (epoch end)" if epoch_end else "")
        print(line, file=self.stream if self.stream is not None else sys.stdout, flush=True)

"""Stop a run at its first non-finite training loss, naming the step, where the batch came from and the likely cause.

Without this a NaN / inf loss trains on silently: every later step is NaN, checkpoints and the trainable weights
are written as if fine, and the process exits 0. Reading the loss on the host in every step would make the host
wait for the device in every step (the training hot path has no host sync, issue 12), so on a GPU the check is
deferred: each step queues ``isfinite(loss)`` as a non-blocking copy into pinned host memory and records an event;
later steps read the flags whose event has completed (``Event.query()`` never waits), and the hooks that write
weights (``flush`` in ``on_save_checkpoint`` and at the end of training) wait for the rest first — so no weights
leave a run once a non-finite loss was computed. On the CPU the flag is already on the host and is read at once.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch

__all__ = ["LossGuard", "NonFiniteLossError", "describe_source"]

# batch fields (host lists, one entry per sample) that say where each sample came from
_ID_KEYS = ("qid", "image_id", "identifier", "iid")
_MAX_PENDING = 4  # a host this far ahead of the device waits anyway: bound the batches kept for the diagnosis
_SHOW = 8


class NonFiniteLossError(FloatingPointError):
    """A training loss was NaN or infinite; the run stops (non-zero exit) before writing any more weights."""


@dataclass
class _Pending:
    flag: torch.Tensor  # bool scalar on the host (filled once ``event`` completes)
    event: Any  # None: ``flag`` is readable now
    loss: torch.Tensor
    step: int
    epoch: int
    batch_idx: int
    batch: Mapping[str, Any] = field(repr=False)


def _rows(batch: Mapping[str, Any]) -> list[str | None]:
    """Each sample's ``<arrow stem>:<row>`` (the collates pass the datasets' ``image_key`` through)."""
    keys = batch.get("image_key")
    return [str(k) if k is not None else None for k in keys] if isinstance(keys, (list, tuple)) else []


def describe_source(batch: Mapping[str, Any], data_root: str | Path | None = None,
                    samples: list[int] | None = None) -> str:
    """Where the batch's samples (or ``samples`` of them) came from: each arrow file with its rows, and the ids the
    batch carries (question ids, image ids, NLVR2 identifiers)."""
    rows = _rows(batch)
    pick = range(len(rows)) if samples is None else [i for i in samples if i < len(rows)]
    by_file: dict[str, list[int]] = {}
    for i in pick:
        stem, _, row = (rows[i] or "").rpartition(":")
        if stem and row.isdigit() and int(row) not in by_file.setdefault(stem, []):
            by_file[stem].append(int(row))
    parts = []
    for stem, local in by_file.items():
        path = Path(data_root) / f"{stem}.arrow" if data_root else Path(f"{stem}.arrow")
        more = f" … ({len(local)} rows)" if len(local) > _SHOW else ""
        parts.append(f"{path} rows {local[:_SHOW]}{more}")
    for key in _ID_KEYS:
        values = batch.get(key)
        if isinstance(values, (list, tuple)) and values:
            chosen = [values[i] for i in (range(len(values)) if samples is None else samples) if i < len(values)]
            more = f" … ({len(chosen)})" if len(chosen) > _SHOW else ""
            parts.append(f"{key} {chosen[:_SHOW]}{more}")
    return "; ".join(parts) if parts else "(the batch carries no source rows)"


def _non_finite_inputs(batch: Mapping[str, Any]) -> dict[str, list[int]]:
    """Floating-point batch tensors holding NaN / inf, with the samples (dim 0) that hold them."""
    out = {}
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dim() > 0:
            bad = ~torch.isfinite(value.detach()).reshape(value.shape[0], -1).all(dim=1)
            if bool(bad.any()):
                out[key] = bad.nonzero().flatten().tolist()
    return out


class LossGuard:
    """``push`` each training loss; a non-finite one raises ``NonFiniteLossError`` (at once on the CPU, within a few
    steps on a GPU, and at the latest in ``flush``, which the module calls before any checkpoint is written).

    A NaN input does not always make its own loss NaN (a masked or clamped path can keep the forward finite while
    the backward is not): the weights then turn NaN in that update and the NEXT loss shows it. So the last checked
    batches are kept (references only) for the diagnosis, and ``flush`` also checks the trainable weights
    (``named_parameters``), which an update with a NaN gradient after the last loss would otherwise let through."""

    def __init__(self, data_root: str | Path | None = None,
                 named_parameters: Callable[[], Iterable[tuple[str, torch.Tensor]]] | None = None,
                 event_factory: Callable[[], Any] | None = None):
        self.data_root = data_root
        self._named_parameters = named_parameters
        self._event_factory = event_factory  # tests: defer on the CPU too
        self._pending: deque[_Pending] = deque()
        self._recent: deque[_Pending] = deque(maxlen=2)  # the last batches whose loss was finite

    def push(self, loss: torch.Tensor, batch: Mapping[str, Any], *, step: int, epoch: int, batch_idx: int) -> None:
        loss = loss.detach()
        flag = torch.isfinite(loss)
        event = None
        if self._event_factory is not None:
            event = self._event_factory()
        elif flag.is_cuda:
            flag = flag.to("cpu", non_blocking=True)  # into pinned memory; valid once the event below completes
            event = torch.cuda.Event()
            event.record()
        self._pending.append(_Pending(flag, event, loss, int(step), int(epoch), int(batch_idx), batch))
        self.poll(wait_for=max(0, len(self._pending) - _MAX_PENDING))

    def poll(self, wait_for: int = 0) -> None:
        """Check every queued loss whose value has reached the host (waiting for the oldest ``wait_for``)."""
        while self._pending:
            p = self._pending[0]
            if p.event is not None:
                if wait_for > 0:
                    p.event.synchronize()
                elif not p.event.query():
                    return
            self._pending.popleft()
            wait_for -= 1
            if not bool(p.flag):
                self._pending.clear()
                raise NonFiniteLossError(self.message(p))
            self._recent.append(p)

    def flush(self) -> None:
        """Wait for every queued loss and check it, then the trainable weights (before weights are written)."""
        self.poll(wait_for=len(self._pending))
        bad = self._bad_weights()
        if bad:
            last = self._recent[-1] if self._recent else None
            at = f" after global step {last.step} (epoch {last.epoch}, batch {last.batch_idx})" if last else ""
            raise NonFiniteLossError(
                f"trainable weights are non-finite{at} although every loss was finite: {bad}. Likely cause: "
                f"{self._cause(None)}. {_STOP}")

    def _bad_weights(self) -> list[str]:
        if self._named_parameters is None:
            return []
        params = [(n, p) for n, p in self._named_parameters() if p.requires_grad and p.is_floating_point()]
        if not params:
            return []
        finite = torch.stack([torch.isfinite(p.detach()).all() for _, p in params]).tolist()  # one host read
        names = [n for (n, _), ok in zip(params, finite) if not ok]
        return names[:_SHOW] + ([f"… ({len(names)} tensors)"] if len(names) > _SHOW else [])

    def _cause(self, p: _Pending | None) -> str:
        bad = _non_finite_inputs(p.batch) if p is not None else {}
        if bad:
            listing = "; ".join(f"{k} in samples {v[:_SHOW]} ({describe_source(p.batch, self.data_root, v)})"
                                for k, v in bad.items())
            return f"non-finite values in this batch's inputs: {listing}. {_FIX_INPUTS}"
        for q in reversed(self._recent):
            bad = _non_finite_inputs(q.batch)
            if bad:
                listing = "; ".join(f"{k} in samples {v[:_SHOW]} ({describe_source(q.batch, self.data_root, v)})"
                                    for k, v in bad.items())
                return (f"the batch of global step {q.step} (epoch {q.epoch}, batch {q.batch_idx}) held non-finite "
                        f"inputs — {listing} — its loss stayed finite but its update made the weights non-finite. "
                        f"{_FIX_INPUTS}")
        return ("the inputs are finite, so the model diverged: lower learning_rate, set gradient_clip_val "
                "(e.g. 1.0), or train with precision=32 instead of 16-mixed")

    def message(self, p: _Pending) -> str:
        weights = self._bad_weights() if self._recent else []
        state = f" (the weights already were: {weights})" if weights else ""
        return (f"training loss is {float(p.loss)} at global step {p.step} (epoch {p.epoch}, batch {p.batch_idx})"
                f"{state}; the batch came from {describe_source(p.batch, self.data_root)}. Likely cause: "
                f"{self._cause(p)}. {_STOP}")


_FIX_INPUTS = ("Fix those inputs (for .h5 features re-extract the named images; visual_features= names the folder; "
               "for arrow rows rewrite the file with write_arrow)")
_STOP = ("The run stops here: no weights are written after a non-finite value (checkpoints saved before this step "
         "are unaffected)")

"""Per-forward context read by PET modules: the current task and side inputs such as RT's visual context.

Public API::

    from vlpeft.pet.context import pet_context, current_task, context_value

    with pet_context(task="vqa", x_v=pooled_vit):   # set by the Lightning module / backbone around a forward
        out = backbone(batch, plan)

- ``pet_context(**values)`` — a context manager; values nest (an inner ``pet_context`` overrides keys of the outer
  one and restores them on exit). It is built on ``contextvars``, so it is thread- and asyncio-safe.
- ``current_task()`` — the ``task`` value (``None`` when unset); ``TaskSwitch`` (``vlpeft.pet.sharing``) selects
  per-task modules with it.
- ``context_value(name)`` — any value by name (``x_v`` for routing, spec §2 M10 / §5); a missing name raises an
  error that says which ``pet_context(...)`` keyword to set.

This replaces the originals' threading of ``task=`` and ``vis_x=`` arguments through every layer signature (VL-Adapter,
Routing-VLPEFT): modules inside Hugging Face layers cannot receive extra forward arguments, a context can.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterator, Mapping

_STATE: ContextVar[Mapping[str, Any]] = ContextVar("vlpeft_pet_context", default={})
_MISSING = object()


@contextmanager
def pet_context(**values: Any) -> Iterator[Mapping[str, Any]]:
    """Set context values (``task``, ``x_v``, …) for the forwards run inside the ``with`` block."""
    state = dict(_STATE.get())
    state.update(values)
    token = _STATE.set(state)
    try:
        yield state
    finally:
        _STATE.reset(token)


def context_value(name: str, default: Any = _MISSING) -> Any:
    state = _STATE.get()
    if name in state:
        return state[name]
    if default is not _MISSING:
        return default
    raise LookupError(f"a PET module needs the per-forward value {name!r}; run the forward inside "
                      f"`with vlpeft.pet.context.pet_context({name}=...)` (set now: {sorted(state) or 'nothing'})")


def current_task() -> str | None:
    return context_value("task", None)


__all__ = ["context_value", "current_task", "pet_context"]

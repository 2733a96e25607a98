"""Sharing a PET module across tasks (spec §2 M1 "Sharing", §8.2 sharing spec; VL-Adapter single / multiple /
half-shared).

``shared_over_tasks(factory, sharing, tasks)`` builds what one site holds:

- ``sharing="shared"`` and no ``tasks``: the plain module (one for all tasks);
- ``"shared"`` with ``tasks``: a ``TaskSwitch`` holding **the same** module under every task key (the originals'
  ``adapters.{task}`` layout; parameters count once, by identity);
- ``"per_task"``: one module per task ("multiple adapters");
- ``"half_up"`` / ``"half_down"``: one module per task whose ``up`` (resp. ``down``) sub-module is one shared object
  ("half-shared"; the module must have that attribute).

A ``TaskSwitch`` picks the module of ``vlpeft.pet.context.current_task()``; set it with
``with pet_context(task="vqa"): ...``. An unknown or missing task is an error naming the known ones. ``role`` and
``delta_weight`` are forwarded, so a switch can sit on a projection (``_wrap.ProjWrap``) like the module it holds.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import nn

from vlpeft.pet.context import current_task

SHARING = ("shared", "per_task", "half_up", "half_down")


class TaskSwitch(nn.Module):
    def __init__(self, modules: dict[str, nn.Module], sharing: str):
        super().__init__()
        if not modules:
            raise ValueError("TaskSwitch needs at least one task")
        self.tasks = nn.ModuleDict(modules)
        self.sharing = sharing
        first = next(iter(modules.values()))
        if hasattr(first, "role"):
            self.role = first.role

    def select(self) -> nn.Module:
        task = current_task()
        if task is None:
            if self.sharing == "shared":
                return next(iter(self.tasks.values()))
            raise LookupError(f"a per-task PET module ({self.sharing}) needs the current task: run the forward inside "
                              f"`with pet_context(task=...)`, one of {list(self.tasks)}")
        if task not in self.tasks:
            raise LookupError(f"task {task!r} has no PET module here; known tasks: {list(self.tasks)}")
        return self.tasks[task]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.select()(*args, **kwargs)

    @property
    def mergeable(self) -> bool:  # only a module shared by every task can be folded into a weight
        mods = {id(m) for m in self.tasks.values()}
        return len(mods) == 1 and getattr(next(iter(self.tasks.values())), "mergeable", False)

    @property
    def why_not_mergeable(self) -> str:
        return "per-task modules differ between tasks" if not self.mergeable else ""

    def delta_weight(self):
        return next(iter(self.tasks.values())).delta_weight()

    def extra_repr(self) -> str:
        return f"sharing={self.sharing}"


def shared_over_tasks(factory: Callable[[], nn.Module], sharing: str = "shared",
                      tasks: Sequence[str] = ()) -> nn.Module:
    if sharing not in SHARING:
        raise ValueError(f"sharing={sharing!r} is not one of {SHARING}")
    tasks = tuple(tasks)
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"task names repeat: {tasks}")
    if sharing == "shared":
        if not tasks:
            return factory()
        one = factory()
        return TaskSwitch({t: one for t in tasks}, sharing)
    if not tasks:
        raise ValueError(f"sharing={sharing!r} needs the task names (option `tasks`, e.g. the config's `datasets`)")
    mods = {t: factory() for t in tasks}
    if sharing.startswith("half_"):
        part = sharing.split("_", 1)[1]
        first = next(iter(mods.values()))
        if not isinstance(getattr(first, part, None), nn.Module):
            raise ValueError(f"sharing={sharing!r} needs a module with a `{part}` sub-module; "
                             f"{type(first).__name__} has none")
        for m in mods.values():
            setattr(m, part, getattr(first, part))
    return TaskSwitch(mods, sharing)





# --- builder plumbing shared by the zoo's registered builders ------------------------------------------------------
PLACEMENT_KEYS = ("sharing", "tasks", "pool", "share_sites")


def config_from(cfg_cls: type, module: str, options: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Split a builder's options into its config dataclass and the placement keys (``PLACEMENT_KEYS``)."""
    import dataclasses

    fields = {f.name for f in dataclasses.fields(cfg_cls)}
    unknown = sorted(set(options) - fields - set(PLACEMENT_KEYS))
    if unknown:
        raise TypeError(f"PET module {module!r}: unknown options {unknown}; it takes {sorted(fields)} and the "
                        f"placement "
                        f"keys {list(PLACEMENT_KEYS)}")
    cfg = cfg_cls(**{k: v for k, v in options.items() if k in fields})
    return cfg, {k: options[k] for k in PLACEMENT_KEYS if k in options}


def place(factory: Callable[[], nn.Module], site: Any, kind: str, sharing: str = "shared", tasks: Sequence[str] = (),
          pool: Any = None, share_sites: str | None = None) -> nn.Module:
    """What a builder returns for ``site``: task sharing (``shared_over_tasks``), then optional sharing between
    sites through ``pool`` (``share_sites="block"``: one module per (stack, layer), e.g. RT's GPT-2 adapter shared by
    the attention and MLP sites of a block; any other string: one module for every site with that group id)."""
    def make() -> nn.Module:
        return shared_over_tasks(factory, sharing, tasks)

    if share_sites is None:
        return make()
    if pool is None:
        raise ValueError(f"share_sites={share_sites!r} needs a `pool` option (a vlpeft.pet._sites_hf.SharePool made "
                         f"once per recipe)")
    key = (kind, site.stack, site.layer) if share_sites == "block" else (kind, share_sites)
    return pool.get(key, make)
__all__ = ["PLACEMENT_KEYS", "SHARING", "TaskSwitch", "config_from", "place", "shared_over_tasks"]

"""Registries of the four axes of a run: backbones, PET modules (and presets), searches, tasks.

An entry is a name, a builder and the flat config keys (with defaults) that the entry reads. The sacred base
config is assembled from the core keys plus every entry's keys, and unknown-key validation asks the registries,
so a new backbone or module brings its keys along instead of editing a hand-kept list. ``names("test_*")``
lists the tiny entries that the conformance tests are parametrized over (timm style).

Every real entry says how the conformance tests exercise it, where it registers: ``register(name, test={...})``
(tiny options the tests read: a PET module's site and options, a preset's backbone and config, …), or a tiny
``test_*`` entry registered beside it whose ``family`` meta names it (the backbones). ``untested(exempt)`` lists
the entries that do neither, so a new entry without a test entry fails the suite (``tests/test_registries.py``).
"""

from __future__ import annotations

import difflib
import fnmatch
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Iterator, Mapping, TypeVar

from vlpeft.sections import declared_keys, take

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    name: str
    build: Callable[..., T]
    keys: dict[str, Any] = field(default_factory=dict)  # flat config keys read, with their defaults
    doc: str = ""
    meta: dict[str, Any] = field(default_factory=dict)
    test: dict[str, Any] | None = None  # tiny options the conformance tests build this entry with
    spec: type | None = None  # the entry's settings dataclass (vlpeft.sections): its fields are the keys it reads
    # the builder still reads the flat dict (its spec declares the keys only); no entry does now, and
    # tests/test_typed_config.py refuses a new one
    flat_builder: bool = False

    def settings(self, config: Any) -> Any:
        """The entry's typed settings from a flat config (already typed settings pass through)."""
        if self.spec is None or self.flat_builder or not isinstance(config, Mapping):
            return config
        return take(self.spec, config)


class RegistryError(KeyError):
    """An unknown registry name; the message lists the known ones and the closest match."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    def __init__(self, kind: str, config_key: str):
        self.kind, self.config_key = kind, config_key
        self._entries: dict[str, Entry[T]] = {}

    def register(self, name: str, *, keys: dict[str, Any] | None = None, doc: str = "", spec: type | None = None,
                 flat_builder: bool = False, test: dict[str, Any] | None = None,
                 **meta: Any) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """``spec``: the entry's settings dataclass; its fields declare the keys (``keys`` is for entries without
        one). The builder then receives the typed settings, never the flat dict; ``flat_builder=True``: not yet (a
        family whose builder still reads the flat dict; its spec only declares the keys and their defaults).
        ``test``: the tiny options the conformance tests build this entry with (see the module docstring)."""
        if test is not None and not isinstance(test, dict):
            raise TypeError(f"{self.kind} {name!r}: test= must be a dict of tiny test options, "
                            f"got {type(test).__name__}")

        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            declared = {**(declared_keys(spec) if spec is not None else {}), **dict(keys or {})}
            self._entries[name] = Entry(name, fn, declared, doc or (fn.__doc__ or "").strip(), meta,
                                        None if test is None else dict(test), spec, flat_builder)
            return fn
        return deco

    def unregister(self, name: str) -> Entry[T]:
        """Remove ``name`` (tests that register a throwaway entry remove it again); returns its entry."""
        self.get(name)  # the usual error for an unknown name
        return self._entries.pop(name)

    def get(self, name: str) -> Entry[T]:
        if name not in self._entries:
            close = difflib.get_close_matches(str(name), list(self._entries), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise RegistryError(f"{self.config_key}={name!r} is not a registered {self.kind}{hint}; "
                                f"known: {', '.join(self.names())}")
        return self._entries[name]

    def build(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build entry ``name``; its first argument, a flat config, becomes the entry's typed settings."""
        entry = self.get(name)
        if args:
            args = (entry.settings(args[0]),) + args[1:]
        return entry.build(*args, **kwargs)

    def names(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatch(n, pattern))

    def test_options(self, name: str) -> dict[str, Any]:
        """The tiny test options ``name`` registered with (a copy); an error naming the fix if it has none."""
        entry = self.get(name)
        if entry.test is None:
            raise RegistryError(f"{self.kind} {name!r} registered no test options: add test=dict(...) to its "
                                f"registration")
        return dict(entry.test)

    def untested(self, exempt: Mapping[str, str] | Iterable[str] = ()) -> list[str]:
        """Real entries (not ``test_*``, not the ``_*`` helpers a test module registers for itself) with neither
        test options nor a ``test_*`` entry of their family, less ``exempt``: what the conformance tests would
        silently miss."""
        exempt = set(exempt)
        families = {e.meta.get("family") for n, e in self._entries.items() if fnmatch.fnmatch(n, "test_*")}
        return [n for n in self.names() if not fnmatch.fnmatch(n, "test_*") and not n.startswith("_")
                and n not in exempt
                and self._entries[n].test is None and n not in families]

    def config_keys(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for e in self._entries.values():
            out.update(e.keys)
        return out

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


__all__ = ["Entry", "Registry", "RegistryError"]

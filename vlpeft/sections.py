"""Typed settings read from the flat (sacred) config: the one place that turns flat keys into dataclasses.

A settings dataclass names the flat keys it reads by its fields; a field's default is *the* default of that key
(the sacred base config collects them, ``vlpeft.config``), so each default is written once. A field without a
default reads a key whose default another section owns (``hidden_size`` is ViLT's key, METER reads it too).
Field metadata (``key(...)``) renames the flat key a field reads, converts its value, or marks it derived (read
from another key, never declared). ``take(cls, flat)`` builds one; registries call it for an entry registered
with ``spec=`` (``vlpeft._registry``), ``vlpeft.config.from_sacred`` for the run's sections.

This module imports nothing of vlpeft, so every layer can use it without an import cycle.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, TypeVar

S = TypeVar("S")
_MISSING = dataclasses.MISSING


def key(name: str | None = None, *, convert: Callable[[Any], Any] | None = None, default: Any = _MISSING,
        derived: bool = False, shared: bool = False) -> Any:
    """A field that reads flat key ``name`` (default: the field's name), through ``convert``. Not declared as a key
    of this section (its default is only the fallback of a direct build): ``derived``, computed from another key's
    value (ViLT's token-type rows from ``loss_names``); ``shared``, a key another section owns."""
    meta = {"key": name, "convert": convert, "derived": derived or shared}
    return dataclasses.field(default=default, metadata=meta)


def flat_key(f: dataclasses.Field) -> str:
    return f.metadata.get("key") or f.name


def declared_keys(cls: type) -> dict[str, Any]:
    """The flat keys ``cls`` owns, with their defaults (fields with a default that are not derived)."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init or f.metadata.get("derived"):
            continue
        if f.default is not _MISSING:
            out[flat_key(f)] = f.default
        elif f.default_factory is not _MISSING:
            out[flat_key(f)] = f.default_factory()
    return out


def read_keys(cls: type) -> set[str]:
    """Every flat key ``cls`` reads (owned, shared and the sources of derived fields)."""
    return {flat_key(f) for f in dataclasses.fields(cls) if f.init}


def take(cls: type[S], flat: Any) -> S:
    """``cls`` from the flat config: each field from its key (the field's default where the key is absent, as in
    an older checkpoint's config). A missing key without a default is named with the fix. Given another settings
    object (a section), ``cls`` takes its fields of the same names."""
    if isinstance(flat, cls):
        return flat
    if is_settings(flat):  # another section: its fields of the same names (already typed, never derived again)
        have = {f.name for f in dataclasses.fields(flat)}
        return cls(**{f.name: getattr(flat, f.name) for f in dataclasses.fields(cls) if f.init and f.name in have})
    kw: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        k = flat_key(f)
        if k in flat:
            conv = f.metadata.get("convert")
            v = flat[k]
            kw[f.name] = conv(v) if conv is not None and v is not None else v
        elif f.default is _MISSING and f.default_factory is _MISSING:
            raise KeyError(f"{cls.__name__}: the config lacks {k!r}; start from vlpeft.config's base config "
                           "(vlpeft.config.DEFAULTS)")
    return cls(**kw)


def options(option_keys: Mapping[str, tuple[str, Any]], flat: Mapping[str, Any]) -> dict[str, Any]:
    """An entry's options from the flat config: ``option_keys`` maps option -> (flat key, default), as a task
    declares them (``Task.option_keys``); an absent key takes its default (an older checkpoint's config)."""
    return {opt: flat.get(k, default) for opt, (k, default) in option_keys.items()}


@dataclasses.dataclass(frozen=True)
class NoKeys:
    """The settings of an entry that reads no key (a preset without options)."""


def is_settings(x: Any) -> bool:
    return dataclasses.is_dataclass(x) and not isinstance(x, type)


__all__ = ["NoKeys", "declared_keys", "flat_key", "is_settings", "key", "options", "read_keys", "take"]

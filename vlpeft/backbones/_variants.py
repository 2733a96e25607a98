"""Named architectures as data (open_clip's model configs): one ``Variants`` table per family.

A table maps a variant name to the keyword arguments of one configuration (a ``transformers`` config class, timm's
``VisionTransformer``, or a backbone's own config keys) — plain data, no factories. Reading an entry gives a fresh
copy, so a caller may edit it. Where one config key may name variants of several families (``plm_config`` for BERT /
T5 / LLaMA, ``lm_config`` for GPT-2 / RoBERTa, ``vl_config`` for BART / T5), the backbone keeps one table per family
in a dict and ``lookup_in`` names the family a misplaced name belongs to.

Public API::

    Variants(family, builds, {name: kwargs})   # a Mapping: name -> a copy of the kwargs
    Variants.lookup(name, key)                 # the kwargs, or one ValueError naming the key and the choices
    lookup_in(tables, family, name, key)       # the same across a family -> Variants dict

This module imports nothing of the project.
"""

from __future__ import annotations

import copy
from typing import Any, Iterator, Mapping


class Variants(Mapping[str, dict[str, Any]]):
    """The named architectures of one family. ``family`` says whose they are (in messages), ``builds`` what the
    keyword arguments configure."""

    def __init__(self, family: str, builds: str, entries: Mapping[str, Mapping[str, Any]]) -> None:
        self.family, self.builds = family, builds
        self._entries = {str(k): dict(v) for k, v in entries.items()}

    def __getitem__(self, name: str) -> dict[str, Any]:
        return copy.deepcopy(self._entries[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Variants({self.family!r}, {self.builds!r}, {sorted(self._entries)})"

    def lookup(self, name: str, key: str) -> dict[str, Any]:
        if name not in self._entries:
            raise ValueError(f"{key}={name!r} is not a known {self.family} variant; use one of {sorted(self._entries)}")
        return self[name]


def lookup_in(tables: Mapping[str, Variants], family: str, name: str, key: str) -> dict[str, Any]:
    """Variant ``name`` of ``family`` from a family -> table dict; a name of another family is refused by name."""
    if name not in tables[family]:
        other = [f for f, t in tables.items() if name in t]
        if other:
            raise ValueError(f"{key}={name!r} is a {tables[other[0]].family} variant, not a {tables[family].family} "
                             f"one; use one of {sorted(tables[family])}")
    return tables[family].lookup(name, key)


__all__ = ["Variants", "lookup_in"]

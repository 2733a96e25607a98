"""The Placement: what a search run decides and a train run uses.

``{"method": "das", "skip": [3, 7]}`` or ``{"method": "kab", "insert_layer": 5}`` (``method`` names the search
that decided it; the other field may be present when the backbone needs it, e.g. a DAS search on CLIP+BERT
records the fixed ``insert_layer`` too), plus the search's final per-layer scores and the number of candidate
layers it was searched on. One dataclass, one place that validates it against the backbone's layer count;
``plan()`` gives the runtime ``LayerPlan``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from vlpeft._io import write_json_atomic
# the plan checks are the contract's (a backbone's check_plan uses them); re-exported here
from vlpeft._protocol import (LayerPlan, PlacementError, check_skip_types, validate_insert_layer,  # noqa: F401
                              validate_skip)

METHODS = ("das", "kab")


@dataclass(frozen=True)
class Placement:
    method: str
    skip: tuple[int, ...] = ()
    insert_layer: int | None = None
    num_layers: int | None = None  # candidate layers of the backbone it was searched on
    scores: tuple[float, ...] = ()  # final per-layer gate values (das) or preferences (kab)
    meta: dict[str, Any] = field(default_factory=dict, compare=False)
    source: str = field(default="", compare=False, repr=False)  # the file it came from, for error messages

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PlacementError(f"placement method {self.method!r} is not one of {METHODS}")
        object.__setattr__(self, "skip", tuple(int(i) for i in self.skip))
        object.__setattr__(self, "scores", tuple(float(s) for s in self.scores))
        if self.method == "kab" and self.insert_layer is None:
            raise PlacementError("a 'kab' placement needs insert_layer")
        if self.num_layers is not None:
            self.validate(self.num_layers)

    @classmethod
    def das(cls, skip: Sequence[int], **kw: Any) -> "Placement":
        return cls(method="das", skip=tuple(skip), **kw)

    @classmethod
    def kab(cls, insert_layer: int, **kw: Any) -> "Placement":
        return cls(method="kab", insert_layer=int(insert_layer), **kw)

    def validate(self, num_layers: int) -> "Placement":
        """Raise a PlacementError naming the problem unless this placement fits ``num_layers`` layers."""
        where = f"placement {self.source}" if self.source else "placement"
        if self.num_layers is not None and self.num_layers != num_layers:
            raise PlacementError(
                f"{where} was searched on a backbone with {self.num_layers} layers, but this backbone has "
                f"{num_layers}; search again on this backbone, or pass the placement of a search on it"
            )
        try:
            validate_skip(self.skip, num_layers)
            if self.insert_layer is not None:
                validate_insert_layer(self.insert_layer, num_layers)
        except PlacementError as e:
            if not self.source:
                raise
            raise PlacementError(f"{where}: {e}") from None
        return self

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"method": self.method}
        if self.method == "das" or self.skip:
            d["skip"] = list(self.skip)
        if self.insert_layer is not None:
            d["insert_layer"] = self.insert_layer
        if self.num_layers is not None:
            d["num_layers"] = self.num_layers
        if self.scores:
            d["scores"] = list(self.scores)
        if self.meta:
            d["meta"] = self.meta
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], source: str = "placement") -> "Placement":
        if not isinstance(d, dict) or "method" not in d:
            raise PlacementError(f"{source}: expected a JSON object with a 'method' key ('das' or 'kab')")
        unknown = set(d) - {"method", "skip", "insert_layer", "num_layers", "scores", "meta"}
        if unknown:
            raise PlacementError(f"{source}: unknown placement keys {sorted(unknown)}")
        _check_types(d, source)
        try:
            return cls(
                method=d["method"],
                skip=tuple(d.get("skip", ())),
                insert_layer=d.get("insert_layer"),
                num_layers=d.get("num_layers"),
                scores=tuple(d.get("scores", ())),
                meta=dict(d.get("meta", {})),
            )
        except PlacementError as e:
            raise PlacementError(f"{source}: {e}") from None

    def plan(self, base=None):
        """This placement as a ``LayerPlan`` over ``base`` (the fields the search did not decide)."""
        base = base or LayerPlan()
        skip = self.skip if (self.method == "das" or self.skip) else base.skip
        insert = self.insert_layer if self.insert_layer is not None else base.insert_layer
        return LayerPlan.of(skip, insert)

    @classmethod
    def from_plan(cls, plan, num_layers: int) -> "Placement":
        """The placement a train run records for its ``LayerPlan`` (``kab`` when it only places a prompt)."""
        method = "kab" if plan.insert_layer is not None and not plan.skip else "das"
        return cls(method, tuple(sorted(plan.skip)), plan.insert_layer, num_layers=num_layers)

    def save(self, path: str | Path) -> Path:
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Placement":
        path = Path(path)
        if path.is_dir():
            path = path / "placement.json"
        if not path.is_file():
            raise PlacementError(
                f"placement file {path} does not exist; pass the placement.json a search run wrote "
                "(printed at its end, in its run folder)"
            )
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise PlacementError(f"placement file {path} is not UTF-8 text ({e.reason} at byte {e.start}); pass the "
                                 "placement.json a search run wrote") from None
        except json.JSONDecodeError as e:
            raise PlacementError(f"placement file {path} is not valid JSON: {e}") from None
        p = cls.from_dict(data, source=str(path))
        object.__setattr__(p, "source", str(path))
        return p


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _check_types(d: dict[str, Any], source: str) -> None:
    """A hand-edited file must say what it means: ``"skip": "12"`` would otherwise read as [1, 2] and ``[1.7]`` or
    ``[true]`` as [1]."""
    skip = d.get("skip", [])
    if not isinstance(skip, (list, tuple)) or not all(_is_int(i) for i in skip):
        raise PlacementError(f"{source}: 'skip' is {skip!r}; it must be a list of distinct layer indices (integers), "
                             'e.g. "skip": [3, 7] or "skip": []')
    for key in ("insert_layer", "num_layers"):
        v = d.get(key)
        if v is not None and not _is_int(v):
            raise PlacementError(f"{source}: {key!r} is {v!r}; it must be an integer (or absent)")
    scores = d.get("scores", [])
    if (not isinstance(scores, (list, tuple))
            or not all(isinstance(s, (int, float)) and not isinstance(s, bool) for s in scores)):
        raise PlacementError(f"{source}: 'scores' is {scores!r}; it must be a list of numbers (the search's per-layer "
                             "scores), or be left out")
    if not isinstance(d.get("meta", {}), dict):
        raise PlacementError(f"{source}: 'meta' must be a JSON object")

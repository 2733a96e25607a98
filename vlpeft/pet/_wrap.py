"""Attach PET modules to an existing projection (``nn.Linear`` or Hugging Face ``Conv1D``) of any ``nn.Module``
without renaming its parameters.

``wrap_linear(model, "encoder.layer.0.attention.self.query")`` replaces that Linear by a ``ProjWrap`` that holds the
*same* ``weight`` / ``bias`` Parameter objects under the same names, so ``…query.weight`` stays ``…query.weight`` and
checkpoints of the plain model load unchanged. ``attach_to_linear(model, name, module)`` wraps (once) and attaches a
PET module: its top-level parameters and sub-modules are registered on the wrapper under their own names, so a LoRA's
``lora_A`` / ``lora_B`` appear as ``…query.lora_A`` / ``…query.lora_B`` (Hugging Face peft instead moves the base
weight to ``…query.base_layer.weight`` and nests ``lora_A.default.weight``).

What a module does is fixed by its ``role`` attribute (one fixed order, as at sublayer sites):

- ``"in_scale"``: ``module()`` returns a vector multiplying the projection *input* (IA3 on feed-forward modules);
- ``"delta"``: ``module(x)`` returns a delta added to the projection output (LoRA; reads the raw input ``x``);
- ``"out_scale"``: ``module()`` returns a vector multiplying the output (IA3).

``y = (W (x ⊙ Π in_scale) + b + Σ delta(x)) ⊙ Π out_scale``. ``merge()`` folds every delta that offers
``delta_weight()`` into ``weight`` (``unmerge()`` subtracts it again); while merged, deltas are not recomputed.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

try:  # Hugging Face's transposed linear (GPT-2 c_attn / c_fc / c_proj): weight is (in, out)
    from transformers.pytorch_utils import Conv1D
except Exception:  # pragma: no cover - transformers is a dependency
    Conv1D = ()  # type: ignore[assignment]

ROLES = ("in_scale", "delta", "out_scale")


def is_projection(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, ProjWrap)) or (bool(Conv1D) and isinstance(module, Conv1D))


def projection_dims(module: nn.Module) -> tuple[int, int, bool]:
    """(in_features, out_features, fan_in_fan_out) of a Linear, Conv1D or ProjWrap."""
    if isinstance(module, ProjWrap):
        return module.in_features, module.out_features, module.fan_in_fan_out
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features, False
    if Conv1D and isinstance(module, Conv1D):
        return int(module.weight.shape[0]), int(module.weight.shape[1]), True
    raise TypeError(f"{type(module).__name__} is not a projection (nn.Linear or transformers Conv1D)")


class ProjWrap(nn.Module):
    """A projection with PET modules attached; keeps the wrapped layer's ``weight`` / ``bias`` names and objects."""

    def __init__(self, base: nn.Module):
        super().__init__()
        self.in_features, self.out_features, self.fan_in_fan_out = projection_dims(base)
        self.base_type = type(base).__name__
        self.weight = base.weight
        self.bias = base.bias  # None is allowed (registers an empty slot, like nn.Linear(bias=False))
        self._pets: list[tuple[nn.Module, tuple[str, ...], tuple[str, ...]]] = []  # module, adopted params, children
        self._merged: list[nn.Module] = []

    # --- attaching ---------------------------------------------------------------------------------------------
    def attach(self, module: nn.Module) -> None:
        role = getattr(module, "role", None)
        if role not in ROLES:
            raise TypeError(f"{type(module).__name__} cannot sit on a projection: it needs a `role` attribute "
                            f"in {ROLES}")
        if self._merged:
            raise RuntimeError("unmerge() before attaching another module to a merged projection")
        params = tuple(module._parameters)
        children = tuple(module._modules)
        taken = set(self._parameters) | set(self._modules) | set(self._buffers)
        clash = sorted(taken.intersection(params + children))
        if clash:
            raise ValueError(f"cannot attach {type(module).__name__}: names {clash} are already used on this "
                             f"projection (two modules of one kind on one projection need distinct names)")
        for n in params:
            if module._parameters[n] is not None:
                self.register_parameter(n, module._parameters[n])
        for n in children:
            self.add_module(n, module._modules[n])
        self._pets.append((module, params, children))

    def pets(self, role: str | None = None) -> list[nn.Module]:
        return [m for m, _, _ in self._pets if role is None or m.role == role]

    def _sync(self) -> None:
        # `.to()` / `load_state_dict(assign=True)` may swap Parameter objects on the wrapper; the attached module
        # reads its own attributes, so hand it the wrapper's current objects.
        for m, params, children in self._pets:
            for n in params:
                if n in self._parameters:
                    m._parameters[n] = self._parameters[n]
            for n in children:
                m._modules[n] = self._modules[n]

    # --- forward -----------------------------------------------------------------------------------------------
    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight.t() if self.fan_in_fan_out else self.weight
        return F.linear(x, w, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._sync()
        h = x
        for m in self.pets("in_scale"):
            h = h * m()
        y = self.base_forward(h)
        for m in self.pets("delta"):
            if m not in self._merged:
                y = y + m(x)
        for m in self.pets("out_scale"):
            y = y * m()
        return y

    # --- merging -----------------------------------------------------------------------------------------------
    def _delta_weight(self, m: nn.Module) -> torch.Tensor:
        dw = m.delta_weight()  # (out, in)
        return dw.t() if self.fan_in_fan_out else dw

    @torch.no_grad()
    def merge(self) -> None:
        """Fold every mergeable delta into ``weight``; outputs are unchanged up to float rounding."""
        self._sync()
        if self.pets("in_scale") and self.pets("delta"):
            raise RuntimeError("cannot merge a delta next to an input scale (IA3 feed-forward): "
                               "W(x⊙l) + Δx ≠ (W+Δ)(x⊙l)")
        for m in self.pets("delta"):
            if m in self._merged:
                continue
            if not getattr(m, "mergeable", False):
                raise RuntimeError(f"{type(m).__name__} cannot be merged ({getattr(m, 'why_not_mergeable', '')})")
            self.weight.data += self._delta_weight(m).to(self.weight.dtype)
            self._merged.append(m)

    @torch.no_grad()
    def unmerge(self) -> None:
        self._sync()
        while self._merged:
            m = self._merged.pop()
            self.weight.data -= self._delta_weight(m).to(self.weight.dtype)

    @property
    def merged(self) -> bool:
        return bool(self._merged)

    def extra_repr(self) -> str:
        kinds = ", ".join(f"{type(m).__name__}:{m.role}" for m, _, _ in self._pets) or "nothing attached"
        return (f"{self.base_type}({self.in_features}→{self.out_features}"
                f"{', fan_in_fan_out' if self.fan_in_fan_out else ''}); {kinds}{'; merged' if self._merged else ''}")


def _parent(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    parent_name, _, leaf = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    return parent, leaf


def wrap_linear(model: nn.Module, name: str) -> ProjWrap:
    """Replace the projection ``name`` inside ``model`` by a ``ProjWrap`` (idempotent); parameter names are kept."""
    target = model.get_submodule(name)
    if isinstance(target, ProjWrap):
        return target
    if not is_projection(target):
        raise TypeError(f"{name!r} is a {type(target).__name__}, not an nn.Linear / Conv1D; pick a projection "
                        f"(e.g. one of {[n for n, m in model.named_modules() if is_projection(m)][:6]})")
    wrapped = ProjWrap(target)
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, wrapped)
    return wrapped


def attach_to_linear(model: nn.Module, name: str, module: nn.Module) -> ProjWrap:
    wrapped = wrap_linear(model, name)
    wrapped.attach(module)
    return wrapped


def unwrap_linear(model: nn.Module, name: str) -> nn.Module:
    """Put a plain ``nn.Linear`` / ``Conv1D`` back (merged deltas stay folded in), dropping attached modules."""
    w = model.get_submodule(name)
    if not isinstance(w, ProjWrap):
        return w
    if w.fan_in_fan_out:
        plain: Any = Conv1D(w.out_features, w.in_features)
    else:
        plain = nn.Linear(w.in_features, w.out_features, bias=w.bias is not None, device="meta")
    plain.weight = w.weight
    if w.bias is not None:
        plain.bias = w.bias
    parent, leaf = _parent(model, name)
    setattr(parent, leaf, plain)
    return plain


def merge_all(model: nn.Module) -> int:
    ws = [m for m in model.modules() if isinstance(m, ProjWrap) and m.pets("delta")]
    for m in ws:
        m.merge()
    return len(ws)


def unmerge_all(model: nn.Module) -> int:
    ws = [m for m in model.modules() if isinstance(m, ProjWrap) and m.merged]
    for m in ws:
        m.unmerge()
    return len(ws)


__all__ = ["ProjWrap", "attach_to_linear", "is_projection", "merge_all", "projection_dims", "unmerge_all",
           "unwrap_linear", "wrap_linear"]

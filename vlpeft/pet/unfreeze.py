"""Base policies: which backbone parameters a recipe unfreezes (BitFit, LayerNorm tuning, full fine-tuning;
spec §2 M9, §8.2 ``Unfreeze``). Functions a backbone's ``base_trainable(policy)`` can call.

A policy string is one or more terms joined by ``+``; a term is ``kind`` or ``kind:scope``:

- kinds: ``none``; ``bias`` (every parameter whose name ends in ``bias`` — BitFit; buffers such as BART's
  ``final_logits_bias`` are not parameters and stay out); ``norms`` (parameters of every module whose class name
  contains ``norm``: ``LayerNorm``, ``T5LayerNorm``, ``LlamaRMSNorm``, … — unlike VL-Adapter, whose class test silently
  missed T5's norms, spec §9 item 6); ``nn_layernorm`` (parameters of ``torch.nn.LayerNorm`` instances only: what
  VL-Adapter's ``--unfreeze_layer_norms`` trained — every LN of VL-BART, none of VL-T5's ``T5LayerNorm``s, because
  its class test missed the repo's own T5 norm class; the ``vladapter_*`` named configs use it); ``all`` (full
  fine-tuning).
- scope: a dotted fragment that must appear as whole name components (``encoder`` → names with an ``encoder``
  component; ``c_attn`` → GPT-2's c_attn bias; ``attention.self.query``).

Examples: ``"bias"`` (BitFit, and VL-Adapter LoRA's built-in BitFit, §9 item 7), ``"norms"`` (VL-Adapter),
``"norms:encoder"`` (VL-PET ``--unfreeze_encoder_layer_norms``: bart-base 19,968, t5-base 19,200),
``"norms+bias:c_attn"`` (RT LoRA on GPT-2), ``"bias:query+bias:value"`` (RT RoBERTa LoRA with ``--freeze_ln``).
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from vlpeft._protocol import POLICY_KINDS, parse_policy

KINDS = POLICY_KINDS  # the grammar lives with the contract (``vlpeft._protocol.parse_policy``)


def _in_scope(name: str, scope: str | None) -> bool:
    if not scope:
        return True
    parts, want = name.split("."), scope.split(".")
    k = len(want)
    return any(parts[i:i + k] == want for i in range(len(parts) - k + 1))


def norm_param_names(model: nn.Module) -> set[str]:
    out = set()
    for mname, mod in model.named_modules():
        if "norm" in type(mod).__name__.lower():
            out.update(f"{mname}.{n}" if mname else n for n, _ in mod.named_parameters(recurse=False))
    return out


def unfreeze_params(model: nn.Module, policy: str) -> list[tuple[str, nn.Parameter]]:
    """The parameters ``policy`` unfreezes, in ``named_parameters`` order (shared tensors once)."""
    terms = parse_policy(policy)
    norms = norm_param_names(model) if any(k == "norms" for k, _ in terms) else set()
    lns = ({f"{m}.{n}" if m else n for m, mod in model.named_modules() if isinstance(mod, nn.LayerNorm)
            for n, _ in mod.named_parameters(recurse=False)} if any(k == "nn_layernorm" for k, _ in terms) else set())
    out = []
    for name, p in model.named_parameters():
        for kind, scope in terms:
            if not _in_scope(name, scope):
                continue
            if kind == "all" or (kind == "bias" and name.endswith("bias")) or (kind == "norms" and name in norms) or (
                    kind == "nn_layernorm" and name in lns):
                out.append((name, p))
                break
    return out


def bitfit(model: nn.Module, scope: str | None = None) -> list[tuple[str, nn.Parameter]]:
    return unfreeze_params(model, f"bias:{scope}" if scope else "bias")


def layernorm(model: nn.Module, scope: str | None = None) -> list[tuple[str, nn.Parameter]]:
    return unfreeze_params(model, f"norms:{scope}" if scope else "norms")


def full(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return unfreeze_params(model, "all")


def apply_policy(model: nn.Module, policy: str, keep: Iterable[str] = ()) -> list[str]:
    """Freeze ``model`` except what ``policy`` unfreezes and the names in ``keep``; returns the trainable names."""
    chosen = {n for n, _ in unfreeze_params(model, policy)} | set(keep)
    names = []
    for n, p in model.named_parameters():
        p.requires_grad_(n in chosen)
        if n in chosen:
            names.append(n)
    return names


def count(params: Iterable[tuple[str, nn.Parameter]]) -> int:
    seen, total = set(), 0
    for _, p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


# The old name, which ``vlpeft.backbones`` also used for a backbone's base policy (two meanings); kept for code
# written against it on other branches. New code calls unfreeze_params.
policy_params = unfreeze_params

__all__ = ["KINDS", "apply_policy", "bitfit", "count", "full", "layernorm", "norm_param_names", "parse_policy",
           "policy_params", "unfreeze_params"]

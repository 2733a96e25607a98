"""Large language models in memory (issue 21 item 4): the LM's weights in bf16 / fp16, and gradient checkpointing.

``plm_dtype`` (``fp32`` | ``bf16`` | ``fp16``): the dtype the language model of the ``plm`` / ``clip_plm`` backbones is
loaded in — the whole HF model, norms and embeddings included, as LaVIN(-DAS) builds LLaMA under a half default tensor
type. PET modules injected afterwards (adapters, skip adapters, gates) and the search state are built in fp32 and
stay there, as LaVIN casts every ``adapter`` parameter back to float. A low-precision LM runs under autocast to its
dtype (what LaVIN trains under), so fp32 adapters and bf16 layers mix without casts in the modules; the backbone's
features leave it in fp32 for the heads.

``grad_checkpointing=True``: each computed candidate layer (its PET modules included) is recomputed in the backward
instead of keeping its activations (``torch.utils.checkpoint``, non-reentrant; the PET context of the forward is
re-entered for the recomputation, so task- or image-dependent modules recompute the same values). LaVIN-DAS
checkpoints the attention and the feed-forward of each block and keeps the adapters' activations; checkpointing the
whole layer saves a little more and computes the same gradients.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

import torch

from vlpeft.pet.context import _STATE, pet_context

PLM_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def plm_torch_dtype(name: Any) -> torch.dtype:
    """The torch dtype of a ``plm_dtype`` value (one clear error for anything else)."""
    key = str(name).lower() if name is not None else "fp32"
    if key not in PLM_DTYPES:
        raise ValueError(f"plm_dtype={name!r} is not one of {sorted(PLM_DTYPES)} (the dtype the language model is "
                         f"loaded in; adapters stay fp32)")
    return PLM_DTYPES[key]


def check_grad_checkpointing(value: Any) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"grad_checkpointing={value!r} must be True or False")
    return value


@contextlib.contextmanager
def lm_autocast(dtype: torch.dtype, device: torch.device) -> Iterator[None]:
    """Autocast to the LM's dtype while it runs, unless it is fp32 or an autocast is already on (Lightning's
    ``*-mixed`` precision)."""
    if dtype == torch.float32 or torch.is_autocast_enabled(device.type):
        yield
        return
    with torch.autocast(device.type, dtype=dtype):
        yield


def heads_dtype(x: torch.Tensor) -> torch.Tensor:
    """Features for the heads: a half-precision LM's output in fp32; any other dtype (fp32, a model moved to fp64
    for a parity check) as it is."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def checkpointed(fn: Callable[..., Any], *args: Any, enabled: bool) -> Any:
    """``fn(*args)``, its activations recomputed in the backward when ``enabled`` and gradients are on."""
    if not enabled or not torch.is_grad_enabled():
        return fn(*args)
    from torch.utils.checkpoint import checkpoint

    ctx = dict(_STATE.get())  # the backward runs outside the forward's ``with pet_context(...)``
    return checkpoint(fn, *args, use_reentrant=False,
                      context_fn=lambda: (contextlib.nullcontext(), pet_context(**ctx)))


__all__ = ["PLM_DTYPES", "check_grad_checkpointing", "checkpointed", "heads_dtype", "lm_autocast",
           "plm_torch_dtype"]

"""The process's RNG streams as a checkpoint entry, so a resumed run continues exactly as the uninterrupted one
(the data order and the search draws are seeded by position; dropout and random transforms use these)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

RNG_KEY = "vlpeft_rng_state"


def rng_state() -> dict[str, Any]:
    # plain tensors, ints and tuples only: Lightning resumes with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])

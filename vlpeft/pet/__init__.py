"""Parameter-efficient modules: adapters (``adapters.py``), prompts (``prompts.py``), trainable-set tools
(``trainable.py``)."""

from vlpeft.pet.adapters import DASAdapter, SequentialAdapter

__all__ = ["DASAdapter", "SequentialAdapter"]

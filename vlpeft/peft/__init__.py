"""Parameter-efficient modules: adapters (``adapters.py``), prompts (``prompts.py``), trainable-set tools
(``trainable.py``)."""

from vlpeft.peft.adapters import DASAdapter

__all__ = ["DASAdapter"]

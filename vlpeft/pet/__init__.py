"""Parameter-efficient modules on one injection path (``_base.py``: ``inject``, ``PetReport``, the ``PETS`` and
``PRESETS`` registries), one file per module idea (``adapters.py``, ``prompts.py``), presets (``presets.py``) and
the trainable set derived from what was injected (``trainable.py``)."""

from vlpeft.pet import adapters as _adapters  # noqa: F401  (registers the adapter modules)
from vlpeft.pet import presets as _presets  # noqa: F401  (registers the presets)
from vlpeft.pet import presets_zoo as _presets_zoo  # noqa: F401  (the VL-Adapter / VL-PET / Routing zoo)
from vlpeft.pet import das_lm as _das_lm  # noqa: F401  (LaVIN-DAS's LLaMA adapters, preset das_llama)
from vlpeft.pet._base import PETS, PRESETS, PetReport, PetSpec, Recipe, build_recipe, inject
from vlpeft.pet.adapters import DASAdapter, SequentialAdapter

__all__ = ["PETS", "PRESETS", "DASAdapter", "PetReport", "PetSpec", "Recipe", "SequentialAdapter", "build_recipe",
           "inject"]

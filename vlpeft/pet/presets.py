"""PET presets: named recipes with the original papers' settings, as functions of the flat config.

- ``das``: the DAS adapters (seeds.md §3.1): a parallel adapter of width ``das_adapter_dim`` beside attention and
  beside the MLP of every block (timm init, as the original got it from the ViT), and a residual skip adapter of
  width ``das_skip_adapter_dim`` per candidate unit (BERT init); backbone policy ``das_original`` where the
  backbone has it (the original name rule: pooler + token types), else ``none``. On a backbone without parallel
  sites (CLIP+PLM) only the skip adapters go in.
- ``dvp_adapter``: DVP's sequential adapters on every sublayer output (seeds.md §3.3): BERT/T5 ``d // 8``, ReLU,
  N(0, 0.01); LLaMA ``max(d // 64, 8)``, SiLU, Xavier; backbone policy ``norms`` (the PLM's LayerNorms train).
- ``none``: no module; policy ``none`` (heads, and what the backbone always trains). ``pet=none`` evaluates or
  fine-tunes a backbone as released.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vlpeft.pet._base import PetSpec, Recipe, register_preset
from vlpeft.sections import NoKeys, declared_keys, key, take


@dataclass(frozen=True)
class DasPresetSettings:
    """The DAS adapters' widths (ViLT-DAS: 96 / 192; DAS-METER's named configs: 96 / 288)."""

    das_adapter_dim: int = key(convert=int, default=96)
    das_skip_adapter_dim: int = key(convert=int, default=192)


DAS_KEYS = declared_keys(DasPresetSettings)


@register_preset("das", spec=DasPresetSettings,
                 test=dict(backbone="test_vilt", config=dict(das_adapter_dim=8, das_skip_adapter_dim=12)))
def das(settings: DasPresetSettings | Mapping[str, Any]) -> Recipe:
    s = take(DasPresetSettings, settings)
    return Recipe("das", (
        PetSpec("parallel_adapter", ("par",), {"bottleneck": s.das_adapter_dim, "init": "trunc_normal"},
                required=False),
        PetSpec("skip_adapter", ("skip",), {"bottleneck": s.das_skip_adapter_dim, "init": "bert"}),
    ), base_policy="das_original")


@register_preset("dvp_adapter", spec=NoKeys,
                 test=dict(backbone="test_clip_bert", config={}))
def dvp_adapter(settings: NoKeys) -> Recipe:
    return Recipe("dvp_adapter", (
        PetSpec("sequential_adapter", ("out_seq",), {"reduction": 8}, families=("bert", "t5"), required=False),
        PetSpec("sequential_adapter", ("out_seq",), {"reduction": 64, "min_bottleneck": 8, "activation": "silu",
                                                      "init": "xavier"}, families=("llama",), required=False),
    ), base_policy="norms")


@register_preset("none", spec=NoKeys,
                 test=dict(backbone="test_meter", config={}))
def none(settings: NoKeys) -> Recipe:
    return Recipe("none", (), base_policy="none")

"""The settings of the backbone families: what each reads from the flat config, as dataclasses (``vlpeft.sections``).

They live apart from the families' modules so that registering a backbone (``vlpeft.backbones``) imports none of
the families' dependencies. A field's default is *the* default of its key (the sacred base config collects them);
a field without one reads a key another section owns (METER reads ViLT's ``hidden_size``; its own defaults come
with its named configs, ``METER_BASE``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vlpeft.sections import key, take
from vlpeft.tasks._base import any_active_needs


def _token_type_rows(loss_names: Any) -> int:
    """3 token-type rows when NLVR2 is active (its second image gets type 2), else 2 (as the original)."""
    return 3 if any_active_needs(loss_names or {}, "pair_images", ">=1") else 2


@dataclass(frozen=True)
class ViltSpec:
    """What ``build_vilt`` reads from the config (original key names); the defaults are those keys' defaults (the
    original ViLT-DAS ``vilt/config.py``), collected into the sacred base config from here."""

    vit: str = key(convert=str, default="vit_base_patch32_384")
    hidden_size: int = key(convert=int, default=768)
    num_heads: int = key(convert=int, default=12)
    num_layers: int = key(convert=int, default=12)
    mlp_ratio: float = 4
    drop_rate: float = key(convert=float, default=0.1)
    vocab_size: int = key(convert=int, default=30522)
    max_text_len: int = key(convert=int, default=40)
    max_image_len: int | None = -1
    patch_size: int | None = 32  # informational in the original; checked against the variant when given
    token_type_rows: int = key("loss_names", convert=_token_type_rows, default=2, derived=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "ViltSpec":
        """From a config dict given directly (not through the registry, whose config has every key): the
        architecture keys must be there, so a partial dict is not silently completed into another model."""
        missing = [k for k in _VILT_REQUIRED if k not in config]
        if missing:
            raise KeyError(f"build_vilt: config lacks {missing}; start from vlpeft.config's base config")
        return take(cls, config)


_VILT_REQUIRED = ("vit", "hidden_size", "num_heads", "num_layers", "mlp_ratio", "drop_rate", "vocab_size",
                  "max_text_len")


def _meter_token_type_rows(loss_names: Any) -> int:
    """METER's gate (``> 0``): NLVR2 with any weight adds the third token-type row."""
    return 3 if any_active_needs(loss_names or {}, "pair_images", ">0") else 2


def _opt_int(v: Any) -> int | None:
    return None if v is None else int(v)


@dataclass(frozen=True)
class MeterSettings:
    """What ``build_meter`` reads (METER's original key names, ``METER/meter/config.py``). The keys METER shares
    with ViLT (vit, image_size, patch_size, tokenizer, hidden_size, …) take the base config's defaults; METER's
    own values for them are in its named configs (``vlpeft.config.METER_BASE``)."""

    vit: Any  # CLIP: OpenAI name/file, HF CLIP folder, or a registered name (test_clip_tiny)
    image_size: int = key(convert=int)  # resolution_after: the CLIP position grid is re-gridded to image_size/patch
    tokenizer: str = key()  # names the text encoder unless text_encoder is set ('roberta' → RoBERTa)
    hidden_size: int = key(convert=int)
    num_heads: int = key(convert=int)
    mlp_ratio: float = key()
    drop_rate: float = key(convert=float)
    patch_size: int | None = key(convert=_opt_int, default=None, shared=True)  # checked against the CLIP's patch
    num_top_layer: int = key(convert=int, default=6)  # co-attention layers per stream
    input_image_embed_size: int = key(convert=int, default=768)  # CLIP width (checked)
    input_text_embed_size: int = key(convert=int, default=768)  # text encoder width (checked)
    # ours (no original key):
    text_encoder: Any = None  # None: use tokenizer; else a folder, a registered name or RobertaConfig kwargs
    token4classifier: bool = key(convert=bool, default=False)  # DAS-METER's learned <s> replacement (True in DAS-METER)
    token_type_rows: int = key("loss_names", convert=_meter_token_type_rows, default=2, derived=True)

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> "MeterSettings":
        return take(cls, config)


# --- the other families: each builder takes its settings (its module checks them) ------------------------------------
@dataclass(frozen=True)
class ClipPlmSettings:
    """DVP's CLIP + PLM (``clip_plm.py``, whose ``DVPConfig`` checks these). Defaults: the original DVP base config
    where it has one."""

    clip_model: str = "ViT-B/16"
    language_model: str = "BERT"
    plm_config: str = ""
    plm_gguf_file: str = ""
    search_stage: bool = False
    use_adapter: bool = False
    dvp_llama_xattn_dim: int = 512
    dvp_original_trainable: bool = False
    t5_original_position_bias: bool = False
    clip_feature_cache: bool = True
    clip_cache_dir: str = ""
    kab_shared_prefix: bool = True
    frozen_prefix_no_grad: bool = True
    deterministic_images: bool | None = None
    clip_cache_max_items: int = 4096
    clip_precompute: bool = True  # frozen CLIP features computed in batches before the first epoch
    clip_precompute_batch: int = 128
    plm_dtype: str = "fp32"  # the plm backbone's too
    grad_checkpointing: bool = False  # the plm backbone's too
    # base keys it reads too
    tokenizer: str | None = key(default=None, shared=True)  # the PLM folder
    num_heads: int = key(default=12, shared=True)
    drop_rate: float = key(default=0.1, shared=True)
    train_transform_keys: tuple[str, ...] = key(default=("clip",), shared=True)
    val_transform_keys: tuple[str, ...] = key(default=("clip",), shared=True)


@dataclass(frozen=True)
class PlmSettings:
    """A language model alone (``plm.py``, whose ``PLMBackboneConfig`` checks these). The keys it shares with
    clip_plm are declared there; the fallbacks here serve a direct build from a partial dict (a test's)."""

    plm_num_layers: int = 0  # > 0: keep only the first N candidate layers
    language_model: str = key(default="LLAMA", shared=True)
    tokenizer: str | None = key(default=None, shared=True)  # the PLM folder (pretrained weights)
    plm_config: Any = key(default=None, shared=True)  # random PLM: a PLM_VARIANTS name or config kwargs
    plm_gguf_file: str | None = key(default=None, shared=True)
    t5_original_position_bias: bool = key(default=False, shared=True)
    plm_dtype: str = key(default="fp32", shared=True)  # the LM's weights: fp32 | bf16 | fp16 (PET modules stay fp32)
    grad_checkpointing: bool = key(default=False, shared=True)


@dataclass(frozen=True)
class VitLmSettings:
    """ViT + GPT-2 / RoBERTa (``vit_lm.py``; Routing-VLPEFT's flag names where RT has one)."""

    vit_model: str = "google/vit-base-patch16-224-in21k"  # local ViT folder (or HF-cache name), or a variant name
    lm_config: str = ""  # "" = the pretrained LM from the `tokenizer` folder; else an LM variant name (random init)
    vit_use_pooler: bool = True  # x_v = ViT pooler output (B×1×d); False: last hidden state (B×N×d)
    no_vis_prefix: bool = False  # GPT-2: drop the one-token visual prefix (vision enters only through routing)
    use_vis_prefix: bool = False  # RoBERTa: prepend the visual prefix
    vit_pet_sites: bool = False  # also offer the ViT's projections to PET modules (RT keeps the ViT unadapted)
    tokenizer: str = key(default="bert-base-uncased", shared=True)  # the LM's folder (a base key)


@dataclass(frozen=True)
class VlSeq2SeqSettings:
    """VL-BART / VL-T5 (``vl_seq2seq.py``). The shared keys (the base config's tokenizer and transform keys,
    ``clip_plm``'s CLIP feature cache) fall back to ``VLSeqConfig``'s defaults in a direct build."""

    vl_model: str = ""
    vl_config: Any = None  # a variant name (vl_seq2seq.VL_VARIANTS) or a dict of config kwargs
    vl_vocab_size: int | None = None
    vis_feat_dim: int = 2048
    vl_clip_model: str | None = None
    vl_grid: int = 6
    vl_pet_init: str = "recipe"
    # "token": mean over the batch's target tokens; "sample": each sample's token mean, then the batch mean (the
    # VL-T5 trainers' train_step, e.g. VL-Adapter's video_model.py)
    vl_loss_reduction: str = "token"
    tokenizer: str | None = key(default=None, shared=True)
    clip_feature_cache: bool = key(default=True, shared=True)
    clip_cache_max_items: int = key(default=4096, shared=True)
    clip_cache_dir: str | None = key(default=None, shared=True)
    deterministic_images: bool | None = key(default=None, shared=True)
    train_transform_keys: tuple = key(convert=tuple, default=(), shared=True)
    val_transform_keys: tuple = key(convert=tuple, default=(), shared=True)


__all__ = ["ClipPlmSettings", "MeterSettings", "PlmSettings", "ViltSpec", "VitLmSettings", "VlSeq2SeqSettings"]

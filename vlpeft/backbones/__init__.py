"""The backbone registry: ``BACKBONES.build(name, config) -> Backbone`` (see ``_protocol.py`` for the contract).

- ``vilt``: single-stream ViLT (``vilt.py``; variant from config ``vit``);
- ``vl_bart`` / ``vl_t5``: VL-BART / VL-T5, generative (``vl_seq2seq.py``);
- ``clip_plm``: frozen CLIP + BERT / T5 / LLaMA with the dynamic visual prompt (``clip_plm.py``);
- ``plm``: a language model alone (BERT / T5 / LLaMA; text-only tasks, DAS layer skipping; ``plm.py``);
- ``meter``: METER (CLIP image tower, RoBERTa text tower, co-attention fusion; ``meter.py``);
- ``vit_gpt2`` / ``vit_roberta``: frozen HF ViT + GPT-2 (captioning, ``generate``) / + RoBERTa (classify), the
  Routing-VLPEFT hosts (``vit_lm.py``);
- ``test_meter`` (RoBERTa-shaped text tower) / ``test_meter_bert`` (BERT tower, bert-base-uncased vocabulary);
- ``test_*``: tiny configurations of the same families, for tests parametrized over the registry.

Imports are lazy so that using one backbone never imports the other's dependencies. Each entry declares the
flat config keys it reads (with the originals' defaults), which the sacred base config and the unknown-key check
collect from here.
"""

from __future__ import annotations

from typing import Any, Mapping

from vlpeft._registry import Registry
from vlpeft.backbones._protocol import Backbone, Candidates, LayerPlan, Site

BACKBONES: Registry[Backbone] = Registry("backbone", "backbone")

VILT_KEYS = {"vit": "vit_base_patch32_384", "hidden_size": 768, "num_heads": 12, "num_layers": 12, "mlp_ratio": 4,
             "drop_rate": 0.1, "vocab_size": 30522, "max_text_len": 40, "max_image_len": -1, "patch_size": 32}
CLIP_PLM_KEYS = {"clip_model": "ViT-B/16", "language_model": "BERT", "plm_config": "", "plm_gguf_file": "",
                 "search_stage": False, "use_adapter": False, "dvp_llama_xattn_dim": 512,
                 "dvp_original_trainable": False, "t5_original_position_bias": False, "clip_feature_cache": True,
                 "clip_cache_dir": "", "kab_shared_prefix": True, "frozen_prefix_no_grad": True,
                 "deterministic_images": None, "clip_cache_max_items": 4096,
                 "clip_precompute": True, "clip_precompute_batch": 128,
                 "plm_dtype": "fp32", "grad_checkpointing": False}  # the last two: the plm backbone's too


@BACKBONES.register("vilt", keys=VILT_KEYS, candidate_kinds=("skip",),
                    capabilities=("classify", "pair_images", "score_pairs"))
def vilt(config: Mapping[str, Any]) -> Backbone:
    from vlpeft.backbones.vilt import build_vilt

    return build_vilt(config)


@BACKBONES.register("clip_plm", keys=CLIP_PLM_KEYS, candidate_kinds=("skip", "insert"), capabilities=("classify",))
def clip_plm(config: Mapping[str, Any]) -> Backbone:
    from vlpeft.backbones.clip_plm import build_dvp_backbone

    return build_dvp_backbone(config)


PLM_KEYS = {"plm_num_layers": 0}  # language_model, plm_config, plm_gguf_file, tokenizer: shared with clip_plm


@BACKBONES.register("plm", keys=PLM_KEYS, candidate_kinds=("skip",), capabilities=("classify", "text_only"))
def plm(config: Mapping[str, Any]) -> Backbone:
    from vlpeft.backbones.plm import build_plm_backbone

    return build_plm_backbone(config)


METER_KEYS = {"num_top_layer": 6, "input_image_embed_size": 768, "input_text_embed_size": 768, "text_encoder": None,
              "token4classifier": False}  # METER's other keys (vit, image_size, tokenizer, …) are base keys


# task_gate ">0": METER's set_task activates every loss with weight > 0 (its retrieval lines' itm=0.5 trains);
# capability "itm": METER's image-text matching (ViLT's adds word-patch alignment, which is not implemented)
@BACKBONES.register("meter", keys=METER_KEYS, candidate_kinds=("skip",), task_gate=">0",
                    capabilities=("classify", "pair_images", "score_pairs", "itm"))
def meter(config: Mapping[str, Any]) -> Backbone:
    from vlpeft.backbones.meter import build_meter

    return build_meter(config)


# ViT + GPT-2 / RoBERTa (Routing-VLPEFT's flag names where RT has one)
VIT_LM_KEYS = {
    "vit_model": "google/vit-base-patch16-224-in21k",  # local ViT folder (or HF-cache name), or a VIT_VARIANTS name
    "lm_config": "",  # "" = the pretrained LM from the `tokenizer` folder; else an LM_VARIANTS name (random init)
    "vit_use_pooler": True,  # x_v = ViT pooler output (B×1×d); False: last hidden state (B×N×d)
    "no_vis_prefix": False,  # GPT-2: drop the one-token visual prefix (vision enters only through routing)
    "use_vis_prefix": False,  # RoBERTa: prepend the visual prefix
    "vit_pet_sites": False,  # also offer the ViT's projections to PET modules (RT keeps the ViT frozen and unadapted)
}


@BACKBONES.register("vit_gpt2", keys=VIT_LM_KEYS, candidate_kinds=("skip",), capabilities=("generate",),
                    context=("x_v",))  # x_v: the pooled image, read by routing presets
def vit_gpt2(config: Mapping[str, Any]) -> Backbone:
    from vlpeft.backbones.vit_lm import build_vit_lm

    return build_vit_lm(config, "gpt2")


@BACKBONES.register("vit_roberta", keys=VIT_LM_KEYS, candidate_kinds=("skip",), capabilities=("classify",),
                    context=("x_v",))  # x_v: the pooled image, read by routing presets
def vit_roberta(config: Mapping[str, Any]) -> Backbone:
    from vlpeft.backbones.vit_lm import build_vit_lm

    return build_vit_lm(config, "roberta")


VL_SEQ_KEYS = {"vl_model": "", "vl_config": None, "vl_vocab_size": None, "vis_feat_dim": 2048, "vl_clip_model": None,
               "vl_grid": 6, "vl_pet_init": "recipe"}  # + tokenizer (base key), clip_feature_cache / clip_cache_* (above)


@BACKBONES.register("vl_bart", keys=VL_SEQ_KEYS, candidate_kinds=("skip",), capabilities=("generate",))
def vl_bart(config: Mapping[str, Any]) -> Backbone:
    """VL-BART (spec §1.1): HF BART + the originals' visual projector; ``vl_seq2seq.py``."""
    from vlpeft.backbones.vl_seq2seq import build_vl_seq2seq

    return build_vl_seq2seq(config, "bart")


@BACKBONES.register("vl_t5", keys=VL_SEQ_KEYS, candidate_kinds=("skip",), capabilities=("generate",))
def vl_t5(config: Mapping[str, Any]) -> Backbone:
    """VL-T5 (spec §1.1): HF T5 + the originals' visual projector; ``vl_seq2seq.py``."""
    from vlpeft.backbones.vl_seq2seq import build_vl_seq2seq

    return build_vl_seq2seq(config, "t5")


# --- tiny entries: the conformance tests build every one of these ----------------------------------------------
TEST_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "test_vilt": ("vilt", dict(vit="test_vilt_tiny", hidden_size=64, num_heads=4, num_layers=2, mlp_ratio=4,
                               drop_rate=0.0, vocab_size=30522, max_text_len=40, max_image_len=-1, patch_size=16)),
    "test_clip_bert": ("clip_plm", dict(clip_model="test_clip_tiny", language_model="BERT",
                                        plm_config="test_bert_tiny_bertvocab", num_heads=4, drop_rate=0.0)),
    "test_clip_t5": ("clip_plm", dict(clip_model="test_clip_tiny", language_model="T5",
                                      plm_config="test_t5_tiny_bertvocab", num_heads=4, drop_rate=0.0)),
    "test_clip_llama": ("clip_plm", dict(clip_model="test_clip_tiny", language_model="LLAMA",
                                         plm_config="test_llama_tiny_bertvocab", num_heads=4, drop_rate=0.0,
                                         dvp_llama_xattn_dim=32)),
    "test_vit_gpt2": ("vit_gpt2", dict(vit_model="test_vit_tiny", lm_config="test_gpt2_tiny",
                                       tokenizer="bert-base-uncased")),
    "test_vit_roberta": ("vit_roberta", dict(vit_model="test_vit_tiny", lm_config="test_roberta_tiny",
                                             tokenizer="bert-base-uncased")),
    # bert-base-uncased vocabulary (offline) + 200 added tokens; images through the tiny CLIP, 2 × 2 grid features
    "test_vl_bart": ("vl_bart", dict(vl_config="test_vl_bart_tiny", vl_model="", tokenizer="bert-base-uncased",
                                     vis_feat_dim=32, vl_clip_model="test_clip_tiny", vl_grid=2, vl_vocab_size=None)),
    "test_vl_t5": ("vl_t5", dict(vl_config="test_vl_t5_tiny", vl_model="", tokenizer="bert-base-uncased",
                                 vis_feat_dim=32, vl_clip_model="test_clip_tiny", vl_grid=2, vl_vocab_size=None)),
    "test_plm_bert": ("plm", dict(language_model="BERT", plm_config="test_bert_tiny_bertvocab")),
    "test_plm_t5": ("plm", dict(language_model="T5", plm_config="test_t5_tiny_bertvocab")),
    "test_plm_llama": ("plm", dict(language_model="LLAMA", plm_config="test_llama_tiny_bertvocab")),
}


def _meter_test_config(variant: str = "test_meter_tiny") -> dict[str, Any]:
    from vlpeft.backbones.meter import METER_VARIANTS

    return dict(METER_VARIANTS[variant])


def _register_test(name: str, family: str, cfg: dict[str, Any]) -> None:
    @BACKBONES.register(name, family=family, config=cfg)
    def _build(config: Mapping[str, Any] | None = None) -> Backbone:
        return BACKBONES.build(family, {**dict(config or {}), **cfg})  # the tiny settings win


for _name, (_family, _cfg) in TEST_CONFIGS.items():
    _register_test(_name, _family, _cfg)


@BACKBONES.register("test_meter", family="meter")
def _test_meter(config: Mapping[str, Any] | None = None) -> Backbone:
    return BACKBONES.build("meter", {**dict(config or {}), **_meter_test_config()})


@BACKBONES.register("test_meter_bert", family="meter")
def _test_meter_bert(config: Mapping[str, Any] | None = None) -> Backbone:
    """Tiny METER with a BERT text tower on the bert-base-uncased vocabulary (the offline default tokenizer):
    what run.py tests drive with the METER named configs."""
    return BACKBONES.build("meter", {**dict(config or {}), **_meter_test_config("test_meter_tiny_bert")})


def task_gate(name: str) -> str:
    """The loss_names rule of backbone ``name``'s family (``vlpeft.tasks.heads.TASK_GATES``): ">=1" unless the
    family registers another (METER: ">0")."""
    entry = BACKBONES.get(name)
    return str(BACKBONES.get(entry.meta.get("family", entry.name)).meta.get("task_gate", ">=1"))


def build_backbone(config: Mapping[str, Any]) -> Backbone:
    """The bare backbone named by ``config["backbone"]`` (no PET modules; see ``vlpeft.build``)."""
    return BACKBONES.build(config["backbone"], config)


__all__ = ["BACKBONES", "Backbone", "Candidates", "LayerPlan", "Site", "build_backbone", "task_gate"]

"""The backbone registry: ``BACKBONES.build(name, config) -> Backbone`` (see ``_protocol.py`` for the contract).

- ``vilt``: single-stream ViLT (``vilt.py``; variant from config ``vit``);
- ``vl_bart`` / ``vl_t5``: VL-BART / VL-T5, generative (``vl_seq2seq.py``);
- ``clip_plm``: frozen CLIP + BERT / T5 / LLaMA with the dynamic visual prompt (``clip_plm.py``);
- ``plm``: a language model alone (BERT / T5 / LLaMA; text-only tasks, DAS layer skipping; ``plm.py``);
- ``lavin``: LaVIN — LLaMA learning the answer text from CLIP image tokens, routers on a modality token
  (``lavin.py``);
- ``meter``: METER (CLIP image tower, RoBERTa text tower, co-attention fusion; ``meter.py``);
- ``vit_gpt2`` / ``vit_roberta``: frozen HF ViT + GPT-2 (captioning, ``generate``) / + RoBERTa (classify), the
  Routing-VLPEFT hosts (``vit_lm.py``);
- ``test_meter`` (RoBERTa-shaped text tower) / ``test_meter_bert`` (BERT tower, bert-base-uncased vocabulary);
- ``test_*``: tiny configurations of the same families, for tests parametrized over the registry.

The family modules are imported here, at the top (no function-local imports, issue #17): they import only the
contract and the ``_``-prefixed helpers of this package, never the package itself, so no cycle runs through here;
their own dependencies (timm, transformers) are required ones, and loading every family costs under a second
next to the sacred config's import. Each entry declares the flat config keys it reads (with the originals'
defaults), which the sacred base config and the unknown-key check collect from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vlpeft._protocol import Backbone, Candidates, LayerPlan, Site
from vlpeft._registry import Registry
from vlpeft.backbones.clip_plm import build_dvp_backbone
from vlpeft.backbones.lavin import LavinSettings, build_lavin
from vlpeft.backbones.meter import METER_VARIANTS, build_meter
from vlpeft.backbones.plm import build_plm_backbone
from vlpeft.backbones.vilt import build_vilt
from vlpeft.backbones.vit_lm import build_vit_lm
from vlpeft.backbones.vl_seq2seq import build_vl_seq2seq
from vlpeft.backbones._settings import (ClipPlmSettings, MeterSettings, PlmSettings, ViltSpec, VitLmSettings,
                                         VlSeq2SeqSettings)
from vlpeft.sections import declared_keys, key, take

BACKBONES: Registry[Backbone] = Registry("backbone", "backbone")

VILT_KEYS = declared_keys(ViltSpec)  # the keys ViLT reads, with their defaults (ViltSpec's fields)
CLIP_PLM_KEYS = declared_keys(ClipPlmSettings)


@BACKBONES.register("vilt", spec=ViltSpec, candidate_kinds=("skip",),
                    capabilities=("classify", "pair_images", "score_pairs"))
def vilt(spec: ViltSpec) -> Backbone:
    return build_vilt(spec)


@BACKBONES.register("clip_plm", spec=ClipPlmSettings, candidate_kinds=("skip", "insert"), capabilities=("classify",))
def clip_plm(settings: ClipPlmSettings) -> Backbone:
    return build_dvp_backbone(settings)


PLM_KEYS = declared_keys(PlmSettings)  # language_model, plm_config, plm_gguf_file, tokenizer: clip_plm's


@BACKBONES.register("plm", spec=PlmSettings, candidate_kinds=("skip",), capabilities=("classify", "text_only"))
def plm(settings: PlmSettings) -> Backbone:
    return build_plm_backbone(settings)


LAVIN_KEYS = declared_keys(LavinSettings)


@BACKBONES.register("lavin", spec=LavinSettings, candidate_kinds=("skip", "insert"),
                    capabilities=("generate", "text_only"))
def lavin(settings: LavinSettings) -> Backbone:
    return build_lavin(settings)


METER_KEYS = declared_keys(MeterSettings)  # METER's own keys; its other keys (vit, image_size, …) are base keys


# task_gate ">0": METER's set_task activates every loss with weight > 0 (its retrieval lines' itm=0.5 trains);
# capability "itm": METER's image-text matching (ViLT's adds word-patch alignment, which is not implemented)
@BACKBONES.register("meter", spec=MeterSettings, candidate_kinds=("skip",), task_gate=">0",
                    capabilities=("classify", "pair_images", "score_pairs", "itm"))
def meter(settings: MeterSettings) -> Backbone:
    return build_meter(settings)


# ViT + GPT-2 / RoBERTa (Routing-VLPEFT's flag names where RT has one)
VIT_LM_KEYS = declared_keys(VitLmSettings)


@BACKBONES.register("vit_gpt2", spec=VitLmSettings, candidate_kinds=("skip",),
                    capabilities=("generate",),
                    context=("x_v",))  # x_v: the pooled image, read by routing presets
def vit_gpt2(settings: VitLmSettings) -> Backbone:
    return build_vit_lm(settings, "gpt2")


@BACKBONES.register("vit_roberta", spec=VitLmSettings, candidate_kinds=("skip",),
                    capabilities=("classify",),
                    context=("x_v",))  # x_v: the pooled image, read by routing presets
def vit_roberta(settings: VitLmSettings) -> Backbone:
    return build_vit_lm(settings, "roberta")


VL_SEQ_KEYS = declared_keys(VlSeq2SeqSettings)


@BACKBONES.register("vl_bart", spec=VlSeq2SeqSettings, candidate_kinds=("skip",),
                    capabilities=("generate",))
def vl_bart(settings: VlSeq2SeqSettings) -> Backbone:
    """VL-BART (spec §1.1): HF BART + the originals' visual projector; ``vl_seq2seq.py``."""
    return build_vl_seq2seq(settings, "bart")


@BACKBONES.register("vl_t5", spec=VlSeq2SeqSettings, candidate_kinds=("skip",),
                    capabilities=("generate",))
def vl_t5(settings: VlSeq2SeqSettings) -> Backbone:
    """VL-T5 (spec §1.1): HF T5 + the originals' visual projector; ``vl_seq2seq.py``."""
    return build_vl_seq2seq(settings, "t5")


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
    # video-text (issue 19): the originals' CLIP-ViT frame features (f = 512) come in the batch, no extractor; 600
    # text positions (the video inputs' length)
    "test_vl_bart_video": ("vl_bart", dict(vl_config="test_vl_bart_video_tiny", vl_model="",
                                           tokenizer="bert-base-uncased", vis_feat_dim=512, vl_clip_model=None,
                                           vl_vocab_size=None)),
    "test_vl_t5": ("vl_t5", dict(vl_config="test_vl_t5_tiny", vl_model="", tokenizer="bert-base-uncased",
                                 vis_feat_dim=32, vl_clip_model="test_clip_tiny", vl_grid=2, vl_vocab_size=None)),
    "test_plm_bert": ("plm", dict(language_model="BERT", plm_config="test_bert_tiny_bertvocab")),
    "test_plm_t5": ("plm", dict(language_model="T5", plm_config="test_t5_tiny_bertvocab")),
    "test_plm_llama": ("plm", dict(language_model="LLAMA", plm_config="test_llama_tiny_bertvocab")),
    # tiny LLaMA on the offline bert-base-uncased vocabulary + the tiny CLIP (2 blocks: one image token per block)
    "test_lavin": ("lavin", dict(plm_config="test_llama_tiny_bertvocab", lavin_clip_model="test_clip_tiny",
                                 lavin_clip_every=1, lavin_hidden_proj=16, lavin_visual_adapter_dim=4)),
}


def _meter_test_config(variant: str = "test_meter_tiny") -> dict[str, Any]:
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


@dataclass(frozen=True)
class _Named:
    backbone: str = key(default="", shared=True)


def build_bare_backbone(config: Mapping[str, Any]) -> Backbone:
    """The bare backbone named by the config's ``backbone`` key: no PET modules, nothing frozen (``vlpeft.build.
    build_with_pet`` adds both)."""
    return BACKBONES.build(take(_Named, config).backbone, config)


__all__ = ["BACKBONES", "Backbone", "Candidates", "LayerPlan", "Site", "build_bare_backbone", "task_gate"]

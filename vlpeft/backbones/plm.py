"""Text-only language-model backbone: BERT / T5 / LLaMA alone, no image, its layers as skip candidates.

What DAS does to LLaMA in LaVIN-DAS (seeds.md §4.2) and what issue 10 asks for BERT and T5: the search skips whole
layers of the language model, each skipped layer replaced by its skip adapter. This backbone is the DVP
``clip_plm`` backbone without CLIP and the visual prompt: the same ``PLMWrapper`` steps (``prepare``,
``run_layer``, ``readout``) and so the same PET sites (sequential / out_par / gate hooks on every sublayer output,
projections), with one skip slot per candidate layer. Batches need only ``text_ids`` and ``text_masks``; an
``image`` in the batch is ignored.

Candidates: BERT's encoder layers, LLaMA's decoder layers, T5's *decoder* blocks (the encoder runs whole in
``prepare``, as in DVP-T5). ``cls_feats``: BERT ``[CLS]`` after the last layer (no pooler), T5 the decoder
start-token state after the final norm, LLaMA the final-normed state of the last real token (right padding).

LLaMA skip sites carry ``meta["input_norm"]``: the layer's ``input_layernorm`` (LaVIN's ``attention_norm``), which
the LaVIN skip adapter reads (``out = x + adapter(attention_norm(x))``; ``vlpeft.pet.das_lm``).

``plm_num_layers`` (> 0) keeps only the first N candidate layers: tests and benches run a real model at reduced
depth (SmolLM2's 30 layers → a few). ``plm_dtype`` (``fp32`` / ``bf16`` / ``fp16``) loads the LM in that dtype,
PET modules staying fp32; ``grad_checkpointing=True`` recomputes each computed layer in the backward
(``vlpeft.backbones._memory``).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Mapping

import torch
from torch import nn

from vlpeft.backbones._memory import (check_grad_checkpointing, checkpointed, heads_dtype, lm_autocast,
                                      plm_torch_dtype)
from vlpeft.backbones._plm import LANGUAGE_MODELS, HostsPLM, PLMState, PLMWrapper, build_hf_plm, wrap_plm
from vlpeft._protocol import Backbone, Candidates, LayerPlan
from vlpeft.backbones._settings import PlmSettings
from vlpeft.sections import is_settings


@dataclass(frozen=True)
class PLMBackboneConfig(PlmSettings):
    """The text-only backbone's settings, checked (the fields and their defaults: ``PlmSettings``)."""

    @classmethod
    def from_config(cls, config: PlmSettings | Mapping[str, Any]) -> "PLMBackboneConfig":
        if is_settings(config):  # the registry's typed settings: checked here like a dict's values
            config = {f.name: getattr(config, f.name) for f in fields(config)}
        kw = {f.name: config[f.name] for f in fields(cls) if f.name in config and config[f.name] is not None}
        c = cls(**kw)
        if str(c.language_model).upper() not in LANGUAGE_MODELS:
            raise ValueError(f"language_model={c.language_model!r} must be one of {LANGUAGE_MODELS}")
        n = c.plm_num_layers
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"plm_num_layers={n!r} must be an int >= 0 (0 keeps every layer)")
        if not isinstance(c.t5_original_position_bias, bool):
            raise TypeError(f"t5_original_position_bias={c.t5_original_position_bias!r} must be True or False")
        plm_torch_dtype(c.plm_dtype)
        check_grad_checkpointing(c.grad_checkpointing)
        return c


def truncate_layers(hf: nn.Module, language_model: str, n: int) -> nn.Module:
    """Keep the first ``n`` candidate layers of ``hf`` (in place); the config's layer count follows."""
    lm = str(language_model).upper()
    owner, attr, cfg_key = {"BERT": (lambda m: m.encoder, "layer", "num_hidden_layers"),
                            "T5": (lambda m: m.decoder, "block", "num_decoder_layers"),
                            "LLAMA": (lambda m: m, "layers", "num_hidden_layers")}[lm]
    parent = owner(hf)
    layers = getattr(parent, attr)
    if n > len(layers):
        raise ValueError(f"plm_num_layers={n} but the {lm} model has only {len(layers)} candidate layers")
    setattr(parent, attr, nn.ModuleList(list(layers)[:n]))
    setattr(hf.config, cfg_key, n)
    if lm == "LLAMA" and getattr(hf.config, "layer_types", None):
        hf.config.layer_types = list(hf.config.layer_types)[:n]
    return hf


class PLMBackbone(HostsPLM, Backbone):
    """A language model alone as a ``Backbone``: candidates = its layers (skip only), PET sites = the PLM's
    sublayer hooks, one skip slot per layer (``skip_adapters.i.0``) and the projections."""

    capabilities = frozenset({"classify", "text_only"})  # text_only: batches without an image (BoolQ)

    def __init__(self, plm: PLMWrapper, cfg: PLMBackboneConfig) -> None:
        super().__init__()
        self.family = plm.kind.lower()
        self.cfg = cfg
        self.plm = plm
        self.skip_adapters = nn.ModuleList(nn.Sequential() for _ in range(plm.num_layers))  # empty = identity

    # -- structure -----------------------------------------------------------------------------------
    def candidates(self) -> Candidates:
        return Candidates(count=self.plm.num_layers, skip=True, insert=False)

    def candidate_name(self, index: int) -> str:
        hf = {"BERT": "bert.encoder.layer", "T5": "t5.decoder.block", "LLAMA": "llama.layers"}[self.plm.kind]
        return f"plm.{hf}.{index}"

    def skip_site_meta(self, i: int) -> dict[str, Any]:
        """What a skip module may read from its unit: LLaMA's pre-attention RMSNorm (LaVIN's skip adapter)."""
        if self.plm.kind == "LLAMA":
            return {"input_norm": self.plm.layers[i].input_layernorm, "stack_role": "decoder"}
        return {"stack_role": self.plm.stack_roles.get("plm", "plm")}

    # -- running -------------------------------------------------------------------------------------
    def _text(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        for k in ("text_ids", "text_masks"):
            if k not in batch:
                raise KeyError(f"the text-only PLM backbone needs batch[{k!r}] (token ids and their 1/0 mask)")
        dev = next(self.plm.parameters()).device
        return batch["text_ids"].to(dev), batch["text_masks"].to(dev)

    def run(self, state: PLMState, skip: frozenset[int]) -> PLMState:
        for i in range(self.num_layers):
            if i in skip:  # the layer is not computed; its skip site (identity when empty) runs instead
                state = replace(state, h=self.skip_adapters[i](state.h))
            else:
                state = checkpointed(self.plm.run_layer, i, state,
                                     enabled=self.cfg.grad_checkpointing and self.training)
        return state

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan = LayerPlan(), **ctx: Any) -> dict[str, torch.Tensor]:
        if ctx:
            raise TypeError(f"the text-only PLM backbone takes no {sorted(ctx)} (one text per sample)")
        skip = self.check_plan(plan).skip
        ids, masks = self._text(batch)
        with lm_autocast(plm_torch_dtype(self.cfg.plm_dtype), ids.device):
            state = self.run(self.plm.prepare(ids, masks), skip)
            feats = self.plm.readout(state)
        return {"cls_feats": heads_dtype(feats)}  # the heads stay fp32

    # -- trainable policies ----------------------------------------------------------------------------
    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        hf_prefix = "plm." + {"BERT": "bert", "T5": "t5", "LLAMA": "llama"}[self.plm.kind] + "."
        return [(hf_prefix + n, p) for n, p in self.plm.base_trainable(policy)]


def build_plm_backbone(config: PlmSettings | Mapping[str, Any]) -> PLMBackbone:
    """The bare text-only backbone from its settings or a config dict (``PlmSettings`` lists the keys)."""
    cfg = PLMBackboneConfig.from_config(config)
    hf = build_hf_plm(cfg.language_model, cfg.plm_config, cfg.tokenizer, cfg.plm_gguf_file,
                      plm_torch_dtype(cfg.plm_dtype))
    if cfg.plm_num_layers:
        truncate_layers(hf, cfg.language_model, cfg.plm_num_layers)
    return PLMBackbone(wrap_plm(hf, cfg.language_model, cfg.t5_original_position_bias), cfg)


__all__ = ["PLMBackbone", "PLMBackboneConfig", "build_plm_backbone", "truncate_layers"]

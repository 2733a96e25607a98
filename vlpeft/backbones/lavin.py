"""LaVIN (luogen1996/LaVIN as LaVIN-DAS runs it; DoubtedSteam/DAS ``LaVIN-DAS/das/mm_model.py``, ``mm_adapter.py``,
``mm_generator.py``): a frozen LLaMA that learns the answer text, fed CLIP image tokens; seeds.md §4.2.

Public API::

    build_lavin(settings) -> LaVINBackbone          # registry name "lavin" (tiny entry "test_lavin")
    LaVINBackbone(batch, plan) -> {"lm_logits" (B, T, V), "lm_loss"}   # with batch["target_ids"]
    LaVINBackbone.generate(batch, plan, max_new_tokens=…) -> [str]    # greedy
    LavinSettings, LAVIN_LLAMA_VARIANTS, LAVIN_CLIP_VARIANTS

The model (each part as the original computes it; the deliberate differences at the end):

- **LLaMA** in the Hugging Face layout (``LlamaModel`` + ``lm_head``; any size: ``plm_config`` names a variant —
  ``llama_7b`` is LLaMA-7B's shape — or ``tokenizer`` names a pretrained folder / GGUF). Frozen.
- **CLIP** (``lavin_clip_model``; ViT-L/14 in LaVIN, any size here), frozen, with one ``RepAdapter_Router`` of width
  ``lavin_visual_adapter_dim`` (8) per residual block on the attention's input: ``x + attn(A(ln_1(x)))``
  (``set_Clip_Adapter(..., 'router')``). Its image tokens are the class token after every ``lavin_clip_every``-th
  block (4: six tokens for ViT-L/14's 24 blocks), no ``ln_post``, no projection.
- ``adapter_proj`` (``AdapterMLP``): ``conv_B(SiLU(conv_A(f)))``, CLIP width → ``lavin_hidden_proj`` (128) → LLaMA
  width, Xavier weights and zero biases; maps the image tokens into the LM.
- **Sequence**: ``[m] + [t_0] + E("Image: ") + image tokens + [t_1 … t_n] + answer`` for a sample with an image,
  ``[m] + [t_0] + E("Image: N/A") + [t_1 …] + answer`` without (``t_0`` is the prompt's BOS; LaVIN's
  ``insert_image_embeds``). ``m = adapter_modality_embedding(has_image)``, an ``nn.Embedding(2, d)`` at position 0:
  causal attention, and no later position may attend to it (``mask[:, :, 1:, 0] = -inf``), so it reaches the LM only
  through the routers, which read ``x[:, 0]`` (the ``das_llama`` preset with ``das_llama_router=True``: the in-block
  ``adapter_attn`` on every layer's normed attention input, the skip ``replaced_adapter`` of width 32).
- **Loss**: token cross-entropy of the next-token logits on the answer tokens only (LaVIN's labels are 0 on the
  prompt, image and padding, and its criterion ignores 0); ``target_ids`` carry -100 there instead.
- **Generation**: the same sequence, then the answer token by token, stopping at EOS or ``max_new_tokens`` (LaVIN's
  ``eval_scienceqa.py``: 64). The ScienceQA task (``vlpeft.tasks.scienceqa.answer_letter``) pulls the letter out as
  LaVIN does: the first match of ``The answer is ([A-Z]).``, else of ``([A-E]).``, else ``FAILED`` (the task then
  draws a random choice).
- **Text-only** (``lavin_clip_model=''``): LaVIN-DAS's language-only runs (BoolQ, CSQA, GSM8K) use ``PL_Transformer``:
  no CLIP, no modality token, no "Image:" prefix — the LM over the prompt alone, with the text adapters
  (``das_llama_router=False``). A vision build fed a batch without ``image`` treats every sample as image-less
  (LaVIN's indicator 0: "Image: N/A", modality row 0).

- **DVP on ScienceQA** (``method=dvp``; hsb1357173526/Dynamic_Visual_Prompting ``Dynamic_Visual_Prompting_For_SQA``,
  ``lavin/model.py``): an image sample's sequence gets one learned slot (``image_params``) right after its image
  tokens; until LLaMA layer K (``insert_layer``, "insert" candidates) no later token reads it; before layer K it is
  replaced by ``cross_attn(q, c)``: ``q`` the mean of the layer-K input over the prompt tokens after BOS, ``c`` CLIP's
  last-block output over every token (no ``ln_post``), a ``CrossAttentionPrompt`` of width ``dvp_llama_xattn_dim``
  (512, 16 heads, dropout 0.1); one per layer while searching (``search_stage``, KAB). Image-less samples get no slot.
  The slot, the cross-attention(s) and LaVIN's modules train (the original's 'adapter' / 'cross_attn' /
  'image_params' rule); the placeholder itself never reaches the loss there either.

Batch keys (``vlpeft.backbones._generative``): ``text_ids`` / ``text_masks`` (right-padded prompt, BOS first),
``target_ids`` (answer + EOS, -100 padding; absent at test), optional ``image`` (B, 3, H, W) and ``has_image`` (B,)
(1 = the sample has an image; default all 1 when ``image`` is given). Candidates: the LLaMA layers (skip); a skipped
layer runs ``x + A_skip(attention_norm(x))`` (``vlpeft.pet.das_lm.LaVINSkip``).

Deliberate differences (the key that restores the original, where one does):
- LaVIN's CLIP blocks run sequence-first (L, B, D), so ``x[:, 0]`` in their routers is batch item 0's token at each
  position: a sample's image tokens depend on its batch-mates. Here each token routes on itself — the original's
  result for a batch of one; ``lavin_clip_route_batch0=True`` restores the original at any batch size.
- LaVIN cuts the sequence back to the padded prompt length after inserting the image tokens (``[:seqlen]``); here
  nothing is cut.
- Generation is greedy; LaVIN samples with temperature 0.1, top-p 0.75. Generation recomputes the sequence each step
  (no KV cache).
- fp16 casts (``.half()``, autocast) are left to ``plm_dtype`` and the trainer's precision.
- DVP-SQA's training mask hides the slot from later tokens in every layer, also after layer K (the pre-K mask is
  edited in place and reused), so its prompt never reaches the loss and its KAB rewards do not depend on K; its cached
  generation lets answer tokens after the first read it. Here later tokens read the prompt from layer K on, in
  training and generation; ``lavin_dvp_hide_after_insert=True`` restores the training mask (everywhere).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn
import torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

from vlpeft._protocol import Candidates, LayerPlan
from vlpeft.backbones._clip import build_clip_visual
from vlpeft.backbones._generative import IGNORE_INDEX, Generative, lm_loss
from vlpeft.backbones._memory import plm_torch_dtype
from vlpeft.backbones._plm import PLM_VARIANTS, HostsPLM, LlamaPLM, PLMState, _additive, _gguf_in
from vlpeft.backbones._variants import Variants
from vlpeft.backbones.plm import truncate_layers
from vlpeft.data.tokenizer import load_tokenizer, resolve_model_path
from vlpeft.pet.das_lm import LaVINRouterAdapter
from vlpeft.pet.prompts import CrossAttentionPrompt
from vlpeft.sections import key, take

# LLaMA shapes (random weights; pretrained ones come from the `tokenizer` folder). The PLM tables' LLaMA variants
# (test_llama_tiny_bertvocab, …) are accepted too.
LAVIN_LLAMA_VARIANTS = Variants("LLAMA", "transformers.LlamaConfig", {
    "llama_7b": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                     num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=2048, rms_norm_eps=1e-6,
                     bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
    "llama_13b": dict(vocab_size=32000, hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                      num_attention_heads=40, num_key_value_heads=40, max_position_embeddings=2048, rms_norm_eps=1e-6,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False),
})
# CLIP towers (random weights): ViT-L/14 as LaVIN loads it; the CLIP table's names (test_clip_tiny, …) work too
LAVIN_CLIP_VARIANTS = Variants("CLIP vision tower", "transformers.CLIPVisionConfig", {
    "vit_l14_random": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           image_size=224, patch_size=14, hidden_act="quick_gelu", layer_norm_eps=1e-5),
})
VISUAL_ADAPTERS = ("router", "none")


@dataclass(frozen=True)
class LavinSettings:
    """LaVIN's keys (its flags: ``--hidden_proj 128``, ``--adapter_dim 8``, ``--visual_adapter_type router``,
    ``--temperature 10``, ``--adapter_scale 1``); the LLaMA adapters are the ``das_llama`` preset's."""

    lavin_clip_model: str = "ViT-L/14"  # CLIP variant / folder / OpenAI .pt; "" = text-only (PL_Transformer)
    lavin_clip_every: int = 4  # image tokens: the class token after every N-th CLIP block
    lavin_hidden_proj: int = 128  # adapter_proj's hidden width
    lavin_visual_adapter: str = "router"  # CLIP's adapters: router (LaVIN's scripts) | none
    lavin_visual_adapter_dim: int = 8
    lavin_visual_adapter_scale: float = 1.0
    lavin_visual_adapter_t: float = 10.0
    lavin_clip_route_batch0: bool = False  # True: CLIP routers read batch item 0 per position (the original);
    # False: each token routes on itself (the original's result at batch size 1)
    lavin_prefix_img: str = "Image: "
    lavin_prefix_nonimg: str = "Image: N/A"
    plm_config: Any = key(default=None, shared=True)  # a LLaMA variant name or LlamaConfig kwargs; None: pretrained
    tokenizer: str | None = key(default=None, shared=True)  # the LLaMA folder (weights + tokenizer)
    plm_gguf_file: str | None = key(default=None, shared=True)
    plm_num_layers: int = key(default=0, shared=True)  # > 0: keep the first N LLaMA layers
    plm_dtype: str = key(default="fp32", shared=True)
    # DVP on ScienceQA (method=dvp): the visual prompt's slot after the image tokens, filled at LLaMA layer K
    method: str = key(default="das", shared=True)
    search_stage: bool = key(default=False, shared=True)  # KAB search: one cross-attention per candidate layer
    dvp_llama_xattn_dim: int = key(default=512, shared=True)
    num_heads: int = key(default=12, shared=True)  # the cross-attention's heads (DVP-SQA: 16)
    drop_rate: float = key(default=0.1, shared=True)
    lavin_dvp_hide_after_insert: bool = False  # True: the prompt stays hidden from later tokens after layer K too
    # (the original's training mask, which makes the prompt unread); False: later tokens read it from layer K on


def _check(s: LavinSettings) -> LavinSettings:
    for name in ("lavin_clip_every", "lavin_hidden_proj", "lavin_visual_adapter_dim"):
        v = getattr(s, name)
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ValueError(f"{name}={v!r} must be a positive int (LaVIN: clip_every 4, hidden_proj 128, "
                             f"adapter_dim 8)")
    n = s.plm_num_layers
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"plm_num_layers={n!r} must be an int >= 0 (0 keeps every layer)")
    if s.lavin_visual_adapter not in VISUAL_ADAPTERS:
        raise ValueError(f"lavin_visual_adapter={s.lavin_visual_adapter!r} must be one of {VISUAL_ADAPTERS}")
    if not isinstance(s.lavin_clip_route_batch0, bool):
        raise ValueError(f"lavin_clip_route_batch0={s.lavin_clip_route_batch0!r} must be True or False")
    if not s.plm_config and not s.tokenizer:
        raise ValueError("lavin needs a LLaMA: set tokenizer=<LLaMA folder> (pretrained) or plm_config=<one of "
                         f"{sorted(LAVIN_LLAMA_VARIANTS) + sorted(PLM_VARIANTS['LLAMA'])}> (random)")
    if isinstance(s.plm_config, str) and s.plm_config and s.plm_config not in LAVIN_LLAMA_VARIANTS \
            and s.plm_config not in PLM_VARIANTS["LLAMA"]:
        raise ValueError(f"plm_config={s.plm_config!r} is not a LLaMA variant; use one of "
                         f"{sorted(LAVIN_LLAMA_VARIANTS) + sorted(PLM_VARIANTS['LLAMA'])}")
    plm_torch_dtype(s.plm_dtype)
    if s.method == "dvp" and not s.lavin_clip_model:
        raise ValueError("method=dvp on lavin needs CLIP for the visual prompt, but lavin_clip_model='' (text-only); "
                         "set lavin_clip_model=<a CLIP variant or ViT-L-14.pt> or use method=das")
    if s.method == "dvp":
        w, h = s.dvp_llama_xattn_dim, s.num_heads
        if isinstance(w, bool) or not isinstance(w, int) or isinstance(h, bool) or not isinstance(h, int) \
                or w <= 0 or h <= 0 or w % h:
            raise ValueError(f"dvp_llama_xattn_dim={w!r} must be a positive int divisible by num_heads={h!r} "
                             f"(DVP-SQA: 512 and 16)")
    if not isinstance(s.lavin_dvp_hide_after_insert, bool):
        raise ValueError(f"lavin_dvp_hide_after_insert={s.lavin_dvp_hide_after_insert!r} must be True or False")
    return s


class AdapterMLP(nn.Module):
    """LaVIN's ``adapter_proj``: ``conv_B(SiLU(conv_A(x)))`` (Linear layers despite the names), Xavier-uniform
    weights, zero biases."""

    def __init__(self, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.conv_A = nn.Linear(in_features, hidden)
        self.conv_B = nn.Linear(hidden, out_features)
        for lin in (self.conv_A, self.conv_B):
            nn.init.xavier_uniform_(lin.weight)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv_B(F.silu(self.conv_A(x)))


class _ClipAdapterHook:
    """Forward hook on a CLIP block's ``layer_norm1``: the attention reads ``A(ln_1(x))``, each token routed on itself
    (what the original computes for a batch of one); ``batch0``: every sample's token at position l routed on batch
    item 0's token at l (the original at any batch size: its sequence-first ``x[:, 0]``)."""

    def __init__(self, adapter: LaVINRouterAdapter, batch0: bool) -> None:
        self.adapter, self.batch0 = adapter, batch0

    def __call__(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        a = self.adapter
        x = output[:1] if self.batch0 else output  # (1 | B, L, d): who routes each position
        return a(output, weights=torch.softmax(a.expert_weights(x) / a.t, dim=-1))


class LaVINBackbone(HostsPLM, Generative):
    """LaVIN: see the module docstring. ``plm`` wraps the ``LlamaModel`` (its sublayer / skip / projection sites,
    as the ``plm`` backbone); ``lm_head`` its output layer; ``clip`` the frozen CLIP tower or None (text-only)."""

    capabilities = frozenset({"generate", "text_only"})

    def __init__(self, plm: LlamaPLM, lm_head: nn.Module, clip: nn.Module | None, tokenizer: Any,
                 cfg: LavinSettings) -> None:
        super().__init__()
        self.cfg = cfg
        self.family = "llama"
        self.plm = plm
        self.lm_head = lm_head
        self.tokenizer = tokenizer
        self.skip_adapters = nn.ModuleList(nn.Sequential() for _ in range(plm.num_layers))  # empty = identity
        d = plm.hidden_size
        self.clip = clip
        if clip is not None:
            clip.requires_grad_(False)
            dv = int(clip.config.hidden_size)
            n_blocks = int(clip.config.num_hidden_layers)
            if n_blocks < cfg.lavin_clip_every:
                raise ValueError(f"lavin_clip_every={cfg.lavin_clip_every} exceeds the CLIP tower's {n_blocks} blocks: "
                                 f"no image token would be read")
            self.adapter_proj = AdapterMLP(dv, cfg.lavin_hidden_proj, d)
            self.adapter_modality_embedding = nn.Embedding(2, d)
            self.clip_adapters = nn.ModuleList()
            if cfg.lavin_visual_adapter == "router":
                for layer in clip.encoder.layers:
                    a = LaVINRouterAdapter(dv, cfg.lavin_visual_adapter_dim, scale=cfg.lavin_visual_adapter_scale,
                                           t=cfg.lavin_visual_adapter_t)
                    self.clip_adapters.append(a)
                    layer.layer_norm1.register_forward_hook(_ClipAdapterHook(a, cfg.lavin_clip_route_batch0))
        # DVP-SQA: a learned placeholder after the image tokens; at layer K a cross-attention from the pooled prompt
        # tokens onto CLIP's last-block tokens overwrites it (per candidate layer while searching, as clip_plm)
        self.dvp = clip is not None and cfg.method == "dvp"
        if self.dvp:
            self.image_params = nn.Parameter(torch.randn(1, d))
            xattn = dict(query_dim=d, kv_dim=dv, inner_dim=int(cfg.dvp_llama_xattn_dim),
                         num_heads=int(cfg.num_heads), dropout=float(cfg.drop_rate))
            if cfg.search_stage:
                self.cross_attn_options = nn.ModuleList(CrossAttentionPrompt(**xattn) for _ in range(plm.num_layers))
            else:
                self.cross_attn = CrossAttentionPrompt(**xattn)
        self._prefix = {k: self._encode(getattr(cfg, f"lavin_prefix_{k}")) for k in ("img", "nonimg")}

    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if self.tokenizer else []

    # -- protocol ---------------------------------------------------------------------------------------------------
    def candidates(self) -> Candidates:
        return Candidates(count=self.plm.num_layers, skip=True, insert=self.dvp)

    def candidate_name(self, index: int) -> str:
        return f"plm.llama.layers.{index}"

    def skip_site_meta(self, i: int) -> dict[str, Any]:
        """LLaMA's pre-attention RMSNorm (LaVIN's ``attention_norm``), which the skip adapter reads."""
        return {"input_norm": self.plm.layers[i].input_layernorm, "stack_role": "decoder"}

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        """LaVIN's own modules (``adapter_proj``, the modality token, CLIP's adapters) train under every policy; the
        LLaMA per policy; CLIP and the LM head never."""
        own = [(f"{name}.{n}", p) for name in ("adapter_proj", "adapter_modality_embedding", "clip_adapters",
                                                "cross_attn", "cross_attn_options")
               if hasattr(self, name) for n, p in getattr(self, name).named_parameters()]
        if self.dvp:
            own.append(("image_params", self.image_params))
        return own + [("plm.llama." + n, p) for n, p in self.plm.base_trainable(policy)]

    # -- vision -----------------------------------------------------------------------------------------------------
    def image_tokens(self, image: torch.Tensor) -> torch.Tensor:
        """(B, n_blocks // every, d): the class token after every ``lavin_clip_every``-th CLIP block, through
        ``adapter_proj``."""
        return self._clip(image)[0]

    def _clip(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The image tokens and the last block's output (B, 1 + P, d_v): no ``ln_post`` (DVP's keys / values)."""
        assert self.clip is not None
        dtype = self.clip.embeddings.patch_embedding.weight.dtype
        hs = self.clip(pixel_values=image.to(dtype), output_hidden_states=True).hidden_states  # [embeds, block 1…]
        every = self.cfg.lavin_clip_every
        feats = torch.stack([hs[i][:, 0] for i in range(every, len(hs), every)], dim=1)
        return self.adapter_proj(feats.to(self.adapter_proj.conv_A.weight.dtype)), hs[-1]

    # -- the sequence -----------------------------------------------------------------------------------------------
    def _inputs(self, batch: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        for k in ("text_ids", "text_masks"):
            if k not in batch:
                raise KeyError(f"lavin needs batch[{k!r}] (the right-padded prompt, BOS first); it has {sorted(batch)}")
        dev = self.plm.llama.embed_tokens.weight.device
        ids, masks = batch["text_ids"].to(dev), batch["text_masks"].to(dev).long()
        if bool((masks.sum(1) == 0).any()):
            raise ValueError("lavin: a text_masks row is empty; every prompt needs at least its BOS token")
        has = None
        if self.clip is not None:
            image = batch.get("image")
            if isinstance(image, (list, tuple)):
                image = image[0]
            b = ids.shape[0]
            if image is None:
                has = torch.zeros(b, dtype=torch.long, device=dev)
            else:
                m = batch.get("has_image")
                has = torch.ones(b, dtype=torch.long, device=dev) if m is None else torch.as_tensor(m).to(dev).long()
        return ids, masks, has

    def _rows(self, batch: Mapping[str, Any], extra: list[torch.Tensor] | None = None
              ) -> tuple[list[torch.Tensor], list[int], dict[str, Any] | None]:
        """Per sample: the input embeddings (n_b, d) and where the appended ``extra`` ids start; with DVP, where the
        prompt slot of each image row is (``rows``, ``slot``), the prompt tokens it pools (``span``: t_1 … t_n)
        and CLIP's last-block tokens (``visual``)."""
        ids, masks, has = self._inputs(batch)
        emb = self.plm.llama.embed_tokens
        img = visual = None
        if has is not None and bool(has.any()):
            image = batch["image"]
            image = image[0] if isinstance(image, (list, tuple)) else image
            img, visual = self._clip(image.to(ids.device))
        rows, starts = [], []
        dvp: dict[str, Any] = {"rows": [], "slot": [], "span": []}
        for b in range(ids.shape[0]):
            n = int(masks[b].sum())
            toks = ids[b, :n]
            parts = []
            if has is not None:
                flag = int(has[b])
                parts.append(self.adapter_modality_embedding(has[b:b + 1]).to(emb.weight.dtype))
                prefix = self._prefix["img" if flag else "nonimg"]
                parts.append(emb(toks[:1]))
                parts.append(emb(torch.tensor(prefix, dtype=torch.long, device=ids.device)))
                if flag:
                    parts.append(img[b].to(emb.weight.dtype))
                    if self.dvp:
                        if n < 2:
                            raise ValueError("lavin DVP: a prompt with an image has no token after BOS to form the "
                                             "visual prompt's query from")
                        slot = sum(p.shape[0] for p in parts)
                        parts.append(self.image_params.to(emb.weight.dtype))
                        dvp["rows"].append(b)
                        dvp["slot"].append(slot)
                        dvp["span"].append((slot + 1, slot + n))
                parts.append(emb(toks[1:]))
            else:
                parts.append(emb(toks))
            start = sum(p.shape[0] for p in parts)
            if extra is not None and extra[b].numel():
                parts.append(emb(extra[b]))
            rows.append(torch.cat(parts, dim=0))
            starts.append(start)
        if not dvp["rows"]:
            return rows, starts, None
        dvp["visual"] = visual[dvp["rows"]]
        return rows, starts, dvp

    def _run(self, rows: list[torch.Tensor], plan: LayerPlan, dvp: dict[str, Any] | None = None) -> torch.Tensor:
        """The final-normed hidden states (B, N, d) of the right-padded rows; ``dvp`` (from ``_rows``): the prompt
        slots, filled before layer ``plan.insert_layer``."""
        lengths = [r.shape[0] for r in rows]
        n, d = max(lengths), rows[0].shape[-1]
        h = rows[0].new_zeros(len(rows), n, d)
        for b, r in enumerate(rows):
            h[b, :r.shape[0]] = r
        dev = h.device
        real = torch.arange(n, device=dev)[None, :] < torch.tensor(lengths, device=dev)[:, None]
        pos = torch.arange(n, device=dev)
        allowed = (pos[None, :] <= pos[:, None])[None, None] & real[:, None, None, :]
        if self.clip is not None:  # nobody reads the modality token but itself (and the routers)
            allowed = allowed & ((pos[None, :] > 0) | (pos[:, None] == 0))[None, None]
        pos_ids = pos.unsqueeze(0).expand(len(rows), -1)
        rope = self.plm.llama.rotary_emb(h, position_ids=pos_ids)
        plan = self.check_plan(plan)
        skip, k = plan.skip, plan.insert_layer
        after = _additive(allowed, h.dtype)
        before = after
        if dvp is not None:  # until layer K no later token reads the (placeholder) slot
            r = torch.tensor(dvp["rows"], device=dev)
            slot = torch.tensor(dvp["slot"], device=dev)
            hidden = torch.zeros_like(allowed)
            hidden[r, :, :, slot] = pos[None, None, :] > slot[:, None, None]  # (rows, 1, query position)
            before = _additive(allowed & ~hidden, h.dtype)
            if self.cfg.lavin_dvp_hide_after_insert:
                after = before
        state = PLMState(h=h, masks=real.long(), attn_mask=before, extra={"rope": rope, "pos": pos_ids})
        for i in range(self.num_layers):
            if dvp is not None and i == k:
                state = replace(state, h=self._fill_prompt(state.h, dvp, k), attn_mask=after)
            if i in skip:
                state = replace(state, h=self.skip_adapters[i](state.h))
            else:
                state = self.plm.run_layer(i, state)
        return self.plm.llama.norm(state.h)

    def _fill_prompt(self, h: torch.Tensor, dvp: dict[str, Any], k: int) -> torch.Tensor:
        """``h`` with each image row's slot replaced by ``xattn(mean of its prompt tokens, CLIP tokens)``."""
        xattn = self.cross_attn_options[k] if self.cfg.search_stage else self.cross_attn
        w = xattn.linear_q.weight.dtype
        query = torch.stack([h[b, s:e].mean(0) for b, (s, e) in zip(dvp["rows"], dvp["span"])])
        prompt = xattn(query.to(w), dvp["visual"].to(w))[:, 0].to(h.dtype)
        r = torch.tensor(dvp["rows"], device=h.device)
        return h.index_put((r, torch.tensor(dvp["slot"], device=h.device)), prompt)

    def forward(self, batch: Mapping[str, Any], plan: LayerPlan = LayerPlan(), **ctx: Any) -> dict[str, Any]:
        if ctx:
            raise TypeError(f"lavin takes no {sorted(ctx)}")
        targets = batch.get("target_ids")
        if targets is None:
            rows, _, dvp = self._rows(batch)
            h = self._run(rows, plan, dvp)
            return {"lm_logits": self.lm_head(h)}
        targets = batch["target_ids"].to(self.plm.llama.embed_tokens.weight.device)
        keep = targets != IGNORE_INDEX
        extra = [targets[b][keep[b]] for b in range(targets.shape[0])]
        rows, starts, dvp = self._rows(batch, extra)
        h = self._run(rows, plan, dvp)
        # target t of row b is predicted at position start_b + t - 1 (only real targets; padding gathers position 0)
        T = targets.shape[1]
        rank = keep.long().cumsum(1) - 1
        idx = (torch.tensor(starts, device=h.device)[:, None] - 1 + rank).clamp_min(0) * keep
        hs = h.gather(1, idx[..., None].expand(-1, -1, h.shape[-1]))
        logits = self.lm_head(hs)
        assert logits.shape[1] == T
        return {"lm_logits": logits, "lm_loss": lm_loss(logits, targets)}

    @torch.no_grad()
    def generate_ids(self, batch: Mapping[str, Any], plan: LayerPlan, *, max_new_tokens: int = 64) -> torch.Tensor:
        """Greedy answer ids (B, ≤ max_new_tokens), -1-free: rows that stopped are padded with the pad id."""
        ids, _, _ = self._inputs(batch)
        b = ids.shape[0]
        cfg = self.plm.llama.config
        eos = cfg.eos_token_id if cfg.eos_token_id is not None else -1
        pad = cfg.pad_token_id if cfg.pad_token_id is not None else 0
        out = [torch.zeros(0, dtype=torch.long, device=ids.device) for _ in range(b)]
        done = [False] * b
        for _ in range(int(max_new_tokens)):
            rows, _, dvp = self._rows(batch, out)
            h = self._run(rows, plan, dvp)
            last = torch.tensor([r.shape[0] - 1 for r in rows], device=h.device)
            nxt = self.lm_head(h[torch.arange(b, device=h.device), last]).argmax(-1)
            for i in range(b):
                if not done[i]:
                    out[i] = torch.cat([out[i], nxt[i:i + 1]])
                    done[i] = int(nxt[i]) == int(eos)
            if all(done):
                break
        width = max(1, max(len(o) for o in out))
        res = torch.full((b, width), int(pad), dtype=torch.long, device=ids.device)
        for i, o in enumerate(out):
            res[i, :len(o)] = o
        return res

    def generate(self, batch: Mapping[str, Any], plan: LayerPlan, *, num_beams: int = 1,
                 max_new_tokens: int = 64) -> list[str]:
        if num_beams != 1:
            raise ValueError(f"lavin generates greedily (num_beams=1), got num_beams={num_beams}")
        return self.decode(self.generate_ids(batch, plan, max_new_tokens=max_new_tokens))


def build_lavin_llama(s: LavinSettings) -> tuple[nn.Module, nn.Module]:
    """(LlamaModel, lm_head): random from ``plm_config`` or pretrained from the ``tokenizer`` folder."""
    dtype = plm_torch_dtype(s.plm_dtype)
    if s.plm_config:
        if isinstance(s.plm_config, Mapping):
            kw = dict(s.plm_config)
        elif s.plm_config in LAVIN_LLAMA_VARIANTS:
            kw = LAVIN_LLAMA_VARIANTS.lookup(s.plm_config, "plm_config")
        else:
            kw = PLM_VARIANTS["LLAMA"].lookup(s.plm_config, "plm_config")
        cfg = LlamaConfig(**kw)
        cfg._attn_implementation = "sdpa"
        model = LlamaForCausalLM(cfg) if dtype == torch.float32 else LlamaForCausalLM._from_config(cfg, dtype=dtype)
    else:
        path = Path(resolve_model_path(s.tokenizer)).expanduser()
        if not path.is_dir():
            raise FileNotFoundError(f"lavin: LLaMA folder {path} (config key 'tokenizer') does not exist")
        gguf = s.plm_gguf_file or (None if (path / "config.json").is_file() else _gguf_in(path))
        kw = {"dtype": dtype} if dtype != torch.float32 else {}
        if gguf:
            kw["gguf_file"] = gguf
        model = LlamaForCausalLM.from_pretrained(str(path), **kw)
    return model.model, model.lm_head


def build_lavin(settings: LavinSettings | Mapping[str, Any]) -> LaVINBackbone:
    """The bare LaVIN backbone (LLaMA adapters come through ``pet=das_llama``)."""
    s = _check(take(LavinSettings, settings))
    clip = None
    if s.lavin_clip_model:  # first: a missing CLIP file is reported before the (large) LLaMA is built
        name = s.lavin_clip_model
        spec = LAVIN_CLIP_VARIANTS[name] if isinstance(name, str) and name in LAVIN_CLIP_VARIANTS else name
        try:
            clip = build_clip_visual(spec)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"lavin_clip_model={name!r}: {e}. LaVIN uses OpenAI's ViT-L-14.pt (give its path); "
                                    f"{sorted(LAVIN_CLIP_VARIANTS)} build a random tower of its shape; '' runs "
                                    f"text-only") from None
    llama, head = build_lavin_llama(s)
    if s.plm_num_layers:
        truncate_layers(llama, "LLAMA", s.plm_num_layers)
    llama.requires_grad_(False)
    head.requires_grad_(False)
    tokenizer = load_tokenizer(s.tokenizer or "bert-base-uncased")  # random LLaMAs: the offline default vocabulary
    return LaVINBackbone(LlamaPLM(llama), head, clip, tokenizer, s)


__all__ = ["AdapterMLP", "LAVIN_CLIP_VARIANTS", "LAVIN_LLAMA_VARIANTS", "LaVINBackbone", "LavinSettings",
           "build_lavin", "build_lavin_llama"]

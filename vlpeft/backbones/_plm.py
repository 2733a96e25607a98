"""Language models for DVP (BERT, T5, LLaMA), each exposed as a sequence of candidate layers.

Each wrapper turns one HF model into four steps the placement code composes:
``prepare(ids, masks) -> PLMState`` (embeddings, masks, and for T5 the whole encoder),
``run_layer(i, state)`` (candidate layer i), ``query(state)`` (the token that asks CLIP for a prompt),
``insert(state, prompt, tte)`` (prepend the prompt, widen the mask) and ``readout(state)`` (the feature
the head reads). States are never mutated, so ``DVPBackbone.forward_many`` can branch one text-only state
into several insertion layers.

The HF layers are called whole (``BertLayer``, ``T5Block``, ``LlamaDecoderLayer``; their call signatures
are pinned by tests/test_dvp.py, seeds.md §8 item 32) with masks built here. Adapters are attached with
hooks on the sublayer modules, so the HF parameter names stay those of the pretrained checkpoints and the
adapters live in one ``adapters`` ModuleList (index ``2i``/``2i+1`` as in the original ``A_j``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterator, Mapping

import torch
from torch import nn

from vlpeft._protocol import Site, is_scoped_policy
from vlpeft.backbones._folders import check_family, note_loaded
from vlpeft.backbones._sites import attach_projection, attach_skip, projection_sites, scoped_policy_params
from vlpeft.data.tokenizer import resolve_model_path
from vlpeft.backbones._variants import Variants, lookup_in

# --------------------------------------------------------------------------------------------------
# named random configurations (tests, bench): plm_config names, one table per language model
_BERT_TINY = dict(vocab_size=120, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                  max_position_embeddings=64, type_vocab_size=2)
_T5_TINY = dict(vocab_size=120, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=3, num_heads=4,
                relative_attention_num_buckets=8, relative_attention_max_distance=16, decoder_start_token_id=0,
                pad_token_id=0)
_LLAMA_TINY = dict(vocab_size=120, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                   num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0)
# the *_bertvocab ones: the same tiny models sized to the default (bert-base-uncased) vocabulary, for end-to-end runs
# with real tokens
PLM_VARIANTS: dict[str, Variants] = {
    "BERT": Variants("BERT", "transformers.BertConfig", {
        "test_bert_tiny": _BERT_TINY,
        "test_bert_tiny_bertvocab": {**_BERT_TINY, "vocab_size": 30522},
        "bert_base_random": dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                                 intermediate_size=3072, max_position_embeddings=512, type_vocab_size=2),
    }),
    "T5": Variants("T5", "transformers.T5Config", {
        "test_t5_tiny": _T5_TINY,
        "test_t5_tiny_bertvocab": {**_T5_TINY, "vocab_size": 30522},
    }),
    "LLAMA": Variants("LLAMA", "transformers.LlamaConfig", {
        "test_llama_tiny": _LLAMA_TINY,
        "test_llama_tiny_bertvocab": {**_LLAMA_TINY, "vocab_size": 30522, "bos_token_id": 101, "eos_token_id": 102},
    }),
}


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def _pad_mask(masks: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(B, L) 1 = real → additive (B, 1, 1, L)."""
    return _additive(masks.bool()[:, None, None, :], dtype)


def _with_prompt_column(masks: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.ones_like(masks[:, :1]), masks], dim=1)


@dataclass(frozen=True)
class PLMState:
    """The text stream at some depth. ``inserted`` tells whether the prompt is in ``h`` (index 0)."""

    h: torch.Tensor
    masks: torch.Tensor  # (B, L or L+1) 1 = visible key
    attn_mask: torch.Tensor | None  # additive mask for the current length
    inserted: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


class _SiteHook:
    """The hook at one sublayer site: applies the modules attached there in the fixed order of
    ``vlpeft.pet._sites_hf.compose_site`` — the sequential adapter (``seq``: DVP's ``A_j``), then the ``out_par``
    delta reading the sublayer input ``X``, then the gate ``G(X, Y)``. ``X`` is captured by a pre-hook on the
    module that receives it (``_XCapture``) and consumed here. An object, not a closure, so deepcopy/pickle
    follow the modules into the copy."""

    def __init__(self, where: str) -> None:
        self.where = where  # "output" | "input" | "tuple_output"
        self.seq: nn.Module | None = None
        self.par: nn.Module | None = None  # the out_par delta
        self.par_in: nn.Module | None = None  # the par delta (DAS's parallel adapter; same reading of X)
        self.gate: nn.Module | None = None
        self.x: torch.Tensor | None = None

    @property
    def reads_x(self) -> bool:
        return self.par is not None or self.par_in is not None or self.gate is not None

    def _apply(self, h: torch.Tensor) -> torch.Tensor:
        if self.seq is not None:
            h = self.seq(h)
        if self.reads_x:
            x, self.x = self.x, None
            if x is None:
                raise RuntimeError("a PET par / out_par / gate module ran without the sublayer input X; the X "
                                   "capture hook did not fire (is the layer called through its HF module?)")
            if self.par_in is not None:
                h = h + self.par_in(x)
            if self.par is not None:
                h = h + self.par(x)
            if self.gate is not None:
                h = h * self.gate(x, h)
        return h

    def __call__(self, module: nn.Module, args: Any, output: Any = None) -> Any:
        if self.where == "input":
            return (self._apply(args[0]),) + tuple(args[1:])
        if self.where == "tuple_output":
            return (self._apply(output[0]),) + tuple(output[1:])
        return self._apply(output)


class _InSeqHook:
    """Forward hook on a norm module: its output (the sublayer's input) goes through the ``in_seq`` module. An
    object, not a closure, so deepcopy/pickle follow the module into the copy."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, norm: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        return self.module(output)


class _XCapture:
    """Forward pre-hook (with kwargs) storing a sublayer's input X on its ``_SiteHook``: positional argument
    ``index`` or keyword ``key``."""

    def __init__(self, site: _SiteHook, index: int, key: str) -> None:
        self.site, self.index, self.key = site, index, key

    def __call__(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        self.site.x = args[self.index] if len(args) > self.index else kwargs[self.key]
        return None


def _is_placeholder(m: nn.Module) -> bool:
    return type(m) is nn.Sequential and len(m) == 0


class PLMWrapper(nn.Module):
    """Shared plumbing; subclasses set ``kind``, implement the four steps and the freezing rule.

    PET sites per sublayer ``j`` (``_site_table`` order): ``out_seq`` → ``adapters.j`` (DVP's ``A_j``, attached in
    order), ``out_par`` → ``out_par.j``, ``gate`` → ``gates.j``; one ``_SiteHook`` per site applies them. Where the
    sublayer's input comes out of a norm module (LLaMA, ``_in_site_table``), an ``in_seq`` site ``in_seq.j`` maps
    that normed input before the sublayer reads it (LaVIN-DAS's ``adapter_attn(attention_norm(x))``)."""

    kind = ""
    uses_token_types = True
    # Site.role of the candidate stack ("plm") and of the prepare part ("plm_encoder", T5's encoder)
    stack_roles = {"plm": "encoder", "plm_encoder": "encoder"}

    def __init__(self) -> None:
        super().__init__()
        self.adapters = nn.ModuleList()
        self.out_par = nn.ModuleDict()
        self.gates = nn.ModuleDict()
        self.in_seq = nn.ModuleDict()
        self._adapter_owner: list[int] = []  # stage (-1 = prepare, i = candidate layer i) of each adapter
        self._hook_handles: list[Any] = []
        self._site_hooks: dict[int, _SiteHook] = {}

    # -- structure ---------------------------------------------------------------------------------
    @property
    def layers(self) -> nn.ModuleList:  # candidate layers, in order
        raise NotImplementedError

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        raise NotImplementedError

    def prepare_modules(self) -> list[nn.Module]:
        raise NotImplementedError

    def _site_hook(self, j: int, module: nn.Module, where: str) -> _SiteHook:
        if j not in self._site_hooks:
            hook = self._site_hooks[j] = _SiteHook(where)
            if where == "input":
                self._hook_handles.append(module.register_forward_pre_hook(hook))
            else:
                self._hook_handles.append(module.register_forward_hook(hook))
        return self._site_hooks[j]

    def sites(self) -> list[Site]:
        """Per sublayer ``j`` (``_site_table`` order): the ``out_seq`` site ``plm.adapters.j`` (the j-th attached
        sequential adapter is ``adapters.j``, the original ``A_j``), ``out_par`` ``plm.out_par.j`` and ``gate``
        ``plm.gates.j``."""
        out = []
        for j, (stage, sublayer, module, where) in enumerate(self._site_table()):
            stack = "plm" if stage >= 0 else "plm_encoder"
            meta = {"module": module, "where": where, "j": j, "stack_role": self.stack_roles.get(stack, stack)}
            for anchor, name in (("out_seq", f"plm.adapters.{j}"), ("out_par", f"plm.out_par.{j}"),
                                 ("gate", f"plm.gates.{j}")):
                out.append(Site(stack, stage, sublayer, anchor, self.hidden_size, name, self.kind.lower(), meta=meta))
        for j, (stage, sublayer, module) in enumerate(self._in_site_table()):
            stack = "plm" if stage >= 0 else "plm_encoder"
            meta = {"module": module, "j": j, "stack_role": self.stack_roles.get(stack, stack)}
            out.append(Site(stack, stage, sublayer, "in_seq", self.hidden_size, f"plm.in_seq.{j}", self.kind.lower(),
                            meta=meta))
        return out

    def _in_site_table(self) -> list[tuple[int, str, nn.Module]]:
        """(stage, sublayer, the norm module whose output the sublayer reads) per ``in_seq`` site; none by default
        (BERT and T5 apply their norms after the residual or inside the sublayer module)."""
        return []

    def _site_table(self) -> list[tuple[int, str, nn.Module, str]]:
        """(stage, sublayer, hooked module, hook kind) per site; stage -1 = the prepare part (T5's encoder)."""
        raise NotImplementedError

    def _x_sources(self) -> list[tuple[nn.Module, int, str]]:
        """Per site (``_site_table`` order): the module whose call receives the sublayer input X, and X's
        positional index / keyword name there (spec §1.3: BERT ``input_tensor`` of the Output module; T5 the
        raw stream entering ``layer[k]``; LLaMA the stream entering the sublayer's norm)."""
        raise NotImplementedError

    def attach(self, site: Site, module: nn.Module) -> None:
        j = int(site.name.rsplit(".", 1)[-1])
        if site.anchor == "in_seq":
            if str(j) in self.in_seq:
                raise ValueError(f"site {site.name} is taken; one module per slot")
            self.in_seq[str(j)] = module
            self._hook_handles.append(site.meta["module"].register_forward_hook(_InSeqHook(module)))
            return
        hook = self._site_hook(j, site.meta["module"], site.meta["where"])
        if site.anchor == "out_seq":
            # adapters.j stays the original A_j: sites a recipe leaves out (LaVIN-DAS adapts attention only) hold an
            # empty placeholder (no parameters, never called)
            table = None
            while len(self.adapters) < j:
                table = table or self._site_table()
                self.adapters.append(nn.Sequential())
                self._adapter_owner.append(table[len(self.adapters) - 1][0])
            if j < len(self.adapters):
                if not _is_placeholder(self.adapters[j]):
                    raise ValueError(f"site {site.name} is taken; one sequential module per site")
                self.adapters[j] = module
            else:
                self.adapters.append(module)
                self._adapter_owner.append(site.layer)
            hook.seq = module
            return
        if site.anchor not in ("out_par", "gate"):
            raise ValueError(f"PLM sites take out_seq / out_par / gate / in_seq modules, not {site.anchor!r} "
                             f"({site.name})")
        slots = self.out_par if site.anchor == "out_par" else self.gates
        if str(j) in slots:
            raise ValueError(f"site {site.name} is taken; one module per slot")
        slots[str(j)] = module
        setattr(hook, "par" if site.anchor == "out_par" else "gate", module)
        if len([m for m in (hook.par, hook.gate) if m is not None]) == 1:  # the first reader of X: capture it
            xmod, index, key = self._x_sources()[j]
            self._hook_handles.append(xmod.register_forward_pre_hook(_XCapture(hook, index, key), with_kwargs=True))

    def stage_parameters(self, stage: int) -> Iterator[nn.Parameter]:
        """Parameters stage ``stage`` computes with (-1 = prepare; i = candidate layer i), adapters included."""
        mods = self.prepare_modules() if stage < 0 else [self.layers[stage]]
        for m in mods:
            yield from m.parameters()
        for a, s in zip(self.adapters, self._adapter_owner):
            if (s < 0 and stage < 0) or s == stage:
                yield from a.parameters()
        table = self._site_table() if (len(self.out_par) or len(self.gates)) else []
        for slots in (self.out_par, self.gates):
            for j, m in slots.items():
                s = table[int(j)][0]
                if (s < 0 and stage < 0) or s == stage:
                    yield from m.parameters()
        in_table = self._in_site_table() if len(self.in_seq) else []
        for j, m in self.in_seq.items():
            s = in_table[int(j)][0]
            if (s < 0 and stage < 0) or s == stage:
                yield from m.parameters()

    def stage_trainable(self, stage: int) -> bool:
        return any(p.requires_grad for p in self.stage_parameters(stage))

    # -- steps -------------------------------------------------------------------------------------
    def prepare(self, ids: torch.Tensor, masks: torch.Tensor) -> PLMState:
        raise NotImplementedError

    def run_layer(self, i: int, state: PLMState) -> PLMState:
        raise NotImplementedError

    def query(self, state: PLMState) -> torch.Tensor:
        raise NotImplementedError

    def insert(self, state: PLMState, prompt: torch.Tensor, tte: nn.Embedding | None) -> PLMState:
        raise NotImplementedError

    def readout(self, state: PLMState) -> torch.Tensor:
        raise NotImplementedError

    # -- trainable policies ------------------------------------------------------------------------
    def norm_parameter_names(self) -> set[str]:
        raise NotImplementedError

    def hf_model(self) -> nn.Module:
        raise NotImplementedError

    def base_trainable(self, policy: str, original_trainable: bool = False) -> list[tuple[str, nn.Parameter]]:
        """PLM parameters a policy trains (names relative to the HF model). ``norms``: the original DVP rule with
        adapters; ``all``: the whole PLM (full fine-tuning); both leave BERT's unused pooler frozen unless
        ``original_trainable`` (the original's leak, §8 item 17)."""
        hf = self.hf_model()
        if policy == "none":
            keep = set()
        elif policy == "norms":
            keep = self.norm_parameter_names()
        elif policy == "all":
            keep = {n for n, _ in hf.named_parameters()}
        elif policy == "bias":
            keep = {n for n, _ in hf.named_parameters() if n.endswith("bias")}
        else:  # kind:scope policies (norms:encoder, norms+bias:c_attn, …) over the HF model's names
            if not is_scoped_policy(policy):
                raise ValueError(f"base_trainable policy {policy!r} is not one of none/norms/bias/all nor a kind:scope "
                                 f"policy such as 'norms:encoder' or 'norms+bias:c_attn' (vlpeft.pet.unfreeze)")
            keep = {n for n, _ in scoped_policy_params(hf, policy)}
        pooler = {n for n, _ in hf.named_parameters() if n.startswith("pooler.")}
        keep = (keep - pooler) | (pooler if original_trainable else set())
        return [(n, p) for n, p in hf.named_parameters() if n in keep]


# --------------------------------------------------------------------------------------------------
class BertPLM(PLMWrapper):
    """DVP-BERT (seeds.md §3.3): query = [CLS] entering layer K; TTE(0) on text, TTE(1) on the prompt;
    readout = text [CLS] at index 1 after the last layer; the pooler is never used."""

    kind = "BERT"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.bert = model

    def _site_table(self) -> list[tuple[int, str, nn.Module, str]]:
        out = []
        for i, layer in enumerate(self.layers):
            # LN(x_in + A(drop(dense(h)))): the adapter sees the dropout's output
            out += [(i, "attn", layer.attention.output.dropout, "output"), (i, "ffn", layer.output.dropout, "output")]
        return out

    def _x_sources(self) -> list[tuple[nn.Module, int, str]]:
        out = []
        for layer in self.layers:  # BertSelfOutput / BertOutput (hidden_states, input_tensor)
            out += [(layer.attention.output, 1, "input_tensor"), (layer.output, 1, "input_tensor")]
        return out

    def hf_model(self) -> nn.Module:
        return self.bert

    @property
    def layers(self) -> nn.ModuleList:
        return self.bert.encoder.layer

    @property
    def hidden_size(self) -> int:
        return int(self.bert.config.hidden_size)

    def prepare_modules(self) -> list[nn.Module]:
        return [self.bert.embeddings]

    def prepare(self, ids: torch.Tensor, masks: torch.Tensor) -> PLMState:
        h = self.bert.embeddings(input_ids=ids, token_type_ids=torch.zeros_like(ids))
        return PLMState(h=h, masks=masks, attn_mask=_pad_mask(masks, h.dtype))

    def run_layer(self, i: int, state: PLMState) -> PLMState:
        out = self.layers[i](state.h, attention_mask=state.attn_mask)
        if isinstance(out, tuple):  # transformers < 5 returned a tuple
            out = out[0]
        return replace(state, h=out)

    def query(self, state: PLMState) -> torch.Tensor:
        return state.h[:, 0]

    def insert(self, state: PLMState, prompt: torch.Tensor, tte: nn.Embedding | None) -> PLMState:
        assert tte is not None
        zero = torch.zeros((), dtype=torch.long, device=state.h.device)
        h = state.h + tte(zero)
        p = prompt + tte(zero + 1)
        masks = _with_prompt_column(state.masks)
        return replace(state, h=torch.cat([p, h], dim=1), masks=masks,
                       attn_mask=_pad_mask(masks, h.dtype), inserted=True)

    def readout(self, state: PLMState) -> torch.Tensor:
        return state.h[:, 1 if state.inserted else 0]

    def norm_parameter_names(self) -> set[str]:
        return {n for n, _ in self.bert.named_parameters() if "LayerNorm" in n and n.startswith("encoder.")}



# --------------------------------------------------------------------------------------------------
class T5PLM(PLMWrapper):
    """DVP-T5 (seeds.md §3.3): encoder over the text; a one-token decoder stream (start token); the prompt
    enters decoder block K with query = mean of the encoder output; readout = last decoder position.

    Default (fix of §8 item 15): every block gets the shared relative position bias of block 0, as HF's
    ``T5Stack`` does, and the query mean skips padding. ``original_position_bias=True`` restores the
    original calls (``position_bias=None`` per block, so only block 0 has relative positions) and the mean
    over all positions including padding.
    """

    kind = "T5"
    stack_roles = {"plm": "decoder", "plm_encoder": "encoder"}  # candidates are the decoder blocks

    def __init__(self, model: nn.Module, original_position_bias: bool = False) -> None:
        super().__init__()
        self.t5 = model
        self.original_position_bias = bool(original_position_bias)

    def _site_table(self) -> list[tuple[int, str, nn.Module, str]]:
        out = []
        for blk in self.t5.encoder.block:  # A_{2i} after self-attention, A_{2i+1} after the FFN
            out += [(-1, "attn", blk.layer[0].dropout, "input"), (-1, "ffn", blk.layer[-1].dropout, "input")]
        for i, blk in enumerate(self.layers):  # A_{3i}, A_{3i+1} (cross-attention), A_{3i+2}
            for sub, name in zip(blk.layer, ("attn", "cross_attn", "ffn")):
                out.append((i, name, sub.dropout, "input"))
        return out

    def _x_sources(self) -> list[tuple[nn.Module, int, str]]:
        out = [(blk.layer[k], 0, "hidden_states") for blk in self.t5.encoder.block for k in (0, -1)]
        for blk in self.layers:
            out += [(sub, 0, "hidden_states") for sub in blk.layer]
        return out

    def hf_model(self) -> nn.Module:
        return self.t5

    @property
    def layers(self) -> nn.ModuleList:
        return self.t5.decoder.block

    @property
    def hidden_size(self) -> int:
        return int(self.t5.config.d_model)

    def prepare_modules(self) -> list[nn.Module]:
        # decoder.embed_tokens is tied to encoder.embed_tokens (the shared table)
        return [self.t5.encoder, self.t5.decoder.embed_tokens]

    def _bias(self, stack: nn.Module, length: int, device: torch.device) -> torch.Tensor | None:
        if self.original_position_bias:
            return None  # each block computes its own: block 0 relative bias, others zero
        return stack.block[0].layer[0].SelfAttention.compute_bias(length, length, device=device)

    def prepare(self, ids: torch.Tensor, masks: torch.Tensor) -> PLMState:
        enc = self.t5.encoder
        x = enc.dropout(enc.embed_tokens(ids))
        enc_mask = _pad_mask(masks, x.dtype)
        bias = self._bias(enc, ids.shape[1], x.device)
        for blk in enc.block:
            x = blk(x, attention_mask=enc_mask, position_bias=bias)[0]
        x = enc.dropout(enc.final_layer_norm(x))
        if self.original_position_bias:
            q = x.mean(dim=1)
        else:
            m = masks.to(x.dtype).unsqueeze(-1)
            q = (x * m).sum(dim=1) / m.sum(dim=1).clamp_min(1.0)
        dec = self.t5.decoder
        start = self.t5.config.decoder_start_token_id
        if start is None:
            raise ValueError("T5 config has no decoder_start_token_id; set it (t5-base uses the pad id 0)")
        start_ids = torch.full((ids.shape[0], 1), int(start), dtype=torch.long, device=ids.device)
        d = dec.dropout(dec.embed_tokens(start_ids))
        ones = torch.ones(ids.shape[0], 1, dtype=masks.dtype, device=masks.device)
        return PLMState(h=d, masks=ones, attn_mask=None,  # decoder self-attention is all-visible (original)
                        extra={"enc": x, "enc_mask": enc_mask, "query": q,
                               "bias": self._bias(dec, 1, x.device)})

    def run_layer(self, i: int, state: PLMState) -> PLMState:
        e = state.extra
        out = self.layers[i](state.h, attention_mask=state.attn_mask, position_bias=e["bias"],
                             encoder_hidden_states=e["enc"], encoder_attention_mask=e["enc_mask"])
        return replace(state, h=out[0])

    def query(self, state: PLMState) -> torch.Tensor:
        return state.extra["query"]

    def insert(self, state: PLMState, prompt: torch.Tensor, tte: nn.Embedding | None) -> PLMState:
        assert tte is not None
        zero = torch.zeros((), dtype=torch.long, device=state.h.device)
        h = torch.cat([prompt + tte(zero + 1), state.h + tte(zero)], dim=1)
        extra = dict(state.extra, bias=self._bias(self.t5.decoder, h.shape[1], h.device))
        return replace(state, h=h, masks=_with_prompt_column(state.masks), attn_mask=None,
                       inserted=True, extra=extra)

    def readout(self, state: PLMState) -> torch.Tensor:
        dec = self.t5.decoder
        return dec.dropout(dec.final_layer_norm(state.h))[:, -1]

    def norm_parameter_names(self) -> set[str]:
        return {n for n, _ in self.t5.named_parameters() if "layer_norm" in n}



# --------------------------------------------------------------------------------------------------
class LlamaPLM(PLMWrapper):
    """DVP-LLaMA (seeds.md §3.3): query = the last real token entering layer K (right padding, so index
    ``mask.sum − 1``; the original used the first EOS id, §8 item 20); the prompt is prepended without token
    types; causal + padding mask with an always-visible prompt column; position ids 0..L after insertion
    (RoPE recomputed for the new length); readout = final norm at the last real token (shifted by one)."""

    kind = "LLAMA"
    stack_roles = {"plm": "decoder"}  # a decoder-only LM: no encoder for VL-PET's encoder modules
    uses_token_types = False

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.llama = model

    def _site_table(self) -> list[tuple[int, str, nn.Module, str]]:
        out = []
        for i, layer in enumerate(self.layers):
            out += [(i, "attn", layer.self_attn, "tuple_output"), (i, "ffn", layer.mlp, "output")]
        return out

    def _in_site_table(self) -> list[tuple[int, str, nn.Module]]:
        out = []
        for i, layer in enumerate(self.layers):  # LaVIN: attention(adapter_attn(attention_norm(x))), same for the MLP
            out += [(i, "attn", layer.input_layernorm), (i, "ffn", layer.post_attention_layernorm)]
        return out

    def _x_sources(self) -> list[tuple[nn.Module, int, str]]:
        out = []
        for layer in self.layers:  # the residual stream entering each sublayer's RMSNorm
            out += [(layer.input_layernorm, 0, "hidden_states"), (layer.post_attention_layernorm, 0, "hidden_states")]
        return out

    def hf_model(self) -> nn.Module:
        return self.llama

    @property
    def layers(self) -> nn.ModuleList:
        return self.llama.layers

    @property
    def hidden_size(self) -> int:
        return int(self.llama.config.hidden_size)

    def prepare_modules(self) -> list[nn.Module]:
        return [self.llama.embed_tokens]

    def _masks_and_rope(self, masks: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, Any, torch.Tensor]:
        L = masks.shape[1]
        pos = torch.arange(L, device=h.device)
        causal = pos[None, :] <= pos[:, None]  # (L, L): key j visible from query i iff j <= i
        allowed = causal[None, None] & masks.bool()[:, None, None, :]
        pos_ids = pos.unsqueeze(0).expand(masks.shape[0], -1)
        rope = self.llama.rotary_emb(h, position_ids=pos_ids)
        return _additive(allowed, h.dtype), rope, pos_ids

    def prepare(self, ids: torch.Tensor, masks: torch.Tensor) -> PLMState:
        m = masks.long()
        lengths = m.sum(dim=1)
        if bool((lengths == 0).any()):
            raise ValueError("LLaMA text_masks has an empty row; every sample needs at least one token")
        right = torch.arange(m.shape[1], device=m.device)[None, :] < lengths[:, None]
        if not torch.equal(right.long(), m):
            raise ValueError("LLaMA text must be right-padded (text_masks = 1…1 0…0); set padding_side='right'")
        h = self.llama.embed_tokens(ids)
        attn, rope, pos = self._masks_and_rope(masks, h)
        return PLMState(h=h, masks=masks, attn_mask=attn, extra={"rope": rope, "pos": pos, "index": lengths - 1})

    def run_layer(self, i: int, state: PLMState) -> PLMState:
        e = state.extra
        out = self.layers[i](state.h, attention_mask=state.attn_mask, position_ids=e["pos"],
                             position_embeddings=e["rope"])
        if isinstance(out, tuple):
            out = out[0]
        return replace(state, h=out)

    def _gather(self, h: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        return h[torch.arange(h.shape[0], device=h.device), index]

    def query(self, state: PLMState) -> torch.Tensor:
        return self._gather(state.h, state.extra["index"])

    def insert(self, state: PLMState, prompt: torch.Tensor, tte: nn.Embedding | None) -> PLMState:
        h = torch.cat([prompt, state.h], dim=1)
        masks = _with_prompt_column(state.masks)
        attn, rope, pos = self._masks_and_rope(masks, h)
        extra = dict(state.extra, rope=rope, pos=pos, index=state.extra["index"] + 1)
        return replace(state, h=h, masks=masks, attn_mask=attn, inserted=True, extra=extra)

    def readout(self, state: PLMState) -> torch.Tensor:
        return self._gather(self.llama.norm(state.h), state.extra["index"])

    def norm_parameter_names(self) -> set[str]:
        return {n for n, _ in self.llama.named_parameters() if "layernorm" in n or n.startswith("norm.")}



# --------------------------------------------------------------------------------------------------
LANGUAGE_MODELS = ("BERT", "T5", "LLAMA")


def _gguf_in(folder: Path) -> str | None:
    ggufs = sorted(p.name for p in folder.glob("*.gguf"))
    return ggufs[0] if len(ggufs) == 1 else None


def build_hf_plm(language_model: str, plm_config: Any, folder: str | os.PathLike | None,
                 gguf_file: str | None = None, dtype: torch.dtype | None = None) -> nn.Module:
    """The bare HF model: random from ``plm_config`` (a ``PLM_VARIANTS[lm]`` name or a config-kwargs dict) when
    given, else pretrained from ``folder`` (config key ``tokenizer``); its weights in ``dtype`` (``plm_dtype``;
    HF keeps what must stay fp32, e.g. LLaMA's rotary frequencies)."""
    from transformers import BertConfig, BertModel, LlamaConfig, LlamaModel, T5Config, T5Model

    lm = str(language_model).upper()
    if lm not in LANGUAGE_MODELS:
        raise ValueError(f"language_model={language_model!r} is not one of {LANGUAGE_MODELS}")
    classes = {"BERT": (BertConfig, BertModel), "T5": (T5Config, T5Model), "LLAMA": (LlamaConfig, LlamaModel)}
    cfg_cls, model_cls = classes[lm]
    if plm_config:
        if isinstance(plm_config, str):
            kwargs = lookup_in(PLM_VARIANTS, lm, plm_config, "plm_config")
        elif isinstance(plm_config, Mapping):
            kwargs = dict(plm_config)
        else:
            raise TypeError(f"plm_config must be a variant name or a dict, got {type(plm_config).__name__}")
        cfg = cfg_cls(**kwargs)
        # own masks are passed; T5's relative bias goes through the eager attention path
        cfg._attn_implementation = "eager" if lm == "T5" else "sdpa"
        return model_cls(cfg) if dtype in (None, torch.float32) else model_cls._from_config(cfg, dtype=dtype)
    if not folder:
        raise ValueError("DVP needs config 'tokenizer' = the PLM folder (or plm_config for a random model)")

    path = Path(resolve_model_path(folder)).expanduser()  # 'minilm' → the offline MiniLM; never a stand-in
    if not path.is_dir():
        raise FileNotFoundError(f"PLM folder {path} (config key 'tokenizer') does not exist")
    check_family(path, (lm.lower(),), "tokenizer", f"language_model={lm}",
                 f"set tokenizer=<a {lm.lower()} folder>, or language_model= to the folder's family")
    kw = {"dtype": dtype} if dtype is not None else {}
    if lm == "LLAMA":
        gguf = gguf_file or (None if (path / "config.json").is_file() else _gguf_in(path))
        if gguf:
            from transformers import LlamaForCausalLM
            model = LlamaForCausalLM.from_pretrained(str(path), gguf_file=gguf, **kw).model
            note_loaded("tokenizer", folder, path, model)
            return model
    if lm == "T5":
        kw["attn_implementation"] = "eager"
    model = model_cls.from_pretrained(str(path), **kw)
    note_loaded("tokenizer", folder, path, model)
    return model


def wrap_plm(model: nn.Module, language_model: str, original_position_bias: bool = False) -> PLMWrapper:
    lm = str(language_model).upper()
    if lm == "BERT":
        return BertPLM(model)
    if lm == "T5":
        return T5PLM(model, original_position_bias)
    return LlamaPLM(model)


class HostsPLM:
    """Sites of a backbone that holds a hooked language model at ``self.plm`` (a ``PLMWrapper``) and skip slots at
    ``self.skip_adapters`` (CLIP+PLM, the plain PLM, ViT + GPT-2 / RoBERTa): the wrapper's sublayer sites, one skip
    site per candidate layer (``skip_site_meta`` says what a skip module may read), and the PLM's projections."""

    @property
    def hidden_size(self) -> int:
        return self.plm.hidden_size

    @property
    def num_layers(self) -> int:
        return self.plm.num_layers

    def candidate_module(self, index: int) -> nn.Module:
        return self.plm.layers[index]  # the candidates are the hosted language model's layers

    def skip_site_meta(self, i: int) -> dict:
        return {}

    def hf_model_types(self) -> tuple[str, ...]:
        return (str(self.plm.hf_model().config.model_type),)  # a folder of the hosted language model's family

    def checkpoint_filter_fn(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Hugging Face names of the hosted language model (``layers.0…`` of a ``LlamaModel``, or under a task
        model's base prefix: ``model.layers.0…``, ``bert.encoder…``) → this backbone's (``plm.llama.layers.0…``);
        keys that already fit, and keys nothing here has (``lm_head.*``), pass through."""
        names = {id(m): n for n, m in self.named_modules()}
        at = names[id(self.plm.hf_model())] + "."
        if any(k.startswith(at) for k in state_dict):  # already this backbone's names (a vlpeft checkpoint)
            return dict(state_dict)
        own = set(self.state_dict())
        out = {}
        for k, v in state_dict.items():
            tries = (k, at + k, at + k.split(".", 1)[-1])
            out[next((t for t in tries if t in own), k)] = v
        return out

    def plm_projection_sites(self) -> list[Site]:
        # T5's encoder runs before the candidates (layer -1); its decoder sites keep their block index
        projs = projection_sites(self, self.family, r"^plm\.(bert|t5|llama)\.", encoder_layer=-1)
        return [s for s in projs if s.stack in ("encoder", "decoder")] if self.plm.kind == "T5" else projs

    def sites(self) -> list[Site]:
        d = self.hidden_size
        skips = [Site("plm", i, "block", "skip", d, f"skip_adapters.{i}.0", self.family, meta=self.skip_site_meta(i))
                 for i in range(self.num_layers)]
        return self.plm.sites() + skips + self.plm_projection_sites()

    def attach(self, site: Site, module) -> None:
        if site.anchor == "skip":
            attach_skip(self.skip_adapters, site, module)
        elif site.anchor.startswith("proj:"):
            attach_projection(self, site, module)
        else:
            self.plm.attach(site, module)

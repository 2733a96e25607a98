"""The generative half of the backbone protocol (VL-BART / VL-T5, ViT + GPT-2): what generative tasks may ask.

A backbone with the ``generate`` capability subclasses ``Generative`` and implements:

- ``forward(batch, plan)`` → a features dict holding ``lm_logits`` (B, T, V) and ``lm_loss`` (scalar: mean token
  cross-entropy over ``target_ids`` positions that are not -100) when the batch has ``target_ids``;
  ``cls_feats`` too where the model can classify;
- ``generate(batch, plan, *, num_beams, max_new_tokens)`` → the decoded strings, one per sample (special tokens
  and surrounding blanks stripped). Tasks pass the originals' ``gen_max_length`` instead; the backbone's
  ``new_tokens`` turns it into ``max_new_tokens`` the way its original counted it (``counts_start_token``: VL-BART /
  VL-T5 hand it to Hugging Face as ``max_length``, start token included). The backbone owns its tokenizer
  (``self.tokenizer``, built from the config's ``tokenizer`` like the datamodule's), so decoding needs nothing else;
- ``tokenizer`` → the Hugging Face tokenizer that encodes ``text_ids`` / ``target_ids`` for it.

Batch keys of generative tasks (the collate of ``vlpeft.data`` writes them):

- ``text_ids`` / ``text_masks`` (B, L): the encoder (seq2seq) or prompt (decoder-only) text, task prefix
  included (``"vqa: what color is ..."``), no padding on the left;
- ``target_ids`` (B, T): the answer / caption tokens, -100 where padded (absent at test time);
- visual input, one of: ``vis_feats`` (B, V, F) + ``vis_pos`` (B, V, 4: x1, y1, x2, y2 in [0, 1]) — region or
  pooled grid features (pre-extracted ``.h5`` files, or the backbone's own frozen extractor) — or ``image``
  (B, 3, H, W) pixels, which the backbone turns into features itself;
- ``task`` (str): the batch's task, which selects per-task PET modules through ``pet_context``.

Generative tasks call ``forward(batch, plan)`` for the loss, and ``forward(batch, plan, generate=True, ...)`` in
validation and test (``tasks._base.compute(..., generate=True)``), which routes to ``Generative.generate``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F

from vlpeft._protocol import Backbone, LayerPlan

IGNORE_INDEX = -100
GENERATE_DEFAULTS = {"num_beams": 1, "max_new_tokens": 20}


class Generative(Backbone):
    """Base class of generative backbones; ``__call__(batch, plan, generate=True, ...)`` routes to ``generate``."""

    capabilities: frozenset[str] = frozenset({"generate"})
    tokenizer: Any = None
    # the original passes its gen_max_length as Hugging Face's ``max_length`` of an encoder-decoder, which counts the
    # decoder start token: at most gen_max_length - 1 new tokens (VL-Adapter / VL-PET's ``gen_kwargs['max_length']``)
    counts_start_token: bool = False

    def new_tokens(self, gen_max_length: int) -> int:
        """The most new tokens the original generated for its flag ``gen_max_length`` (at least one)."""
        return max(1, int(gen_max_length) - int(self.counts_start_token))

    def __call__(self, batch: Mapping[str, Any], plan: LayerPlan, *args: Any, generate: bool = False,
                 **kw: Any) -> Any:
        if generate:
            if "gen_max_length" in kw:  # the run's flag (tasks), counted as this backbone's original counted it
                kw["max_new_tokens"] = self.new_tokens(kw.pop("gen_max_length"))
            opts = {k: kw.pop(k, v) for k, v in GENERATE_DEFAULTS.items()}
            return {"generated": self.generate(batch, plan, **opts)}
        return super().__call__(batch, plan, *args, **kw)

    def generate(self, batch: Mapping[str, Any], plan: LayerPlan, *, num_beams: int = 1,
                 max_new_tokens: int = 20) -> list[str]:  # pragma: no cover - every generative backbone overrides
        raise NotImplementedError

    def decode(self, ids: torch.Tensor) -> list[str]:
        return [s.strip() for s in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean token cross-entropy over non-ignored targets (0 attached to the graph when there are none)."""
    keep = targets != IGNORE_INDEX
    if not bool(keep.any()):
        return logits.sum() * 0.0
    return F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1),
                           ignore_index=IGNORE_INDEX)


def hold_cache_slot(cache: Any, layer_idx: int, hidden_states: torch.Tensor) -> int:
    """Keeps a skipped decoder layer's entry in Hugging Face's KV cache without computing the layer: one zero per
    position (B, 1, n, 1) goes into its self-attention slot. HF reads the past length from one layer's entry (layer 0
    for positions and masks; each T5 attention its own), so every slot must grow with the sequence; the entry is
    B·n numbers instead of the layer's keys and values, and beam reordering / cropping treat it like any other.
    Returns the past length before this step (0 without a cache)."""
    if cache is None or not hasattr(cache, "update"):
        return 0
    cache = getattr(cache, "self_attention_cache", cache)  # EncoderDecoderCache: the decoder's own positions
    past = int(cache.get_seq_length(layer_idx))
    b, n = hidden_states.shape[:2]
    marker = hidden_states.new_zeros(b, 1, n, 1)  # not empty: DynamicLayer reads an empty entry as length 0
    cache.update(marker, marker, layer_idx)
    return past


def shift_right(targets: torch.Tensor, start_id: int, pad_id: int) -> torch.Tensor:
    """Decoder inputs from labels: ``start_id`` first, the labels shifted right, -100 replaced by ``pad_id``."""
    out = targets.new_full(targets.shape, pad_id)
    out[:, 1:] = targets[:, :-1]
    out[:, 0] = start_id
    return out.masked_fill(out == IGNORE_INDEX, pad_id)


def pad_targets(seqs: Sequence[Sequence[int]], length: int | None = None) -> torch.Tensor:
    """Right-pad token id lists with -100 into a (B, T) tensor."""
    t = max([len(s) for s in seqs] + [1]) if length is None else length
    out = torch.full((len(seqs), t), IGNORE_INDEX, dtype=torch.long)
    for i, s in enumerate(seqs):
        s = list(s)[:t]
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


__all__ = ["GENERATE_DEFAULTS", "Generative", "IGNORE_INDEX", "hold_cache_slot", "lm_loss", "pad_targets",
           "shift_right"]

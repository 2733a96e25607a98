"""Small utilities shared by tests."""

from __future__ import annotations

import torch


def proj_loss(x: torch.Tensor, seed: int = 1234) -> torch.Tensor:
    """A scalar loss with a non-zero gradient almost surely: a fixed random projection of ``x``.

    ``x.sum()`` or ``x.pow(2).sum()`` are no good when ``x`` is a LayerNorm output (BERT features with unit
    gain): both are (nearly) constant in the input, so their gradient is zero up to rounding noise.
    """
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(x.shape, generator=g, dtype=torch.float32).to(device=x.device, dtype=x.dtype)
    return (x * w).sum()


def backbone_batch(bb, B: int = 2, L: int = 6) -> dict:
    """A small batch any test backbone takes (ViLT at 64 px, the CLIP-based ones at 32 px), with a padded row."""
    g = torch.Generator().manual_seed(0)
    size = 64 if bb.family == "vilt" else 32
    ids = torch.randint(5, 90, (B, L), generator=g)
    masks = torch.ones(B, L, dtype=torch.long)
    masks[1, -2:] = 0
    if getattr(bb, "extractor", False) is None:  # features in the batch (VL-BART video: frames, zero boxes)
        return {"text_ids": ids, "text_masks": masks, "vis_pos": torch.zeros(B, 8, 4),
                "vis_feats": torch.randn(B, 8, int(bb.cfg.vis_feat_dim), generator=g)}
    return {"text_ids": ids, "text_masks": masks, "image": torch.randn(B, 3, size, size, generator=g),
            "image_mask": torch.ones(B, size, size, dtype=torch.bool), "image_sizes": [(size, size)] * B}


def fixture_vl_bart(feat_dim: int = 8, d_model: int = 32, layers: int = 2, seed: int = 0):
    """A small REAL generative VL backbone for the generative-task tests (not a stub, not registered).

    A Hugging Face ``BartForConditionalGeneration`` built from a config (vocabulary 30522 = the offline BERT
    tokenizer's; pad 0, [CLS] 101 as BOS, [SEP] 102 as EOS and decoder start, as BART uses its EOS), whose encoder
    input is the text embeddings followed by the visual tokens: ``vis_feats`` through one Linear (+ ``vis_pos``
    through one Linear, + an image-order embedding when ``img_order_ids`` is given), or — for pixel batches —
    the image average-pooled to a 6×6 grid of RGB cells through one Linear. It subclasses ``Generative``:
    ``forward`` gives ``lm_logits`` / ``lm_loss`` for ``target_ids``; ``generate`` runs transformers' beam search.
    """
    from torch import nn
    from transformers import BartConfig, BartForConditionalGeneration

    from vlpeft.backbones._generative import Generative, lm_loss, shift_right
    from vlpeft.data.tokenizer import load_tokenizer

    class _FixtureVLBart(Generative):
        family = "fixture_vl_bart"

        def __init__(self):
            super().__init__()
            torch.manual_seed(seed)
            self.config = BartConfig(
                vocab_size=30522, d_model=d_model, encoder_layers=layers, decoder_layers=layers,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=2 * d_model,
                decoder_ffn_dim=2 * d_model, max_position_embeddings=128, pad_token_id=0, bos_token_id=101,
                eos_token_id=102, decoder_start_token_id=102, forced_eos_token_id=None, dropout=0.0,
                attention_dropout=0.0, activation_dropout=0.0)
            self.model = BartForConditionalGeneration(self.config)
            self.vis_proj = nn.Linear(feat_dim, d_model)
            self.pos_proj = nn.Linear(4, d_model)
            self.pix_proj = nn.Linear(3, d_model)
            self.img_order = nn.Embedding(2, d_model)
            self.tokenizer = load_tokenizer("bert-base-uncased")

        @property
        def hidden_size(self) -> int:
            return d_model

        def candidates(self):
            from vlpeft.backbones._protocol import Candidates

            return Candidates(count=2 * layers, skip=False)

        def sites(self):
            return []  # PET modules are the real backbones' business; this fixture runs with pet=none

        def base_trainable(self, policy):
            from vlpeft.backbones._sites import base_policy_params

            return base_policy_params(self, policy)

        def encoder_inputs(self, batch):
            text = self.model.get_input_embeddings()(batch["text_ids"])
            if "vis_feats" in batch:
                vis = self.vis_proj(batch["vis_feats"].float()) + self.pos_proj(batch["vis_pos"].float())
                if "img_order_ids" in batch:
                    vis = vis + self.img_order(batch["img_order_ids"])
            else:
                keys = [k for k in ("image", "image_0", "image_1") if k in batch]
                grids = [torch.nn.functional.adaptive_avg_pool2d(batch[k], 6).flatten(2).transpose(1, 2)
                         for k in keys]
                vis = torch.cat([self.pix_proj(g) + self.img_order.weight[i] for i, g in enumerate(grids)], 1)
            mask = torch.cat([batch["text_masks"], batch["text_masks"].new_ones(vis.shape[:2])], 1)
            return torch.cat([text, vis], 1), mask

        def forward(self, batch, plan=None, **ctx):
            embeds, mask = self.encoder_inputs(batch)
            targets = batch.get("target_ids")
            dec = (shift_right(targets, self.config.decoder_start_token_id, self.config.pad_token_id)
                   if targets is not None else
                   torch.full((embeds.shape[0], 1), self.config.decoder_start_token_id, dtype=torch.long))
            logits = self.model(inputs_embeds=embeds, attention_mask=mask, decoder_input_ids=dec).logits
            out = {"lm_logits": logits}
            if targets is not None:
                out["lm_loss"] = lm_loss(logits, targets)
            return out

        @torch.no_grad()
        def generate(self, batch, plan=None, *, num_beams=1, max_new_tokens=20):
            embeds, mask = self.encoder_inputs(batch)
            ids = self.model.generate(inputs_embeds=embeds, attention_mask=mask, num_beams=num_beams,
                                      max_new_tokens=max_new_tokens, do_sample=False,
                                      decoder_start_token_id=self.config.decoder_start_token_id)
            return self.decode(ids)

    return _FixtureVLBart()


# Registry entries the conformance tests do not build, by registry kind: name → why (tests/test_registries.py fails
# for any other entry that registered no test entry, and for an exemption that no longer applies). None today.
EXEMPT: dict[str, dict[str, str]] = {
    "backbone": {},
    "PET module": {},
    "PET preset": {},
    "search": {},
    "task": {},
}

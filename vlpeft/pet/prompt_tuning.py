"""Input prompt tuning with an MLP re-parametrisation (VL-Adapter / VL-PET baseline; spec §2 M8).

``P = Lin(m→d)( tanh( Lin(d→m)( E_p ) ) ) ∈ R^{L×d}``, ``E_p = Embedding(L, d)`` read at 0..L−1, prepended to the
encoder input sequence with the attention mask extended by ones (anchor ``input``; BART: after token embedding ×
scale + positions and before ``layernorm_embedding``; T5: the raw token embeddings). Scripts: L = 40, m = 800.
Count ``L·d + 2 d m + m + d`` (d = 768: 1,261,088). Inits: ``"legacy_bart"`` N(0, 0.02) everywhere (zero biases),
``"torch"`` PyTorch defaults (Embedding N(0, 1)). Parameter names ``prefix_embedding.{0,1,3}`` (the originals').
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.sharing import config_from, place


@dataclass
class PromptConfig:
    length: int = 40
    mid: int = 800
    init: str = "legacy_bart"


class InputPrompt(nn.Module):
    role = "input"

    def __init__(self, dim: int, length: int = 40, mid: int = 800, init: str = "legacy_bart"):
        super().__init__()
        if init not in ("legacy_bart", "torch"):
            raise ValueError(f"prompt init {init!r} is not 'legacy_bart' or 'torch'")
        self.length, self.dim = int(length), int(dim)
        self.prefix_embedding = nn.Sequential(nn.Embedding(length, dim), nn.Linear(dim, mid), nn.Tanh(),
                                              nn.Linear(mid, dim))
        self.register_buffer("input_tokens", torch.arange(length), persistent=False)
        if init == "legacy_bart":
            with torch.no_grad():
                for m in self.prefix_embedding:
                    if isinstance(m, (nn.Linear, nn.Embedding)):
                        m.weight.normal_(0.0, 0.02)
                    if isinstance(m, nn.Linear):
                        m.bias.zero_()

    def prompts(self, batch_size: int) -> torch.Tensor:
        p = self.prefix_embedding(self.input_tokens)
        return p.unsqueeze(0).expand(batch_size, -1, -1)

    def forward(self, embeds: torch.Tensor, attention_mask: torch.Tensor | None = None):
        """``[P; embeds]`` and the mask with ``L`` ones in front (``None`` stays ``None``)."""
        p = self.prompts(embeds.shape[0]).to(embeds.dtype)
        out = torch.cat([p, embeds], dim=1)
        if attention_mask is None:
            return out, None
        ones = attention_mask.new_ones(attention_mask.shape[0], self.length)
        return out, torch.cat([ones, attention_mask], dim=1)


# identity None: a prompt lengthens the sequence (the test checks the prompt rows and the kept input)
@register_pet("prompt", test=dict(site=dict(anchor="input"), options=dict(length=3, mid=5), identity=None))
def build_prompt(site, **options) -> nn.Module:
    """Input prompt generator on an ``input`` site (spec §2 M8)."""
    cfg, placing = config_from(PromptConfig, "prompt", options)
    d, _ = site_dims(site)
    return place(lambda: InputPrompt(d, cfg.length, cfg.mid, cfg.init), site, "prompt", **placing)


__all__ = ["InputPrompt", "PromptConfig", "build_prompt"]

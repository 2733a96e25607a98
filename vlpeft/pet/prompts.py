"""Visual-prompt generator of DVP: one query token cross-attends to the frozen CLIP tokens.

``CrossAttentionPrompt`` is DVP's ``Cross_Attention`` (seeds.md §3.3): ``linear_q`` / ``linear_k`` /
``linear_v`` / ``linear_merge`` with bias and PyTorch's default Linear init (kept for fidelity, §8 item 16),
``num_heads`` heads, dropout on the attention map, query length 1, no residual, no norm, no mask.
The BERT/T5 variant uses the PLM width as inner width (every Linear is H→H when CLIP and the PLM are both
768 wide); the LLaMA variant narrows to ``inner_dim`` (512). Keys/values project from the CLIP width, which
may differ from the PLM width.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class CrossAttentionPrompt(nn.Module):
    """``prompt = merge(softmax(q kᵀ / √d_head) · drop · v)`` for a single query token.

    Args:
        query_dim: width of the PLM hidden state that forms the query (and of the output prompt).
        kv_dim: width of the visual tokens (CLIP width).
        inner_dim: attention width (q/k/v output); defaults to ``query_dim``.
        num_heads: heads; must divide ``inner_dim``.
        dropout: dropout probability on the attention map (config ``drop_rate``).
    """

    def __init__(
        self,
        query_dim: int,
        kv_dim: int,
        inner_dim: int | None = None,
        num_heads: int = 12,
        dropout: float = 0.1,
    ) -> None:
        super().__init__()
        inner_dim = int(inner_dim or query_dim)
        if num_heads <= 0 or inner_dim % num_heads != 0:
            raise ValueError(
                f"cross-attention width {inner_dim} is not divisible by num_heads={num_heads}; "
                "set config num_heads to a divisor of the PLM width (or of dvp_llama_xattn_dim for LLaMA)"
            )
        self.num_heads = int(num_heads)
        self.head_dim = inner_dim // self.num_heads
        self.linear_q = nn.Linear(query_dim, inner_dim)
        self.linear_k = nn.Linear(kv_dim, inner_dim)
        self.linear_v = nn.Linear(kv_dim, inner_dim)
        self.linear_merge = nn.Linear(inner_dim, query_dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, query: torch.Tensor, visual: torch.Tensor) -> torch.Tensor:
        """query: (B, d_q) or (B, 1, d_q); visual: (B, N, d_v) → prompt (B, 1, d_q)."""
        if query.dim() == 2:
            query = query.unsqueeze(1)
        b = query.shape[0]

        def heads(x: torch.Tensor) -> torch.Tensor:
            return x.view(b, -1, self.num_heads, self.head_dim).transpose(1, 2)

        q = heads(self.linear_q(query))
        k = heads(self.linear_k(visual))
        v = heads(self.linear_v(visual))
        att = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(self.head_dim)
        att = self.dropout(att.softmax(dim=-1))
        out = torch.matmul(att, v).transpose(1, 2).reshape(b, -1, self.num_heads * self.head_dim)
        return self.linear_merge(out)

"""Hyperformer: bottleneck adapters whose weights a hyper-network generates per (task, layer, block type)
(VL-Adapter / VL-PET baseline; spec §2 M6, §6.1).

Per stack (``--unique_hyper_net``) one ``HyperNet``:

- layer embeddings ``l_j ∈ R^512`` (``Embedding(L, 512)``, N(0, 0.02));
- ``e = LN_p( Lin(h→p)( ReLU( Lin(2·512→h)([t_k; l_j]) ) ) )``, h = 128, p = 8, LN eps 1e-6 (the original's);
- per block type (encoder: attn, ffn; decoder: attn, cross_attn, ffn) generators ``Lin(p → r·d)`` for the up and the
  down weight, ``Lin(p → d)`` / ``Lin(p → r)`` for their biases, all N(0, 0.02) with zero bias (BART's init).

Task embeddings ``t_k ∈ R^512`` (N(0, 1)) are shared by both stacks (``TaskEmbeddings``). The adapter at a site is
``Y = H + W_u gelu_new(W_d H + b_d) + b_u`` with the generated weights; the task comes from
``vlpeft.pet.context.current_task()`` (``with pet_context(task=...)``). Count per stack:
``n_types (2(p+1) d r + (p+1)(d + r)) + (2·512+1) h + (h+1) p + L·512 + 2p``, plus ``T·512``
(BART, r = 96, 4 tasks: 6,947,088). The shared hyper-network and task embeddings come from the recipe's
``SharePool`` (option ``pool``), so every site of a stack holds the same objects.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.pet._base import register_pet
from vlpeft.pet._sites_hf import site_dims
from vlpeft.pet.bottleneck import resolve_r
from vlpeft.pet.context import current_task
from vlpeft.pet.sharing import config_from

DEFAULT_BLOCK_TYPES = {"decoder": ("attn", "cross_attn", "ffn")}  # any other stack: ("attn", "ffn")


class TaskEmbeddings(nn.Module):
    def __init__(self, tasks: Sequence[str], dim: int = 512):
        super().__init__()
        if not tasks:
            raise ValueError("the Hyperformer needs the task names (option `tasks`)")
        self.task_to_embeddings = nn.ParameterDict({t: nn.Parameter(torch.randn(dim)) for t in tasks})

    def forward(self, task: str | None) -> torch.Tensor:
        if task is None:
            if len(self.task_to_embeddings) == 1:
                return next(iter(self.task_to_embeddings.values()))
            raise LookupError(f"the Hyperformer needs the current task: run the forward inside `with pet_context("
                              f"task=...)`, one of {list(self.task_to_embeddings)}")
        if task not in self.task_to_embeddings:
            raise LookupError(f"task {task!r} has no Hyperformer embedding; known: {list(self.task_to_embeddings)}")
        return self.task_to_embeddings[task]


class HyperNet(nn.Module):
    def __init__(self, d: int, r: int, num_layers: int, block_types: Sequence[str], task_dim: int = 512,
                 hidden: int = 128, proj: int = 8):
        super().__init__()
        self.d, self.r = d, r
        self.layer_embeddings = nn.Embedding(num_layers, task_dim)
        self.task_hypernet = nn.Sequential(nn.Linear(2 * task_dim, hidden), nn.ReLU(), nn.Linear(hidden, proj))
        self.task_ln = nn.LayerNorm(proj, eps=1e-6)  # the original controller's layer_norm_epsilon (not torch's 1e-5)
        self.generators = nn.ModuleDict({bt: nn.ModuleDict({
            "up_w": nn.Linear(proj, r * d), "up_b": nn.Linear(proj, d),
            "down_w": nn.Linear(proj, d * r), "down_b": nn.Linear(proj, r)}) for bt in block_types})
        with torch.no_grad():  # BART's _init_weights over every Linear / Embedding
            for m in self.modules():
                if isinstance(m, nn.Linear):
                    m.weight.normal_(0.0, 0.02)
                    m.bias.zero_()
            self.layer_embeddings.weight.normal_(0.0, 0.02)

    def weights(self, task_vec: torch.Tensor, layer: int, block_type: str):
        if block_type not in self.generators:
            raise KeyError(f"this hyper-network generates {list(self.generators)}, not {block_type!r}")
        l_emb = self.layer_embeddings.weight[layer]
        e = self.task_ln(self.task_hypernet(torch.cat([task_vec.to(l_emb.dtype), l_emb], dim=-1)))
        g = self.generators[block_type]
        w_d = g["down_w"](e).view(self.r, self.d)
        w_u = g["up_w"](e).view(self.d, self.r)
        return w_d, g["down_b"](e), w_u, g["up_b"](e)


class HyperAdapter(nn.Module):
    role = "seq"
    mergeable = False

    def __init__(self, hypernet: HyperNet, tasks: TaskEmbeddings, layer: int, block_type: str):
        super().__init__()
        self.hypernet, self.task_embeddings = hypernet, tasks
        self.layer, self.block_type = int(layer), block_type

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        w_d, b_d, w_u, b_u = self.hypernet.weights(self.task_embeddings(current_task()), self.layer, self.block_type)
        return z + F.linear(F.gelu(F.linear(z, w_d, b_d), approximate="tanh"), w_u, b_u)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, block_type={self.block_type}"


@dataclass
class HyperformerConfig:
    r: int | None = None
    reduction: float | None = 8
    task_dim: int = 512
    hidden: int = 128
    proj: int = 8
    num_layers: int | None = None  # default: site.meta["num_layers"]
    block_types: tuple[str, ...] | None = None  # default: DEFAULT_BLOCK_TYPES by stack


# not identity: generated weights from N(0, 0.02) generators; pool: the preset's SharePool (test builds one);
# idle: the stack's shared hyper-network also generates the other block type's adapters, unused at an attn site
@register_pet("hyperformer", test=dict(site=dict(num_layers=1), options=dict(tasks=("vqa",)), pool=True,
                                       identity=False, idle=("hypernet.generators.ffn.",)))
def build_hyperformer(site, **options) -> nn.Module:
    """Hyperformer adapter on ``out_seq``; needs ``tasks`` and ``pool`` (spec §2 M6)."""
    cfg, placing = config_from(HyperformerConfig, "hyperformer", options)
    pool, tasks = placing.get("pool"), tuple(placing.get("tasks", ()))
    if pool is None:
        raise ValueError("hyperformer needs a `pool` option (SharePool) so the hyper-network is shared by its stack")
    if placing.get("sharing", "shared") != "shared":
        raise ValueError("the Hyperformer shares one generator across tasks; per-task sharing does not apply")
    d, _ = site_dims(site)
    r = resolve_r(d, cfg.r, cfg.reduction)
    num_layers = cfg.num_layers or (site.meta or {}).get("num_layers")
    if not num_layers:
        raise ValueError("hyperformer needs `num_layers` (or a site.meta['num_layers']) for its layer embeddings")
    block_types = tuple(cfg.block_types or DEFAULT_BLOCK_TYPES.get(site.stack, ("attn", "ffn")))
    task_emb = pool.get(("hyperformer_tasks",), lambda: TaskEmbeddings(tasks, cfg.task_dim))
    net = pool.get(("hyperformer", site.stack),
                   lambda: HyperNet(d, r, int(num_layers), block_types, cfg.task_dim, cfg.hidden, cfg.proj))
    # the layer's index within its stack (hosts whose candidates span two stacks say so in meta["stack_layer"])
    layer = int((site.meta or {}).get("stack_layer", site.layer))
    return HyperAdapter(net, task_emb, layer, site.sublayer)


__all__ = ["HyperAdapter", "HyperNet", "HyperformerConfig", "TaskEmbeddings", "build_hyperformer"]

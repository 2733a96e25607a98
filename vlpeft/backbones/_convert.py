"""Name converters between checkpoint layouts (kept apart from the models that use them).

ViLT: the original names (``transformer.blocks.i.attn.qkv``, ``vqa_classifier.*``) ↔ transformers' ``Vilt*`` names
(``vilt.encoder.layer.i.attention.attention.{query,key,value}``, ``classifier.*``). transformers 5 no longer ships
its conversion script, so the mapping lives here.
"""

from __future__ import annotations

from typing import Mapping

import torch

_DROP_BUFFERS = ("text_embeddings.position_ids", "text_embeddings.token_type_ids")


class ConversionError(ValueError):
    """A state dict that cannot be converted; the message names the layer and what is missing."""


_HF_SIMPLE = {
    "token_type_embeddings.weight": "vilt.embeddings.token_type_embeddings.weight",
    "transformer.patch_embed.proj.weight": "vilt.embeddings.patch_embeddings.projection.weight",
    "transformer.patch_embed.proj.bias": "vilt.embeddings.patch_embeddings.projection.bias",
    "transformer.cls_token": "vilt.embeddings.cls_token",
    "transformer.pos_embed": "vilt.embeddings.position_embeddings",
    "transformer.norm.weight": "vilt.layernorm.weight",
    "transformer.norm.bias": "vilt.layernorm.bias",
    "pooler.dense.weight": "vilt.pooler.dense.weight",
    "pooler.dense.bias": "vilt.pooler.dense.bias",
}
_HF_BLOCK = {
    "norm1": "layernorm_before",
    "attn.proj": "attention.output.dense",
    "norm2": "layernorm_after",
    "mlp.fc1": "intermediate.dense",
    "mlp.fc2": "output.dense",
}


def vilt_to_hf_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ViLT names → transformers ``ViltForQuestionAnswering`` names (``qkv`` split into query/key/value,
    ``vqa_classifier`` → ``classifier``). DAS adapters have no HF counterpart and are left out."""
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in _HF_SIMPLE:
            out[_HF_SIMPLE[k]] = v
        elif k.startswith("text_embeddings.") and k not in _DROP_BUFFERS:
            out["vilt.embeddings." + k] = v
        elif k.startswith("vqa_classifier."):
            out["classifier." + k[len("vqa_classifier."):]] = v
        elif k.startswith("transformer.blocks."):
            i, rest = k[len("transformer.blocks."):].split(".", 1)
            pre = f"vilt.encoder.layer.{i}."
            mod, _, leaf = rest.rpartition(".")
            if mod == "attn.qkv":
                for name, part in zip(("query", "key", "value"), v.chunk(3, 0)):
                    out[f"{pre}attention.attention.{name}.{leaf}"] = part
            elif mod in _HF_BLOCK:
                out[f"{pre}{_HF_BLOCK[mod]}.{leaf}"] = v
    return out


def hf_to_vilt_state_dict(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers ``Vilt*`` names → original ViLT names (inverse of ``vilt_to_hf_state_dict``)."""
    inv_simple = {v: k for k, v in _HF_SIMPLE.items()}
    inv_block = {v: k for k, v in _HF_BLOCK.items()}
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for k, v in sd.items():
        if k in inv_simple:
            out[inv_simple[k]] = v
        elif k.startswith("vilt.embeddings.text_embeddings."):
            if k.rsplit(".", 1)[-1] in ("position_ids", "token_type_ids"):
                continue
            out[k[len("vilt.embeddings."):]] = v
        elif k.startswith("classifier."):
            out["vqa_classifier." + k[len("classifier."):]] = v
        elif k.startswith("vilt.encoder.layer."):
            i, rest = k[len("vilt.encoder.layer."):].split(".", 1)
            mod, _, leaf = rest.rpartition(".")
            if mod.startswith("attention.attention."):
                qkv.setdefault((i, leaf), {})[mod.rsplit(".", 1)[-1]] = v
            elif mod in inv_block:
                out[f"transformer.blocks.{i}.{inv_block[mod]}.{leaf}"] = v
            else:
                out[k] = v
        else:
            out[k] = v  # unknown: passes through (reported as unexpected)
    for (i, leaf), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise ConversionError(f"layer {i}: attention {leaf} lacks one of query/key/value ({sorted(parts)})")
        out[f"transformer.blocks.{i}.attn.qkv.{leaf}"] = torch.cat([parts["query"], parts["key"], parts["value"]], 0)
    return out


__all__ = ["ConversionError", "hf_to_vilt_state_dict", "vilt_to_hf_state_dict"]

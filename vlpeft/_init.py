"""The BERT-style initialisation ViLT, METER and DVP apply to the modules they add (the originals'
``objectives.init_weights``): Linear / Embedding weights N(0, 0.02), Linear biases 0, LayerNorm 1 / 0."""

from __future__ import annotations

from torch import nn


def init_weights_bert(module: nn.Module) -> None:
    if isinstance(module, (nn.Linear, nn.Embedding)):
        module.weight.data.normal_(mean=0.0, std=0.02)
    elif isinstance(module, nn.LayerNorm):
        module.bias.data.zero_()
        module.weight.data.fill_(1.0)
    if isinstance(module, nn.Linear) and module.bias is not None:
        module.bias.data.zero_()

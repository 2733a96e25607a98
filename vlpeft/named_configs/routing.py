"""Routing-VLPEFT's released experiments (tingyu215/Routing_VLPEFT ``scripts/run_vit_*.sh``; spec §5) as named configs.

- ``routing_vit_gpt2_lora``: ``run_vit_gpt_lora.sh`` — ViT-B/16-in21k pooler + GPT-2 with the visual prefix, LoRA
  routing "beforeB" (add) on q and v of every ``c_attn`` (r = 128, α = 128, dropout 0), ``ln_1`` / ``ln_2`` and the
  ``c_attn`` biases trainable; COCO captioning; 20 epochs, batch 40, lr 3e-5, 5,000 warm-up steps, AdamW without
  weight decay, seed 9898. (The GPT-2 LoRA path routes whatever ``use_routing`` says.)
- ``routing_vit_gpt2_adapter``: ``run_vit_gpt_adapter.sh`` — the same with one routed (add) adapter per block, r = 128,
  shared by the attention and MLP outputs (``post_module``); seed 42.
- ``routing_vit_roberta_lora``: ``run_vit_roberta_lora.sh`` with routing really on — RoBERTa-base with the visual
  prefix, LoRA routing (add) on query and value (r = 128, α = 128), q / v biases trainable, LNs frozen
  (``--freeze_ln``); VQAv2 (3,129 answers, RT's 2-layer classifier = the project's VQA head); 20 epochs, batch 512,
  lr 3e-4, 5 % warm-up, seed 18.
- ``routing_vit_roberta_adapter``: ``run_vit_roberta_adapter.sh`` with routing really on — two routed (add) adapters
  per layer, r = 64, no inner skip (the adapter output replaces the sublayer output, RT without ``--add_res``), LNs
  trainable; seed 684331 (the script passes none: the parser's default).
- ``routing_vit_roberta_{lora,adapter}_as_released``: what the released RoBERTa scripts *actually* run. Their routing
  switch ``--use_vllora`` is a stale flag name that the parser swallows, so ``use_routing`` stays False and the runs
  are plain LoRA on q, v (``pet=lora``) / plain RT adapters (``pet=rt_adapter``) next to the visual prefix; vision
  enters only through the prefix. ``--element_add`` has no effect there.

RT flags as vlpeft keys: ``--freeze_ln`` is ``train_base=bias:c_attn`` (GPT-2 LoRA), ``train_base=bias:query+bias:value``
(RoBERTa LoRA) or ``train_base=none`` (adapters); ``--fusion_layer i …`` is ``routing_fusion_layers=[i, …]`` (LoRA
routing only there; the preset's policy still trains every ``c_attn`` bias, where RT freezes ``c_attn`` outside the
fusion layers); ``--no_vis_prefix`` / ``--use_vis_prefix`` / ``--vit_use_pooler`` keep their names; ``--add_res`` is
``routing_add_res=True``.

Not reproduced: RT reads the ViT through ``AutoImageProcessor`` (resize 224, mean = std = 0.5): here the ``vit``
transform at ``image_size=224`` does the same. Test-time beams (5 in ``test_vit_gpt.py``) belong to the caption task.
"""

from __future__ import annotations

from typing import Any, Callable

# shared by every RT run: the frozen ViT-B/16-in21k pooler (x_v), RT's optimiser (transformers AdamW with its
# defaults: eps 1e-6, betas (0.9, 0.999), weight decay 0; linear warm-up then linear decay to 0, fp32), epochs as
# the unit
_RT = dict(vit_model="google/vit-base-patch16-224-in21k", vit_use_pooler=True, image_size=224,
           train_transform_keys=["vit"], val_transform_keys=["vit"], optim_type="adamw", weight_decay=0.0,
           adam_eps=1e-6, adam_betas=[0.9, 0.999],
           decay_power=1, end_lr=0, max_steps=None, max_epoch=20, precision=32, draw_false_image=0, skip_module=[],
           lr_mult=1)

ROUTING_CONFIGS = ("routing_vit_gpt2_lora", "routing_vit_gpt2_adapter", "routing_vit_roberta_lora",
                   "routing_vit_roberta_adapter", "routing_vit_roberta_lora_as_released",
                   "routing_vit_roberta_adapter_as_released")


def register(named: Callable[..., None], loss_names: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Register every config of this module through ``named(name, **cfg)`` (``vlpeft.config`` calls this);
    ``loss_names`` fills a task → weight dict with the other loss keys at 0."""
    gpt2 = dict(_RT, backbone="vit_gpt2", tokenizer="gpt2", no_vis_prefix=False, datasets=["coco"],
                 loss_names=loss_names({"caption": 1}), max_text_len=50, batch_size=40, learning_rate=3e-5,
                 warmup_steps=5000)
    named("routing_vit_gpt2_lora", **dict(gpt2, exp_name="routing_vit_gpt2_lora", pet="routing_lora_add",
                                          routing_r=128, routing_alpha=128, routing_fusion_layers=None, seed=9898))
    named("routing_vit_gpt2_adapter", **dict(gpt2, exp_name="routing_vit_gpt2_adapter", pet="routing_adapter_add",
                                             routing_adapter_r=128, seed=42))

    roberta = dict(_RT, backbone="vit_roberta", tokenizer="roberta-base", use_vis_prefix=True, datasets=["vqa"],
                    loss_names=loss_names({"vqa": 1}), vqav2_label_size=3129, max_text_len=20, batch_size=512,
                    learning_rate=3e-4, warmup_steps=0.05)
    roberta_lora = dict(roberta, train_base="bias:query+bias:value", seed=18)  # --freeze_ln: q / v biases only
    roberta_adapter = dict(roberta, routing_adapter_r=64, routing_add_res=False, train_base="norms", seed=684331)
    named("routing_vit_roberta_lora", **dict(roberta_lora, exp_name="routing_vit_roberta_lora",
                                             pet="routing_lora_add", routing_r=128, routing_alpha=128))
    named("routing_vit_roberta_adapter", **dict(roberta_adapter, exp_name="routing_vit_roberta_adapter",
                                                pet="routing_adapter_add"))
    # the released scripts' behaviour: routing OFF (stale --use_vllora flag), vision only through the visual prefix
    named("routing_vit_roberta_lora_as_released", **dict(
        roberta_lora, exp_name="routing_vit_roberta_lora_as_released", pet="lora", lora_r=128, lora_alpha=128,
        lora_dropout=0.0))
    named("routing_vit_roberta_adapter_as_released", **dict(roberta_adapter,
                                                            exp_name="routing_vit_roberta_adapter_as_released",
                                                            pet="rt_adapter"))


__all__ = ["ROUTING_CONFIGS", "register"]

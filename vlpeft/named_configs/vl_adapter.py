"""VL-Adapter's and VL-PET's released image-text experiments as named configs (spec §3.5–3.6, §4;
ylsung/VL_adapter ``VL-T5/scripts/image/*.sh`` and the VL-PET ``scripts/image-text/*.sh``).

Every one trains the four image-text tasks jointly — VQAv2, GQA, NLVR2 and COCO captioning, each answered by
generation (``datasets=["vqa", "gqa", "nlvr2", "coco"]``) — with the scripts' optimiser: AdamW (eps 1e-6, betas
(0.9, 0.999), weight decay 0.01 on every name without "bias" or "LayerNorm.weight" — ``no_decay``, the VL-T5
trainer's rule, under which BART's and T5's ``*layer_norm.weight`` are decayed), warm-up ratio 0.1 then linear decay,
gradient clip 5, 20 epochs, fp32, and 5 beams at validation / test. Visual input: the originals read pre-extracted CLIP-RN101 grid features (36 boxes, 2048-d);
point ``visual_features=`` at their ``clip_features`` folder to use them, or leave it empty and give
``vl_clip_model=<local CLIP folder>`` to extract grid features from the arrow images (DATA.md).

- ``vladapter_<method>``: VL-Adapter's ``single_adapter``, ``multiple_adapters``, ``hyperformer``,
  ``single_compacter``, ``multiple_compacters``, ``single_lora``, ``multiple_lora``, ``single_prompt``,
  ``multiple_prompts`` and ``full_finetuning`` on VL-BART (the scripts' ``model="bart"``: batch 500, seed 9595 = the
  parser's default). Single-module scripts pass ``--use_tasks_prompts``; multi-module ones do not (and neither does
  ``hyperformer.sh`` nor ``full_finetuning.sh``). Add ``vladapter_t5`` after the method for the scripts' T5 branch
  (t5-base, batch 300). The scripts' ``--unfreeze_layer_norms`` is ``train_base=nn_layernorm``: every VL-BART LN, no
  VL-T5 norm (the original's class test missed its own ``T5LayerNorm``); ``train_base=norms`` trains T5's norms too.
- ``vlpet_<variant>_<host>``: VL-PET-{small, middleX, middleY, large} on BART (R = 96, r_g = 96, lr 1e-3, batch 500)
  or T5 (R = 192, r_g = 192, s = 0.3, lr 3e-4, batch 300); 4 heads, decoder value adapter RD = 96, seed 42 (the
  README's invocation; 43 and 9595 are the paper's other seeds), task prefixes on.

Local paths: ``vl_model`` and ``tokenizer`` name the Hugging Face folders (``facebook/bart-base`` / ``t5-base`` as the
scripts write them resolve only where the hub cache holds them; pass local folders otherwise).
"""

from __future__ import annotations

from typing import Any, Callable

FOUR_TASKS = dict(datasets=["vqa", "gqa", "nlvr2", "coco"], loss_names={"vqa": 1, "gqa": 1, "nlvr2": 1, "caption": 1})
# the VL-T5 trainer's no-decay substrings, on our names: "bias", "LayerNorm.weight" (so BART's *_layer_norm.weight and
# T5's layer_norm.weight ARE decayed), and "task_ln.weight" = our name of the Hyperformer's `LayerNorm`, exempt there
VLT5_NO_DECAY = ["bias", "LayerNorm.weight", "task_ln.weight"]
# the VL-T5 trainer: transformers AdamW (eps 1e-6, betas (0.9, 0.999)), linear warm-up 10 % then linear decay
_VLT5_TRAIN = dict(optim_type="adamw", adam_eps=1e-6, adam_betas=[0.9, 0.999], weight_decay=0.01,
                   no_decay=VLT5_NO_DECAY, warmup_steps=0.1,
                   decay_power=1, end_lr=0, max_steps=None, max_epoch=20, gradient_clip_val=5.0, precision=32,
                   lr_mult=1, num_beams=5, gen_max_length=20, max_text_len=20, draw_false_image=0, skip_module=[],
                   image_size=224, train_transform_keys=["clip"], val_transform_keys=["clip"], vis_feat_dim=2048)
VLT5_TRAIN = _VLT5_TRAIN  # the trainer as data, read by the video configs (named_configs.video)
HOSTS = {"bart": dict(backbone="vl_bart", vl_model="facebook/bart-base", tokenizer="facebook/bart-base",
                      batch_size=500),
         "t5": dict(backbone="vl_t5", vl_model="t5-base", tokenizer="t5-base", batch_size=300)}

# `--unfreeze_layer_norms` as it ran: a class test that matched every nn.LayerNorm (all of VL-BART's) but not VL-T5's
# own T5LayerNorm class, so the T5 branch trained no norm (10,480,512 for the single adapter at base size);
# `train_base=norms` opts into training T5's norms too
_VLA_LN = dict(train_base="nn_layernorm")
# method → (preset and its options, lr, task prompts); widths from the presets' defaults = the scripts' (r = d/8 …)
VLA_METHODS: dict[str, tuple[dict, float, bool]] = {
    "single_adapter": (dict(pet="vl_adapter", adapter_reduction=8, **_VLA_LN), 1e-3, True),
    "multiple_adapters": (dict(pet="vl_adapter_multiple", adapter_reduction=8, **_VLA_LN), 3e-4, False),
    "hyperformer": (dict(pet="hyperformer", adapter_reduction=8, hyper_proj_dim=8, **_VLA_LN), 1e-3, False),
    "single_compacter": (dict(pet="compacter", adapter_reduction=8, phm_n=2, **_VLA_LN), 1e-3, True),
    "multiple_compacters": (dict(pet="compacter_multiple", adapter_reduction=8, phm_n=2, **_VLA_LN), 1e-3, False),
    "single_lora": (dict(pet="lora", lora_r=128, lora_alpha=32, lora_dropout=0.1), 1e-3, True),
    "multiple_lora": (dict(pet="lora_multiple", lora_r=128, lora_alpha=32, lora_dropout=0.1), 1e-3, False),
    "single_prompt": (dict(pet="prompt", prompt_len=40, prompt_mid=800), 1e-3, True),
    "multiple_prompts": (dict(pet="prompt_multiple", prompt_len=40, prompt_mid=800), 1e-3, False),
    "full_finetuning": (dict(pet="none", train_base="all"), 1e-4, False),
}
# VL-PET: variant → preset; host → (R, r_g, gate scale s, lr)
VLPET_VARIANTS = {"small": "vl_pet_small", "middle_x": "vl_pet_middle_x", "middle_y": "vl_pet_middle_y",
                  "large": "vl_pet_large"}
VLPET_HOSTS = {"bart": (96, 96, None, 1e-3), "t5": (192, 192, 0.3, 3e-4)}
VL_CONFIGS = tuple([f"vladapter_{m}" for m in VLA_METHODS] + ["vladapter_t5"]
                   + [f"vlpet_{v}_{h}" for v in VLPET_VARIANTS for h in VLPET_HOSTS])


def register(named: Callable[..., None], loss_names: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Register every config of this module through ``named(name, **cfg)`` (``vlpeft.config`` calls this);
    ``loss_names`` fills a task → weight dict with the other loss keys at 0."""
    train = dict(_VLT5_TRAIN, datasets=FOUR_TASKS["datasets"], loss_names=loss_names(FOUR_TASKS["loss_names"]))
    for _m, (_pet, _lr, _prompts) in VLA_METHODS.items():
        named(f"vladapter_{_m}", **dict(train, **HOSTS["bart"], **_pet, exp_name=f"vladapter_{_m}",
                                        learning_rate=_lr, use_tasks_prompts=_prompts, seed=9595))
    # the scripts' other branch (model="t5"), given after the method: "with vladapter_single_adapter vladapter_t5"
    named("vladapter_t5", **HOSTS["t5"])

    for _v, _preset in VLPET_VARIANTS.items():
        for _h, (_r, _rg, _s, _lr) in VLPET_HOSTS.items():
            named(f"vlpet_{_v}_{_h}", **dict(
                train, **HOSTS[_h], exp_name=f"vlpet_{_v}_{_h}", pet=_preset, vl_pet_down_dim=_r, vl_pet_heads=4,
                vl_pet_gate_dim=_rg if _v == "large" else None, vl_pet_gate_scale=_s, vl_pet_vpa_dim=96,
                learning_rate=_lr, use_tasks_prompts=True, seed=42))


__all__ = ["FOUR_TASKS", "HOSTS", "VLA_METHODS", "VLPET_HOSTS", "VLPET_VARIANTS", "VLT5_NO_DECAY", "VLT5_TRAIN",
           "VL_CONFIGS", "register"]

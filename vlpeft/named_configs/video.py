"""VL-Adapter's and VL-PET's released video-text experiments as named configs (spec §3.5–3.6, §4;
ylsung/VL_adapter ``VL-T5/scripts/video/{full_finetuning,single_adapter,single_lora,single_prompt}.sh`` and the
VL-PET ``scripts/video-text/VL-PET-{small,middleX,middleY,large}.sh``).

Every one trains the four video-text tasks jointly on VL-BART — TVQA and How2QA (multiple choice, the answer
``a{i}`` generated) and TVC and YC2C (captioning) — with ``--use_tasks_prompts`` (the prefix ``"tvqa: "`` … is
appended after the text by the video data, not put in front as for images), 64 CLIP-ViT frame features of width
512 per clip (``--feature ViT --n_boxes 64``; boxes all zero), batch 50 and the image-text scripts' trainer (AdamW
eps 1e-6, weight decay 0.01 by the VL-T5 no-decay rule, warm-up 0.1 then linear decay, clip 5, fp32, 5 beams) and
its loss: each sample's token mean, then the batch mean (``vl_loss_reduction="sample"``, ``video_model.py``).

- ``vladapter_video_<method>``: ``full_finetuning`` (lr 3e-5, every weight), ``single_adapter`` (r = d/8, all LNs),
  ``single_lora`` (r = 128 on q, v; all biases) and ``single_prompt`` (L = 40, mid 800), lr 3e-4 for the three;
  7 epochs; seed 9595 (the parser's default; the scripts pass none).
- ``vlpet_<variant>_video``: VL-PET-{small, middleX, middleY, large} with the README's video invocation
  (``20002 96 4 [96] 96 7e-4 20 42``): R = 96, 4 heads, r_g = 96 (large), decoder value adapter 96, lr 7e-4,
  20 epochs, seed 42.

``--downsample`` with 64 frames is the identity in the model (an 8 × 8 max-pool of an 8 × 8 grid); the frame
count is fixed by the data's resize to ``n_boxes`` (zero-pad below, adaptive max-pool above), so no model key
stands for it. The frames come from the video arrow files: no ``visual_features`` folder and no CLIP are needed.

The modules, trainer and host come from the image-text tables (``named_configs.vl_adapter``, plain data): only the
lr, epochs, data and seed are the video scripts' own.
"""

from __future__ import annotations

from typing import Any, Callable

from vlpeft.named_configs.vl_adapter import HOSTS, VLA_METHODS, VLPET_VARIANTS, VLT5_TRAIN

VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")
# what the video scripts change from the image-text trainer: ViT frames (f = 512), 64 boxes, batch 50 (inputs up to
# 600 tokens and targets up to 20: the video tasks' own limits, as the originals' video data hard-code them)
_VIDEO = dict(vis_feat_dim=512, n_boxes=64, batch_size=50, gen_max_length=20,
              use_tasks_prompts=True, visual_features="", vl_clip_model=None, vl_loss_reduction="sample")
# VL-Adapter's video scripts: method → lr (the methods' modules as in the image-text table)
VLA_VIDEO_LR = {"full_finetuning": 3e-5, "single_adapter": 3e-4, "single_lora": 3e-4, "single_prompt": 3e-4}
VLA_VIDEO_EPOCHS, VLPET_VIDEO_EPOCHS = 7, 20
VLPET_VIDEO = dict(vl_pet_down_dim=96, vl_pet_heads=4, vl_pet_vpa_dim=96, learning_rate=7e-4, seed=42)
VIDEO_CONFIGS = tuple([f"vladapter_video_{m}" for m in VLA_VIDEO_LR]
                      + [f"vlpet_{v}_video" for v in ("small", "middle_x", "middle_y", "large")])


def register(named: Callable[..., None], loss_names: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Register the 8 video configs through ``named(name, **cfg)`` (``vlpeft.config`` calls this); ``loss_names``
    fills a task → weight dict with the other loss keys at 0."""
    base = {**VLT5_TRAIN, **HOSTS["bart"], **_VIDEO, "datasets": list(VIDEO_TASKS),
            "loss_names": loss_names({t: 1 for t in VIDEO_TASKS})}
    for m, lr in VLA_VIDEO_LR.items():
        pet = VLA_METHODS[m][0]
        named(f"vladapter_video_{m}", **dict(base, **pet, exp_name=f"vladapter_video_{m}", learning_rate=lr,
                                             max_epoch=VLA_VIDEO_EPOCHS, seed=9595))
    for v, preset in VLPET_VARIANTS.items():
        named(f"vlpet_{v}_video", **dict(base, **VLPET_VIDEO, exp_name=f"vlpet_{v}_video", pet=preset,
                                          vl_pet_gate_dim=96 if v == "large" else None, vl_pet_gate_scale=None,
                                          max_epoch=VLPET_VIDEO_EPOCHS))


__all__ = ["VIDEO_CONFIGS", "VIDEO_TASKS", "VLA_VIDEO_LR", "VLPET_VIDEO", "register"]

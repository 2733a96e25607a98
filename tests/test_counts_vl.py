"""Parameter counts of VL-BART / VL-T5 with the zoo presets against spec §6.2 (VL-BART image-text), §6.3 (VL-T5
image-text) and §6.4 (VL-BART video-text): the trainable / all integers and the papers' reported (bold) percentages
to within 0.005 points. Built at base size from the architectures written as data (``VL_VARIANTS`` bart_base /
t5_base) on the meta device (no weights, no download), resized to the VL vocabulary (BART 50,265 + 200, T5 32,000 +
200 = 32,200), with the VL visual projector (f = 2048 image features, 512 video), through the real presets.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from vlpeft.backbones import BACKBONES
from vlpeft.pet import PRESETS, inject
from vlpeft.pet._base import Recipe
from vlpeft.pet.trainable import apply_trainable, count_parameters

TASKS = ["vqa", "gqa", "nlvr", "caption"]  # the four jointly trained tasks (Hyperformer task embeddings)
BART = dict(vl_config="bart_base", vl_vocab_size=50465)
T5 = dict(vl_config="t5_base", vl_vocab_size=32200)


def _build(host: dict, feat: int, recipe: Recipe | str, **opts):
    with torch.device("meta"):
        bb = BACKBONES.build("vl_bart" if host is BART else "vl_t5", dict(host, vis_feat_dim=feat, tokenizer=None))
        if isinstance(recipe, str):
            recipe = PRESETS.build(recipe, dict(opts, datasets=TASKS))
        report = inject(bb, recipe)
    apply_trainable(bb, report, recipe.base_policy)
    return count_parameters(bb)


def test_hosts():
    """§1.1: the VL backbones (resized vocabulary) without and with the visual projector."""
    t, a = _build(BART, 2048, "none")
    assert a == 139_574_016 + 1_582_848 and t == 1_582_848
    t, a = _build(BART, 512, "none")
    assert a == 139_574_016 + 403_200 and t == 403_200
    t, a = _build(T5, 2048, "none")
    assert a == 222_958_848 + 1_581_312 and t == 1_581_312


# (preset, options, trainable, all, reported % or None)
BART_IMAGE = [
    ("vl_pet_large", {}, 6_052_416, 145_606_464, 4.16),
    ("vl_pet_small", {}, 4_291_020, 143_845_068, 2.98),
    ("vl_pet_middle_x", {}, 4_281_804, 143_835_852, 2.98),
    ("vl_pet_middle_y", {}, 4_281_792, 143_835_840, 2.98),
    ("vl_adapter", {}, 6_081_600, 145_606_464, 4.18),
    ("hyperformer", {}, 8_579_088, 148_103_952, 5.79),
    ("lora", {}, 8_786_688, 148_234_752, 5.93),
    ("compacter", {}, 3_870_240, 143_395_104, 2.70),
    ("prompt", {}, 2_843_936, 142_417_952, 2.00),
    ("bitfit", {}, 1_708_800, 141_156_864, 1.21),
    ("vl_adapter_multiple", {}, 19_430_400, 158_955_264, None),
    ("vl_adapter_half_up", {}, 12_725_760, 152_250_624, None),
    ("vl_adapter_half_down", {}, 12_786_240, 152_311_104, None),
    ("lora_multiple", {}, 30_020_352, 169_468_416, None),
    ("compacter_multiple", {}, 10_584_960, 150_109_824, None),
    ("prompt_multiple", {}, 6_627_200, 146_201_216, None),
]
T5_IMAGE = [
    ("vl_pet_large", {}, 17_582_208, 240_521_856, 7.31),
    ("vl_pet_small", {}, 10_518_168, 233_457_816, 4.51),
    ("vl_pet_middle_x", {}, 10_499_736, 233_439_384, 4.50),
    ("vl_pet_middle_y", {}, 10_499_712, 233_439_360, 4.50),
    ("prompt", {}, 2_842_400, 225_801_248, 1.26),
]
BART_VIDEO = [
    ("vl_adapter", {}, 4_901_952, 144_426_816, 3.39),
    ("vl_pet_large", {}, 4_872_768, 144_426_816, None),
    ("vl_pet_small", {}, 3_111_372, 142_665_420, None),
    ("vl_pet_middle_x", {}, 3_102_156, 142_656_204, None),
    ("vl_pet_middle_y", {}, 3_102_144, 142_656_192, None),
    ("lora", {}, 7_607_040, 147_055_104, None),
    ("prompt", {}, 1_664_288, 141_238_304, None),
    ("hyperformer", {}, 7_399_440, 146_924_304, None),
    ("compacter", {}, 2_690_592, 142_215_456, None),
]
ROWS = ([("bart", 2048, *r) for r in BART_IMAGE] + [("t5", 2048, *r) for r in T5_IMAGE]
        + [("bart", 512, *r) for r in BART_VIDEO])


@pytest.mark.parametrize("host,feat,preset,opts,trainable,total,reported", ROWS,
                         ids=[f"{h}-f{f}-{p}" for h, f, p, *_ in ROWS])
def test_counts(host, feat, preset, opts, trainable, total, reported):
    t, a = _build(BART if host == "bart" else T5, feat, preset, **opts)
    assert (t, a) == (trainable, total)
    if reported is not None:
        assert abs(100.0 * t / a - reported) <= 0.005


def test_t5_vl_adapter_as_in_lst():
    """§6.3 "VL-Adapter" 7.98 % (quoted from LST): reduction 4 (r = 192) on all 60 sublayers, no norms."""
    recipe = replace(PRESETS.build("vl_adapter", {"adapter_reduction": 4}), base_policy="none")
    t, a = _build(T5, 2048, recipe)
    assert (t, a) == (19_333_632, 242_292_480) and abs(100.0 * t / a - 7.98) <= 0.005


@pytest.mark.parametrize("granularity,trainable,total,reported", [
    ("small", 2_964_204, 142_518_252, 2.08), ("middle_x", 2_954_988, 142_509_036, 2.07),
    ("middle_y", 2_954_976, 142_509_024, 2.07), ("large", 4_725_600, 144_279_648, 3.28)])
def test_table9_compacter_with_gates(granularity, trainable, total, reported):
    """VL-PET Table 9 "Compacter + G + LW" through its presets (the decoder value adapter is a compacter)."""
    t, a = _build(BART, 2048, f"vl_pet_compacter_{granularity}")
    assert (t, a) == (trainable, total) and abs(100.0 * t / a - reported) <= 0.005


# --- §6.4 from the video named configs (issue 19 item 3): the scripts' flags → our keys → these exact counts ---
VIDEO_NAMED = {
    "vladapter_video_single_adapter": (4_901_952, 144_426_816, 3.39),
    "vladapter_video_single_lora": (7_607_040, 147_055_104, None),
    "vladapter_video_single_prompt": (1_664_288, 141_238_304, None),
    "vladapter_video_full_finetuning": (139_574_016 + 403_200, 139_574_016 + 403_200, None),
    "vlpet_large_video": (4_872_768, 144_426_816, None),
    "vlpet_small_video": (3_111_372, 142_665_420, None),
    "vlpet_middle_x_video": (3_102_156, 142_656_204, None),
    "vlpet_middle_y_video": (3_102_144, 142_656_192, None),
}


def test_every_video_config_has_a_count():
    from vlpeft.named_configs.video import VIDEO_CONFIGS

    assert sorted(VIDEO_NAMED) == sorted(VIDEO_CONFIGS)


@pytest.mark.parametrize("name", sorted(VIDEO_NAMED))
def test_video_named_config_counts(name):
    from vlpeft.build import _inject
    from vlpeft.config import DEFAULTS, NAMED_CONFIGS

    cfg = dict(DEFAULTS, **NAMED_CONFIGS[name])
    assert cfg["vis_feat_dim"] == 512 and cfg["n_boxes"] == 64
    with torch.device("meta"):  # the config's own host and projector width; only the weights are left out
        bb = BACKBONES.build(cfg["backbone"], dict(cfg, vl_config="bart_base", vl_model="", vl_vocab_size=50465,
                                                   tokenizer=None))
        _inject(bb, cfg, None)
    t, a = count_parameters(bb)
    trainable, total, reported = VIDEO_NAMED[name]
    assert (t, a) == (trainable, total)
    if reported is not None:
        assert abs(100.0 * t / a - reported) <= 0.005

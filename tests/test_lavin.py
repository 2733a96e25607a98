"""The LaVIN backbone (``vlpeft/backbones/lavin.py``; issue 19 items 4 and 6).

LaVIN's trainable counts (DAS README: 3.8M / 4.2M / 4.6M / 5.0M for LaVIN-7B / DAS2 / DAS4 / DAS6), restated from the
shapes: ``adapter_proj`` 1024→128→4096 (659,584), the modality token 2×4096 (8,192), one CLIP router of width 8 per
ViT-L/14 block (24 × 20,490), one LLaMA router of width 8 per kept layer (81,930) and one skip router of width 32 per
skipped layer (278,562).
"""

from __future__ import annotations

import pytest
import torch

from vlpeft._protocol import LayerPlan
from vlpeft.backbones import BACKBONES
from vlpeft.backbones.lavin import lavin_answer_letter
from vlpeft.build import build_with_pet
from vlpeft.config import DEFAULTS
from vlpeft.pet import PRESETS, inject

# LaVIN-DAS's finetuning_sqa_7b.sh / search_sqa_7b.sh at LLaMA-7B + CLIP ViT-L/14 shapes (random, meta device)
LAVIN_7B = dict(backbone="lavin", plm_config="llama_7b", lavin_clip_model="vit_l14_random", pet="das_llama",
                das_llama_adapter_dim=8, das_llama_router=True, lavin_hidden_proj=128, lavin_visual_adapter="router",
                lavin_visual_adapter_dim=8, trainable="original")


def _trainable_7b(skip: list[int]) -> int:
    with torch.device("meta"):  # shapes only: nothing allocated
        bb, report, _ = build_with_pet({**DEFAULTS, **LAVIN_7B}, LayerPlan.of(skip))
    return sum(p.numel() for p in bb.parameters() if p.requires_grad)


@pytest.mark.parametrize("skip, exact, readme", [
    ([], 3_781_296, 3.8),
    ([23, 19], 4_174_560, 4.2),  # BoolQ's DAS2 list (finetuning_boolq_7b.sh comments)
    ([24, 27, 25, 22], 4_567_824, 4.6),  # ScienceQA DAS4 (evaluate_sqa_7b.sh)
    ([20, 13, 28, 8, 12, 17], 4_961_088, 5.0),  # BoolQ's DAS6 list
])
def test_lavin_7b_trainable_counts_match_the_das_readme(skip, exact, readme):
    n = _trainable_7b(skip)
    assert n == exact
    assert round(n / 1e6, 1) == readme


def test_answer_letter_extraction_as_lavin():
    assert lavin_answer_letter("The answer is B. Because ...") == "B"
    assert lavin_answer_letter("I think (C). maybe") == "C"  # the fallback pattern: first A-E followed by anything
    assert lavin_answer_letter("no letter here") == "FAILED"

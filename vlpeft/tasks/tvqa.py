"""TVQA (VALUE): 5-option multiple-choice QA on TV-show clips, answered by generating ``"a<k>"``; accuracy by exact
match; the test dump ``tvqa_test_predictions_<run>.json`` (``{question_id: k}``). See ``vlpeft.tasks._video``."""

from __future__ import annotations

from vlpeft.tasks._base import register_task
from vlpeft.tasks._video import QA_SCORER, VideoQATask


@register_task
class TVQATask(VideoQATask):
    """TVQA (VL-BART / VL-T5 on CLIP-ViT frames; ``multitask_video.py``'s prefix ``"tvqa: "`` after the text)."""
    test_backbone = "test_vl_bart_video"

    name = "tvqa"
    prompt = "tvqa: "
    score_key = "tvqa_accuracy"
    official = QA_SCORER
    dump_file = "tvqa_test_predictions.json"


__all__ = ["TVQATask"]

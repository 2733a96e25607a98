"""YC2C (VALUE, YouCook2 captioning): captions of cooking clips from frames and subtitles; CIDEr-D, BLEU-4, METEOR,
ROUGE-L (``yc2c_cider`` …); the test dump ``yc2c_test_predictions_<run>.jsonl`` (no time span). See
``vlpeft.tasks._video``."""

from __future__ import annotations

from vlpeft.tasks._base import register_task
from vlpeft.tasks._video import CAPTION_SCORER, VideoCaptionTask


@register_task
class YC2CTask(VideoCaptionTask):
    """YC2C (``multitask_video.py``'s prefix ``"yc2c: "`` after the text)."""
    test_backbone = "test_vl_bart_video"

    name = "yc2c"
    prompt = "yc2c: "
    score_key = "yc2c_cider"
    uses_ts = False
    official = CAPTION_SCORER
    dump_file = "yc2c_test_predictions.jsonl"


__all__ = ["YC2CTask"]

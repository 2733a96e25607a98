"""TVC (VALUE): captioning TV-show moments from frames, subtitles and the moment's time span; CIDEr-D, BLEU-4,
METEOR, ROUGE-L (``tvc_cider`` …); the test dump ``tvc_test_predictions_<run>.jsonl``. See
``vlpeft.tasks._video``."""

from __future__ import annotations

from vlpeft.tasks._base import register_task
from vlpeft.tasks._video import CAPTION_SCORER, VideoCaptionTask


@register_task
class TVCTask(VideoCaptionTask):
    """TVC (``multitask_video.py``'s prefix ``"tvc: "`` after the text)."""
    test_backbone = "test_vl_bart_video"

    name = "tvc"
    prompt = "tvc: "
    score_key = "tvc_cider"
    official = CAPTION_SCORER
    dump_file = "tvc_test_predictions.jsonl"


__all__ = ["TVCTask"]

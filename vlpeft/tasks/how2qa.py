"""How2QA (VALUE): 4-option multiple-choice QA on instructional clips, answered by generating ``"a<k>"``; accuracy by
exact match; the test dump ``how2qa_test_public_predictions_<run>.json`` (``{question_id: k}``). See
``vlpeft.tasks._video``."""

from __future__ import annotations

from vlpeft.tasks._base import register_task
from vlpeft.tasks._video import QA_SCORER, VideoQATask


@register_task
class How2QATask(VideoQATask):
    """How2QA (``multitask_video.py``'s prefix ``"how2qa: "`` after the text)."""
    test_backbone = "test_vl_bart_video"

    name = "how2qa"
    prompt = "how2qa: "
    score_key = "how2qa_accuracy"
    official = QA_SCORER
    dump_file = "how2qa_test_public_predictions.json"


__all__ = ["How2QATask"]

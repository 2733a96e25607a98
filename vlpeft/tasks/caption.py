"""COCO captioning, generate mode only (VL-BART / VL-T5, ViT + GPT-2): ``lm_loss`` on the caption; validation and
test decode one caption per image and score the split with CIDEr-D, BLEU-4, ROUGE-L (METEOR with Java);
``caption_result_<run>.json`` in the COCO results format."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from torch import nn

from vlpeft.tasks._base import Task, register_task, value_of
from vlpeft.tasks.dumps import write_caption_results
from vlpeft.tasks.generative import coco_image_id
from vlpeft.tasks.metrics import CaptionScores, Scalar


@register_task
class CaptionTask(Task):
    """Captioning (the backbone's LM head; a classifying backbone is refused for lacking ``generate``)."""
    test_backbone = "test_vit_gpt2"

    name = "caption"
    modes = ("generate",)
    needs = frozenset({"generate"})
    single_pass = False
    score_key = "caption_cider"
    api_role = "caption"
    list_fields = ("references", "image_id")
    prompt = "caption: "  # the input is the prefix alone (caption_clip_data.py)
    multitask_ratio = (50, 60)  # multitask.py: caption batch = int(bs * 50 / 60)
    eval_per_image = True  # val / test: one item per image carrying every reference, no target

    def make_metrics(self) -> dict[str, nn.Module]:
        return {"caption_loss": Scalar(), "caption": CaptionScores()}

    def update_metrics(self, metrics, out: Mapping[str, Any], batch: Mapping[str, Any]) -> None:
        if "caption_loss" in out:
            metrics["caption_loss"].update(out["caption_loss"])
        if "caption_generated" in out and "references" in batch:
            metrics["caption"].update(batch["image_id"], out["caption_generated"], batch["references"])

    def selection(self, values: Mapping[str, Any]) -> list[tuple[str, float]]:
        v = value_of(values, "caption_cider")
        return [] if v is None else [("caption_cider", v)]

    def predictions(self, out: Mapping[str, Any], batch: Mapping[str, Any]) -> list[dict]:
        """``{image_id, caption}`` (COCO ids as ints)."""
        gen = out.get("caption_generated")
        if gen is None:
            return []
        return [{"image_id": coco_image_id(i), "caption": c} for i, c in zip(batch["image_id"], gen)]

    def write_dump(self, rows: Sequence[Mapping[str, Any]], out_dir: Path, run_name: str, vocab,
                   expected: Any = None, **_: Any) -> Path:
        return write_caption_results([r["image_id"] for r in rows], [r["caption"] for r in rows],
                                     Path(out_dir) / f"caption_result_{run_name}.json", expected_ids=expected)


__all__ = ["CaptionTask"]

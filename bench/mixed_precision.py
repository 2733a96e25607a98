"""Mixed-precision parity: ViLT, METER and a LLaMA stack, bf16 autocast against fp32 on the same weights (issue 21).

The models are ``bench/das_inference.py``'s (same options: ``--variant``, ``--meter-variant``, ``--llama-shape``,
``--llama-layers``, ...), with their DAS adapters, in fp32; every parameter is then moved off its init (a small
seeded perturbation: zero-init up-projections would make the adapters identity and hide their rounding). Each model
runs the same batch twice per skip set — in fp32, and under ``torch.autocast(<device>, dtype=--dtype)``, which is what
Lightning's ``precision=bf16-mixed`` / ``16-mixed`` does — with nothing skipped and with ``--skip-k`` units skipped
(the skip adapters run then). Per output it prints the relative L2 error ‖lp − fp32‖ / ‖fp32‖, the largest absolute
difference, the mean cosine similarity of the rows and, for ViLT's VQA logits, how often the top-1 answer agrees.

    python bench/mixed_precision.py [--model vilt,meter,llama] [--batch 8] [--dtype bf16] [--device cuda] [--json PATH]
    python bench/mixed_precision.py --variant test_vilt_small --meter-variant test_meter_tiny --llama-shape smollm2 \\
        --llama-layers 2 --llama-text-len 16 --batch 2          # CPU smoke (seconds)

It exits 1 only on a wrong result: a non-finite output, or a relative L2 error above ``--tol`` (default 0.05; bf16
keeps 8 significant bits, so a sound forward lands near 1e-2 and a broken cast far above).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from das_inference import BUILDERS, build_parser, skip_set  # noqa: E402
from vlpeft._io import write_json_atomic  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def perturb(model: torch.nn.Module, seed: int = 0, scale: float = 0.02) -> None:
    """Move every floating parameter off its init by a seeded N(0, scale²) step (the same on every device)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.is_floating_point():
                p.add_((scale * torch.randn(p.shape, generator=g)).to(p.device, p.dtype))


def compare(ref: torch.Tensor, lp: torch.Tensor, top1: bool) -> dict[str, Any]:
    ref, lp = ref.detach().float().cpu(), lp.detach().float().cpu()
    rows_ref, rows_lp = ref.reshape(ref.shape[0], -1), lp.reshape(lp.shape[0], -1)
    out = {"rel_l2": float((lp - ref).norm() / ref.norm().clamp_min(1e-30)),
           "max_abs": float((lp - ref).abs().max()),
           "cosine": float(torch.nn.functional.cosine_similarity(rows_lp, rows_ref, dim=1).mean()),
           "finite": bool(torch.isfinite(lp).all() and torch.isfinite(ref).all())}
    if top1:
        out["top1_agree"] = float((rows_lp.argmax(1) == rows_ref.argmax(1)).float().mean())
    return out


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    ap.description = __doc__.split("\n\n")[0]
    ap.set_defaults(model="vilt,meter,llama", llama_layers=4)
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES), help="the autocast dtype")
    ap.add_argument("--skip-k", type=int, default=2, help="also compare with this many units skipped (0: only k=0)")
    ap.add_argument("--tol", type=float, default=0.05, help="largest relative L2 error that counts as parity")
    args = ap.parse_args(argv)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    bad = [m for m in models if m not in BUILDERS]
    if bad or not models:
        ap.error(f"--model {args.model!r}: choose from {sorted(BUILDERS)} (comma-separated)")
    if args.llama_dtype != "fp32":
        ap.error("--llama-dtype: the parity reference is fp32; leave it at fp32 (autocast gives the low precision)")
    try:
        args.batch = int(args.batch)
    except ValueError:
        ap.error(f"--batch {args.batch!r}: one batch size")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype]
    print(f"mixed-precision parity: autocast {args.dtype} vs fp32, same weights (perturbed off init), batch "
          f"{args.batch}, device {device}")
    print(f"| model | k | rel L2 | max abs | cosine | top-1 agree | tol | ok |\n|---|---|---|---|---|---|---|---|")
    results, wrong = {}, []
    for name in models:
        torch.manual_seed(0)
        bench = BUILDERS[name](args, device)
        perturb(bench.model, seed=1)  # the backbone, its adapters and the head
        L = len(bench.units)
        for k in sorted({0, args.skip_k} if 0 < args.skip_k < L else {0}):
            with torch.no_grad():
                ref = bench.run(skip_set(k, L))
                with torch.autocast(device.type, dtype=dtype):
                    lp = bench.run(skip_set(k, L))
            r = compare(ref, lp, top1=name == "vilt")
            ok = r["finite"] and r["rel_l2"] <= args.tol
            if not ok:
                wrong.append(f"{name} k={k}: rel L2 {r['rel_l2']:.3g} (tol {args.tol}), finite={r['finite']}")
            results[f"{name}@k={k}"] = dict(r, model=name, k=k, describe=bench.describe, ok=ok)
            agree = f"{r['top1_agree']:.3f}" if "top1_agree" in r else "-"
            print(f"| {name} | {k} | {r['rel_l2']:.2e} | {r['max_abs']:.2e} | {r['cosine']:.5f} | {agree} | "
                  f"{args.tol} | {'yes' if ok else 'NO'} |")
        del bench
        if device.type == "cuda":
            torch.cuda.empty_cache()
    print("\nWRONG RESULT:\n  " + "\n  ".join(wrong) if wrong else "\nparity OK (finite; every rel L2 within tol)")
    if args.json:
        write_json_atomic(args.json, {"results": results, "dtype": args.dtype, "device": str(device),
                                      "batch": args.batch, "tol": args.tol, "wrong": wrong, "args": vars(args)})
        print(f"wrote {args.json}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())

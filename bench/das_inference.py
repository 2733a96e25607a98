"""DAS inference throughput: ViLT VQA forward with 0, 1, 2, 4, 6 skipped blocks.

Random weights (the speed does not depend on them), eval mode, no_grad, batch 8, 40 text tokens, one image
per sample at 384×384 (``--image-hw 384 576`` for a pixelbert-shaped input). All k are measured in one process,
round-robin (one forward of each k per round, after warm-up rounds). Per round, the speed-up of k over k = 0 is
t(0)/t(k) in CPU time (``time.process_time``: steadier than wall time on a shared machine) and in wall time; the
report gives each as median [min, max] over the rounds, next to the ideal L/(L−k) (L read from the model) and the
FLOPs ratio F(0)/F(k) (``vlpeft.computation.count_flops``, one forward per k: the speed-up to expect). A
skipped block is replaced by its skip adapter, so the measured speed-up stays a little below the ideal
(embeddings, patch projection, the skip adapters, pooler and head remain).

    python bench/das_inference.py [--variant vit_base_patch32_384] [--batch 8] [--repeats 5] [--json PATH]

Timing never fails the bench. It exits 1 only on a wrong result: non-finite outputs, an output of the wrong
shape, a k > 0 whose output equals k = 0's (the skip did not take effect), or a k whose output changes between
rounds (beyond float tolerance) — the same input must give the same answer.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft._io import write_json_atomic  # noqa: E402
from vlpeft.backbones.vilt import VIT_VARIANTS, build_vilt  # noqa: E402
from vlpeft.computation import count_flops  # noqa: E402


def build_model(variant: str, text_len: int, labels: int, device: torch.device) -> tuple[nn.Module, nn.Module]:
    hp = VIT_VARIANTS[variant]()
    cfg = dict(vit=variant, hidden_size=hp["embed_dim"], num_heads=hp["num_heads"], num_layers=hp["depth"],
               mlp_ratio=4, drop_rate=0.1, vocab_size=30522, max_text_len=text_len, max_image_len=-1,
               das_adapter_dim=96, das_skip_adapter_dim=192)
    vilt = build_vilt(cfg).to(device).eval()
    d = vilt.hidden_size
    head = nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, labels)).to(device).eval()
    return vilt, head


def skip_set(k: int, num_layers: int) -> list[int]:
    """k blocks spread over the depth (which ones does not change the cost)."""
    return sorted({round(i * num_layers / k) for i in range(k)}) if k else []


def make_batch(b: int, text_len: int, hw: tuple[int, int], device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    return {
        "text_ids": torch.randint(1000, 30522, (b, text_len), generator=g).to(device),
        "text_masks": torch.ones(b, text_len, dtype=torch.long, device=device),
        "image": torch.randn(b, 3, *hw, generator=g).to(device),
        "image_mask": torch.ones(b, *hw, dtype=torch.bool, device=device),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--variant", default="vit_base_patch32_384", choices=sorted(VIT_VARIANTS))
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--text-len", type=int, default=40)
    ap.add_argument("--image-hw", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="input size (default: the variant's image size, square)")
    ap.add_argument("--skips", default="0,1,2,4,6", help="comma-separated numbers of skipped blocks")
    ap.add_argument("--labels", type=int, default=3129)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    torch.manual_seed(0)
    vilt, head = build_model(args.variant, args.text_len, args.labels, device)
    L = vilt.num_layers
    hw = tuple(args.image_hw) if args.image_hw else tuple(VIT_VARIANTS[args.variant]()["img_size"] for _ in range(2))
    ks = sorted({int(k) for k in args.skips.split(",") if k.strip()})
    dropped = [k for k in ks if not 0 <= k < L]
    ks = [k for k in ks if 0 <= k < L]
    if dropped:
        print(f"note: k={dropped} not measurable with {L} layers; measuring k={ks}")
    if 0 not in ks:
        ks = [0] + ks
    batch = make_batch(args.batch, args.text_len, hw, device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(k: int) -> tuple[float, float, torch.Tensor]:
        sync()
        c, t = time.process_time(), time.perf_counter()
        with torch.no_grad():
            out = head(vilt.infer(batch, skip=skip_set(k, L))["cls_feats"])
        sync()
        return time.process_time() - c, time.perf_counter() - t, out.detach().float().cpu()

    flops = {k: count_flops(lambda k=k: head(vilt.infer(batch, skip=skip_set(k, L))["cls_feats"])) for k in ks}
    cpu: dict[int, list[float]] = {k: [] for k in ks}
    wall: dict[int, list[float]] = {k: [] for k in ks}
    first: dict[int, torch.Tensor] = {}
    wrong: list[str] = []
    for r in range(args.warmup + args.repeats):
        for k in ks:  # round-robin: slow drifts hit every k alike
            dc, dw, out = run(k)
            if k not in first:
                first[k] = out
                if out.shape != (args.batch, args.labels):
                    wrong.append(f"k={k}: output shape {tuple(out.shape)}, expected {(args.batch, args.labels)}")
                if not torch.isfinite(out).all():
                    wrong.append(f"k={k}: non-finite outputs")
            elif not torch.allclose(out, first[k], rtol=1e-4, atol=1e-5):
                wrong.append(f"k={k}: round {r} output differs from round 0 by {(out - first[k]).abs().max():.3g}")
            if r >= args.warmup:
                cpu[k].append(dc)
                wall[k].append(dw)
    for k in ks:
        if k > 0 and torch.equal(first[k], first[0]):
            wrong.append(f"k={k}: output equals k=0's — the skip set {skip_set(k, L)} had no effect")

    def spread(v: list[float]) -> dict:
        return {"median": statistics.median(v), "min": min(v), "max": max(v)}

    ideal = {k: L / (L - k) for k in ks}
    speed_cpu = {k: spread([a / b for a, b in zip(cpu[0], cpu[k])]) for k in ks}
    speed_wall = {k: spread([a / b for a, b in zip(wall[0], wall[k])]) for k in ks}
    med_wall = {k: statistics.median(wall[k]) for k in ks}
    med_cpu = {k: statistics.median(cpu[k]) for k in ks}
    sps = {k: args.batch / med_wall[k] for k in ks}
    f = lambda s: f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"

    print(f"ViLT DAS inference: {args.variant} (L={L}, d={vilt.hidden_size}), batch {args.batch}, "
          f"{args.text_len} text tokens, image {hw[0]}x{hw[1]}, device {device}, threads {args.threads}, "
          f"{args.repeats} rounds after {args.warmup} warm-up rounds; speed-ups are median [min, max] over rounds")
    print(f"| skipped k | blocks skipped | median CPU s/batch | median wall s/batch | samples/s (wall) | "
          f"speed-up (CPU) | speed-up (wall) | ideal {L}/({L}-k) | FLOPs ratio F(0)/F(k) | CPU speed-up / ideal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for k in ks:
        print(f"| {k} | {skip_set(k, L)} | {med_cpu[k]:.4f} | {med_wall[k]:.4f} | {sps[k]:.2f} | {f(speed_cpu[k])} | "
              f"{f(speed_wall[k])} | {ideal[k]:.3f} | {flops[0] / flops[k]:.3f} | "
              f"{speed_cpu[k]['median'] / ideal[k]:.3f} |")
    status = 1 if wrong else 0
    print("WRONG RESULT:\n  " + "\n  ".join(wrong) if wrong else
          "outputs OK (finite, right shape, stable over rounds, every k > 0 differs from k = 0)")
    if args.json:
        write_json_atomic(args.json, {
            "speedup_cpu": {str(k): v for k, v in speed_cpu.items()},
            "speedup_wall": {str(k): v for k, v in speed_wall.items()},
            "ideal": {str(k): round(v, 4) for k, v in ideal.items()},
            "flops": {str(k): v for k, v in flops.items()},
            "flops_ratio": {str(k): flops[0] / v for k, v in flops.items()},
            "samples_per_s": {str(k): round(v, 3) for k, v in sps.items()},
            "cpu_s": {str(k): [round(t, 5) for t in v] for k, v in cpu.items()},
            "wall_s": {str(k): [round(t, 5) for t in v] for k, v in wall.items()},
            "skip_sets": {str(k): skip_set(k, L) for k in ks},
            "variant": args.variant, "num_layers": L, "hidden_size": vilt.hidden_size, "batch": args.batch,
            "text_len": args.text_len, "image_hw": list(hw), "device": str(device), "threads": args.threads,
            "warmup": args.warmup, "repeats": args.repeats, "wrong": wrong, "passed": status == 0,
        })
        print(f"wrote {args.json}")
    return status


if __name__ == "__main__":
    sys.exit(main())

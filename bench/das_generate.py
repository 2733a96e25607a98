"""DAS generation throughput: VL-BART / VL-T5 ``generate`` with k skipped decoder layers (k = 0, 1, 2, 3).

Issue 21 item 1: a skipped decoder layer used to turn the KV cache off, so generation got slower the more layers DAS
skipped. Now a skipped layer holds a tiny cache entry and the cache stays on; this bench checks that skipping k
decoder layers speeds generation up by close to what the FLOPs promise.

Models (``--model``, comma-separated): ``bart`` (VL-BART on BART-base's shape, 6 + 6 layers, d 768) and ``t5``
(VL-T5 on T5-base's shape, 12 + 12 layers, d 768); random weights, DAS adapters (``pet=das``: b 96, skip b 192, every
adapter weight moved off its init so a skip is not an identity), ``--text-len`` text tokens plus ``--vis`` region
features of width 2048 per sample. Each k skips decoder layers 0 … k−1 (layer 0 is the one HF reads the cache length
from, and T5's block 0 holds the relative position bias: the hardest case for the cache bookkeeping).

For each model and beam count (``--beams``, default greedy and 5 beams), all k run round-robin per round after warm-up
rounds; ``--new-tokens`` tokens are generated every time (``min_new_tokens`` keeps EOS out, so every k does the same
number of steps). Per round the speed-up of k over k = 0 (the peer, measured in the same round) is t(0)/t(k), in CPU
time (``time.process_time``: steadier on a shared machine) and in wall time; the report gives median [min, max] over
the rounds next to the FLOPs ratio F(0)/F(k) of the whole ``generate`` call (``vlpeft.computation.count_flops``:
encoder, decoder steps, skip adapters and LM head), and ``speed-up / FLOPs`` = the CPU median over that ratio
(goal ≥ 0.9 for every k). ``cache-free s`` is one timing of the old path (``use_cache=False``) for scale.

    python bench/das_generate.py [--model bart,t5] [--beams 1,5] [--ks 0,1,2,3] [--batch 4] [--repeats 5]
    python bench/das_generate.py --quick    # batch 2, 8 text tokens, 8 regions, 10 new tokens, 3 rounds, no warm-up

Timing never fails the bench. It exits 1 only on a wrong result: cached ids that differ from the cache-free
reference (the whole prefix recomputed at every step) for the same k, or ids that change between rounds.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft._io import write_json_atomic  # noqa: E402
from vlpeft.backbones._protocol import LayerPlan  # noqa: E402
from vlpeft.computation import count_flops  # noqa: E402

MODELS = {"bart": ("bart", "bart_base"), "t5": ("t5", "t5_base")}


def build(model: str, device: str) -> Any:
    from vlpeft.backbones.vl_seq2seq import build_vl_seq2seq
    from vlpeft.pet import PRESETS, inject

    family, variant = MODELS[model]
    torch.manual_seed(0)
    bb = build_vl_seq2seq({"vl_config": variant}, family)
    inject(bb, PRESETS.build("das", {"das_adapter_dim": 96, "das_skip_adapter_dim": 192}))
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # zero-init up-projections would make every skip adapter an identity
        for n, p in bb.named_parameters():
            if "adapter" in n:
                p.add_(0.02 * torch.randn(p.shape, generator=g))
    return bb.to(device).eval()


def make_batch(args, device: str) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, n, v = args.batch, args.text_len, args.vis
    xy = torch.rand(b, v, 2, generator=g) * 0.5
    wh = torch.rand(b, v, 2, generator=g) * 0.5
    return {"text_ids": torch.randint(10, 30000, (b, n), generator=g).to(device),
            "text_masks": torch.ones(b, n, dtype=torch.long, device=device),
            "vis_feats": torch.randn(b, v, 2048, generator=g).to(device),
            "vis_pos": torch.cat([xy, xy + wh], dim=-1).to(device)}


def spread(v: list[float]) -> dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def measure(bb: Any, batch: dict, beams: int, args, device: str) -> tuple[dict[str, Any], list[str]]:
    first_dec = bb.n_encoder
    n_dec = bb.candidates().count - first_dec
    ks = [k for k in args.ks if k <= n_dec]
    plans = {k: LayerPlan.of(range(first_dec, first_dec + k)) for k in ks}
    bb.seq2seq.generation_config.min_new_tokens = args.new_tokens  # every k does the same number of steps
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    errors: list[str] = []

    def gen(k: int, use_cache: bool = True) -> tuple[float, float, torch.Tensor]:
        sync()
        c, t = time.process_time(), time.perf_counter()
        with torch.no_grad():
            ids = bb.generate_ids(batch, plans[k], num_beams=beams, max_new_tokens=args.new_tokens,
                                  use_cache=use_cache)
        sync()
        return time.process_time() - c, time.perf_counter() - t, ids.cpu()

    flops = {k: count_flops(lambda k=k: bb.generate_ids(batch, plans[k], num_beams=beams,
                                                        max_new_tokens=args.new_tokens)) for k in ks}
    ref, nocache_s = {}, {}
    for k in ks:
        _, nocache_s[k], ref[k] = gen(k, use_cache=False)
    for _ in range(args.warmup):
        for k in ks:
            gen(k)
    cpu = {k: [] for k in ks}
    wall = {k: [] for k in ks}
    for r in range(args.repeats):
        for k in ks:
            c, w, ids = gen(k)
            cpu[k].append(c)
            wall[k].append(w)
            if not torch.equal(ids, ref[k]):
                errors.append(f"{beams} beams, k={k}, round {r}: cached ids differ from the cache-free reference")
    res = {"beams": beams, "ks": ks, "skipped": {k: [c - first_dec for c in sorted(plans[k].skip)] for k in ks},
           "flops": flops, "flops_ratio": {k: flops[0] / flops[k] for k in ks},
           "cpu_s": cpu, "wall_s": wall, "nocache_wall_s": nocache_s,
           "speedup_cpu": {k: spread([a / b for a, b in zip(cpu[0], cpu[k])]) for k in ks},
           "speedup_wall": {k: spread([a / b for a, b in zip(wall[0], wall[k])]) for k in ks},
           "new_tokens": int(ref[0].shape[1])}
    return res, errors


def print_table(name: str, res: dict[str, Any]) -> None:
    f = lambda s: f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"  # noqa: E731
    print(f"\n{name}, {res['beams']} beam(s), {res['new_tokens']} ids per sample (decoder start included)")
    print("| k | decoder layers skipped | median wall s (k) | median wall s (k=0) | speed-up CPU | speed-up wall | "
          "FLOPs ratio F(0)/F(k) | speed-up / FLOPs | cache-free wall s (1 run) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in res["ks"]:
        sp = res["speedup_cpu"][k]
        print(f"| {k} | {res['skipped'][k]} | {statistics.median(res['wall_s'][k]):.4f} | "
              f"{statistics.median(res['wall_s'][0]):.4f} | {f(sp)} | {f(res['speedup_wall'][k])} | "
              f"{res['flops_ratio'][k]:.3f} | {sp['median'] / res['flops_ratio'][k]:.3f} | "
              f"{res['nocache_wall_s'][k]:.3f} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bart,t5")
    ap.add_argument("--beams", default="1,5")
    ap.add_argument("--ks", default="0,1,2,3")
    ap.add_argument("--batch", type=int, default=None, help="default 4")
    ap.add_argument("--text-len", type=int, default=None, help="default 20")
    ap.add_argument("--vis", type=int, default=None, help="default 36")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 20")
    ap.add_argument("--repeats", type=int, default=None, help="default 5")
    ap.add_argument("--warmup", type=int, default=None, help="default 1")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="batch 2, 8 text tokens, 8 regions, 10 new tokens, 3 rounds")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    full = dict(batch=4, text_len=20, vis=36, new_tokens=20, repeats=5, warmup=1)
    quick = dict(batch=2, text_len=8, vis=8, new_tokens=10, repeats=3, warmup=0)
    for key, value in (quick if args.quick else full).items():  # explicit options win over --quick
        if getattr(args, key) is None:
            setattr(args, key, value)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"--model {bad} not in {sorted(MODELS)}")
    args.ks = sorted({int(k) for k in args.ks.split(",")} | {0})
    beams = [int(b) for b in args.beams.split(",")]
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, batch {args.batch}, {args.text_len} text "
          f"tokens + {args.vis} regions, {args.new_tokens} new tokens, {args.repeats} rounds after {args.warmup} "
          f"warm-up; speed-ups are median [min, max] over rounds of t(k=0)/t(k), k=0 measured in the same round")
    out: dict[str, Any] = {"args": vars(args), "results": {}}
    errors: list[str] = []
    for m in models:
        bb = build(m, args.device)
        batch = make_batch(args, args.device)
        for nb in beams:
            res, errs = measure(bb, batch, nb, args, args.device)
            out["results"][f"{m}/beams{nb}"] = res
            errors += [f"{m}: {e}" for e in errs]
            print_table(f"VL-{m.upper()}", res)
        del bb
    if args.json:
        write_json_atomic(args.json, out)
    for e in errors:
        print("WRONG:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

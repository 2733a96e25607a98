"""DAS inference throughput: ViLT, METER and LLaMA forwards with k skipped units (k = 0, 1, 2, 4, 6 by default).

Models (``--model``, comma-separated to measure several in one run):

- ``vilt``: ViLT VQA (``--variant``, default ViT-B/32 at 384), DAS adapters b = 96 / skip adapters b = 192, the VQA
  head; 40 text tokens, one image per sample; candidates = the 12 ViT blocks.
- ``meter``: METER (``--meter-variant``, default CLIP-B/16 at 288 + RoBERTa-base + 6 + 6 co-attention layers, random
  weights) with DAS-METER's adapters (b = 96, skip b = 288); 50 text tokens; candidates = the 12 co-attention layers
  (0–5 text stream, 6–11 image stream).
- ``llama``: a LLaMA of ``--llama-shape`` (``7b``: LLaMA-7B's width 4096 / FFN 11008 / 32 heads at ``--llama-layers``
  depth, default 8 of 32; ``smollm2``: SmolLM2-135M's shape, 30 layers; random weights) with LaVIN-DAS's adapters
  (``pet=das_llama``: in-block b = 8, skip b = 32) on the text-only ``plm`` backbone; ``--llama-text-len`` tokens
  (default 128); candidates = the decoder layers.

Random weights (the speed does not depend on them), eval mode, no_grad. All k of a model are measured in one
process, round-robin (one forward of each k per round, after warm-up rounds). Per round, the speed-up of k over
k = 0 is t(0)/t(k) in CPU time (``time.process_time``: steadier than wall time on a shared machine) and in wall time
(the figure that counts on a GPU); the report gives each as median [min, max] over the rounds, next to

- ``ideal L/(L−k)``: the candidate stack alone (what the DAS README compares LLaMA against);
- ``ideal (model)`` = F(0) / (F(0) − Σ F(unit)) over the skipped units, with F(unit) counted inside the full forward:
  the whole-model speed-up if a skipped unit cost nothing and time followed FLOPs (encoders, embeddings, heads stay);
- the FLOPs ratio F(0)/F(k) (``vlpeft.computation.count_flops``): the skip adapters' FLOPs included, so it sits a
  little below ``ideal (model)``.

``speed-up / ideal`` = measured median / ``ideal (model)`` (the issue's goal: ≥ 0.95 at the originals' batch sizes).

    python bench/das_inference.py [--model vilt,meter,llama] [--batch 2,8] [--repeats 5] [--device cpu] [--json PATH]

``--batch`` takes several sizes (comma-separated): each model × batch is measured on its own (k round-robin inside),
and a closing summary gives, per backbone × batch × k, ``ideal (model)``, the measured speed-up (median [min, max]),
their ratio and the goal (``--goal``, 0.95). On the CPU the bench keeps freed memory in the process (``--malloc
keep``, the default: glibc ``mallopt``, as jemalloc / tcmalloc behave); with glibc's default every forward's large
activations come back as fresh pages, a fixed page-fault cost per forward that DAS skipping cannot remove.

Timing never fails the bench. It exits 1 only on a wrong result: non-finite outputs, an output of the wrong
shape, a k > 0 whose output equals k = 0's (the skip did not take effect), or a k whose output changes between
rounds (beyond float tolerance) — the same input must give the same answer.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft._io import write_json_atomic  # noqa: E402
from vlpeft.backbones import LayerPlan  # noqa: E402
from vlpeft.backbones.vilt import VIT_VARIANTS, build_vilt  # noqa: E402
from vlpeft.computation import _extra_formulas, count_flops  # noqa: E402

LLAMA_SHAPES = {
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32,
               vocab_size=32000, rms_norm_eps=1e-6, num_hidden_layers=32),
    "smollm2": dict(hidden_size=576, intermediate_size=1536, num_attention_heads=9, num_key_value_heads=3,
                    vocab_size=49152, rms_norm_eps=1e-5, num_hidden_layers=30),
}


@dataclass
class Bench:
    """One model under test: ``run(skip)`` gives its output for a skip set; ``units`` are its candidate modules."""

    name: str
    describe: str
    run: Callable[[list[int]], torch.Tensor]
    units: list[nn.Module]
    out_shape: tuple[int, ...]
    model: nn.Module | None = None  # every module ``run`` uses (bench/mixed_precision.py perturbs them all)


def build_vilt_bench(args, device) -> Bench:
    variant, text_len, labels = args.variant, args.text_len, args.labels
    hp = VIT_VARIANTS[variant]
    cfg = dict(vit=variant, patch_size=hp["patch_size"], hidden_size=hp["embed_dim"], num_heads=hp["num_heads"], num_layers=hp["depth"],
               mlp_ratio=4, drop_rate=0.1, vocab_size=30522, max_text_len=text_len, max_image_len=-1)
    from vlpeft.pet import PRESETS, inject

    vilt = build_vilt(cfg)  # the bare backbone: DAS's adapters come through the one injection path
    inject(vilt, PRESETS.build("das", {"das_adapter_dim": 96, "das_skip_adapter_dim": 192}))
    vilt = vilt.to(device).eval()
    d = vilt.hidden_size
    head = nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, labels)).to(device).eval()
    hw = tuple(args.image_hw) if args.image_hw else (hp["img_size"], hp["img_size"])
    g = torch.Generator().manual_seed(0)
    b = args.batch
    batch = {"text_ids": torch.randint(1000, 30522, (b, text_len), generator=g).to(device),
             "text_masks": torch.ones(b, text_len, dtype=torch.long, device=device),
             "image": torch.randn(b, 3, *hw, generator=g).to(device),
             "image_mask": torch.ones(b, *hw, dtype=torch.bool, device=device),
             "image_sizes": [hw] * b}  # the collate's real sizes: the patch extents come from host data
    units = [vilt.candidate_module(i) for i in range(vilt.num_layers)]
    return Bench("vilt", f"ViLT {variant} (L={vilt.num_layers}, d={d}), {text_len} text tokens, image {hw[0]}x{hw[1]}",
                 lambda skip: head(vilt(batch, LayerPlan.of(skip))["cls_feats"]), units, (b, labels),
                 nn.ModuleList([vilt, head]))


def build_meter_bench(args, device) -> Bench:
    from vlpeft.backbones.meter import METER_VARIANTS, build_meter
    from vlpeft.pet import PRESETS, inject

    cfg = dict(METER_VARIANTS[args.meter_variant], token4classifier=True)
    model = build_meter(cfg)
    inject(model, PRESETS.build("das", {"das_adapter_dim": 96, "das_skip_adapter_dim": 288}))
    model = model.to(device).eval()
    size, text_len = int(cfg["image_size"]), int(cfg["max_text_len"])
    g = torch.Generator().manual_seed(0)
    b = args.batch
    batch = {"text_ids": torch.randint(3, int(cfg["vocab_size"]), (b, text_len), generator=g).to(device),
             "text_masks": torch.ones(b, text_len, dtype=torch.long, device=device),
             "image": torch.randn(b, 3, size, size, generator=g).to(device)}
    units = [model.candidate_module(i) for i in range(model.num_layers)]
    return Bench("meter", f"METER {args.meter_variant} (L={model.num_layers} co-attention layers, "
                          f"d={model.hidden_size}), {text_len} text tokens, image {size}x{size}",
                 lambda skip: model(batch, LayerPlan.of(skip))["cls_feats"], units, (b, model.cls_dim), model)


def build_llama_bench(args, device) -> Bench:
    from vlpeft.backbones.plm import build_plm_backbone
    from vlpeft.config import DEFAULTS
    from vlpeft.pet import PRESETS, inject

    shape = dict(LLAMA_SHAPES[args.llama_shape], max_position_embeddings=max(2048, args.llama_text_len),
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if args.llama_layers:
        shape["num_hidden_layers"] = args.llama_layers
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[args.llama_dtype]
    torch.set_default_dtype(dtype)  # build in the target dtype: a 7B-wide layer is 0.8 GB in fp32
    try:
        model = build_plm_backbone({"language_model": "LLAMA", "plm_config": shape})
        inject(model, PRESETS.build("das_llama", DEFAULTS))
    finally:
        torch.set_default_dtype(torch.float32)
    model = model.to(device).eval()
    with torch.no_grad():  # LaVIN's zero-init up-projections would make every skip exact identity: train-like values
        g = torch.Generator().manual_seed(1)
        for n, p in model.named_parameters():
            if "up_sampler" in n:
                p.copy_(0.02 * torch.randn(p.shape, generator=g).to(p.dtype))
    b, n = args.batch, args.llama_text_len
    g = torch.Generator().manual_seed(0)
    batch = {"text_ids": torch.randint(3, shape["vocab_size"], (b, n), generator=g).to(device),
             "text_masks": torch.ones(b, n, dtype=torch.long, device=device)}
    units = [model.candidate_module(i) for i in range(model.num_layers)]
    return Bench("llama", f"LLaMA {args.llama_shape} shape (L={model.num_layers}, d={model.hidden_size}, "
                          f"{args.llama_dtype}), {n} tokens, pet=das_llama",
                 lambda skip: model(batch, LayerPlan.of(skip))["cls_feats"], units, (b, model.hidden_size), model)


BUILDERS = {"vilt": build_vilt_bench, "meter": build_meter_bench, "llama": build_llama_bench}


def skip_set(k: int, num_layers: int) -> list[int]:
    """k units spread over the depth (which ones barely changes the cost)."""
    return sorted({round(i * num_layers / k) for i in range(k)}) if k else []


def unit_flops(bench: Bench) -> list[int]:
    """FLOPs of each candidate unit inside the full forward: the live total read before and after each unit."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    start: dict[int, int] = {}
    out = [0] * len(bench.units)
    handles = []
    for i, m in enumerate(bench.units):
        handles.append(m.register_forward_pre_hook(lambda mod, a, i=i: start.__setitem__(i, counter.get_total_flops())))
        handles.append(m.register_forward_hook(
            lambda mod, a, o, i=i: out.__setitem__(i, out[i] + counter.get_total_flops() - start[i])))
    try:
        with torch.no_grad(), counter:
            bench.run([])
    finally:
        for h in handles:
            h.remove()
    return [int(x) for x in out]


def measure(bench: Bench, ks: list[int], args, device) -> dict[str, Any]:
    L = len(bench.units)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def run(k: int) -> tuple[float, float, torch.Tensor]:
        sync()
        c, t = time.process_time(), time.perf_counter()
        with torch.no_grad():
            out = bench.run(skip_set(k, L))
        sync()
        return time.process_time() - c, time.perf_counter() - t, out.detach().float().cpu()

    flops = {k: count_flops(lambda k=k: bench.run(skip_set(k, L))) for k in ks}
    per_unit = unit_flops(bench)
    cpu: dict[int, list[float]] = {k: [] for k in ks}
    wall: dict[int, list[float]] = {k: [] for k in ks}
    first: dict[int, torch.Tensor] = {}
    wrong: list[str] = []
    for r in range(args.warmup + args.repeats):
        for k in ks:  # round-robin: slow drifts hit every k alike
            dc, dw, out = run(k)
            if k not in first:
                first[k] = out
                if tuple(out.shape) != bench.out_shape:
                    wrong.append(f"{bench.name} k={k}: output shape {tuple(out.shape)}, expected {bench.out_shape}")
                if not torch.isfinite(out).all():
                    wrong.append(f"{bench.name} k={k}: non-finite outputs")
            elif not torch.allclose(out, first[k], rtol=1e-3, atol=1e-4):
                wrong.append(f"{bench.name} k={k}: round {r} output differs from round 0 by "
                             f"{(out - first[k]).abs().max():.3g}")
            if r >= args.warmup:
                cpu[k].append(dc)
                wall[k].append(dw)
    for k in ks:
        if k > 0 and torch.equal(first[k], first[0]):
            wrong.append(f"{bench.name} k={k}: output equals k=0's — the skip set {skip_set(k, L)} had no effect")

    def spread(v: list[float]) -> dict:
        return {"median": statistics.median(v), "min": min(v), "max": max(v)}

    ideal_stack = {k: L / (L - k) for k in ks}
    ideal_model = {k: flops[0] / (flops[0] - sum(per_unit[i] for i in skip_set(k, L))) for k in ks}
    return {
        "model": bench.name, "describe": bench.describe, "num_units": L, "skip_sets": {str(k): skip_set(k, L) for k in ks},
        "speedup_cpu": {str(k): spread([a / b for a, b in zip(cpu[0], cpu[k])]) for k in ks},
        "speedup_wall": {str(k): spread([a / b for a, b in zip(wall[0], wall[k])]) for k in ks},
        "ideal": {str(k): round(v, 4) for k, v in ideal_stack.items()},
        "ideal_model": {str(k): round(v, 4) for k, v in ideal_model.items()},
        "flops": {str(k): v for k, v in flops.items()}, "unit_flops": per_unit,
        "flops_ratio": {str(k): flops[0] / v for k, v in flops.items()},
        "samples_per_s": {str(k): round(args.batch / statistics.median(wall[k]), 3) for k in ks},
        "cpu_s": {str(k): [round(t, 5) for t in v] for k, v in cpu.items()},
        "wall_s": {str(k): [round(t, 5) for t in v] for k, v in wall.items()},
        "wrong": wrong,
    }


def print_table(res: dict[str, Any], timing: str) -> None:
    f = lambda s: f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"
    L = res["num_units"]
    print(f"\n{res['describe']}")
    print(f"| k | units skipped | median wall s/batch | speed-up (CPU) | speed-up (wall) | ideal {L}/({L}-k) | "
          f"ideal (model) | FLOPs ratio F(0)/F(k) | {timing} speed-up / ideal (model) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in res["skip_sets"]:
        sp = res[f"speedup_{timing}"][k]
        print(f"| {k} | {res['skip_sets'][k]} | {statistics.median(res['wall_s'][k]):.4f} | "
              f"{f(res['speedup_cpu'][k])} | {f(res['speedup_wall'][k])} | {res['ideal'][k]:.3f} | "
              f"{res['ideal_model'][k]:.3f} | {res['flops_ratio'][k]:.3f} | {sp['median'] / res['ideal_model'][k]:.3f} |")


def print_summary(results: dict[str, Any], timing: str, goal: float) -> None:
    """One row per backbone × batch × k > 0: the whole-model ideal, the measured speed-up, their ratio, the goal."""
    print(f"\nSummary ({timing} time): speed-up t(0)/t(k), median [min, max] over interleaved rounds, against "
          f"ideal (model) = F(0) / (F(0) − skipped units' FLOPs)")
    print("| backbone | batch | k | ideal (model) | speed-up | ratio | goal | met |")
    print("|---|---|---|---|---|---|---|---|")
    for res in results.values():
        for k in res["skip_sets"]:
            if k == "0":
                continue
            sp, ideal = res[f"speedup_{timing}"][k], res["ideal_model"][k]
            ratio = sp["median"] / ideal
            print(f"| {res['model']} | {res['batch']} | {k} | {ideal:.3f} | {sp['median']:.3f} [{sp['min']:.3f}, "
                  f"{sp['max']:.3f}] | {ratio:.3f} | {goal:.2f} | {'yes' if ratio >= goal else 'no'} |")


def build_parser() -> argparse.ArgumentParser:
    """The bench's options (``bench/mixed_precision.py`` builds its models from the same ones)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="vilt", help="comma-separated: vilt, meter, llama")
    ap.add_argument("--variant", default="vit_base_patch32_384", choices=sorted(VIT_VARIANTS), help="vilt: ViT")
    ap.add_argument("--meter-variant", default="meter_clip16_288_roberta_random", help="meter: METER_VARIANTS name")
    ap.add_argument("--llama-shape", default="7b", choices=sorted(LLAMA_SHAPES))
    ap.add_argument("--llama-layers", type=int, default=8, help="llama: depth (0 = the shape's own)")
    ap.add_argument("--llama-text-len", type=int, default=128)
    ap.add_argument("--llama-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    ap.add_argument("--batch", default="8", help="batch size(s), comma-separated: each is measured on its own")
    ap.add_argument("--goal", type=float, default=0.95, help="the goal for speed-up / ideal (model), printed")
    ap.add_argument("--text-len", type=int, default=40, help="vilt: text tokens")
    ap.add_argument("--image-hw", type=int, nargs=2, default=None, metavar=("H", "W"),
                    help="vilt: input size (default: the variant's image size, square)")
    ap.add_argument("--skips", default="0,1,2,4,6", help="comma-separated numbers of skipped units")
    ap.add_argument("--labels", type=int, default=3129)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--malloc", default="keep", choices=("keep", "default"),
                    help="cpu: keep freed memory in the process (glibc mallopt) instead of returning it to the OS")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    return ap


def keep_freed_memory() -> str:
    """Tell glibc's malloc to keep freed memory instead of unmapping it (what jemalloc / tcmalloc do, which
    PyTorch's CPU tuning guide recommends). By default every forward's large activations come back as fresh pages:
    ~0.1 s of page faults per ViLT-B/32 forward at batch 8 on the development machine, a fixed cost that stayed
    when DAS skipped blocks (6 % of a k = 6 forward). The same setting holds for every k."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3  # glibc's mallopt parameter numbers
        ok = (libc.mallopt(m_mmap_threshold, 32 << 20) and libc.mallopt(m_trim_threshold, (1 << 31) - 1)
              and libc.mallopt(m_top_pad, 256 << 20))
    except (OSError, AttributeError):
        return "default (no glibc mallopt here)"
    return "glibc mallopt: mmap threshold 32 MiB, no trimming (--malloc default: glibc's dynamic default)" if ok \
        else "default (mallopt refused)"


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)

    models = [m.strip() for m in args.model.split(",") if m.strip()]
    bad = [m for m in models if m not in BUILDERS]
    if bad or not models:
        ap.error(f"--model {args.model!r}: choose from {sorted(BUILDERS)} (comma-separated)")
    try:
        batches = [int(b) for b in str(args.batch).split(",") if b.strip()]
    except ValueError:
        batches = []
    if not batches or min(batches) < 1:
        ap.error(f"--batch {args.batch!r}: give positive batch sizes, comma-separated (e.g. 2,8)")
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cpu" and args.malloc == "keep":
        print(f"allocator: {keep_freed_memory()}")
    timing = "wall" if device.type == "cuda" else "cpu"
    print(f"DAS inference, batch {','.join(map(str, batches))}, device {device}, threads {args.threads}, "
          f"{args.repeats} rounds after {args.warmup} warm-up rounds; speed-ups are median [min, max] over rounds "
          f"(round-robin over k)")
    results, wrong = {}, []
    for name in models:
        for batch in batches:
            run_args = argparse.Namespace(**{**vars(args), "batch": batch})
            torch.manual_seed(0)
            bench = BUILDERS[name](run_args, device)
            L = len(bench.units)
            ks = sorted({int(k) for k in args.skips.split(",") if k.strip()})
            dropped = [k for k in ks if not 0 <= k < L]
            ks = sorted({0} | {k for k in ks if 0 <= k < L})
            if dropped:
                print(f"note: {name}: k={dropped} not measurable with {L} units; measuring k={ks}")
            res = measure(bench, ks, run_args, device)
            res["batch"] = batch
            print(f"\nbatch {batch}:", end="")
            print_table(res, timing)
            results[name if len(batches) == 1 else f"{name}@{batch}"] = res
            wrong += res["wrong"]
            del bench
            if device.type == "cuda":
                torch.cuda.empty_cache()
    print_summary(results, timing, args.goal)
    status = 1 if wrong else 0
    print("\nWRONG RESULT:\n  " + "\n  ".join(wrong) if wrong else
          "\noutputs OK (finite, right shape, stable over rounds, every k > 0 differs from k = 0)")
    if args.json:
        write_json_atomic(args.json, {"models": results, "batch": batches, "device": str(device),
                                      "threads": args.threads, "warmup": args.warmup, "repeats": args.repeats,
                                      "timing": timing, "goal": args.goal, "args": vars(args), "wrong": wrong,
                                      "passed": status == 0})
        print(f"wrote {args.json}")
    return status

if __name__ == "__main__":
    sys.exit(main())

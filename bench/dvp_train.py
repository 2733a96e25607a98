"""DVP training throughput with each efficiency switch on and off (one process, same weights, same draws).

Scenarios (random weights; ViT-B/16-sized CLIP at 224 px and a BERT-base-sized PLM by default):
- ``search``: KAB search stage as the original runs it (``search_stage=True``, PLM fully trainable):
  one training step at a uniformly drawn K, then a sampling stage of ``--search-sample`` draws on a
  half-size mini-val batch in eval mode under no_grad. samples/s counts the training batch.
- ``train``: train stage with adapters (``use_adapter=True``, insertion at the middle layer).
- ``train_prompt_only``: train stage with the PLM *and* its adapters/norms frozen (only the prompt
  generator and token types train) — the case where ``frozen_prefix_no_grad`` can apply.

Variants: ``all_on``, ``all_off`` and each switch off alone, run round-robin (one iteration of each per
round, median of the timed rounds). The images come from a small pool that is cycled, and the first
``--warmup`` rounds (one pool pass) are untimed, so the CLIP cache figures are the steady state of a
second epoch (or of repeated images — VQA has ~5 questions per image).

First-epoch row (``--first-epoch search,train``; ``first_epoch`` below): the features computed ahead in large
batches, as ``vlpeft.frozen_features`` does before the first epoch, then the step reading them, against the uncached
path, interleaved on images never seen before, with the precompute's cost charged per image and shared by the
``q`` items of an image (q = 1 and VQAv2's 5.36).

    python bench/dvp_train.py [--tiny] [--batch 8] [--iters 3] [--json PATH]
    python bench/dvp_train.py --only-first-epoch --iters 3 --warmup 1 --precompute-batch 32 [--clock cpu]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft._io import write_json_atomic  # noqa: E402
from vlpeft.backbones import LayerPlan  # noqa: E402
from vlpeft.backbones._clip import CLIPFeatureCache  # noqa: E402
from vlpeft.backbones.clip_plm import build_dvp_backbone  # noqa: E402

SWITCHES = ("clip_feature_cache", "kab_shared_prefix", "frozen_prefix_no_grad")


def variants() -> dict[str, dict[str, bool]]:
    v = {"all_on": {s: True for s in SWITCHES}, "all_off": {s: False for s in SWITCHES}}
    for s in SWITCHES:
        v[f"no_{s}"] = {t: t != s for t in SWITCHES}
    return v


def make_pool(n: int, size: int, text_len: int, vocab: int, seed: int, prefix: str) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    return [dict(image=torch.randn(3, size, size, generator=g),
                 ids=torch.randint(1000 if vocab > 2000 else 3, vocab, (text_len,), generator=g),
                 key=f"{prefix}:{i}") for i in range(n)]


def batch_from(pool: list[dict], start: int, b: int, labels: int, device: torch.device) -> dict:
    items = [pool[(start + j) % len(pool)] for j in range(b)]
    ids = torch.stack([x["ids"] for x in items])
    masks = torch.ones_like(ids)
    masks[:, ids.shape[1] * 3 // 4:] = 0  # a quarter of padding, like short questions
    ids = ids * masks
    g = torch.Generator().manual_seed(start)
    return dict(image=torch.stack([x["image"] for x in items]).to(device), image_key=[x["key"] for x in items],
                text_ids=ids.to(device), text_masks=masks.to(device),
                vqa_targets=(torch.rand(b, labels, generator=g) > 0.999).float().to(device))


def head_for(d: int, c: int) -> nn.Module:
    return nn.Sequential(nn.Linear(d, 2 * d), nn.LayerNorm(2 * d), nn.GELU(), nn.Linear(2 * d, c))


def vqa_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, targets) * targets.shape[1]


def one_step(name: str, bb, head, opt, args, device, train_pool, val_pool, step: int, rng) -> None:
    """One training step (plus, for ``search``, KAB's sampling stage) on batch ``step`` of the pools."""
    n = bb.num_layers
    bb.train()
    head.train()
    batch = batch_from(train_pool, step * args.batch, args.batch, args.labels, device)
    k = int(torch.randint(n, (1,), generator=rng)) if name == "search" else n // 2
    logits = head(bb(batch, LayerPlan(insert_layer=k))["cls_feats"])
    loss = vqa_loss(logits, batch["vqa_targets"])
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    if name == "search":  # KAB sampling stage: eval mode, no_grad, half batch
        bb.eval()
        head.eval()
        vb = batch_from(val_pool, step * (args.batch // 2), args.batch // 2, args.labels, device)
        ks = torch.randint(n, (args.search_sample,), generator=rng).tolist()
        with torch.no_grad():
            for o in bb.forward_many(vb, [LayerPlan(insert_layer=k) for k in ks]):
                top = head(o["cls_feats"]).argmax(1, keepdim=True)
                float(vb["vqa_targets"].gather(1, top).mean() * 100)  # the KAB score
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def spread(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def first_epoch(name: str, bb, head, args, device, size: int, vocab: int) -> dict:
    """First epoch: ours (CLIP features of the epoch's images computed ahead in batches of ``--precompute-batch``,
    as ``vlpeft.frozen_features`` does before the first epoch, then the step reading them) vs the uncached path
    (CLIP inside every step), interleaved on fresh images every round. Per round, the time per training sample:
    uncached t_u; ours t_c + n·t_p / (q·N), where the step reads n images (batch, + half a batch of val images for
    the search), t_p is one precompute call on N images, and q is how many items share an image in the split
    (each image is computed once per epoch however many questions it has): q = 1 (every item its own image) and
    ``--questions-per-image`` (VQAv2 train: 443,757 questions on 82,783 images = 5.36)."""
    params = [p for p in list(bb.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    base_cfg = bb.cfg
    n_pre = max(args.precompute_batch, args.batch + args.batch // 2)
    n_read = args.batch + (args.batch // 2 if name == "search" else 0)
    qs = (1.0, args.questions_per_image)
    t_u, t_c, t_p = [], [], []
    ratios: dict[float, list[float]] = {q: [] for q in qs}
    bounds: dict[float, list[float]] = {q: [] for q in qs}
    rngs = [torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)]  # same draws for both
    for r in range(args.warmup + args.iters):
        pool = make_pool(n_pre, size, args.text_len, vocab, 100 + r, f"epoch1:{r}")  # images never seen before
        train_pool, val_pool = pool[:args.batch], pool[args.batch:]
        order = (0, 1) if r % 2 == 0 else (1, 0)  # alternate who goes first
        got: dict[int, float] = {}
        pre = 0.0
        for who in order:
            if who == 0:  # uncached path
                bb.cfg = dataclasses.replace(base_cfg, clip_feature_cache=False)
                t0 = args.timer()
                one_step(name, bb, head, opt, args, device, train_pool, val_pool, 0, rngs[0])
                got[0] = args.timer() - t0
            else:  # ours: precompute (the hook's call, one batch of n_pre images), then the step
                bb.cfg = base_cfg
                bb.feature_cache = CLIPFeatureCache(base_cfg.clip_cache_max_items)
                images = torch.stack([x["image"] for x in pool]).to(device)
                t0 = args.timer()
                computed = bb.cache_frozen_features(images, [x["key"] for x in pool])
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                pre = args.timer() - t0
                assert computed == n_pre
                misses = bb.feature_cache.misses
                t0 = args.timer()
                one_step(name, bb, head, opt, args, device, train_pool, val_pool, 0, rngs[1])
                got[1] = args.timer() - t0
                if bb.feature_cache.misses != misses:
                    raise SystemExit("first-epoch bench: the step after the precompute missed the cache")
        if r < args.warmup:
            continue
        t_u.append(got[0])
        t_c.append(got[1])
        t_p.append(pre)
        for q in qs:
            ratios[q].append(got[0] / (got[1] + n_read * pre / (q * n_pre)))
            # the ceiling for a precompute as cheap per image as CLIP inside the step: t_u / (t_c + (t_u - t_c) / q)
            bounds[q].append(got[0] / (got[1] + (got[0] - got[1]) / q))
    bb.cfg = base_cfg
    in_step = [(u - c) / n_read for u, c in zip(t_u, t_c)]  # CLIP's cost per image inside the uncached step
    out = {"uncached_step_s": spread(t_u), "cached_step_s": spread(t_c),
           "precompute_s_per_image": spread([x / n_pre for x in t_p]), "precompute_batch": n_pre,
           "images_per_step": n_read, "clip_in_step_s_per_image": spread(in_step),
           "precompute_vs_in_step_per_image": spread([x / n_pre / y for x, y in zip(t_p, in_step)]),
           "cached_vs_uncached_step": spread([u / c for u, c in zip(t_u, t_c)]),
           "speedup": {f"q={q:g}": spread(v) for q, v in ratios.items()},
           "ceiling": {f"q={q:g}": spread(v) for q, v in bounds.items()}}
    for q, v in ratios.items():
        m, b = spread(v), spread(bounds[q])
        print(f"  {name:18s} first epoch, q={q:<5.2f} ours vs uncached  {m['median']:.2f}x "
              f"[{m['min']:.2f}, {m['max']:.2f}]  (ceiling at the step's CLIP cost per image {b['median']:.2f}x)",
              flush=True)
    return out


def run_scenario(name: str, bb, head, args, device, pools) -> dict[str, dict[str, float]]:
    """Round-robin over the variants (one iteration of each per round) so drift hits all alike."""
    train_pool, val_pool = pools
    params = [p for p in list(bb.parameters()) + list(head.parameters()) if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    base_cfg = bb.cfg
    vs = variants()
    caches = {v: CLIPFeatureCache(base_cfg.clip_cache_max_items) for v in vs}
    rngs = {v: torch.Generator().manual_seed(0) for v in vs}  # same draws for every variant
    times: dict[str, list[float]] = {v: [] for v in vs}
    for it in range(args.warmup + args.iters):
        step = it % args.pool_batches  # cycle the pool: after the first pass the cache is warm
        for vname, flags in vs.items():
            bb.cfg = dataclasses.replace(base_cfg, **flags)
            bb.feature_cache = caches[vname]
            t0 = args.timer()
            one_step(name, bb, head, opt, args, device, train_pool, val_pool, step, rngs[vname])
            if it >= args.warmup:
                times[vname].append(args.timer() - t0)
    bb.cfg = base_cfg
    out: dict[str, dict[str, float]] = {}
    for vname in vs:
        sec = statistics.median(times[vname])
        out[vname] = {"sec_per_iter": sec, "samples_per_s": args.batch / sec, "times": times[vname],
                      "cache_hits": caches[vname].hits, "cache_misses": caches[vname].misses}
        print(f"  {name:18s} {vname:28s} {sec:7.3f} s/iter  {args.batch / sec:7.2f} samples/s", flush=True)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tiny", action="store_true", help="tiny random models (smoke run)")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--iters", type=int, default=3, help="timed iterations per variant (median reported)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed iterations (default: one pool pass)")
    ap.add_argument("--search-sample", type=int, default=5)
    ap.add_argument("--text-len", type=int, default=16)
    ap.add_argument("--pool-batches", type=int, default=1, help="distinct batches in the cycled image pool")
    ap.add_argument("--labels", type=int, default=3129)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--scenarios", default="search,train,train_prompt_only")
    ap.add_argument("--json", default=None, help="write the figures to this JSON file")
    ap.add_argument("--first-epoch", default="search,train",
                    help="scenarios that also get the first-epoch row (precompute vs uncached); empty: none")
    ap.add_argument("--precompute-batch", type=int, default=32, help="images per CLIP call of the precompute")
    ap.add_argument("--questions-per-image", type=float, default=443757 / 82783,
                    help="items sharing one image in the split (default VQAv2 train)")
    ap.add_argument("--only-first-epoch", action="store_true", help="skip the switch-by-switch table")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="wall: perf_counter; cpu: process_time (steadier on a shared machine; CPU device only)")
    args = ap.parse_args(argv)
    if args.clock == "cpu" and args.device != "cpu":
        ap.error("--clock cpu measures this process's CPU time; with --device cuda use --clock wall")
    args.timer = time.process_time if args.clock == "cpu" else time.perf_counter
    if args.warmup is None:
        args.warmup = args.pool_batches
    device = torch.device(args.device)
    if args.tiny:
        clip, plm, size, heads = "test_clip_tiny", "test_bert_tiny", 32, 4
    else:
        clip, plm, size, heads = "vit_b16_random", "bert_base_random", 224, 12
    common = dict(clip_model=clip, language_model="BERT", plm_config=plm, num_heads=heads, drop_rate=0.1)
    scen_cfg = {
        "search": dict(search_stage=True, use_adapter=False),
        "train": dict(search_stage=False, use_adapter=True),
        "train_prompt_only": dict(search_stage=False, use_adapter=True),
    }
    results: dict = {"config": {k: v for k, v in vars(args).items() if k != "timer"}, "threads": torch.get_num_threads(),
                     "scenarios": {}}
    print(f"DVP bench: CLIP {clip}, PLM {plm}, batch {args.batch}, {size}px, {args.text_len} tokens, "
          f"{torch.get_num_threads()} threads, device {device}", flush=True)
    clip_model = None
    for name in [s for s in args.scenarios.split(",") if s]:
        torch.manual_seed(0)
        bb = build_dvp_backbone(dict(common, **scen_cfg[name]))
        if clip_model is None:
            clip_model = bb.clip.model
        else:  # one CLIP for every scenario (building ViT-B/16 costs seconds)
            bb.clip.model = clip_model
        if name == "train_prompt_only":
            for p in bb.plm.parameters():
                p.requires_grad_(False)
        bb.to(device)
        head = head_for(bb.hidden_size, args.labels).to(device)
        vocab = bb.plm.bert.config.vocab_size
        pools = (make_pool(args.batch * args.pool_batches, size, args.text_len, vocab, 1, "train"),
                 make_pool((args.batch // 2) * args.pool_batches, size, args.text_len, vocab, 2, "val"))
        if not args.only_first_epoch:
            results["scenarios"][name] = run_scenario(name, bb, head, args, device, pools)
        if name in args.first_epoch.split(","):
            results.setdefault("first_epoch", {})[name] = first_epoch(name, bb, head, args, device, size, vocab)
        del bb

    if results["scenarios"]:
        print("\n| scenario | variant | s/iter | samples/s | speed-up vs all_off | all_on / this |")
        print("|---|---|---|---|---|---|")
    for name, vs in results["scenarios"].items():
        off, on = vs["all_off"]["sec_per_iter"], vs["all_on"]["sec_per_iter"]
        for vname, r in vs.items():
            r["speedup_vs_all_off"] = off / r["sec_per_iter"]
            r["all_on_speedup_vs_this"] = r["sec_per_iter"] / on
            print(f"| {name} | {vname} | {r['sec_per_iter']:.3f} | {r['samples_per_s']:.2f} | "
                  f"{r['speedup_vs_all_off']:.2f}x | {r['all_on_speedup_vs_this']:.2f}x |")
    if results.get("first_epoch"):
        print("\n| scenario | first epoch: ours (precompute + cached step) vs uncached, per training sample | "
              "q (items per image) | speed-up median [min, max] | ceiling | cached / uncached step (q → ∞) |")
        print("|---|---|---|---|---|---|")
        for name, fe in results["first_epoch"].items():
            u, c, p, i = (fe[k]["median"] for k in ("uncached_step_s", "cached_step_s", "precompute_s_per_image",
                                                    "clip_in_step_s_per_image"))
            for q, m in fe["speedup"].items():
                print(f"| {name} | uncached {u:.3f} s/step, cached {c:.3f} s/step + {fe['images_per_step']} images × "
                      f"{p * 1e3:.1f} ms/image (batch {fe['precompute_batch']}; in the step {i * 1e3:.1f}) / q | "
                      f"{float(q[2:]):.2f} | {m['median']:.2f}x [{m['min']:.2f}, {m['max']:.2f}] | "
                      f"{fe['ceiling'][q]['median']:.2f}x | {fe['cached_vs_uncached_step']['median']:.2f}x |")
        print("ceiling: t_u / (t_c + (t_u − t_c) / q), a precompute that costs per image what CLIP costs inside the "
              "step; a precompute beats it only where batching makes CLIP cheaper per image (a GPU; tiny models' per-call "
              "costs)")
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

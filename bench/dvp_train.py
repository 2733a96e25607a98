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
second epoch (or of repeated images — VQA has ~5 questions per image); the first epoch gains nothing.

    python bench/dvp_train.py [--tiny] [--batch 8] [--iters 3] [--json PATH]
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


def run_scenario(name: str, bb, head, args, device, pools) -> dict[str, dict[str, float]]:
    """Round-robin over the variants (one iteration of each per round) so drift hits all alike."""
    train_pool, val_pool = pools
    n = bb.num_layers
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
            rng = rngs[vname]
            t0 = time.perf_counter()
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
            if it >= args.warmup:
                times[vname].append(time.perf_counter() - t0)
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
    args = ap.parse_args(argv)
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
    results: dict = {"config": {k: v for k, v in vars(args).items()}, "threads": torch.get_num_threads(),
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
        results["scenarios"][name] = run_scenario(name, bb, head, args, device, pools)
        del bb

    print("\n| scenario | variant | s/iter | samples/s | speed-up vs all_off | all_on / this |")
    print("|---|---|---|---|---|---|")
    for name, vs in results["scenarios"].items():
        off, on = vs["all_off"]["sec_per_iter"], vs["all_on"]["sec_per_iter"]
        for vname, r in vs.items():
            r["speedup_vs_all_off"] = off / r["sec_per_iter"]
            r["all_on_speedup_vs_this"] = r["sec_per_iter"] / on
            print(f"| {name} | {vname} | {r['sec_per_iter']:.3f} | {r['samples_per_s']:.2f} | "
                  f"{r['speedup_vs_all_off']:.2f}x | {r['all_on_speedup_vs_this']:.2f}x |")
    if args.json:
        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

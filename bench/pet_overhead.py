"""PET overhead: forward and train-step time of each preset relative to the bare backbone, next to its FLOPs.

For each preset (``das``, ``dvp_adapter``, ``lora``, ``lora`` merged, ``ia3``, ``vl_adapter``, ``compacter``,
``vl_pet_large``, ``bitfit``) on a backbone where the preset has sites — ViLT-B/32 (``vilt``,
``vit_base_patch32_384``) for all but ``dvp_adapter``, which runs on CLIP ViT-B/16 + BERT-base (``clip_plm`` with
``clip_model=vit_b16_random``, ``plm_config=bert_base_random``); ``--size small`` uses the tiny ``test_vilt`` /
``test_clip_bert`` entries instead — with random weights (nothing is downloaded), the bench measures, interleaved in
one process (one forward and one train step of every contender per round, the order rotated each round):

- **forward**: eval mode, ``no_grad``, backbone + a small linear head on ``cls_feats``;
- **train step**: train mode (dropout on), forward + cross-entropy + backward + ``AdamW.step`` on the trainable set
  (the preset's modules ∪ its base policy's parameters ∪ the head, as ``vlpeft.build`` sets it). The bare backbone's
  train step trains the head and ``base_trainable("none")``: on ViLT nothing (its backward stops at the head), on
  CLIP+PLM DVP's cross-attention prompt (always trained; the backward runs through the PLM, so ``dvp_adapter``'s
  train ratio is the adapters' cost alone).

Per round the time ratio t(preset) / t(bare) (same family's bare backbone) is taken in CPU time
(``time.process_time``; steadier than wall time on a shared machine; wall-time medians are printed too) and reported
as median [min, max] over the rounds. Next to it, the FLOP ratio F(preset) / F(bare), counted once per contender
with ``torch.utils.flop_counter.FlopCounterMode`` (forward: ``vlpeft.computation.count_flops``; train step: the
same counter over forward + backward, with the CPU attention kernels and their backward counted as the GPU ones
are). **Overhead beyond arithmetic** = time ratio − FLOP ratio, per round: what the preset costs beyond its own
modules' arithmetic (hooks, slots, wrappers, small kernels). Goal: ≤ 0.10. A ViLT train step with PET
backpropagates through the whole frozen backbone (input gradients), whose FLOPs run at a different speed from the
forward's, so the train overhead against bare mixes that in; the column "train overhead vs bitfit" repeats it against
``bitfit`` (same backward, no modules), which isolates the modules. For merged LoRA (``merge_all`` folds
B·A into the weights) the forward speed relative to bare, t(bare) / t(merged), is reported; goal ≥ 0.97×.

    python bench/pet_overhead.py [--size base|small] [--batch 4] [--rounds 5] [--warmup 1] [--presets a,b] [--json PATH]
    python bench/pet_overhead.py --size small                  # quick run (~20 s)
    python bench/pet_overhead.py --batch 2 --rounds 3          # base size on 2 shared cores (a few minutes)

Before timing it checks the results and exits 1 if one is wrong (timing never fails the bench):

- every output is finite and of the right shape;
- presets that are the identity at initialisation (``lora``: B = 0; ``ia3``: ones; ``bitfit``: no modules) give the
  bare backbone's output to ``1e-6 · max(1, max|y|)`` (the same weights: every contender is built from seed 0);
- presets that are not (``das``, ``dvp_adapter``, ``vl_adapter``, ``compacter``, ``vl_pet_large``) give an output
  that differs from bare (their modules run);
- after LoRA's B is drawn non-zero (N(0, 0.02), so that merging has an effect), merged LoRA equals unmerged LoRA to
  ``1e-4 · max(1, max|y|)`` (W + s·BA rounds once per weight; the difference is printed) and differs from bare.
"""

from __future__ import annotations

import argparse
import copy
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import vlpeft.pet.presets_zoo  # noqa: E402,F401  (registers the zoo presets)
from vlpeft._io import write_json_atomic  # noqa: E402
from vlpeft.backbones import BACKBONES, CLIP_PLM_KEYS, VILT_KEYS, LayerPlan  # noqa: E402
from vlpeft.computation import _extra_formulas, count_flops  # noqa: E402
from vlpeft.pet import PRESETS, inject  # noqa: E402
from vlpeft.pet._base import PetReport, Recipe  # noqa: E402
from vlpeft.pet._wrap import ProjWrap, merge_all  # noqa: E402
from vlpeft.pet.lora import LoRA  # noqa: E402
from vlpeft.pet.trainable import apply_trainable, count_parameters  # noqa: E402

PRESET_LIST = ("das", "dvp_adapter", "lora", "lora_merged", "ia3", "vl_adapter", "compacter", "vl_pet_large", "bitfit")
IDENTITY = {"lora", "ia3", "bitfit"}  # exactly the bare backbone at init
NOT_IDENTITY = {"das", "dvp_adapter", "vl_adapter", "compacter", "vl_pet_large"}
FAMILY_OF = {"dvp_adapter": "clip_plm"}  # every other preset runs on ViLT
# tiny widths for --size small (as tests/test_pet_table.py); base size uses every preset's defaults
SMALL_OPTIONS = dict(das_adapter_dim=8, das_skip_adapter_dim=12, lora_r=4, lora_alpha=8, adapter_reduction=4,
                     vl_pet_down_dim=8, vl_pet_gate_dim=8, vl_pet_vpa_dim=8)
IDENTITY_TOL, MERGE_TOL = 1e-6, 1e-4
N_LABELS = 16


def backbone_spec(family: str, size: str) -> tuple[str, dict[str, Any], int]:
    """(registry name, config, image side) of the backbone a family runs on."""
    if family == "vilt":
        if size == "small":
            return "test_vilt", {}, 64
        return "vilt", dict(VILT_KEYS), 384
    if size == "small":
        return "test_clip_bert", {"clip_feature_cache": False}, 32
    return "clip_plm", {**CLIP_PLM_KEYS, "language_model": "BERT", "clip_model": "vit_b16_random",
                        "plm_config": "bert_base_random", "num_heads": 12, "drop_rate": 0.1,
                        "clip_feature_cache": False}, 224


def make_batch(b: int, text_len: int, side: int) -> dict:
    g = torch.Generator().manual_seed(0)
    masks = torch.ones(b, text_len, dtype=torch.long)
    masks[-1, text_len * 3 // 4:] = 0  # one padded row
    return {"text_ids": torch.randint(1000, 30000, (b, text_len), generator=g), "text_masks": masks,
            "image": torch.randn(b, 3, side, side, generator=g),
            "image_mask": torch.ones(b, side, side, dtype=torch.bool), "image_sizes": [(side, side)] * b,
            "labels": torch.randint(0, N_LABELS, (b,), generator=g)}


class Contender:
    def __init__(self, label: str, family: str, backbone: nn.Module, report: PetReport | None, policy: str):
        self.label, self.family, self.backbone, self.report, self.policy = label, family, backbone, report, policy
        torch.manual_seed(1)  # the same head everywhere
        self.head = nn.Linear(backbone.cls_dim, N_LABELS)
        self.plan = LayerPlan.of((), 0 if backbone.candidates().insert else None)
        self.trainable = [p for p in backbone.parameters() if p.requires_grad] + list(self.head.parameters())
        self.opt = torch.optim.AdamW(self.trainable, lr=1e-4)
        self.modules = len(report.injected) if report else 0
        self.pet_params = count_parameters(backbone)[0]  # trainable elements of the backbone (head excluded)

    def logits(self, batch: dict) -> torch.Tensor:
        return self.head(self.backbone(batch, self.plan)["cls_feats"])

    def forward(self, batch: dict) -> torch.Tensor:
        self.backbone.eval()
        self.head.eval()
        with torch.no_grad():
            return self.logits(batch)

    def loss(self, batch: dict) -> torch.Tensor:
        self.backbone.train()
        self.head.train()
        return nn.functional.cross_entropy(self.logits(batch), batch["labels"])

    def train_step(self, batch: dict) -> None:
        self.opt.zero_grad(set_to_none=True)
        self.loss(batch).backward()
        self.opt.step()


def build(family: str, size: str, preset: str | None, options: dict) -> Contender:
    name, cfg, _ = backbone_spec(family, size)
    torch.manual_seed(0)  # the same backbone weights for bare and every preset
    bb = BACKBONES.build(name, cfg)
    if preset is None:
        report = PetReport(Recipe("none"))
        apply_trainable(bb, report, "none")
        return Contender("bare", family, bb, None, "none")
    recipe = PRESETS.build(preset, options)
    torch.manual_seed(100)
    report = inject(bb, recipe)
    policy = recipe.base_policy if bb.knows_policy(recipe.base_policy) else "none"  # as vlpeft.build does
    apply_trainable(bb, report, policy)
    return Contender(preset, family, bb, report, policy)


def _cpu_sdpa_bwd_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kw) -> int:
    from torch.utils.flop_counter import sdpa_backward_flop_count

    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def train_flops(c: Contender, batch: dict) -> int:
    """FLOPs of forward + backward of one train step (the optimizer's element-wise update is not counted)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = dict(_extra_formulas())
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu_backward", None)
    if op is not None:
        mapping[op] = _cpu_sdpa_bwd_flops
    counter = FlopCounterMode(display=False, custom_mapping=mapping)
    with counter:
        c.loss(batch).backward()
    c.opt.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def timed(fn: Callable[[], Any]) -> tuple[float, float]:
    c, t = time.process_time(), time.perf_counter()
    fn()
    return time.process_time() - c, time.perf_counter() - t


def spread(v: list[float]) -> dict:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def fmt(s: dict | None, digits: int = 3) -> str:
    if s is None:
        return "—"
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", choices=("base", "small"), default="base")
    ap.add_argument("--presets", default=",".join(PRESET_LIST), help=f"comma-separated subset of {PRESET_LIST}")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--text-len", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inner", type=int, default=None,
                    help="calls per timed sample (default: 1 at base size, 20 at small, where one call takes ~ms)")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    args = ap.parse_args(argv)
    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = sorted(set(presets) - set(PRESET_LIST))
    if unknown:
        ap.error(f"unknown presets {unknown}; choose from {PRESET_LIST}")
    torch.set_num_threads(args.threads)
    inner = args.inner or (20 if args.size == "small" else 1)
    options = {**PRESETS.config_keys(), "datasets": ["vqa"], **(SMALL_OPTIONS if args.size == "small" else {})}

    t0 = time.perf_counter()
    families = sorted({FAMILY_OF.get(p, "vilt") for p in presets})
    batches = {f: make_batch(args.batch, args.text_len, backbone_spec(f, args.size)[2]) for f in families}
    bare = {f: build(f, args.size, None, options) for f in families}
    contenders: list[Contender] = list(bare.values())
    wrong: list[str] = []
    diffs: dict[str, float] = {}
    ref = {f: bare[f].forward(batches[f]) for f in families}
    for f, y in ref.items():
        if y.shape != (args.batch, N_LABELS) or not torch.isfinite(y).all():
            wrong.append(f"bare {f}: output of shape {tuple(y.shape)} or non-finite")
    tol = {f: max(1.0, float(y.abs().max())) for f, y in ref.items()}
    lora = None
    for p in presets:
        if p == "lora_merged":
            continue
        f = FAMILY_OF.get(p, "vilt")
        c = build(f, args.size, p, options)
        y = c.forward(batches[f])
        d = float((y - ref[f]).abs().max())
        diffs[f"{p} vs bare"] = d
        if not torch.isfinite(y).all() or y.shape != ref[f].shape:
            wrong.append(f"{p}: non-finite output or shape {tuple(y.shape)}")
        if p in IDENTITY and d > IDENTITY_TOL * tol[f]:
            wrong.append(f"{p}: identity at init, but differs from bare by {d:.3g} "
                         f"(tolerance {IDENTITY_TOL * tol[f]:.3g})")
        if p in NOT_IDENTITY and d == 0.0:
            wrong.append(f"{p}: output equals bare's — its modules did not run")
        if p == "lora":
            lora = c
        contenders.append(c)
    if "lora_merged" in presets:
        if lora is None:  # merged without unmerged in the list: build one to merge (it is not timed)
            lora = build("vilt", args.size, "lora", options)
        g = torch.Generator().manual_seed(7)
        with torch.no_grad():  # B = 0 at init: draw it so that merging changes the weights
            for w in lora.backbone.modules():  # LoRA sits on projection wrappers, not as a child module
                for m in w.pets("delta") if isinstance(w, ProjWrap) else ():
                    if isinstance(m, LoRA):
                        m.lora_B.copy_(0.02 * torch.randn(m.lora_B.shape, generator=g))
        merged = copy.deepcopy(lora)
        merged.label = "lora_merged"
        n = merge_all(merged.backbone)
        y_un, y_m = lora.forward(batches["vilt"]), merged.forward(batches["vilt"])
        d = float((y_m - y_un).abs().max())
        diffs["lora_merged vs lora"] = d
        diffs["lora_merged vs bare"] = float((y_m - ref["vilt"]).abs().max())
        if n == 0:
            wrong.append("lora_merged: merge_all merged no projection")
        if d > MERGE_TOL * tol["vilt"]:
            wrong.append(f"lora_merged: differs from unmerged LoRA by {d:.3g} "
                         f"(tolerance {MERGE_TOL * tol['vilt']:.3g})")
        if diffs["lora_merged vs bare"] == 0.0:
            wrong.append("lora_merged: output equals bare's — the merge had no effect")
        contenders.append(merged)
    build_s = time.perf_counter() - t0
    if wrong:
        print("WRONG RESULT:\n  " + "\n  ".join(wrong))
        print("differences: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
        return 1

    key = lambda c: c.label if c.label != "bare" else f"bare:{c.family}"  # noqa: E731
    ffl = {key(c): count_flops(lambda c=c: c.forward(batches[c.family])) for c in contenders}
    tfl = {key(c): train_flops(c, batches[c.family]) for c in contenders if c.label != "lora_merged"}

    fwd_cpu: dict[str, list[float]] = {key(c): [] for c in contenders}
    fwd_wall: dict[str, list[float]] = {key(c): [] for c in contenders}
    tr_cpu: dict[str, list[float]] = {key(c): [] for c in contenders if c.label != "lora_merged"}
    tr_wall: dict[str, list[float]] = {key(c): [] for c in contenders if c.label != "lora_merged"}
    t1 = time.perf_counter()
    for r in range(args.warmup + args.rounds):
        k = r % len(contenders)
        for c in contenders[k:] + contenders[:k]:  # round-robin, rotated: drifts and position hit all alike
            b = batches[c.family]
            dc, dw = timed(lambda: [c.forward(b) for _ in range(inner)])
            if c.label != "lora_merged":
                tc, tw = timed(lambda: [c.train_step(b) for _ in range(inner)])
            if r >= args.warmup:
                fwd_cpu[key(c)].append(dc)
                fwd_wall[key(c)].append(dw)
                if c.label != "lora_merged":
                    tr_cpu[key(c)].append(tc)
                    tr_wall[key(c)].append(tw)
    timing_s = time.perf_counter() - t1

    rows: dict[str, dict] = {}
    for c in contenders:
        if c.label == "bare":
            continue
        bk = f"bare:{c.family}"
        fr = [a / b for a, b in zip(fwd_cpu[c.label], fwd_cpu[bk])]
        row: dict[str, Any] = {
            "backbone": backbone_spec(c.family, args.size)[0], "modules": c.modules, "policy": c.policy,
            "trainable_backbone_params": c.pet_params,
            "fwd_time_ratio_cpu": spread(fr),
            "fwd_time_ratio_wall_median": statistics.median(fwd_wall[c.label]) / statistics.median(fwd_wall[bk]),
            "fwd_flop_ratio": ffl[c.label] / ffl[bk],
        }
        row["fwd_overhead"] = spread([x - row["fwd_flop_ratio"] for x in fr])
        if c.label == "lora_merged":
            row["speed_vs_bare_cpu"] = spread([a / b for a, b in zip(fwd_cpu[bk], fwd_cpu[c.label])])
        else:
            tr = [a / b for a, b in zip(tr_cpu[c.label], tr_cpu[bk])]
            row["train_time_ratio_cpu"] = spread(tr)
            row["train_time_ratio_wall_median"] = (statistics.median(tr_wall[c.label])
                                                   / statistics.median(tr_wall[bk]))
            row["train_flop_ratio"] = tfl[c.label] / tfl[bk]
            row["train_overhead"] = spread([x - row["train_flop_ratio"] for x in tr])
            if "bitfit" in tr_cpu and c.family == "vilt" and c.label != "bitfit":
                # second reference: bitfit backpropagates through the whole backbone without modules, so this
                # separates the modules' cost from the different speed of backward arithmetic
                tb = [a / b for a, b in zip(tr_cpu[c.label], tr_cpu["bitfit"])]
                fb = tfl[c.label] / tfl["bitfit"]
                row["train_overhead_vs_bitfit"] = spread([x - fb for x in tb])
        rows[c.label] = row

    print(f"PET overhead, size {args.size}: batch {args.batch}, {args.text_len} text tokens, threads {args.threads}, "
          f"{args.rounds} rounds of {inner} call(s) after {args.warmup} warm-up; ratios are preset / bare per round, "
          f"CPU time, median [min, max]; overhead = time ratio − FLOP ratio (goal ≤ 0.10)")
    for f in families:
        bk = f"bare:{f}"
        print(f"bare {backbone_spec(f, args.size)[0]}: forward {ffl[bk] / 1e9:.3f} GFLOP, "
              f"{statistics.median(fwd_cpu[bk]) / inner:.4f} CPU s / "
              f"{statistics.median(fwd_wall[bk]) / inner:.4f} wall s "
              f"per call; train step {tfl[bk] / 1e9:.3f} GFLOP, {statistics.median(tr_cpu[bk]) / inner:.4f} CPU s / "
              f"{statistics.median(tr_wall[bk]) / inner:.4f} wall s")
    print("| preset | backbone | modules | trainable (backbone) | fwd time ratio | fwd wall (median) | "
          "fwd FLOP ratio | fwd overhead | train time ratio | train wall (median) | train FLOP ratio | "
          "train overhead | "
          "train overhead vs bitfit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for label, row in rows.items():
        tr = row.get("train_time_ratio_cpu")
        print(f"| {label} | {row['backbone']} | {row['modules']} | {row['trainable_backbone_params']:,} | "
              f"{fmt(row['fwd_time_ratio_cpu'])} | {row['fwd_time_ratio_wall_median']:.3f} | "
              f"{row['fwd_flop_ratio']:.4f} | {fmt(row['fwd_overhead'])} | {fmt(tr)} | "
              + (f"{row['train_time_ratio_wall_median']:.3f} | {row['train_flop_ratio']:.4f} | "
                 f"{fmt(row['train_overhead'])} | {fmt(row.get('train_overhead_vs_bitfit'))} |" if tr
                 else "— | — | — | — |"))
    if "lora_merged" in rows:
        s = rows["lora_merged"]["speed_vs_bare_cpu"]
        print(f"merged LoRA forward speed vs bare (t_bare / t_merged, CPU): {fmt(s)} (goal ≥ 0.97)")
    print("checks: " + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items()))
    print(f"outputs OK (identity presets equal bare to {IDENTITY_TOL:g}·max(1,|y|), the others differ; merged LoRA "
          f"equals unmerged to {MERGE_TOL:g}·max(1,|y|)); build+checks {build_s:.1f} s, timing {timing_s:.1f} s")
    if args.json:
        write_json_atomic(args.json, {
            "rows": rows, "fwd_flops": ffl, "train_flops": tfl, "diffs": diffs,
            "fwd_cpu_s": fwd_cpu, "fwd_wall_s": fwd_wall, "train_cpu_s": tr_cpu, "train_wall_s": tr_wall,
            "size": args.size, "batch": args.batch, "text_len": args.text_len, "threads": args.threads,
            "warmup": args.warmup, "rounds": args.rounds, "inner": inner, "wrong": wrong, "passed": True,
        })
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The computation of a run's architecture: FLOPs of the chosen plan and of the unskipped one, and a measured
inference speed-up (issue 10, item 4).

FLOPs are counted with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, convolutions and attention;
element-wise work such as norms and activations is not counted) on one representative batch — the first batch of
the val loader — forward only, in eval mode, under ``no_grad``; heads and losses are part of the forward. The
speed-up is t(full)/t(chosen) per round over a few interleaved timed forwards on the device the run used, reported
as median [min, max]: it is **indicative** (one batch, a few rounds, a possibly busy machine). It is stated as a
speed-up only where the whole [min, max] range lies on one side of 1 (else "no measurable speed-up (lo–hi×)"),
and not at all for a plan that skips nothing.

``computation.json`` in the run folder holds::

    {"flops": {"chosen": int, "full": int, "reduction": float},   # reduction = 1 - chosen / full
     "speedup": {"median": float, "min": float, "max": float, "rounds": int, "device": str, "indicative": true},
     "params": {"trainable": int, "total": int, "percent": float},
     "plan": {"skip": [...], "insert_layer": int | null}, "batch_size": int, "stage": "search" | "train"}
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from vlpeft._io import write_json_atomic
from vlpeft._protocol import LayerPlan
from vlpeft.pet.trainable import count_parameters
from vlpeft.pruning import PRUNED_FILE, export_pruned
from vlpeft.search.placement import Placement
from vlpeft.sections import key, take

COMPUTATION_FILE = "computation.json"
METRICS_FILE = "metrics.json"


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _native_mha_flops(query_shape, key_shape, value_shape, embed_dim, num_head, *args, out_shape=None,
                      **kwargs) -> int:
    """``nn.MultiheadAttention``'s inference fast path (one fused op, e.g. METER's CLIP tower): the Q, K, V and
    output projections plus the Q·Kᵀ and A·V products, counted as the unfused ops would be."""
    lq, lk = int(query_shape[-2]), int(key_shape[-2])
    b = 1
    for n in query_shape[:-2]:
        b *= int(n)
    e = int(embed_dim)
    return 2 * b * e * e * (2 * lq + 2 * lk) + 4 * b * lq * lk * e


def _extra_formulas() -> dict:
    """Ops torch's counter does not know (it would count 0): attention on the CPU
    (``_scaled_dot_product_flash_attention_for_cpu``, counted as the GPU kernels are: Q·Kᵀ and A·V), and
    ``nn.MultiheadAttention``'s fused fast path (``_native_multi_head_attention``: its projections too). Without
    the latter a frozen CLIP tower counted ~40 % low, and DAS-METER's ideal speed-up came out too high."""
    out = {}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
                          ("_native_multi_head_attention", _native_mha_flops)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            out[op] = formula
    return out


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward only: run under ``no_grad``), as ``FlopCounterMode`` counts them
    (plus CPU attention, see ``_extra_formulas``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=_extra_formulas())
    with torch.no_grad(), counter:
        fn()
    return int(counter.get_total_flops())


def full_plan(plan: LayerPlan) -> LayerPlan:
    """The unskipped architecture of ``plan``: nothing skipped, the prompt (if any) where it was."""
    return plan.replace(skip=frozenset())


def plan_flops(module: nn.Module, batch: Mapping[str, Any], plan: LayerPlan) -> int:
    """FLOPs of ``module(batch, plan)`` (a ``VLPeftModule`` or anything with that call) in eval mode."""
    was = module.training
    module.eval()
    try:
        return count_flops(lambda: module(batch, plan))
    finally:
        module.train(was)


def measure_speedup(module: nn.Module, batch: Mapping[str, Any], plan: LayerPlan, *, rounds: int = 5,
                    warmup: int = 1) -> dict[str, Any]:
    """t(unskipped) / t(plan) per round (the two forwards interleaved in each round), median [min, max]."""
    device = next(module.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    full = full_plan(plan)
    was = module.training
    module.eval()
    times: dict[str, list[float]] = {"full": [], "chosen": []}
    try:
        with torch.no_grad():
            for r in range(warmup + rounds):
                for key, p in (("full", full), ("chosen", plan)):
                    sync()
                    t = time.perf_counter()
                    module(batch, p)
                    sync()
                    if r >= warmup:
                        times[key].append(time.perf_counter() - t)
    finally:
        module.train(was)
    ratios = [f / c for f, c in zip(times["full"], times["chosen"])]
    return {"median": statistics.median(ratios), "min": min(ratios), "max": max(ratios), "rounds": rounds,
            "device": str(device), "full_s": statistics.median(times["full"]),
            "chosen_s": statistics.median(times["chosen"]), "indicative": True}


def computation(module: nn.Module, batch: Mapping[str, Any], plan: LayerPlan, *, rounds: int = 5) -> dict[str, Any]:
    """The record ``computation.json`` holds (see the module docstring) for ``module`` running ``plan``."""
    chosen, full = plan_flops(module, batch, plan), plan_flops(module, batch, full_plan(plan))
    trainable, total = count_parameters(module)
    return {
        "flops": {"chosen": chosen, "full": full, "reduction": 1.0 - chosen / full if full else 0.0},
        "speedup": measure_speedup(module, batch, plan, rounds=rounds),
        "params": {"trainable": trainable, "total": total, "percent": 100.0 * trainable / total if total else 0.0},
        "plan": {"skip": sorted(plan.skip), "insert_layer": plan.insert_layer},
        "batch_size": _batch_len(batch),
    }


def speedup_text(speedup: Mapping[str, Any] | None, skip) -> str:
    """The speed-up as a run or the report states it: a value only where its whole [min, max] spread lies on one
    side of 1 (else it is noise: the range is shown instead), and none claimed for a plan that skips nothing."""
    if speedup is None or speedup.get("median") is None:
        return ""
    if skip is not None and len(skip) == 0:  # (None: a record without its plan)
        return "none (nothing skipped)"
    lo, hi = speedup["min"], speedup["max"]
    if lo <= 1.0 <= hi:
        return f"no measurable speed-up ({lo:.2f}–{hi:.2f}×)"
    return f"{speedup['median']:.3f}× [{lo:.3f}, {hi:.3f}]"


def summary_line(rec: Mapping[str, Any]) -> str:
    f, s = rec["flops"], rec["speedup"]
    skip = (rec.get("plan") or {}).get("skip")
    speed = speedup_text(s, skip)
    if skip and not speed.startswith("no measurable"):
        speed = f"measured speed-up {speed}"
    return (f"[vlpeft] computation: {f['chosen'] / 1e9:.4g} GFLOPs per batch of {rec['batch_size']} vs "
            f"{f['full'] / 1e9:.4g} unskipped (−{100 * f['reduction']:.2f} %); "
            + (f"{speed} on {s['device']} (indicative: median of {s['rounds']} rounds on one batch)" if skip else
               "nothing skipped: no speed-up to measure"))


def title_note(rec: Mapping[str, Any]) -> str:
    """What the search PNG's title adds: the FLOPs reduction of the chosen architecture."""
    return f"FLOPs −{100 * rec['flops']['reduction']:.2f} % vs unskipped"


def _batch_len(batch: Mapping[str, Any]) -> int:
    for k in ("text_ids", "image", "image_0"):
        v = batch.get(k)
        if hasattr(v, "shape"):
            return int(v.shape[0])
    return 1


def representative_batch(module: nn.Module, datamodule) -> dict[str, Any]:
    """The first batch of the val loader, on the module's device."""
    loader = datamodule.val_dataloader()
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise ValueError("the val split is empty: computation.json needs one val batch; check the val split "
                         "files under data_root") from None
    device = next(module.parameters()).device
    return module.transfer_batch_to_device(batch, device, 0) if hasattr(module, "transfer_batch_to_device") \
        else batch


@dataclass(frozen=True)
class DeviceKeys:
    """What recording a run reads: where it ran and at what precision, and whether it exports (the run section)."""

    num_gpus: Any = key(default=0, shared=True)
    precision: Any = key(default=32, shared=True)
    export_pruned: bool = key(default=False, shared=True)


def record_run(module, datamodule, run_dir: str | Path, config: DeviceKeys | Any, placement=None,
               search=None, stage: str = "") -> dict[str, Any]:
    """After fit (rank 0): count and time the run's chosen architecture on the device it used, write
    ``computation.json``, print one line; for a search also add the record to placement.json's ``meta`` and
    redraw the PNG with the FLOPs reduction in its title. The module goes back to the device it was on."""
    run_dir = Path(run_dir)
    plan = placement.plan(module.base_plan) if placement is not None else module.plan()
    before = next(module.parameters()).device
    keys = take(DeviceKeys, config)
    target = torch.device("cuda") if _uses_gpu(keys) and torch.cuda.is_available() else torch.device("cpu")
    module.to(target)
    half = {"16": torch.float16, "16-mixed": torch.float16, "bf16": torch.bfloat16, "bf16-mixed": torch.bfloat16}
    dtype = half.get(str(keys.precision)) if target.type == "cuda" else None
    try:  # under the autocast the run trained with (a GPU run at precision=16 / bf16)
        with torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
            rec = computation(module, representative_batch(module, datamodule), plan)
        rec["speedup"]["autocast"] = str(dtype).removeprefix("torch.") if dtype is not None else None
        if stage:
            rec["stage"] = stage
    finally:
        module.to(before)
    write_json_atomic(run_dir / COMPUTATION_FILE, rec)
    print(summary_line(rec), flush=True)
    if search is not None and (run_dir / "placement.json").is_file():
        annotate_search(search, run_dir, rec)
    return rec


def annotate_search(search, run_dir: Path, rec: Mapping[str, Any]) -> None:
    """placement.json's ``meta["computation"]`` := the record; the PNG title gets the FLOPs reduction."""
    import inspect

    path = run_dir / "placement.json"
    p = Placement.load(path)
    Placement.from_dict(dict(p.to_dict(), meta={**p.meta, "computation": dict(rec)})).save(path)
    title = inspect.signature(search.save_plot).parameters["title"].default
    search.save_plot(run_dir / "placement.png", title=f"{title} — {title_note(rec)}")


def save_metrics(run_dir: str | Path, metrics: Mapping[str, Any]) -> Path:
    """The run's final ``epoch_results`` ({phase: {metric: value}}) as ``metrics.json`` (atomic)."""
    clean = {ph: {k: float(v) for k, v in vals.items()} for ph, vals in (metrics or {}).items()}
    return write_json_atomic(Path(run_dir) / METRICS_FILE, clean)


def after_fit(module, datamodule, run_dir: str | Path, config: DeviceKeys | Any, result, *, search: bool) -> None:
    """The runner's one hook after fit (rank 0): ``metrics.json``, ``computation.json`` (+ the search's
    placement.json meta and PNG title), and with ``export_pruned=True`` the deployable ``pruned.ckpt``."""
    save_metrics(run_dir, result.metrics)
    rec = record_run(module, datamodule, run_dir, config, placement=result.placement,
                     search=module.search if search else None, stage=result.stage)
    result.computation = rec
    if take(DeviceKeys, config).export_pruned:
        result.pruned_path = export_pruned(module, Path(run_dir) / PRUNED_FILE, result.placement)


def _uses_gpu(keys: DeviceKeys) -> bool:
    n = keys.num_gpus
    return (n if isinstance(n, int) else len(n)) > 0


__all__ = ["COMPUTATION_FILE", "METRICS_FILE", "annotate_search", "computation", "count_flops", "full_plan",
           "after_fit", "measure_speedup", "plan_flops", "record_run", "save_metrics", "speedup_text", "summary_line"]

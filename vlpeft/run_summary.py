"""The block a search / train / test run ends with: its score and what it read and wrote (issue 20, item 2)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping

from vlpeft.checkpoint import _as_list
from vlpeft.computation import COMPUTATION_FILE, METRICS_FILE
from vlpeft.scores import metric_text
from vlpeft.tasks.metrics import selection_metrics  # each registered task names its own score (a new one too)


def score_text(metrics: Mapping[str, Mapping[str, float]], phase: str, best: float | None = None) -> str:
    """``val vqa_score 34.0 %`` for ``phase``'s final metrics; ``best``: the kept checkpoint's ``the_metric``
    (the sum of the named metrics, so it is shown in their unit only when there is one)."""
    named = selection_metrics(metrics.get(phase) or {})
    if not named:
        if phase == "test":
            return ("test: no score (the test split has no answers, e.g. VQAv2 test: score the dump with the "
                    "official server, or test on a split with answers: 'data_splits={\"vqa\": {\"test\": "
                    "[\"vqav2_rest_val\"]}}')")
        return f"{phase}: no score recorded"
    text = f"{phase} " + ", ".join(metric_text(k, v) for k, v in named)
    if phase == "val" and best is not None:
        text += " (last epoch; kept checkpoint: " + (metric_text(named[0][0], best).split(" ", 1)[1]
                                                     if len(named) == 1 else f"the_metric {best:.4f}") + ")"
    return text


def _rel(path: Any, run_dir: Path) -> str:
    p = Path(path)
    try:
        return str(p.relative_to(run_dir))
    except ValueError:
        return str(p)


def summary_lines(result, load_path: Any) -> list[str]:
    """The lines of the closing block (``[vlpeft]`` prefixed) for a ``RunResult`` of ``vlpeft.runner`` that read
    ``load_path`` (the config key's value)."""
    run_dir = Path(result.run_dir)
    phase = "test" if result.stage == "test" else "val"
    lines = [f"{result.stage} run done: {score_text(result.metrics, phase, result.best_metric)}"]
    loads = [str(p) for p in _as_list(load_path) if p]
    read = [f"load_path {', '.join(loads) if loads else '(none: initialised weights)'}"]
    if result.placement_source:
        read.append(f"placement {result.placement_source}")
    elif result.stage != "search" and result.placement is not None:
        read.append(f"placement skip={sorted(result.placement.skip)} from skip_module= / insert_layer=")
    lines.append("read: " + "; ".join(read))
    wrote = []
    if result.placement_path is not None:
        wrote.append(_rel(result.placement_path, run_dir))
        png = Path(result.placement_path).with_suffix(".png")
        if png.is_file():
            wrote.append(_rel(png, run_dir))
    ckpts = sorted({str(p) for p in (result.checkpoint, result.last_checkpoint) if p})
    wrote += [_rel(p, run_dir) for p in ckpts]
    for p in (result.trainable_path, result.pruned_path):
        if p is not None:
            wrote.append(_rel(p, run_dir))
    wrote += [name for name in (METRICS_FILE, COMPUTATION_FILE) if (run_dir / name).is_file()]
    wrote += [_rel(p, run_dir) for p in (result.dumps or {}).values() if p]
    lines.append(f"wrote in {run_dir}: " + (", ".join(wrote) if wrote else "nothing else"))
    return ["[vlpeft] " + line for line in lines]


def print_summary(result, load_path: Any) -> None:
    print("\n".join(summary_lines(result, load_path)), flush=True)

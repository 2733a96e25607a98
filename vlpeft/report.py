"""The table the papers print, collected from the run folders under a log folder (issue 10, item 4).

    python -m vlpeft.report LOG_DIR [--md FILE] [--csv FILE]

One row per vlpeft run folder (``<log_dir>/<name>/version_<n>`` holding our ``run.json`` and ``metrics.json`` or
``computation.json``; a folder of another tool that happens to hold a ``metrics.json`` is listed as skipped):
run, stage, the task metric by name (the run's final score: val for search/train runs, test for test runs; in
percent where it is a fraction, CIDEr-D on its own scale; the CSV has ``metric_name`` such as ``val/vqa_score``,
``metric`` in ``metric_unit``; a multi-task run gives ``val/the_metric``, the sum of its parts as recorded, whose
names and values the Markdown shows),
trainable parameters and their %, FLOPs of the chosen architecture (per batch of the recorded size), the
unskipped FLOPs and the reduction, the measured (indicative) speed-up and the placement. Every number is read
from the run's own files (``metrics.json``, ``computation.json``, ``placement.json`` / ``trainable.json``);
a figure a run did not record is left empty. Markdown goes to stdout unless ``--md`` names a file.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
from pathlib import Path
from typing import Any

from vlpeft._io import DiskFullError, OutputPathError, write_text_atomic
from vlpeft.computation import COMPUTATION_FILE, METRICS_FILE, speedup_text
from vlpeft.scores import metric_text, selection_metrics

RUN_INFO = "run.json"  # vlpeft.rundir.RUN_INFO (not imported: rundir pulls in the config)

COLUMNS = ("run", "stage", "metric_name", "metric", "metric_unit", "trainable_params", "trainable_pct", "flops",
           "flops_full", "flops_reduction_pct", "speedup", "speedup_min", "speedup_max", "placement")


def _read(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it or re-run that stage") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a JSON {type(data).__name__}, not the object a vlpeft run writes; delete it "
                         "or re-run that stage (or move that folder out of the log folder if another tool wrote it)")
    return data


def _is_ours(run_dir: Path) -> bool:
    """A run folder vlpeft reserved: its run.json (rundir.RUN_INFO) names the run and version."""
    try:
        info = json.loads((run_dir / RUN_INFO).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and {"run_name", "version"} <= set(info)


def run_folders(log_dir: str | Path, skipped: list[Path] | None = None) -> list[Path]:
    """The vlpeft run folders under ``log_dir`` that recorded results; folders with result files but without our
    run.json (another tool's) go to ``skipped``."""
    root = Path(log_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"log folder {root} does not exist; pass the log_dir of the runs")
    found = {p.parent for name in (METRICS_FILE, COMPUTATION_FILE) for p in root.rglob(name)}
    ours = {p for p in found if _is_ours(p)}
    if skipped is not None:
        skipped.extend(sorted(found - ours))
    return sorted(ours, key=lambda p: (p.stat().st_mtime, str(p)))


def _placement_text(run_dir: Path, comp: dict[str, Any]) -> str:
    p = _read(run_dir / "placement.json") or (_read(run_dir / "trainable.json").get("placement") or {})
    plan = comp.get("plan") or {}
    skip = p.get("skip", plan.get("skip"))
    insert = p.get("insert_layer", plan.get("insert_layer"))
    parts = []
    if skip is not None:
        parts.append(f"skip {list(skip)}")
    if insert is not None:
        parts.append(f"insert_layer {insert}")
    return "; ".join(parts)


def row(run_dir: Path, log_dir: Path) -> dict[str, Any]:
    metrics, comp = _read(run_dir / METRICS_FILE), _read(run_dir / COMPUTATION_FILE)
    stage = comp.get("stage") or ("search" if (run_dir / "placement.json").is_file() else
                                  "test" if "test" in metrics and not comp else "train")
    phase = "test" if stage == "test" else "val"
    values = metrics.get(phase) or {}
    named = selection_metrics(values)
    if len(named) == 1:  # the one named score, in the unit the runs print
        name, value = named[0]
        unit = "CIDEr-D" if name == "caption_cider" else "%"
        value = value if unit == "CIDEr-D" else 100.0 * value
    else:  # several tasks (their sum selects the checkpoint) or none recorded
        name, value, unit = "the_metric", values.get("the_metric"), "sum"
    score = f"{phase} " + ", ".join(metric_text(k, v) for k, v in named) if named else ""
    params, flops, speed = comp.get("params", {}), comp.get("flops", {}), comp.get("speedup", {})
    return {
        "run": str(run_dir.relative_to(log_dir)), "stage": stage, "metric_name": f"{phase}/{name}",
        "metric": value, "metric_unit": unit if value is not None else "",
        "score": score, "skip": (comp.get("plan") or {}).get("skip"),
        "trainable_params": params.get("trainable"), "trainable_pct": params.get("percent"),
        "flops": flops.get("chosen"), "flops_full": flops.get("full"),
        "flops_reduction_pct": None if "reduction" not in flops else 100.0 * flops["reduction"],
        "speedup": speed.get("median"), "speedup_min": speed.get("min"), "speedup_max": speed.get("max"),
        "placement": _placement_text(run_dir, comp),
    }


def collect(log_dir: str | Path, skipped: list[Path] | None = None) -> list[dict[str, Any]]:
    log_dir = Path(log_dir)
    return [row(d, log_dir) for d in run_folders(log_dir, skipped)]


def _fmt(key: str, v: Any) -> str:
    if v is None:
        return ""
    if key in ("flops", "flops_full"):
        return f"{v / 1e9:.4g} G"
    if key == "trainable_params":
        return f"{v:,d}"
    if key in ("trainable_pct", "flops_reduction_pct"):
        return f"{v:.2f}"
    if key.startswith("speedup"):
        return f"{v:.3f}×"
    return str(v)


def to_markdown(rows: list[dict[str, Any]]) -> str:
    head = ["run", "stage", "score", "trainable params", "trainable %", "GFLOPs/batch", "unskipped", "FLOPs −%",
            "speed-up (indicative) median [min, max]", "placement"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        speed = "" if r["speedup"] is None else speedup_text(
            {"median": r["speedup"], "min": r["speedup_min"], "max": r["speedup_max"]}, r["skip"])
        cells = [r["run"], r["stage"], r["score"], _fmt("trainable_params", r["trainable_params"]),
                 _fmt("trainable_pct", r["trainable_pct"]), _fmt("flops", r["flops"]), _fmt("flops", r["flops_full"]),
                 _fmt("flops_reduction_pct", r["flops_reduction_pct"]), speed, r["placement"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(COLUMNS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})  # full precision in the CSV
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m vlpeft.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("log_dir", help="the log_dir of the runs (searched recursively for run folders)")
    ap.add_argument("--md", default=None, help="write the Markdown table here instead of stdout")
    ap.add_argument("--csv", default=None, help="also write the table as CSV here")
    args = ap.parse_args(argv)
    skipped: list[Path] = []
    try:
        for flag, out in (("--md", args.md), ("--csv", args.csv)):
            if out and Path(out).is_dir():
                raise ValueError(f"{flag} {out} is a folder; name the file to write, e.g. {flag} "
                                 f"{Path(out) / ('report.md' if flag == '--md' else 'report.csv')}")
        rows = collect(args.log_dir, skipped)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for p in skipped:
        print(f"skipped {p}: no vlpeft {RUN_INFO} there (not a run folder vlpeft made)", file=sys.stderr)
    if not rows:
        print(f"error: no vlpeft run folder ({RUN_INFO} with {METRICS_FILE} or {COMPUTATION_FILE}) under "
              f"{args.log_dir}; runs record them at their end (search/train) or after testing", file=sys.stderr)
        return 2
    md = to_markdown(rows)
    try:
        if args.md:
            write_text_atomic(args.md, md)
        else:
            sys.stdout.write(md)
        if args.csv:
            write_text_atomic(args.csv, to_csv(rows))
    except (OutputPathError, DiskFullError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""``bench/gpu_check.sh`` (issue 21 item 6): the GPU checks in one script. CI has no GPU, so its ``--cpu-smoke`` runs
the same five steps, tiny, on the CPU: each step must run to the end and print its figures, and the script must
refuse a GPU run without a GPU with one clear message."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.sh"


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", **extra}


def test_cpu_smoke_runs_every_step_and_prints_its_figures(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smoke", "--out", str(tmp_path)], cwd=tmp_path,
                          capture_output=True, text=True, env=_env(), timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, out[-4000:] + proc.stderr[-2000:]
    for name in ("das_speedup", "mixed_precision", "memory", "demo", "dvp_first_epoch"):
        assert re.search(rf"^  {name}: ok, \d+ s$", out, re.M), (name, out[-3000:])
        assert (tmp_path / f"{name}.log").is_file()
    # 1. DAS speed-up: a summary row per batch × k > 0, with ideal, speed-up [min, max], ratio and goal
    rows = re.findall(r"^\| vilt \| (\d+) \| (\d+) \| ([\d.]+) \| [\d.]+ \[[\d.]+, [\d.]+\] \| [\d.]+ \| 0\.95 \|", out,
                      re.M)
    assert sorted((int(b), int(k)) for b, k, _ in rows) == [(2, 1), (2, 2), (4, 1), (4, 2)]
    assert all(float(ideal) > 1.0 for _, _, ideal in rows)
    das = json.loads((tmp_path / "das_speedup.json").read_text())
    assert das["passed"] and sorted(das["models"]) == ["vilt@2", "vilt@4"]
    # 2. parity: ViLT, METER and LLaMA, each with nothing and with units skipped, within tolerance
    mp = json.loads((tmp_path / "mixed_precision.json").read_text())
    assert mp["dtype"] == "bf16" and not mp["wrong"]
    assert sorted(mp["results"]) == ["llama@k=0", "llama@k=2", "meter@k=0", "meter@k=2", "vilt@k=0", "vilt@k=2"]
    for r in mp["results"].values():
        assert 0 < r["rel_l2"] <= mp["tol"]  # > 0: the low-precision forward really ran in bf16
    # 3. memory against peft's LoRA; 4. the demo ran its four stages
    assert "lora (peft)" in out and "fits 80 GB" in out
    assert "[demo] summary" in out and re.search(r"^  demo \(its own clock\): .*total time +\d+ s", out, re.M)
    # 5. DVP's first epoch: the precompute + cached step against the uncached one, search and train
    dvp = json.loads((tmp_path / "dvp_first_epoch.json").read_text())
    assert sorted(dvp["first_epoch"]) == ["search", "train"]


def test_gpu_run_without_a_gpu_says_so_and_exits_2(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], cwd=tmp_path, capture_output=True,
                          text=True, env=_env(CUDA_VISIBLE_DEVICES=""), timeout=300)
    assert proc.returncode == 2
    assert "no CUDA device" in proc.stderr and "--cpu-smoke" in proc.stderr
    assert not list(tmp_path.glob("*.log"))  # nothing ran


def test_unknown_argument_is_refused(tmp_path):
    proc = subprocess.run(["bash", str(SCRIPT), "--cpu-smok"], cwd=tmp_path, capture_output=True, text=True,
                          env=_env(), timeout=60)
    assert proc.returncode == 2 and "unknown argument '--cpu-smok'" in proc.stderr

"""Data-path benchmark: samples/s of arrow → decoded, transformed, collated batch, and the memory cost of opening
a ~1 GB arrow file memory-mapped (our reader) vs reading it whole.

    python bench/data_loading.py [--arrow PATH] [--size-mb 1024] [--json out.json]

Each memory figure is the peak RSS (VmHWM) of a fresh subprocess, so the two numbers and their ratio come from
the same run on the same (page-cached) file.
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

VQA_SCHEMA = pa.schema([
    ("image", pa.binary()), ("questions", pa.list_(pa.string())), ("answers", pa.list_(pa.list_(pa.string()))),
    ("answer_labels", pa.list_(pa.list_(pa.int64()))), ("answer_scores", pa.list_(pa.list_(pa.float64()))),
    ("image_id", pa.int64()), ("question_id", pa.list_(pa.int64())), ("split", pa.string()),
])


def _rows(images: list[bytes], start: int, n_q: int = 5) -> pa.RecordBatch:
    n = len(images)
    ids = range(start, start + n)
    return pa.record_batch([
        pa.array(images, type=pa.binary()),
        pa.array([[f"what is in picture {i} number {q}?" for q in range(n_q)] for i in ids]),
        pa.array([[["yes"]] * n_q for _ in ids]),
        pa.array([[[i % 3129]] * n_q for i in ids], type=pa.list_(pa.list_(pa.int64()))),
        pa.array([[[1.0]] * n_q for _ in ids], type=pa.list_(pa.list_(pa.float64()))),
        pa.array(list(ids), type=pa.int64()),
        pa.array([[i * 10 + q for q in range(n_q)] for i in ids], type=pa.list_(pa.int64())),
        pa.array(["val"] * n),
    ], schema=VQA_SCHEMA)


def write_big_arrow(path: Path, size_mb: int, row_kb: int = 160) -> None:
    """Random 'JPEG-ish' bytes (JPEG magic + noise) in the VQA schema, written in small batches."""
    rng = np.random.default_rng(0)
    rows = size_mb * 1024 // row_kb
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, VQA_SCHEMA) as w:
        for start in range(0, rows, 64):
            n = min(64, rows - start)
            w.write_batch(_rows([b"\xff\xd8\xff\xe0" + rng.bytes(row_kb * 1024 - 4) for _ in range(n)], start))


def write_jpeg_arrow(path: Path, n_images: int) -> None:
    """Real 640x480 JPEGs (smooth gradients + noise, ~60-100 KB like COCO photos)."""
    from PIL import Image

    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:480, 0:640]
    images = []
    for i in range(n_images):
        base = np.stack([(xx * (i + 1)) % 256, (yy * 2 + i * 9) % 256, ((xx + yy) // 3) % 256], -1)
        arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
        buf = io.BytesIO()
        Image.fromarray(arr).save(buf, format="JPEG", quality=85)
        images.append(buf.getvalue())
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, VQA_SCHEMA) as w:
        w.write_batch(_rows(images, 0))


def throughput(root: Path, name: str, workers: int, batches: int, batch_size: int, image_size: int) -> dict:
    import torch
    from torch.utils.data import DataLoader

    from vlpeft.data.collate import Collator
    from vlpeft.data.datasets import VQADataset
    from vlpeft.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    ds = VQADataset(root, [name], transform_keys=["pixelbert"], image_size=image_size, tokenizer=tok, max_text_len=40)
    loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                        collate_fn=Collator(tok, {"vqa": 3129}), generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)  # worker start-up and first batch are not the steady state
    t0, n = time.perf_counter(), 0
    for _ in range(batches):
        n += len(next(it)["qid"])
    dt = time.perf_counter() - t0
    return {"workers": workers, "samples": n, "seconds": dt, "samples_per_s": n / dt}


PROBE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    import pyarrow as pa
    from vlpeft.data.arrow import load_split
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    peak = lambda: status("VmHWM")
    base = peak()
    t0 = time.perf_counter()
    if {mode!r} == "mmap":
        st = load_split({root!r}, [{name!r}], ["image", "questions"])
        texts = st.column_pylist("questions")  # what a dataset converts once
        n = len(st)
        for r in range(0, n, max(1, n // 32)):  # and a few image reads
            st.binary("image", r)
    else:
        table = pa.ipc.open_file(pa.OSFile({path!r})).read_all()
        n = table.num_rows
    print(peak(), base, time.perf_counter() - t0, n, status("RssAnon"), status("RssFile"))
""")


def peak_rss(path: Path, mode: str) -> dict:
    code = PROBE.format(repo=str(REPO), mode=mode, root=str(path.parent), name=path.stem, path=str(path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    peak, base, secs, rows, anon, filed = out.stdout.split()
    # RssFile = clean, shared page-cache pages mapped around reads (kernel read-ahead); RssAnon = private memory
    return {"mode": mode, "peak_rss_mb": int(peak) / 2**20, "baseline_rss_mb": int(base) / 2**20,
            "anon_rss_mb": int(anon) / 2**20, "file_rss_mb": int(filed) / 2**20,
            "open_seconds": float(secs), "rows": int(rows)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arrow", type=Path, help="an existing arrow file for the memory test (else one is generated)")
    ap.add_argument("--size-mb", type=int, default=1024, help="size of the generated arrow file")
    ap.add_argument("--batches", type=int, default=6, help="timed batches per worker setting")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    results: dict = {"cpus": os.cpu_count(), "batch_size": args.batch_size, "image_size": args.image_size}
    with tempfile.TemporaryDirectory(prefix="vlpeft_bench_") as tmp:
        tmp = Path(tmp)
        n_img = args.batch_size * (args.batches + 2)
        write_jpeg_arrow(tmp / "bench_jpeg.arrow", n_img)
        results["throughput"] = [throughput(tmp, "bench_jpeg", w, args.batches, args.batch_size, args.image_size)
                                 for w in (0, 2)]
        if args.arrow is not None:
            big = args.arrow.resolve()
        else:
            big = tmp / "bench_big.arrow"
            t0 = time.perf_counter()
            write_big_arrow(big, args.size_mb)
            results["generate_seconds"] = time.perf_counter() - t0
        results["arrow_file"] = str(big)
        results["arrow_file_mb"] = big.stat().st_size / 2**20
        mm, whole = peak_rss(big, "mmap"), peak_rss(big, "whole")
        results["memory"] = [mm, whole]
        results["peak_rss_ratio_whole_over_mmap"] = whole["peak_rss_mb"] / mm["peak_rss_mb"]

    print(f"\nfull path (arrow → decode → pixelbert {args.image_size} → collate), batch {args.batch_size}, "
          f"{results['cpus']} CPUs")
    print(f"{'workers':>8} {'samples':>8} {'seconds':>8} {'samples/s':>10}")
    for r in results["throughput"]:
        print(f"{r['workers']:>8} {r['samples']:>8} {r['seconds']:>8.2f} {r['samples_per_s']:>10.1f}")
    print(f"\nopening {results['arrow_file_mb']:.0f} MB arrow file ({mm['rows']} rows), peak RSS of a fresh process")
    print(f"{'reader':>24} {'peak RSS MB':>12} {'base MB':>8} {'anon MB':>8} {'file MB':>8} {'seconds':>8}")
    for r, label in ((mm, "memory-mapped (ours)"), (whole, "read whole (OSFile)")):
        print(f"{label:>24} {r['peak_rss_mb']:>12.1f} {r['baseline_rss_mb']:>8.1f} {r['anon_rss_mb']:>8.1f} "
              f"{r['file_rss_mb']:>8.1f} {r['open_seconds']:>8.3f}")
    print("(mapped: the 'file' part is page cache the kernel maps around the sampled image reads — read-ahead — "
          "shared and reclaimable; 'anon' is private memory)")
    print(f"ratio whole / memory-mapped: {results['peak_rss_ratio_whole_over_mmap']:.1f}x")
    if args.json:
        from vlpeft._io import write_json_atomic

        write_json_atomic(args.json, results)
        print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    main()

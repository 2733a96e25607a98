"""Data-path benchmark: our VQA reader (vlpeft.data.datasets.VQADataset) against a peer, the original ViLT reader's
strategy (bench/vilt_reader.py: memory-mapped ``read_all``, the question column converted to Python up front, a
dict index, per-item row access, MinMaxResize → ToTensor → Normalize), run interleaved in one process.

    python bench/data_loading.py [--rounds 5] [--items 32] [--batches 3] [--rows 83783] [--json out.json]
    python bench/data_loading.py --whole-file      # also: memory-mapped vs reading the whole file (not a peer)

Figures, each a ratio ours / peer per round, reported as median [min, max] over the rounds (below 1 = we use
less; samples/s above 1 = we are faster):

1. per-item CPU time of ``__getitem__`` on 640×480 JPEGs, pixelbert at 384, with 1 torch thread (as in a
   DataLoader worker) and with the default threads (``num_workers=0``: the main process);
2. samples/s of a DataLoader (batch 32, each side with its own collate) with 0 and 2 workers (wall clock);
3. construction time (CPU and wall) and private memory (``/proc/self/smaps_rollup`` Private_Clean +
   Private_Dirty, and its anonymous part) of opening a VQAv2-sized file (83,783 rows, 418,915 questions, small
   JPEGs), each in a fresh subprocess, plus the bytes pickled into a spawned worker.

Before timing, the two readers' items are compared (same texts, token ids, labels, scores, answers, question ids;
images equal to 1e-5 — the peer's ToTensor + Normalize rounds differently in the last bits); the bench exits 1 if
they differ and never on timing noise.
"""

from __future__ import annotations

import argparse
import gc
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import numpy as np  # noqa: E402
import pyarrow as pa  # noqa: E402

VQA_SCHEMA = pa.schema([
    ("image", pa.binary()), ("questions", pa.list_(pa.string())), ("answers", pa.list_(pa.list_(pa.string()))),
    ("answer_labels", pa.list_(pa.list_(pa.int64()))), ("answer_scores", pa.list_(pa.list_(pa.float64()))),
    ("image_id", pa.int64()), ("question_id", pa.list_(pa.int64())), ("split", pa.string()),
])
LABELS = 3129  # VQAv2 answer vocabulary


# ------------------------------------------------------------------------------------------- files
def _text_columns(ids: range, n_q: int, rng: np.random.Generator) -> list[pa.Array]:
    """VQA text columns like VQAv2's: n_q questions per image, 1–4 scored answers per question."""
    n_ans = rng.integers(1, 5, size=(len(ids), n_q))
    answers, labels, scores = [], [], []
    for r, i in enumerate(ids):
        labs = [[int((i * 7 + q * 131 + k * 17) % LABELS) for k in range(n_ans[r, q])] for q in range(n_q)]
        labels.append(labs)
        answers.append([[f"answer {lab}" for lab in qs] for qs in labs])
        scores.append([[round(0.3 * (k + 1), 1) for k in range(len(qs))] for qs in labs])
    return [
        pa.array([[f"what is the object number {q} in picture {i}?" for q in range(n_q)] for i in ids]),
        pa.array(answers, type=pa.list_(pa.list_(pa.string()))),
        pa.array(labels, type=pa.list_(pa.list_(pa.int64()))),
        pa.array(scores, type=pa.list_(pa.list_(pa.float64()))),
        pa.array(list(ids), type=pa.int64()),
        pa.array([[i * 10 + q for q in range(n_q)] for i in ids], type=pa.list_(pa.int64())),
        pa.array(["train"] * len(ids)),
    ]


def photo_jpeg(i: int, w: int = 640, h: int = 480, quality: int = 85) -> bytes:
    """A photo-like JPEG (smooth gradients + noise, ~90 KB at 640×480 like a COCO image)."""
    from PIL import Image

    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([(xx * (i % 7 + 1)) % 256, (yy * 2 + i * 9) % 256, ((xx + yy) // 3) % 256], -1)
    arr = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def write_vqa_arrow(path: Path, rows: int, *, n_q: int = 5, image_px: tuple[int, int] = (640, 480),
                    distinct_images: int = 64, batch_rows: int = 512) -> Path:
    """A VQA-layout arrow file of ``rows`` rows × ``n_q`` questions; images cycle over ``distinct_images`` JPEGs.
    ``batch_rows``: rows per record batch (512 = write_arrow's; the original's writer made one batch per file)."""
    rng = np.random.default_rng(0)
    images = [photo_jpeg(i, *image_px) for i in range(distinct_images)]
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, VQA_SCHEMA) as w:
        for start in range(0, rows, batch_rows):
            ids = range(start, min(rows, start + batch_rows))
            w.write_batch(pa.record_batch([pa.array([images[i % distinct_images] for i in ids], pa.binary()),
                                           *_text_columns(ids, n_q, rng)], schema=VQA_SCHEMA))
    return path


# ------------------------------------------------------------------------------------------- readers
def make_readers(root: Path, name: str, image_size: int):
    from vilt_reader import ViltVQAReader

    from vlpeft.data.datasets import VQADataset
    from vlpeft.data.tokenizer import load_tokenizer

    tok = load_tokenizer()
    ours = VQADataset(root, [name], transform_keys=["pixelbert"], image_size=image_size, tokenizer=tok,
                      max_text_len=40)
    peer = ViltVQAReader(str(root), [name], tokenizer=tok, image_size=image_size, max_text_len=40)
    return ours, peer


def check_same(ours, peer, indices) -> list[str]:
    """Differences between the two readers' items (empty: same)."""
    import torch

    bad = []
    for i in indices:
        a, b = ours[i], peer[i]
        text, enc = b["text"]
        same = (a["text"] == text and a["text_encoding"]["input_ids"] == enc["input_ids"]
                and a["text_encoding"]["attention_mask"] == enc["attention_mask"] and a["qid"] == b["qid"]
                and a["vqa_labels"] == b["vqa_labels"] and a["vqa_scores"] == b["vqa_scores"]
                and a["vqa_answer"] == b["vqa_answer"])
        img_a, img_b = a["image"], b["image"][0]
        if not same:
            bad.append(f"item {i}: text/labels differ")
        elif img_a.shape != img_b.shape or not torch.allclose(img_a, img_b, atol=1e-5, rtol=0):
            bad.append(f"item {i}: image {tuple(img_a.shape)} vs {tuple(img_b.shape)}, max diff "
                       f"{(img_a - img_b).abs().max() if img_a.shape == img_b.shape else 'n/a'}")
    return bad


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "n": len(values)}


def fmt(s: dict, digits: int = 3) -> str:
    return f"{s['median']:.{digits}f} [{s['min']:.{digits}f}, {s['max']:.{digits}f}]"


def per_item(ours, peer, indices, rounds: int, threads: int) -> dict:
    """CPU seconds per item, interleaved (the order alternates per round)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        for ds in (ours, peer):  # warm-up: first-touch costs are not the steady state
            for i in indices[:4]:
                ds[i]
        t = {"ours": [], "peer": []}
        for r in range(rounds):
            order = (("ours", ours), ("peer", peer)) if r % 2 == 0 else (("peer", peer), ("ours", ours))
            for name, ds in order:
                gc.collect()
                c0 = time.process_time()
                for i in indices:
                    ds[i]
                t[name].append((time.process_time() - c0) / len(indices))
    finally:
        torch.set_num_threads(before)
    ratios = [a / b for a, b in zip(t["ours"], t["peer"])]
    return {"threads": threads, "ours_ms": spread([x * 1e3 for x in t["ours"]]),
            "peer_ms": spread([x * 1e3 for x in t["peer"]]), "ratio": spread(ratios)}


def loader_throughput(ours, peer, workers: int, rounds: int, batches: int, batch_size: int) -> dict:
    import torch
    from torch.utils.data import DataLoader
    from vilt_reader import collate_original

    from vlpeft.data.collate import Collator

    collates = {"ours": Collator(ours.tokenizer, {"vqa": LABELS}), "peer": collate_original}
    sps = {"ours": [], "peer": []}
    for r in range(rounds):
        order = (("ours", ours), ("peer", peer)) if r % 2 == 0 else (("peer", peer), ("ours", ours))
        for name, ds in order:
            loader = DataLoader(ds, batch_size=batch_size, shuffle=True, num_workers=workers,
                                collate_fn=collates[name], generator=torch.Generator().manual_seed(r))
            it = iter(loader)
            next(it)  # worker start-up and the first batch are not the steady state
            t0, n = time.perf_counter(), 0
            for _ in range(batches):
                n += len(next(it)["qid"])
            sps[name].append(n / (time.perf_counter() - t0))
            del it, loader
    ratios = [a / b for a, b in zip(sps["ours"], sps["peer"])]
    return {"workers": workers, "ours_sps": spread(sps["ours"]), "peer_sps": spread(sps["peer"]),
            "ratio": spread(ratios)}


OPEN_PROBE = textwrap.dedent("""
    import gc, json, pickle, sys, time
    sys.path.insert(0, {repo!r}); sys.path.insert(0, {bench!r})
    import torch
    from vilt_reader import ViltVQAReader
    from vlpeft.data.datasets import VQADataset
    from vlpeft.data.tokenizer import load_tokenizer
    def rollup():
        d = dict()
        for line in open("/proc/self/smaps_rollup"):
            f = line.split()
            if len(f) == 3 and f[2] == "kB":
                d[f[0].rstrip(":")] = int(f[1]) * 1024
        return d
    def mem():
        d = rollup()
        return d["Private_Clean"] + d["Private_Dirty"], d["Anonymous"]
    tok = load_tokenizer()
    tok("warm up", padding="max_length", truncation=True, max_length=40)
    gc.collect()
    (base, base_anon), c0, w0 = mem(), time.process_time(), time.perf_counter()
    if {which!r} == "ours":
        ds = VQADataset({root!r}, [{name!r}], transform_keys=["pixelbert"], image_size=384, tokenizer=tok)
    else:
        ds = ViltVQAReader({root!r}, [{name!r}], tokenizer=tok, image_size=384)
    cpu, wall = time.process_time() - c0, time.perf_counter() - w0
    gc.collect()
    priv, anon = mem()
    n = len(ds)
    if {which!r} == "ours":
        pickled = len(pickle.dumps(ds))  # what a spawned worker receives (the table is re-opened there)
        tok_bytes = len(pickle.dumps(tok))
    else:  # its Python-side state (a spawned worker would also receive the table's buffers)
        pickled = len(pickle.dumps((ds.all_texts, ds.index_mapper, ds.table_names, tok)))
        tok_bytes = len(pickle.dumps(tok))
    print(json.dumps(dict(cpu=cpu, wall=wall, private=priv - base, anon=anon - base_anon, items=n,
                          pickled=pickled - tok_bytes)))
""")


def open_cost(root: Path, name: str, rounds: int) -> dict:
    res = {"ours": [], "peer": []}
    for r in range(rounds):
        for which in (("ours", "peer") if r % 2 == 0 else ("peer", "ours")):
            code = OPEN_PROBE.format(repo=str(REPO), bench=str(REPO / "bench"), which=which, root=str(root),
                                     name=name)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                 timeout=600, env=dict(os.environ, OMP_NUM_THREADS="1"))
            res[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    o, p = res["ours"], res["peer"]
    if {x["items"] for x in o} != {x["items"] for x in p}:
        raise SystemExit(f"the readers see different item counts: {o[0]['items']} vs {p[0]['items']}")
    out = {"items": o[0]["items"]}
    for key in ("cpu", "wall", "private", "anon", "pickled"):
        # a ratio only where the peer's figure is positive (a floor of 1 would turn sub-second / sub-byte peers into
        # "ours" itself); none at all when the peer measured 0 in every round
        ratios = [a[key] / b[key] for a, b in zip(o, p) if b[key] > 0]
        out[key] = {"ours": spread([x[key] for x in o]), "peer": spread([x[key] for x in p]),
                    "ratio": spread(ratios) if ratios else None}
    return out


# ------------------------------------------------------------------------------------------- not a peer
WHOLE_PROBE = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    import pyarrow as pa
    from vlpeft.data.arrow import load_split
    def status(key):
        for line in open("/proc/self/status"):
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    base = status("VmHWM")
    t0 = time.perf_counter()
    if {mode!r} == "mmap":
        st = load_split({root!r}, [{name!r}], ["image", "questions"])
        n = len(st)
    else:
        n = pa.ipc.open_file(pa.OSFile({path!r})).read_all().num_rows
    print(status("VmHWM") - base, time.perf_counter() - t0, n)
""")


def mmap_vs_whole(path: Path) -> dict:
    """Memory-mapped open vs reading the whole file into memory (a baseline no peer uses; kept for scale)."""
    out = {}
    for mode in ("mmap", "whole"):
        code = WHOLE_PROBE.format(repo=str(REPO), mode=mode, root=str(path.parent), name=path.stem, path=str(path))
        peak, secs, rows = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                                          timeout=300).stdout.split()
        out[mode] = {"peak_rss_growth_mb": int(peak) / 2**20, "seconds": float(secs), "rows": int(rows)}
    return out


def print_per_item(rows: list[dict]) -> None:
    print("\nper-item CPU time of __getitem__ (ratio < 1: ours is cheaper)")
    print(f"{'torch threads':>18} {'ours ms':>24} {'peer ms':>24} {'ratio':>24}")
    for r in rows:
        label = f"{r['threads']} ({'worker' if r['threads'] == 1 else 'num_workers=0'})"
        print(f"{label:>18} {fmt(r['ours_ms'], 2):>24} {fmt(r['peer_ms'], 2):>24} {fmt(r['ratio']):>24}", flush=True)


def print_loader(rows: list[dict], args) -> None:
    print(f"\nDataLoader samples/s, batch {args.batch_size}, {args.batches} timed batches (ratio > 1: ours is faster)")
    print(f"{'workers':>8} {'ours':>24} {'peer':>24} {'ratio':>24}")
    for r in rows:
        print(f"{r['workers']:>8} {fmt(r['ours_sps'], 1):>24} {fmt(r['peer_sps'], 1):>24} {fmt(r['ratio']):>24}",
              flush=True)


def print_open(o: dict, args) -> None:
    print(f"\nopening a VQAv2-sized file ({args.rows} rows, {o['items']} questions), fresh process each "
          f"(ratio < 1: ours is cheaper)")
    print(f"{'':>24} {'ours':>30} {'peer':>30} {'ratio':>24}")
    for key, label, scale, d in (("cpu", "construction CPU s", 1, 3), ("wall", "construction wall s", 1, 3),
                                 ("private", "private memory MB", 2**20, 1),
                                 ("anon", "of which anonymous MB", 2**20, 1),
                                 ("pickled", "pickled to a worker MB", 2**20, 2)):
        sc = lambda s: {k: (v / scale if k != "n" else v) for k, v in s.items()}
        print(f"{label:>24} {fmt(sc(o[key]['ours']), d):>30} {fmt(sc(o[key]['peer']), d):>30} "
              f"{fmt(o[key]['ratio']) if o[key]['ratio'] else 'n/a (peer 0)':>24}")
    print("(private memory: smaps_rollup Private_Clean + Private_Dirty, after construction minus before. It includes "
          "file pages mapped by this process alone — the column buffers read and the kernel's read-ahead around "
          "them: page cache, reclaimable, shared once another process maps it; 'anonymous' is the process's own "
          "heap. Peer pickled = its Python state.)", flush=True)


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="interleaved rounds per figure")
    ap.add_argument("--items", type=int, default=32, help="items per contender per round (per-item CPU time)")
    ap.add_argument("--batches", type=int, default=3, help="timed loader batches per contender per round")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=384)
    ap.add_argument("--rows", type=int, default=83783, help="rows of the VQAv2-sized file (5 questions each)")
    ap.add_argument("--batch-rows", type=int, default=512, help="rows per record batch in the generated files")
    ap.add_argument("--skip", default="", help="comma-separated sections to skip: item,loader,open")
    ap.add_argument("--whole-file", action="store_true", help="also: memory-mapped open vs reading the whole file")
    ap.add_argument("--tmp", type=Path, default=None, help="folder for the generated files (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    import torch

    res: dict = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
                 "image_size": args.image_size, "batch_size": args.batch_size}
    with tempfile.TemporaryDirectory(prefix="vlpeft_bench_", dir=args.tmp) as tmp:
        tmp = Path(tmp)
        write_vqa_arrow(tmp / "vqa_photos.arrow", 160, batch_rows=args.batch_rows)
        ours, peer = make_readers(tmp, "vqa_photos", args.image_size)
        rng = np.random.default_rng(0)
        indices = [int(i) for i in rng.permutation(len(ours))[:max(args.items, 8)]]
        bad = check_same(ours, peer, indices[:16])
        if bad:
            print("WRONG RESULT: the readers' items differ:\n  " + "\n  ".join(bad[:10]))
            return 1
        print("items agree (16 checked: texts, token ids, labels, scores, answers, qids; images to 1e-5)")
        print(f"\nours / peer (original ViLT reader strategy), median [min, max] over {args.rounds} interleaved "
              f"rounds; {res['cpus']} CPUs, pixelbert {args.image_size} on 640x480 JPEGs", flush=True)
        if "item" not in skip:
            res["per_item"] = [per_item(ours, peer, indices[:args.items], args.rounds, th)
                               for th in (1, torch.get_num_threads())]
            print_per_item(res["per_item"])
        if "loader" not in skip:
            res["loader"] = [loader_throughput(ours, peer, w, args.rounds, args.batches, args.batch_size)
                             for w in (0, 2)]
            print_loader(res["loader"], args)
        if "open" not in skip or args.whole_file:
            write_vqa_arrow(tmp / "vqav2_sized.arrow", args.rows, image_px=(64, 48), batch_rows=args.batch_rows)
        if "open" not in skip:
            res["open"] = open_cost(tmp, "vqav2_sized", args.rounds)
            print_open(res["open"], args)
        if args.whole_file:
            res["mmap_vs_whole"] = m = mmap_vs_whole(tmp / "vqav2_sized.arrow")
            print("\nnot a peer — memory-mapped open vs reading the whole file into memory (peak RSS growth):")
            for k in ("mmap", "whole"):
                print(f"{k:>8} {m[k]['peak_rss_growth_mb']:10.1f} MB {m[k]['seconds']:8.3f} s")

    if args.json:
        from vlpeft._io import write_json_atomic

        write_json_atomic(args.json, res)
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Generation against transformers' own ``generate`` on the same weights: VL-BART, VL-T5, ViT + GPT-2.

Issue 21 item 3: our ``generate_ids`` must be at least as fast as transformers' ``generate`` on the same model
(goal: speed = t(transformers) / t(ours) ≥ 1.0). Models, random weights at base size:

- ``bart``: VL-BART on BART-base's shape (``vl_config=bart_base``), text-only batch (no visual tokens: the bare model
  is then exactly HF's), peer ``BartForConditionalGeneration.generate(input_ids=…, attention_mask=…)`` on the very
  module our backbone wraps;
- ``t5``: VL-T5 on T5-base's shape, the same way;
- ``gpt2``: ViT + GPT-2 (ViT-B/16 + GPT-2 small, the visual prefix on), peer: HF's ``ViTModel`` pooler output as the
  prefix embedding, then ``GPT2LMHeadModel.generate(inputs_embeds=[prefix, token embeddings])`` (what the original
  RT code does by hand).

Each model and beam count (``--beams``, default greedy and 5 beams) runs ours and the peer alternately (the order
flips every round) after warm-up rounds; ``--new-tokens`` tokens every time (``min_new_tokens`` keeps EOS out, so
both do the same number of steps). Neither side runs under an outer ``no_grad``: each is called as a caller would
(transformers' ``generate`` disables grad itself). Per round the time ratio t(ours) / t(peer) (goal ≤ 1.0, i.e.
speed ≥ 1.0×) is taken in CPU time (``time.process_time``: steadier on a shared machine) and in wall time; the report
gives median [min, max] over the rounds.

Where the time goes, without timing noise: one profiled call per side counts the aten ops run and the Python
function calls made (``ops ours/peer``, ``py calls ours/peer``: equal work gives 1.000) and compares the matrix
products with their input shapes (``same GEMMs``: where nearly all the time goes). ``--graph-row`` adds a
third contender, ours with the autograd graph recorded for our encoder (the path before ``generate_ids`` ran under
``no_grad``), timed in the same interleaved rounds: the 3–7 % that VL-BART / VL-T5 lost to transformers (issue 21)
was that graph — the encoder's activations saved and held through the whole decoding loop, which transformers'
``generate`` never records for its own encoder.

    python bench/generate_vs_hf.py [--model bart,t5,gpt2] [--beams 1,5] [--batch 4] [--repeats 7] [--warmup 1]
    python bench/generate_vs_hf.py --quick    # batch 2, 8 text tokens, 10 new tokens, 3 rounds, no warm-up
    python bench/generate_vs_hf.py --quick --tiny --repeats 1    # smoke run on test-size models (tests use it)

Timing never fails the bench. It exits 1 only on a wrong result: our ids differ from transformers' ids, or either
side's ids change between rounds.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft._io import write_json_atomic  # noqa: E402
from vlpeft.backbones._protocol import LayerPlan  # noqa: E402
from vlpeft.backbones.vit_lm import build_vit_lm  # noqa: E402
from vlpeft.backbones.vl_seq2seq import build_vl_seq2seq  # noqa: E402

MODELS = ("bart", "t5", "gpt2")
PLAN = LayerPlan()


def build(model: str, tiny: bool = False) -> Any:
    """Base size; ``tiny``: the test-size models on the bert-base-uncased vocabulary (a smoke run of the bench)."""
    torch.manual_seed(0)
    if model == "gpt2":
        vit, lm = ("test_vit_tiny", "test_gpt2_tiny") if tiny else ("vit_base_patch16_224_in21k", "gpt2")
        return build_vit_lm({"vit_model": vit, "lm_config": lm, "tokenizer": "bert-base-uncased"}, "gpt2").eval()
    if tiny:  # the tokenizer gives T5 tiny its decoder start / pad ids
        return build_vl_seq2seq({"vl_config": f"test_vl_{model}_tiny", "tokenizer": "bert-base-uncased"}, model).eval()
    return build_vl_seq2seq({"vl_config": f"{model}_base"}, model).eval()


def make_batch(model: str, args) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, n = args.batch, args.text_len
    batch = {"text_ids": torch.randint(10, 30000, (b, n), generator=g),
             "text_masks": torch.ones(b, n, dtype=torch.long)}
    if model == "gpt2":
        side = 32 if args.tiny else 224
        batch["image"] = torch.randn(b, 3, side, side, generator=g)
    return batch


def contenders(bb: Any, model: str, batch: dict, beams: int, new: int) -> tuple[Callable, Callable]:
    """(ours, peer): each returns the generated ids without the prompt."""
    ids, mask = batch["text_ids"], batch["text_masks"]

    def ours() -> torch.Tensor:
        return bb.generate_ids(batch, PLAN, num_beams=beams, max_new_tokens=new)

    def ours_graph() -> torch.Tensor:  # generate_ids without its no_grad: our encoder's graph is recorded
        with torch.enable_grad():
            return type(bb).generate_ids.__wrapped__(bb, batch, PLAN, num_beams=beams, max_new_tokens=new)
    ours.graph = ours_graph

    if model != "gpt2":
        hf = bb.seq2seq
        hf.generation_config.min_new_tokens = new  # the same number of steps on both sides (shared config)

        def peer() -> torch.Tensor:
            return hf.generate(input_ids=ids, attention_mask=mask, num_beams=beams, max_new_tokens=new,
                               do_sample=False)
        return ours, peer

    gpt2, vit = bb.gpt2, bb.vit
    cfg = gpt2.config
    gpt2.generation_config.min_new_tokens = new

    def peer() -> torch.Tensor:
        prefix = vit(pixel_values=batch["image"]).pooler_output.unsqueeze(1)
        embeds = torch.cat([prefix, gpt2.transformer.wte(ids)], dim=1)
        full = torch.cat([mask.new_ones(mask.shape[0], 1), mask], dim=1)
        return gpt2.generate(inputs_embeds=embeds, attention_mask=full, num_beams=beams, max_new_tokens=new,
                             do_sample=False, eos_token_id=cfg.eos_token_id, pad_token_id=cfg.eos_token_id,
                             bos_token_id=cfg.bos_token_id)
    return ours, peer


def spread(v: list[float]) -> dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


_GEMMS = ("aten::mm", "aten::bmm", "aten::addmm", "aten::baddbmm")


def work(fn: Callable) -> tuple[int, int, Counter]:
    """(aten ops, Python function calls, matrix products by input shapes) of one call: the same work on both sides
    gives the same counts and the same products."""
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        fn()
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::"))
    gemms = Counter({(e.key, str(e.input_shapes)): e.count for e in prof.key_averages(group_by_input_shape=True)
                     if e.key in _GEMMS})
    pr = cProfile.Profile()
    pr.enable()
    fn()
    pr.disable()
    calls = sum(v[1] for v in pstats.Stats(pr).stats.values())
    return ops, calls, gemms


def timed(fn: Callable) -> tuple[float, float, torch.Tensor]:
    # no outer no_grad: each side runs as a caller would call it (transformers' generate disables grad itself)
    c, t = time.process_time(), time.perf_counter()
    ids = fn()
    return time.process_time() - c, time.perf_counter() - t, ids


def measure(bb: Any, model: str, batch: dict, beams: int, args) -> tuple[dict[str, Any], list[str]]:
    ours, peer = contenders(bb, model, batch, beams, args.new_tokens)
    errors: list[str] = []
    _, _, ref_ours = timed(ours)
    _, _, ref_peer = timed(peer)
    if not torch.equal(ref_ours, ref_peer):
        errors.append(f"{beams} beams: our ids differ from transformers' ({tuple(ref_ours.shape)} vs "
                      f"{tuple(ref_peer.shape)})")
    sides = [("ours", ours), ("peer", peer)] + ([("graph", ours.graph)] if args.graph_row else [])
    for _ in range(args.warmup):
        for _, fn in sides:
            timed(fn)
    (ops_o, py_o, mm_o), (ops_p, py_p, mm_p) = work(ours), work(peer)
    cpu: dict[str, list[float]] = {name: [] for name, _ in sides}
    wall: dict[str, list[float]] = {name: [] for name, _ in sides}
    for r in range(args.repeats):
        order = sides if r % 2 == 0 else sides[::-1]
        for name, fn in order:
            c, w, ids = timed(fn)
            cpu[name].append(c)
            wall[name].append(w)
            if not torch.equal(ids, ref_peer if name == "peer" else ref_ours):
                errors.append(f"{beams} beams, round {r}: {name} ids changed between rounds")
    ratio = lambda t, name: spread([a / p for a, p in zip(t[name], t["peer"])])  # noqa: E731
    res = {"beams": beams, "new_tokens": int(ref_ours.shape[1]), "cpu_s": cpu, "wall_s": wall,
           "ops": {"ours": ops_o, "peer": ops_p}, "py_calls": {"ours": py_o, "peer": py_p},
           "same_gemms": mm_o == mm_p, "gemms": sum(mm_o.values()),
           "ratio_cpu": ratio(cpu, "ours"), "ratio_wall": ratio(wall, "ours")}
    if args.graph_row:
        res["graph_ratio_cpu"], res["graph_ratio_wall"] = ratio(cpu, "graph"), ratio(wall, "graph")
    return res, errors


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="bart,t5,gpt2")
    ap.add_argument("--beams", default="1,5")
    ap.add_argument("--batch", type=int, default=None, help="default 4")
    ap.add_argument("--text-len", type=int, default=None, help="default 20")
    ap.add_argument("--new-tokens", type=int, default=None, help="default 20")
    ap.add_argument("--repeats", type=int, default=None, help="default 7")
    ap.add_argument("--warmup", type=int, default=None, help="default 1")
    ap.add_argument("--quick", action="store_true", help="batch 2, 8 text tokens, 10 new tokens, 3 rounds")
    ap.add_argument("--tiny", action="store_true", help="test-size models (a smoke run; timings mean little)")
    ap.add_argument("--graph-row", action="store_true",
                    help="also time ours with the encoder's autograd graph recorded (the pre-fix path)")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    full = dict(batch=4, text_len=20, new_tokens=20, repeats=7, warmup=1)
    quick = dict(batch=2, text_len=8, new_tokens=10, repeats=3, warmup=0)
    for key, value in (quick if args.quick else full).items():  # explicit options win over --quick
        if getattr(args, key) is None:
            setattr(args, key, value)
    models = [m.strip() for m in args.model.split(",") if m.strip()]
    bad = [m for m in models if m not in MODELS]
    if bad:
        ap.error(f"--model {bad} not in {list(MODELS)}")
    beams = [int(b) for b in args.beams.split(",")]
    print(f"torch threads {torch.get_num_threads()}, batch {args.batch}, {args.text_len} text tokens, "
          f"{args.new_tokens} new tokens, {args.repeats} rounds after {args.warmup} warm-up; ratio = our time / "
          f"transformers' per round, interleaved (goal ≤ 1.0: generation ≥ 1.0× transformers'), median [min, max]")
    print("| model | beams | new ids | CPU s ours | CPU s transformers | ours/peer CPU | ours/peer wall | "
          "ops ours/peer | py calls ours/peer | same GEMMs |" + (" with graph/peer CPU |" if args.graph_row else ""))
    print("|---|---|---|---|---|---|---|---|---|---|" + ("---|" if args.graph_row else ""))
    f = lambda s: f"{s['median']:.3f} [{s['min']:.3f}, {s['max']:.3f}]"  # noqa: E731
    out: dict[str, Any] = {"args": vars(args), "results": {}}
    errors: list[str] = []
    for m in models:
        bb = build(m, args.tiny)
        batch = make_batch(m, args)
        for nb in beams:
            res, errs = measure(bb, m, batch, nb, args)
            out["results"][f"{m}/beams{nb}"] = res
            errors += [f"{m}: {e}" for e in errs]
            ops, py = res["ops"], res["py_calls"]
            print(f"| {m} | {nb} | {res['new_tokens']} | {statistics.median(res['cpu_s']['ours']):.3f} | "
                  f"{statistics.median(res['cpu_s']['peer']):.3f} | {f(res['ratio_cpu'])} | {f(res['ratio_wall'])} | "
                  f"{ops['ours']}/{ops['peer']} = {ops['ours'] / ops['peer']:.3f} | "
                  f"{py['ours']}/{py['peer']} = {py['ours'] / py['peer']:.3f} | "
                  f"{'yes' if res['same_gemms'] else 'NO'} ({res['gemms']}) |"
                  + (f" {f(res['graph_ratio_cpu'])} |" if args.graph_row else ""), flush=True)
        del bb
    if args.json:
        write_json_atomic(args.json, out)
    for e in errors:
        print("WRONG:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

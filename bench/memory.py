"""Peak memory of DAS on a LLaMA-shaped stack against a peft LoRA baseline (issue 21 item 4).

Contenders, all on the same random LLaMA (``--width``: ``7b`` = LLaMA-7B's layer shape, 4096 / 11008 / 32 heads, or
``quick`` = 512 / 1376 / 8 heads; ``--layers`` deep; the LM in ``--dtype``), one training step each (forward,
backward, AdamW step over the trainable parameters; ``--batch`` × ``--seq`` tokens):

- ``das search``: ``pet=das_llama`` (LaVIN-DAS: in-block b 8, skip b 32), every adapter trainable, nothing skipped
  (the worst case of a search round: each layer the sampled sub-network skips lowers the figures);
- ``das train``: the same model, the in-block adapters trainable (nothing skipped: the most a trained placement
  can cost);
- ``das train + ckpt``: the same with ``grad_checkpointing=True``;
- ``lora (peft)``: the peer: peft's LoRA r 8 on q_proj / v_proj of the same HF model, the same dtype and autocast.

Memory: the bytes autograd saves for the backward during the step (``saved_tensors_hooks``; each storage once,
the parameters' own storages left out: the activations, exact on any device — a CPU resident set says nothing once
the allocator reuses freed blocks), and on CUDA also ``torch.cuda.max_memory_allocated`` over the step minus what
was allocated before it. Each contender is measured ``--repeats`` times, round-robin; figures are median [min, max],
the peer measured in the same run (with checkpointing, the layer inputs the checkpoint holds, B·T·d each, are
added). Each contender is built at ``--layers`` and at one layer, so a per-layer figure
is the difference divided by ``layers − 1``; with the per-layer weights and trainable bytes (exact, from the
parameters) this gives the arithmetic for a 32-layer stack on one 80 GB GPU (LLaMA-7B from a ``--width 7b`` run).

    python bench/memory.py --quick                       # width 512, 3 layers, 2 × 64 tokens, fp32, CPU (~1 min)
    python bench/memory.py --width 7b --layers 3 --dtype bf16 --batch 4 --seq 512 --device cuda

Memory figures never fail the bench; it exits 1 only if a step gives a non-finite loss or the das contenders'
first losses differ with and without checkpointing (same weights, same input: they must agree).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vlpeft._io import write_json_atomic  # noqa: E402

WIDTHS = {"7b": dict(hidden_size=4096, intermediate_size=11008, num_attention_heads=32, num_key_value_heads=32),
          "quick": dict(hidden_size=512, intermediate_size=1376, num_attention_heads=8, num_key_value_heads=8)}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
GB = 1e9


def llama_shape(args, layers: int) -> dict[str, Any]:
    return dict(WIDTHS[args.width], vocab_size=args.vocab, num_hidden_layers=layers, rms_norm_eps=1e-6,
                max_position_embeddings=max(2048, args.seq), bos_token_id=1, eos_token_id=2, pad_token_id=0)


class Meter:
    """What one step holds: the bytes autograd saves for the backward (activations; storages counted once, the
    parameters' own storages left out: ``saved_tensors_hooks``, exact on any device), and on CUDA the allocator's
    peak over the step (``max_memory_allocated`` minus what was allocated before it)."""

    def __init__(self, device: str) -> None:
        self.cuda = device.startswith("cuda")

    def measure(self, model, fn: Callable[[], Any]) -> tuple[int, int | None, Any]:
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            s = t.untyped_storage()
            if s.data_ptr() not in params:
                seen[s.data_ptr()] = s.nbytes()
            return t

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = fn()
        peak = None
        if self.cuda:
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
        return sum(seen.values()), peak, out


def build_das(args, layers: int, ckpt: bool):
    from vlpeft.backbones.plm import build_plm_backbone
    from vlpeft.config import DEFAULTS
    from vlpeft.pet import PRESETS, inject

    torch.manual_seed(0)
    bb = build_plm_backbone({"language_model": "LLAMA", "plm_config": llama_shape(args, layers),
                             "plm_dtype": args.dtype, "grad_checkpointing": ckpt})
    report = inject(bb, PRESETS.build("das_llama", DEFAULTS))
    pet = set(report.param_names())
    for n, p in bb.named_parameters():
        p.requires_grad_(n in pet)
    with torch.no_grad():  # LaVIN's zero-init up-projections: give them train-like values
        g = torch.Generator().manual_seed(1)
        for n, p in bb.named_parameters():
            if "up_sampler" in n:
                p.copy_(0.02 * torch.randn(p.shape, generator=g).to(p.dtype))
    return bb.to(args.device).train()


def build_lora(args, layers: int):
    from peft import LoraConfig, get_peft_model

    from vlpeft.backbones._plm import build_hf_plm

    torch.manual_seed(0)
    hf = build_hf_plm("LLAMA", llama_shape(args, layers), None, dtype=DTYPES[args.dtype])
    model = get_peft_model(hf, LoraConfig(r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"]))
    return model.to(args.device).train()


def make_step(name: str, model, args, layers: int) -> Callable[[], float]:
    from vlpeft.backbones._protocol import LayerPlan

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, args.vocab, (args.batch, args.seq), generator=g).to(args.device)
    masks = torch.ones_like(ids)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    skip: list[int] = []  # the worst case of a search round: the sampled sub-network skips nothing
    dtype = DTYPES[args.dtype]
    dev = torch.device(args.device)

    def step() -> float:
        opt.zero_grad(set_to_none=True)
        if name.startswith("das"):
            feats = model({"text_ids": ids, "text_masks": masks}, LayerPlan.of(skip))["cls_feats"]
        else:
            ctx = torch.autocast(dev.type, dtype=dtype) if dtype != torch.float32 else torch.autocast(dev.type,
                                                                                                      enabled=False)
            with ctx:
                feats = model(input_ids=ids, attention_mask=masks).last_hidden_state[:, -1]
        loss = feats.float().pow(2).mean()
        loss.backward()
        opt.step()
        return float(loss.detach())

    return step


CONTENDERS = ("das search", "das train", "das train + ckpt", "lora (peft)")


def build(name: str, args, layers: int):
    if name == "lora (peft)":
        return build_lora(args, layers)
    m = build_das(args, layers, ckpt=name.endswith("ckpt"))
    if name.startswith("das train"):  # nothing skipped: the skip adapters do not train
        for n, p in m.named_parameters():
            if n.startswith("skip_adapters."):
                p.requires_grad_(False)
    return m


def weights(model) -> tuple[int, int]:
    """(bytes of all parameters, bytes of the trainable ones)."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    train = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    return total, train


def spread(v: list[float]) -> dict[str, float]:
    return {"median": statistics.median(v), "min": min(v), "max": max(v)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--width", choices=sorted(WIDTHS), default=None, help="default 7b (quick with --quick)")
    ap.add_argument("--layers", type=int, default=None, help="default 3 (≥ 2)")
    ap.add_argument("--vocab", type=int, default=None, help="default 32000")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None, help="default bf16 (fp32 with --quick)")
    ap.add_argument("--batch", type=int, default=None, help="default 4")
    ap.add_argument("--seq", type=int, default=None, help="default 512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--quick", action="store_true", help="width 512, 3 layers, vocab 1000, 2 × 64 tokens, fp32")
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    defaults = (dict(width="quick", layers=3, vocab=1000, dtype="fp32", batch=2, seq=64) if args.quick else
                dict(width="7b", layers=3, vocab=32000, dtype="bf16", batch=4, seq=512))
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    if args.layers < 2:
        ap.error("--layers must be >= 2 (the per-layer figure is the difference to a one-layer stack)")
    print(f"device {args.device}, LLaMA width {args.width} ({WIDTHS[args.width]['hidden_size']}), {args.dtype}, "
          f"batch {args.batch} × {args.seq} tokens, vocab {args.vocab}; step = forward + backward + AdamW; "
          f"median [min, max] over {args.repeats} round-robin repeats, the peer in the same run")
    meter = Meter(args.device)
    res: dict[str, Any] = {}
    errors: list[str] = []
    losses: dict[str, float] = {}
    for layers in (1, args.layers):
        models = {name: build(name, args, layers) for name in CONTENDERS}
        steps = {name: make_step(name, m, args, layers) for name, m in models.items()}
        for name in CONTENDERS:  # first step: the losses on identical weights; lazy allocations, AdamW state
            losses[f"{name}@{layers}"] = steps[name]()
        runs: dict[str, dict[str, list]] = {name: {"saved": [], "peak": []} for name in CONTENDERS}
        for _ in range(args.repeats):
            for name in CONTENDERS:
                saved, pk, loss = meter.measure(models[name], steps[name])
                runs[name]["saved"].append(saved)
                runs[name]["peak"].append(pk)
                if not torch.isfinite(torch.tensor(loss)):
                    errors.append(f"{name} at {layers} layers: non-finite loss {loss}")
        for name in CONTENDERS:
            w, t = weights(models[name])
            if name.endswith("ckpt"):  # each checkpointed layer's input is held by the checkpoint, not by autograd
                held = layers * args.batch * args.seq * WIDTHS[args.width]["hidden_size"] * \
                    torch.tensor([], dtype=DTYPES[args.dtype]).element_size()
                runs[name]["saved"] = [x + held for x in runs[name]["saved"]]
            res.setdefault(name, {})[layers] = dict(runs[name], weights=w, trainable=t)
        del models, steps
        gc.collect()
    L = args.layers
    for k in (1, L):  # the same weights and input with and without checkpointing: the same first loss
        a, b = losses[f"das train@{k}"], losses[f"das train + ckpt@{k}"]
        if not abs(a - b) <= 1e-3 * max(1.0, abs(a)):
            errors.append(f"das train vs + ckpt at {k} layers: losses {a} vs {b} differ")

    mib = lambda s: f"{s['median'] / 2**20:.1f} [{s['min'] / 2**20:.1f}, {s['max'] / 2**20:.1f}]"  # noqa: E731
    cuda = meter.cuda
    print(f"\n| contender | saved activations MiB, {L} layers | per layer | weights MiB per layer | "
          f"trainable MiB ({L} layers) |" + (f" CUDA step peak MiB, {L} layers | per layer |" if cuda else ""))
    print("|---|---|---|---|---|" + ("---|---|" if cuda else ""))
    per_layer: dict[str, dict[str, float]] = {}
    for name in CONTENDERS:
        r = res[name]
        d_saved = [(a - b) / (L - 1) for a, b in zip(r[L]["saved"], r[1]["saved"])]
        wl = (r[L]["weights"] - r[1]["weights"]) / (L - 1)
        per_layer[name] = {"saved": statistics.median(d_saved), "weights": wl,
                           "trainable": (r[L]["trainable"] - r[1]["trainable"]) / (L - 1),
                           "other_weights": r[1]["weights"] - wl, "other_saved": statistics.median(r[1]["saved"])
                           - statistics.median(d_saved)}
        row = (f"| {name} | {mib(spread(r[L]['saved']))} | {mib(spread(d_saved))} | {wl / 2**20:.1f} | "
               f"{r[L]['trainable'] / 2**20:.2f} |")
        if cuda:
            d_peak = [(a - b) / (L - 1) for a, b in zip(r[L]["peak"], r[1]["peak"])]
            per_layer[name]["peak"] = statistics.median(d_peak)
            row += f" {mib(spread(r[L]['peak']))} | {mib(spread(d_peak))} |"
        print(row)
    peer = per_layer["lora (peft)"]["saved"]
    for name in CONTENDERS[:-1]:
        print(f"{name}: saved activations per layer / peer's = {per_layer[name]['saved'] / peer:.3f}")

    # LLaMA-7B (32 layers) on one 80 GB GPU: weights + activations saved for the backward + the trainable
    # parameters' gradients and two AdamW moments (fp32, 3 × their bytes); allocator slack and transients not counted
    print(f"\n{'LLaMA-7B' if args.width == '7b' else 'a 32-layer stack at this width'} ({args.dtype}, batch "
          f"{args.batch} × {args.seq} tokens), one GPU: 32 × per-layer + the rest")
    for name in ("das search", "das train", "das train + ckpt", "lora (peft)"):
        p = per_layer[name]
        w = 32 * p["weights"] + p["other_weights"]
        a = 32 * p["saved"] + p["other_saved"]
        opt = 3 * (32 * p["trainable"])
        total = w + a + opt
        print(f"  {name}: weights {w / GB:.2f} GB + saved activations {a / GB:.2f} GB + grads & AdamW "
              f"{opt / GB:.3f} GB = {total / GB:.2f} GB" + (" (fits 80 GB)" if total <= 80 * GB else
                                                           " (over 80 GB)"))
    if args.json:
        write_json_atomic(args.json, {"args": vars(args), "results": {n: {str(k): v for k, v in r.items()}
                                                                     for n, r in res.items()},
                                      "per_layer": per_layer, "errors": errors})
    for e in errors:
        print("WRONG:", e, file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

"""Large LMs in memory (issue 21 item 4): ``plm_dtype`` loads the language model of the ``plm`` / ``clip_plm``
backbones in bf16 / fp16 while the PET modules stay fp32 (as LaVIN keeps its adapters in float), and
``grad_checkpointing=True`` recomputes each computed layer in the backward with the same gradients."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.config import DEFAULTS
from vlpeft.pet import PRESETS, inject
from vlpeft.pet.context import pet_context


def _das(name, **over):
    torch.manual_seed(0)
    bb = BACKBONES.build(name, over)
    report = inject(bb, PRESETS.build("das_llama", {**DEFAULTS, "das_llama_adapter_dim": 4}))
    return bb, report


def _batch(B=2, L=6):
    g = torch.Generator().manual_seed(0)
    masks = torch.ones(B, L, dtype=torch.long)
    masks[1, -2:] = 0
    return {"text_ids": torch.randint(1000, 2000, (B, L), generator=g), "text_masks": masks,
            "image": torch.randn(B, 3, 32, 32, generator=g)}


@pytest.mark.parametrize("name,plan", [("test_plm_llama", LayerPlan.of([1])),
                                       ("test_clip_llama", LayerPlan.of([1], insert_layer=0))])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_low_precision_lm_keeps_the_pet_modules_in_fp32(name, plan, dtype):
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}[dtype]
    bb, report = _das(name, plm_dtype=dtype)
    pet = report.param_names()
    own = dict(bb.named_parameters())
    lm = {n: p for n, p in own.items() if n.startswith("plm.llama.") and n not in pet}
    assert lm and {p.dtype for p in lm.values()} == {want}  # norms and embeddings too, as LaVIN's half LLaMA
    assert {b.dtype for n, b in bb.plm.named_buffers() if "inv_freq" in n} == {torch.float32}  # RoPE stays exact
    assert pet and {own[n].dtype for n in pet} == {torch.float32}
    assert {p.dtype for n, p in own.items() if not n.startswith("plm.llama.")} == {torch.float32}  # CLIP, prompts
    bb.train()
    out = bb(_batch(), plan)["cls_feats"]  # no autocast around it: the backbone mixes the dtypes itself
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.float().pow(2).mean().backward()
    # in_seq.j sits on sublayer j = 2·layer: layer 1 is skipped, so its in-block adapter (in_seq.2) gets no
    # gradient (LaVIN's skip path never calls it); the kept layers' and the skip adapter's are fp32
    skipped = [n for n in pet if n.startswith("plm.in_seq.2.")]
    grads = [own[n].grad for n in pet if "skip_adapters.1." in n or (".in_seq." in n and n not in skipped)]
    assert grads and all(g is not None and g.dtype == torch.float32 for g in grads)
    assert skipped and all(own[n].grad is None for n in skipped)


def test_plm_dtype_fp32_is_the_default_and_bad_values_are_refused():
    bb, _ = _das("test_plm_llama")
    assert {p.dtype for p in bb.parameters()} == {torch.float32}
    with pytest.raises(ValueError, match=r"plm_dtype='half' is not one of \['bf16', 'fp16', 'fp32'\]"):
        BACKBONES.build("test_plm_llama", {"plm_dtype": "half"})
    with pytest.raises(TypeError, match="grad_checkpointing='yes' must be True or False"):
        BACKBONES.build("test_plm_llama", {"grad_checkpointing": "yes"})


@pytest.mark.parametrize("name,plan", [("test_plm_llama", LayerPlan.of([1])),
                                       ("test_clip_llama", LayerPlan.of([1], insert_layer=1))])
def test_gradient_checkpointing_gives_the_same_gradients(name, plan):
    """DAS adapters moved off their init (LaVIN's up-projections start at zero), training mode (dropout on, the
    same draws in the recomputation), a skipped layer: the gradients equal those without checkpointing, and each
    computed layer runs twice (forward + recomputation)."""
    bb, report = _das(name, grad_checkpointing=True)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _, p in bb.named_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))
    for _, p in bb.named_parameters():
        p.requires_grad_(True)
    bb.train()
    batch = _batch()
    calls = []
    # a pre-hook: the recomputation stops once the saved tensors are back, before forward hooks would run
    hook = bb.candidate_module(0).register_forward_pre_hook(lambda *a: calls.append(1))

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        bb.cfg = replace(bb.cfg, grad_checkpointing=checkpointing)
        bb.zero_grad()
        calls.clear()
        torch.manual_seed(5)
        with pet_context(task="vqa"):
            out = bb(batch, plan)["cls_feats"]
        (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
        return {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}

    plain = grads(False)
    assert len(calls) == 1
    ckpt = grads(True)
    assert len(calls) == 2  # recomputed in the backward
    hook.remove()
    assert plain.keys() == ckpt.keys() and any(".in_seq." in n for n in plain)
    for n in plain:
        assert torch.allclose(plain[n], ckpt[n], atol=1e-6, rtol=1e-5), n
    assert any(n in plain and plain[n].abs().sum() > 0 for n in report.param_names())

"""VL-PET's modules after the train-step trimming (issue #21 item 5): the multi-head adapter's heads run as one matmul
and the σ-gate skips its "+ 0" offset, with the per-head formula's outputs and gradients to float rounding
(the formula is restated here, head by head, as VL-PET's code writes it). The BLAS kernels for one wide
and N_h thin matrices may sum in another order, so the outputs are compared to float rounding."""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from vlpeft.pet.gates import Gate
from vlpeft.pet.multihead_adapter import MultiHeadAdapter


class _Ops(TorchDispatchMode):
    """Counts the aten ops a call issues (the packet name: addmm, mm, gelu, add, ...)."""

    def __init__(self):
        super().__init__()
        self.ops: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def _perturbed(m: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.1)  # off the zero-up init
    return m


def _per_head(m: MultiHeadAdapter, z: torch.Tensor) -> torch.Tensor:
    """Each head D_i z + b_i through gelu_new, concatenated, then the up map, plus the skip."""
    codes = [F.gelu(F.linear(z, lin.weight, lin.bias), approximate="tanh") for lin in m.down]
    return z + F.linear(torch.cat(codes, dim=-1), m.up.weight, m.up.bias) * m.scale


def test_multihead_concat_is_the_per_head_formula():
    for scale in (1.0, 0.3):
        m = _perturbed(MultiHeadAdapter(48, 16, heads=4, scale=scale, init="zero_up"), 1)
        z = torch.randn(3, 7, 48, generator=torch.Generator().manual_seed(2), requires_grad=True)
        with _Ops() as count:
            y = m(z)
        ref = _per_head(m, z)
        torch.testing.assert_close(y, ref, rtol=1e-6, atol=1e-6)
        # one down matmul and one activation for all heads, then the up map; no "× 1"
        assert count.ops["addmm"] + count.ops["mm"] == 2 and count.ops["gelu"] == 1
        assert count.ops["mul"] == (0 if scale == 1.0 else 1)
        assert not torch.equal(y, z)  # the adapter runs
        g = torch.randn_like(y)
        params = [z, *m.parameters()]
        got = torch.autograd.grad(y, params, g)
        want = torch.autograd.grad(ref, params, g)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_sigmoid_gate_without_offset_is_sigma_of_the_low_rank_map():
    gate = _perturbed(Gate(32, "large", rank=8, init="legacy_bart"), 3)
    x, y = torch.randn(2, 5, 32), torch.randn(2, 5, 32)
    want = torch.sigmoid(F.linear(F.gelu(F.linear(x, gate.down.weight, gate.down.bias), approximate="tanh"),
                                  gate.up.weight, gate.up.bias))
    with _Ops() as count:
        got = gate(x, y)
    assert gate.offset == 0.0 and torch.equal(got, want)
    assert count.ops["add"] == 0  # no "+ 0" pass
    shifted = _perturbed(Gate(32, "middle_y", init="legacy_bart"), 4)  # offset 1: 1 + z
    assert torch.equal(shifted(x, y), 1.0 + shifted.z.view(1, 1, -1))

"""The visual embedding without per-image work (issue 21 item 2): the patch conv as one matmul, the patch extents of a
whole batch at once, one position resize per distinct extent. The patch conv is checked against the strided conv
(float rounding); everything after the patch projection is checked bit for bit against a per-image restatement of
the previous code, in eval and in train mode (the ``max_image_len`` cap's random patch subset from the same
generator state)."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vlpeft.backbones._layers import PatchConv
from vlpeft.backbones.meter import METER_VARIANTS, CLIPResidualBlock, build_meter
from vlpeft.backbones.vilt import VIT_VARIANTS, _nearest_counts, build_vilt
from vlpeft.computation import count_flops


@pytest.mark.parametrize("patch,size,bias", [(32, (96, 160), True), (16, (70, 49), False)])
def test_patch_conv_equals_the_strided_conv(patch, size, bias):
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 24, patch, stride=patch, bias=bias)
    fast = PatchConv.adopt(conv)
    assert fast.weight is conv.weight and (fast.bias is conv.bias)
    assert set(fast.state_dict()) == set(conv.state_dict())
    x = torch.randn(2, 3, *size)
    ref = conv(x)
    out = fast(x)
    assert out.shape == ref.shape  # a trailing partial patch is dropped as the conv drops it
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    out.sum().backward()  # gradients reach the shared parameters
    assert conv.weight.grad is not None and conv.weight.grad.abs().sum() > 0


def test_patch_conv_refuses_an_overlapping_conv():
    with pytest.raises(ValueError, match="stride == kernel_size"):
        PatchConv(3, 8, 16, stride=8)


def test_backbones_embed_patches_with_patch_conv():
    hp = VIT_VARIANTS["test_vilt_small"]
    vilt = build_vilt(dict(vit="test_vilt_small", patch_size=hp["patch_size"], hidden_size=hp["embed_dim"], num_heads=hp["num_heads"],
                           num_layers=hp["depth"], mlp_ratio=4, drop_rate=0.0, vocab_size=50, max_text_len=8))
    assert isinstance(vilt.transformer.patch_embed.proj, PatchConv)
    assert "transformer.patch_embed.proj.weight" in vilt.state_dict()
    meter = build_meter(dict(METER_VARIANTS["test_meter_tiny"]))
    assert isinstance(meter.vit_model.visual.conv1, PatchConv)


def test_nearest_counts_equal_the_nearest_downsampled_mask():
    """Patches whose top-left pixel is real, per image, as ``F.interpolate(mode="nearest")`` of the pixel mask."""
    for size, grid in ((384, 12), (640, 20), (100, 7), (33, 33), (50, 64)):
        real = np.arange(0, size + 1)
        mask = (torch.arange(size)[None] < torch.from_numpy(real)[:, None]).float()
        ref = (F.interpolate(mask[:, None], size=grid, mode="nearest")[:, 0] > 0.5).sum(1).numpy()
        assert np.array_equal(_nearest_counts(real, size, grid), ref), (size, grid)


def _small_vilt():
    hp = VIT_VARIANTS["test_vilt_small"]
    torch.manual_seed(0)
    vilt = build_vilt(dict(vit="test_vilt_small", patch_size=hp["patch_size"], hidden_size=hp["embed_dim"], num_heads=hp["num_heads"],
                           num_layers=hp["depth"], mlp_ratio=4, drop_rate=0.0, vocab_size=50, max_text_len=8))
    with torch.no_grad():  # off the init: positions and cls token must all matter
        for p in vilt.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return vilt


def _per_image_reference(vilt, img, img_mask, cap, generator):
    """The previous ``visual_embed`` restated image by image: the patch extent from the nearest-downsampled mask, the
    image's own bilinear resize of the position grid, its valid patches in raster order (or, when ``cap`` bites, a
    random subset keyed by one (B, N) uniform draw from ``generator``, then put back in raster order), padded with
    invalid patches up to the batch's T."""
    x = vilt.transformer.patch_embed.proj(img)  # the same projection module: this checks what follows it
    B, D, Hp, Wp = x.shape
    N = Hp * Wp
    pm = F.interpolate(img_mask[:, None].float(), size=(Hp, Wp), mode="nearest")[:, 0] > 0.5
    gh, gw = vilt.pos_grid
    grid = vilt.transformer.pos_embed[:, 1:].transpose(1, 2).reshape(1, D, gh, gw)
    extents = [(int(pm[b, :, 0].sum()), int(pm[b, 0, :].sum())) for b in range(B)]
    counts = [h * w for h, w in extents]
    T = max(counts) if cap is None else min(max(counts), cap)
    r = torch.rand(B, N, generator=generator) if T < max(counts) else None
    cls = vilt.transformer.cls_token[0, 0] + vilt.transformer.pos_embed[0, 0]
    xs, masks, idxs = [], [], []
    for b, (h, w) in enumerate(extents):
        pos = F.pad(F.interpolate(grid, size=(h, w), mode="bilinear", align_corners=True), (0, Wp - w, 0, Hp - h))
        tokens = x[b].flatten(1).T + pos[0].flatten(1).T
        valid = pm[b].flatten()
        raster_valid = [i for i in range(N) if valid[i]]
        raster_invalid = [i for i in range(N) if not valid[i]]
        if r is not None and len(raster_valid) > T:
            chosen = sorted(raster_valid, key=lambda i: float(r[b, i]))[:T]
            keep = sorted(chosen)
        else:
            keep = (raster_valid + raster_invalid)[:T]
        keep_t = torch.tensor(keep, dtype=torch.long)
        xs.append(torch.cat([cls[None], tokens[keep_t]], 0))
        masks.append(torch.cat([torch.ones(1, dtype=torch.long), valid[keep_t].long()]))
        idxs.append(torch.stack([keep_t // Wp, keep_t % Wp], 1))
    return torch.stack(xs), torch.stack(masks), torch.stack(idxs)


@pytest.mark.parametrize("train,cap,use_sizes", [(False, None, True), (False, None, False), (True, 7, True),
                                                 (True, 7, False), (True, 1000, True)])
def test_visual_embed_equals_the_per_image_computation_exactly(train, cap, use_sizes):
    """Mixed image sizes in one batch (two share an extent): tokens, mask and patch index bit-equal to the per-image
    computation; in train mode with a cap that bites, the same random subset from the same generator state, and the
    generator left in the same state (one (B, N) draw, as before)."""
    vilt = _small_vilt().train(train)
    sizes = [(64, 64), (40, 64), (64, 20), (17, 33), (40, 64)]
    g = torch.Generator().manual_seed(0)
    img = torch.randn(len(sizes), 3, 64, 64, generator=g)
    mask = torch.zeros(len(sizes), 64, 64, dtype=torch.bool)
    for b, (h, w) in enumerate(sizes):
        mask[b, :h, :w] = True
    img = img * mask[:, None]
    g_ours, g_ref = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    with torch.no_grad():
        x, m, (pidx, (Hp, Wp)) = vilt.visual_embed(img, mask, cap, g_ours, sizes if use_sizes else None)
        rx, rm, ridx = _per_image_reference(vilt, img, mask, cap, g_ref)
    assert torch.equal(x, rx)
    assert torch.equal(m, rm)
    assert torch.equal(pidx, ridx)
    assert torch.equal(torch.rand(3, generator=g_ours), torch.rand(3, generator=g_ref))
    if cap == 7:  # the cap bit: the larger images kept 7 valid patches, drawn at random (not the first 7)
        assert x.shape[1] == 1 + 7 and m.sum(1).tolist() == [8, 8, 8, 7, 8]  # 17x33 pixels: 2x3 patches
        assert not torch.equal(pidx[0], torch.stack([torch.zeros(7, dtype=torch.long), torch.arange(7)], 1))


@pytest.mark.parametrize("batch,tokens,width,heads,mlp", [(2, 10, 64, 4, 256), (3, 7, 48, 6, 96)])
def test_flops_count_clip_blocks_fused_attention(batch, tokens, width, heads, mlp):
    """METER's CLIP blocks run ``nn.MultiheadAttention``'s fused inference op, which torch's FLOP counter sees as
    nothing: the count must include its Q, K, V, output projections and the two attention products (else the frozen
    image tower counts low and DAS-METER's FLOP ideal comes out too high)."""
    blk = CLIPResidualBlock(width, heads, mlp).eval()
    x = torch.randn(batch, tokens, width)
    rows = batch * tokens
    projections = 2 * rows * width * width * 4
    attention = 2 * 2 * batch * tokens * tokens * width  # Q·Kᵀ and A·V over all heads
    ffn = 2 * rows * width * mlp * 2
    assert count_flops(lambda: blk(x)) == projections + attention + ffn

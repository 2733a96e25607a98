"""Image transforms: sizes computed by hand, normalisation constants, seeded augmentation."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlpeft.data.transforms import (CLIP_MEAN, CLIP_STD, FIXED_SIZE_KEYS, MinMaxResize, clip, keys_to_transforms,
                                    minmax_size, pixelbert, pixelbert_randaug)


@pytest.mark.parametrize("w,h,expected", [
    # 640x480 at 384: scale 0.8 → 512x384, below the longer bound int(1333/800*384) = 639, multiples of 32
    (640, 480, (512, 384)),
    (480, 640, (384, 512)),
    (500, 500, (384, 384)),
    # 1000x300: scale 1.28 → 1280x384 > 639 → ×639/1280 → 639x191.7 → round 639x192 → floor32 608x192
    (1000, 300, (608, 192)),
    # 2000x100: 7680x384 → ×639/7680 → 639x31.95 → round 639x32 → 608x32
    (2000, 100, (608, 32)),
    # 500x375 (4:3): scale 1.024 → 512x384
    (500, 375, (512, 384)),
    # 333x500: scale 384/333 → 384x576.6 → round 577 → floor32 576 (18·32)
    (333, 500, (384, 576)),
])
def test_minmax_size_by_hand(w, h, expected):
    assert minmax_size(w, h, 384, int(1333 / 800 * 384)) == expected


def test_pixelbert_output_and_normalisation():
    img = Image.new("RGB", (640, 480), (255, 0, 128))
    out = pixelbert(384)(img)
    assert out.shape == (3, 384, 512) and out.dtype == torch.float32
    # Normalize(0.5, 0.5): 255 → 1, 0 → -1, 128 → (128/255 - .5)/.5
    assert torch.allclose(out[0], torch.ones(384, 512))
    assert torch.allclose(out[1], -torch.ones(384, 512))
    assert torch.allclose(out[2], torch.full((384, 512), (128 / 255 - 0.5) / 0.5), atol=1e-6)
    assert MinMaxResize(384, 639)(img).size == (512, 384)


def test_clip_output_and_normalisation():
    img = Image.new("RGB", (640, 480), (255, 0, 128))
    out = clip(224)(img)
    assert out.shape == (3, 224, 224)
    for c, v in enumerate((255, 0, 128)):
        assert torch.allclose(out[c], torch.full((224, 224), (v / 255 - CLIP_MEAN[c]) / CLIP_STD[c]), atol=1e-5)
    assert clip(224)(Image.new("L", (100, 300), 10)).shape == (3, 224, 224)  # grey → RGB
    assert "clip" in FIXED_SIZE_KEYS and "pixelbert" not in FIXED_SIZE_KEYS


def _textured(w=96, h=64):
    img = Image.new("RGB", (w, h))
    img.putdata([((x * 7) % 256, (y * 11) % 256, ((x + y) * 5) % 256) for y in range(h) for x in range(w)])
    return img


def test_randaug_is_reproducible_under_seed_and_keeps_the_size():
    img = _textured()
    t = pixelbert_randaug(64)
    torch.manual_seed(3)
    a = [t(img) for _ in range(4)]
    torch.manual_seed(3)
    b = [t(img) for _ in range(4)]
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert all(x.shape == pixelbert(64)(img).shape == (3, 64, 96) for x in a)
    torch.manual_seed(4)
    c = [t(img) for _ in range(4)]
    assert any(not torch.equal(x, y) for x, y in zip(a, c))  # it does augment
    assert keys_to_transforms(["clip_randaug"], 32)[0](img).shape == (3, 32, 32)


def test_keys_to_transforms():
    ts = keys_to_transforms(["pixelbert", "clip"], 64)
    assert len(ts) == 2 and ts[1](_textured()).shape == (3, 64, 64)
    with pytest.raises(ValueError, match="unknown transform key"):
        keys_to_transforms(["pixelbert", "nope"], 64)
    with pytest.raises(ValueError, match="empty"):
        keys_to_transforms([], 64)


def test_normalized_tensor_matches_torchvision():
    from torchvision import transforms as T

    from vlpeft.data.transforms import ToNormalizedTensor

    img = _textured(40, 30)
    ref = T.Normalize(CLIP_MEAN, CLIP_STD)(T.ToTensor()(img))
    out = ToNormalizedTensor(CLIP_MEAN, CLIP_STD)(img)
    assert out.shape == ref.shape == (3, 30, 40) and out.dtype == torch.float32
    assert torch.allclose(out, ref, atol=1e-5)


def test_normalized_tensor_planar_path_has_the_general_paths_bits():
    import numpy as np

    from vlpeft.data.transforms import IMAGENET_MEAN, IMAGENET_STD, ToNormalizedTensor

    t = ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)
    rgb = _textured(37, 23)
    grey = rgb.convert("L")
    for img in (rgb, grey):  # PIL RGB / L take the planar path, the same pixels as an array the general one
        fast, general = t(img), t(np.asarray(img))
        assert fast.shape == general.shape == (3, 23, 37) and fast.is_contiguous()
        assert torch.equal(fast, general)
    assert torch.equal(t(grey)[0], t(grey.convert("RGB"))[0])  # grey broadcast = its RGB conversion's channel

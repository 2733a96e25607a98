"""Image transforms by key (PIL RGB image → FloatTensor (3, H, W)).

All randomness comes from torch's RNG (torchvision ops), which the DataLoader seeds per worker from the
loader's base seed, so augmentation is reproducible under a fixed seed.
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image
from torchvision import transforms as T
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


def minmax_size(w: int, h: int, shorter: int, longer: int) -> tuple[int, int]:
    """Target (w, h): shorter side → ``shorter``, capped so the longer side ≤ ``longer``, rounded, floored to 32."""
    scale = shorter / min(w, h)
    if h < w:
        newh, neww = shorter, scale * w
    else:
        newh, neww = scale * h, shorter
    if max(newh, neww) > longer:
        f = longer / max(newh, neww)
        newh, neww = newh * f, neww * f
    newh, neww = int(newh + 0.5), int(neww + 0.5)
    # at least one 32-pixel patch (the original would produce a 0-sized image for tiny sizes)
    return max(32, neww // 32 * 32), max(32, newh // 32 * 32)


class MinMaxResize:
    def __init__(self, shorter: int = 800, longer: int = 1333):
        self.shorter, self.longer = shorter, longer

    def __call__(self, img: Image.Image) -> Image.Image:
        return img.resize(minmax_size(*img.size, self.shorter, self.longer), resample=Image.BICUBIC)

    def __repr__(self) -> str:
        return f"MinMaxResize(shorter={self.shorter}, longer={self.longer})"


class ToNormalizedTensor:
    """ToTensor + Normalize: PIL image → float32 (C, H, W) tensor ``(x/255 - mean)/std``, computed as
    ``float32(x) * float32(1/(255·std)) - float32(mean/std)`` (the same values as torchvision's pair to ~1e-6; the
    exact bits are this formula's, which the tests pin).

    Implementation (measured, CPU time per 384×512 image on the 2-core dev machine): each colour plane is taken
    from PIL in planar form (``tobytes("raw", "R")``, no HWC→CHW transpose) and converted, scaled and shifted in
    place by numpy into the output (0.14 ms). torchvision's ToTensor + Normalize take 0.47 ms with 1 intra-op thread
    (a DataLoader worker) and ~45 ms of CPU with the main process's 2 threads on a busy machine (num_workers=0);
    this numpy path never uses torch's thread pool, so it wins in both situations and gives the same bits in
    both. Images in other modes (or arrays) take the general numpy path (1.4 ms), with the same bits.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)
        self._scale = (1.0 / (255.0 * self.std)).astype(np.float32)
        self._shift = (self.mean / self.std).astype(np.float32)

    def __call__(self, img: Image.Image) -> torch.Tensor:
        n = len(self._scale)
        if isinstance(img, Image.Image) and img.mode in ("RGB", "L") and (img.mode == "L" or n == 3):
            w, h = img.size
            out = np.empty((n, h, w), dtype=np.float32)
            grey = None
            if img.mode == "L":  # one plane broadcast to every channel (as the general path's (H, W, 1) array)
                grey = np.frombuffer(img.tobytes(), dtype=np.uint8).reshape(h, w)
            for c in range(n):
                o = out[c]
                o[...] = grey if grey is not None else np.frombuffer(img.tobytes("raw", "RGB"[c]),
                                                                       dtype=np.uint8).reshape(h, w)
                np.multiply(o, self._scale[c], out=o)
                np.subtract(o, self._shift[c], out=o)
            return torch.from_numpy(out)
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = arr * self._scale - self._shift  # (x/255 - mean)/std
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))

    def __repr__(self) -> str:
        return f"ToNormalizedTensor(mean={self.mean.tolist()}, std={self.std.tolist()})"


class ToRGB:
    def __call__(self, img: Image.Image) -> Image.Image:
        return img.convert("RGB")


def rand_augment() -> T.RandAugment:
    # torchvision's RandAugment (2 ops, magnitude 9 on a 0..30 scale, as the original's m/30) replaces the
    # original's hand-written 14-op list. Same: Rotate 9°, ShearX/Y 0.09, AutoContrast, Equalize, random signs.
    # Different: Identity instead of SolarizeAdd; Brightness/Color/Contrast/Sharpness factor 1 ± 0.27 instead of
    # a fixed 0.64; translation 0.3·(150/331)·side (≈ 52 px at 384) instead of 30 px; Posterize to 7 bits
    # instead of 1; Solarize threshold 178.5 instead of 76.8; ops drawn with torch's RNG, not `random`.
    return T.RandAugment(num_ops=2, magnitude=9, num_magnitude_bins=31)


def pixelbert(size: int = 800) -> Callable:
    longer = int((1333 / 800) * size)
    return T.Compose([MinMaxResize(shorter=size, longer=longer), ToNormalizedTensor(HALF, HALF)])


def pixelbert_randaug(size: int = 800) -> Callable:
    return T.Compose([ToRGB(), rand_augment(), pixelbert(size)])


def clip(size: int = 224) -> Callable:
    return T.Compose([T.Resize(size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size), ToRGB(),
                      ToNormalizedTensor(CLIP_MEAN, CLIP_STD)])


def clip_randaug(size: int = 224) -> Callable:
    return T.Compose([ToRGB(), rand_augment(), clip(size)])


def imagenet(size: int = 224) -> Callable:
    return T.Compose([T.Resize(size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size), ToRGB(),
                      ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)])


def imagenet_randaug(size: int = 224) -> Callable:
    return T.Compose([ToRGB(), rand_augment(), imagenet(size)])


def vit(size: int = 224) -> Callable:
    return T.Compose([T.Resize(size, interpolation=InterpolationMode.BICUBIC), T.CenterCrop(size), ToRGB(),
                      ToNormalizedTensor(HALF, HALF)])


def vit_randaug(size: int = 224) -> Callable:
    return T.Compose([ToRGB(), rand_augment(), vit(size)])


def lavin(size: int = 224) -> Callable:
    """LaVIN's (``util/multimodal_datasets.py``): squashed to size × size (bicubic, no crop), ImageNet mean / std."""
    return T.Compose([T.Resize((size, size), interpolation=InterpolationMode.BICUBIC), ToRGB(),
                      ToNormalizedTensor(IMAGENET_MEAN, IMAGENET_STD)])


TRANSFORMS: dict[str, Callable[[int], Callable]] = {
    "pixelbert": pixelbert, "pixelbert_randaug": pixelbert_randaug, "clip": clip, "clip_randaug": clip_randaug,
    "imagenet": imagenet, "imagenet_randaug": imagenet_randaug, "vit": vit, "vit_randaug": vit_randaug,
    "lavin": lavin,
}
# transforms whose output size is fixed (size × size): the collate's image_mask is then all True
FIXED_SIZE_KEYS = frozenset(k for k in TRANSFORMS if not k.startswith("pixelbert"))


def keys_to_transforms(keys: Sequence[str] | str, size: int) -> list[Callable]:
    if isinstance(keys, str):
        keys = [keys]
    if not keys:
        raise ValueError(f"transform keys are empty; choose from {sorted(TRANSFORMS)}")
    unknown = [k for k in keys if k not in TRANSFORMS]
    if unknown:
        raise ValueError(f"unknown transform key(s) {unknown}; choose from {sorted(TRANSFORMS)}")
    return [TRANSFORMS[k](int(size)) for k in keys]

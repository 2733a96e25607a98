"""Frozen CLIP visual encoder for DVP: building, OpenAI-checkpoint conversion, feature cache.

DVP's visual features are *all* tokens after the last encoder layer, before ``post_layernorm`` and the
projection: (B, 1 + P, d_v) — exactly ``CLIPVisionModel(...).last_hidden_state`` in transformers 5.

``clip_model`` (config key) is one of
- a registered name: ``test_clip_tiny`` (tests), ``vit_b16_random`` (ViT-B/16 shape, random weights, bench);
- a folder with an HF ``config.json`` + weights (``CLIPVisionModel.from_pretrained``);
- a ``.pt`` / ``.pth`` file of OpenAI's released CLIP (a TorchScript archive such as ``ViT-B-16.pt`` or a
  plain state dict with ``visual.*`` keys), converted to HF names on load (``openai_to_hf_clip``);
- ``"ViT-B/16"``-style OpenAI names, resolved to ``~/.cache/clip/ViT-B-16.pt`` if that file exists;
- a dict of ``CLIPVisionConfig`` keyword arguments (random weights).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn
from transformers import CLIPVisionConfig, CLIPVisionModel

from vlpeft._io import write_bytes_atomic
from vlpeft.backbones._folders import check_family, note_loaded
from vlpeft.backbones._variants import Variants

# Named architectures (random weights). The tiny one keeps tests fast; vit_b16_random is ViT-B/16 @ 224.
CLIP_VARIANTS = Variants("CLIP vision tower", "transformers.CLIPVisionConfig", {
    "test_clip_tiny": dict(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        image_size=32, patch_size=8, hidden_act="quick_gelu",
    ),
    "vit_b16_random": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        image_size=224, patch_size=16, hidden_act="quick_gelu",
    ),
})

_OPENAI_HEAD_DIM = 64  # OpenAI CLIP ViTs use width // 64 heads


# OpenAI CLIP ``visual.*`` names ↔ HF ``CLIPVisionModel`` names: one table read in both directions. Whole tensors:
# the top-level ones and, per residual block, ``{i}``-formatted ones (each with ``.weight`` and ``.bias``);
# ``attn.in_proj_{weight,bias}`` stacks HF's q, k, v projections in that order (``_QKV``).
_CLIP_TOP_KEYS: tuple[tuple[str, str], ...] = (
    ("visual.class_embedding", "embeddings.class_embedding"),
    ("visual.conv1.weight", "embeddings.patch_embedding.weight"),
    ("visual.positional_embedding", "embeddings.position_embedding.weight"),
    ("visual.ln_pre.weight", "pre_layrnorm.weight"),  # HF's spelling
    ("visual.ln_pre.bias", "pre_layrnorm.bias"),
    ("visual.ln_post.weight", "post_layernorm.weight"),
    ("visual.ln_post.bias", "post_layernorm.bias"),
)
_CLIP_BLOCK_KEYS: tuple[tuple[str, str], ...] = tuple(
    (f"visual.transformer.resblocks.{{i}}.{a}.{kind}", f"encoder.layers.{{i}}.{b}.{kind}")
    for a, b in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"), ("attn.out_proj", "self_attn.out_proj"),
                 ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
    for kind in ("weight", "bias"))
_QKV = tuple((f"visual.transformer.resblocks.{{i}}.attn.in_proj_{kind}",
              tuple(f"encoder.layers.{{i}}.self_attn.{p}_proj.{kind}" for p in "qkv")) for kind in ("weight", "bias"))


def _clip_key_pairs(n_layers: int) -> list[tuple[str, str]]:
    """(OpenAI name, HF name) of every one-to-one tensor of an ``n_layers``-block CLIP ViT."""
    return list(_CLIP_TOP_KEYS) + [(o.format(i=i), h.format(i=i)) for i in range(n_layers)
                                   for o, h in _CLIP_BLOCK_KEYS]


def openai_to_hf_clip(state: Mapping[str, torch.Tensor]) -> tuple[CLIPVisionConfig, dict[str, torch.Tensor]]:
    """Convert OpenAI CLIP ``visual.*`` keys to a ``CLIPVisionConfig`` and a ``CLIPVisionModel`` state dict.

    ``attn.in_proj_*`` is split into q/k/v (OpenAI stacks them in that order); ``ln_pre`` → ``pre_layrnorm``
    (HF's spelling); ``ln_post`` → ``post_layernorm``; ``visual.proj`` is dropped (DVP reads tokens before
    the projection). Non-visual keys (the text tower) are ignored.
    """
    if "visual.conv1.weight" not in state:
        raise ValueError(
            "not an OpenAI CLIP ViT checkpoint: key 'visual.conv1.weight' missing "
            "(ResNet CLIPs are not supported; pass a ViT-B-16.pt-style file or an HF CLIP folder)"
        )
    conv = state["visual.conv1.weight"]
    width, patch = int(conv.shape[0]), int(conv.shape[-1])
    n_pos = int(state["visual.positional_embedding"].shape[0])
    grid = int(round(math.sqrt(n_pos - 1)))
    if grid * grid != n_pos - 1:
        raise ValueError(f"OpenAI CLIP positional_embedding has {n_pos} rows, not 1 + a square grid")
    layers = sorted(
        {int(k.split(".")[3]) for k in state if k.startswith("visual.transformer.resblocks.")}
    )
    if layers != list(range(len(layers))) or not layers:
        raise ValueError(f"OpenAI CLIP residual blocks are not numbered 0..n-1: {layers[:5]}…")
    inter = int(state["visual.transformer.resblocks.0.mlp.c_fc.weight"].shape[0])
    cfg = CLIPVisionConfig(
        hidden_size=width, intermediate_size=inter, num_hidden_layers=len(layers),
        num_attention_heads=max(1, width // _OPENAI_HEAD_DIM), image_size=grid * patch, patch_size=patch,
        hidden_act="quick_gelu", layer_norm_eps=1e-5,
    )
    out = {hf: state[oa] for oa, hf in _clip_key_pairs(len(layers))}
    for i in layers:
        for oa, hfs in _QKV:
            for hf, t in zip(hfs, state[oa.format(i=i)].chunk(3, dim=0)):
                out[hf.format(i=i)] = t
    return cfg, out


def hf_to_openai_clip(model: CLIPVisionModel) -> dict[str, torch.Tensor]:
    """Inverse of ``openai_to_hf_clip`` (used by the tests; ``visual.proj`` is filled with an identity)."""
    sd = model.state_dict()
    n = model.config.num_hidden_layers
    out = {oa: sd[hf] for oa, hf in _clip_key_pairs(n)}
    out["visual.proj"] = torch.eye(model.config.hidden_size)
    for i in range(n):
        for oa, hfs in _QKV:
            out[oa.format(i=i)] = torch.cat([sd[hf.format(i=i)] for hf in hfs], dim=0)
    return out


def _load_openai_file(path: Path) -> dict[str, torch.Tensor]:
    try:  # OpenAI ships TorchScript archives
        with warnings.catch_warnings():  # torch.jit.load is deprecated but is the only reader for them
            warnings.simplefilter("ignore", FutureWarning)
            archive = torch.jit.load(str(path), map_location="cpu")
        return {k: v.float() for k, v in archive.state_dict().items()}
    except (RuntimeError, ValueError):
        sd = torch.load(str(path), map_location="cpu", weights_only=True)
        if isinstance(sd, Mapping) and "state_dict" in sd:
            sd = sd["state_dict"]
        return {k: v.float() for k, v in sd.items()}


def build_clip_visual(spec: Any) -> CLIPVisionModel:
    """Build the (not yet frozen) CLIP visual encoder named by config ``clip_model``."""
    if isinstance(spec, Mapping):
        return CLIPVisionModel(CLIPVisionConfig(**dict(spec)))
    if not isinstance(spec, (str, os.PathLike)):
        raise TypeError(f"clip_model must be a name, a path or a dict of CLIPVisionConfig kwargs, got {spec!r}")
    name = str(spec)
    if name in CLIP_VARIANTS:
        return CLIPVisionModel(CLIPVisionConfig(**CLIP_VARIANTS[name]))
    path = Path(name).expanduser()
    if not path.exists() and "/" in name and not name.endswith((".pt", ".pth")):
        # OpenAI model names ("ViT-B/16") map to clip.load's cache file name.
        cached = Path.home() / ".cache" / "clip" / (name.replace("/", "-") + ".pt")
        if cached.is_file():
            path = cached
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"clip_model folder {path} has no config.json (an HF CLIP folder is needed)")

        check_family(path, ("clip", "clip_vision_model"), "clip_model", "the CLIP image tower",
                     "set clip_model=<a folder saved with CLIPVisionModel.save_pretrained> or an OpenAI CLIP .pt file")
        model = CLIPVisionModel.from_pretrained(str(path))
        note_loaded("clip_model", spec, path, model)
        return model
    if path.is_file():
        cfg, sd = openai_to_hf_clip(_load_openai_file(path))
        model = CLIPVisionModel(cfg)
        missing, unexpected = model.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.endswith("position_ids")]
        if missing or unexpected:
            raise ValueError(f"OpenAI CLIP conversion of {path}: missing {missing}, unexpected {unexpected}")

        note_loaded("clip_model", spec, path, model)
        return model
    raise FileNotFoundError(
        f"clip_model={name!r} is neither a registered variant {sorted(CLIP_VARIANTS)}, an HF CLIP folder, "
        "nor an OpenAI CLIP .pt file; download ViT-B-16.pt (OpenAI CLIP) and pass its path, "
        "or pass a folder saved with CLIPVisionModel.save_pretrained"
    )


class CLIPFeatureCache:
    """Per-image CLIP features keyed by ``image_key``: an in-memory LRU plus an optional disk folder.

    Only valid when the image transform is deterministic (same key ⇒ same pixels); the backbone decides
    when to consult it. The disk folder is namespaced by a fingerprint of the encoder and the image size so
    that a different CLIP or resolution never reads stale features.
    """

    def __init__(self, max_items: int = 4096, cache_dir: str | os.PathLike | None = None) -> None:
        self.max_items = int(max_items)
        self.mem: OrderedDict[str, torch.Tensor] = OrderedDict()
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None
        self.hits = 0
        self.misses = 0

    @staticmethod
    def fingerprint(model: CLIPVisionModel, image_shape: tuple[int, ...]) -> str:
        h = hashlib.sha1(model.config.to_json_string(use_diff=False).encode())
        w = model.embeddings.patch_embedding.weight
        h.update(repr((tuple(image_shape), float(w.double().sum()), float(w.double().abs().sum()))).encode())
        return h.hexdigest()[:16]

    def _file(self, fp: str, key: str) -> Path:
        assert self.cache_dir is not None
        name = hashlib.sha1(key.encode()).hexdigest()
        return self.cache_dir / fp / name[:2] / f"{name}.pt"

    def get(self, fp: str, key: str) -> torch.Tensor | None:
        mk = fp + "|" + key
        if mk in self.mem:
            self.mem.move_to_end(mk)
            return self.mem[mk]
        if self.cache_dir is not None:
            f = self._file(fp, key)
            if f.is_file():
                t = torch.load(f, map_location="cpu", weights_only=True)
                self._put_mem(mk, t)
                return t
        return None

    def put(self, fp: str, key: str, feats: torch.Tensor) -> None:
        t = feats.detach().to("cpu", copy=True).contiguous()
        self._put_mem(fp + "|" + key, t)
        if self.cache_dir is not None:
            f = self._file(fp, key)
            if not f.is_file():
                buf = io.BytesIO()
                torch.save(t, buf)
                f.parent.mkdir(parents=True, exist_ok=True)
                write_bytes_atomic(f, buf.getvalue())

    def features(self, fp: str, keys: Sequence[str], images: torch.Tensor,
                 compute: Callable[[torch.Tensor], torch.Tensor], prefix: str = "") -> list[torch.Tensor]:
        """Per-row features of ``images`` (row i has ``keys[i]``): cached ones read back, the others computed once per
        distinct key with ``compute`` on those rows only, then stored; ``prefix`` namespaces the keys."""
        if len(keys) != images.shape[0]:
            raise ValueError(f"image_key has {len(keys)} entries for {images.shape[0]} images")
        found: dict[str, torch.Tensor] = {}
        todo: dict[str, int] = {}  # key → first row that has it (repeated keys computed once)
        for row, key in enumerate(keys):
            if key in found or key in todo:
                continue
            t = self.get(fp, prefix + key)
            if t is None:
                todo[key] = row
                self.misses += 1
            else:
                found[key] = t
                self.hits += 1
        if todo:
            fresh = compute(images.index_select(0, torch.tensor(list(todo.values()), device=images.device)))
            for j, key in enumerate(todo):
                found[key] = fresh[j]
                self.put(fp, prefix + key, fresh[j])
        return [found[k] for k in keys]

    def _put_mem(self, mk: str, t: torch.Tensor) -> None:
        if self.max_items <= 0:
            return
        self.mem[mk] = t
        self.mem.move_to_end(mk)
        while len(self.mem) > self.max_items:
            self.mem.popitem(last=False)


class FrozenCLIP(nn.Module):
    """The frozen visual encoder: parameters never require grad, always eval mode, always no_grad."""

    def __init__(self, model: CLIPVisionModel) -> None:
        super().__init__()
        self.model = model
        self.model.requires_grad_(False)
        self.model.eval()

    @property
    def width(self) -> int:
        return int(self.model.config.hidden_size)

    def train(self, mode: bool = True) -> "FrozenCLIP":  # frozen encoder: stay in eval mode
        super().train(False)
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = int(self.model.config.image_size)
        if images.dim() != 4 or tuple(images.shape[-2:]) != (size, size):
            raise ValueError(f"CLIP expects images (B, 3, {size}, {size}), got {tuple(images.shape)}; "
                             f"set config image_size={size} for this clip_model")
        p = next(self.model.parameters())
        out = self.model(pixel_values=images.to(device=p.device, dtype=p.dtype))
        return out.last_hidden_state

"""ViLT (seeds.md §3.1) as a ``Backbone``, built on timm's ViT and transformers' ``BertEmbeddings``.

Public API::

    build_vilt(config: dict) -> ViLT                      (bare: PET modules come through vlpeft.pet.inject)
    ViLT.forward(batch, plan: LayerPlan = LayerPlan(), image_key="image", image_token_type_idx=1,
                 mask_text=False, image_embeds=None, image_masks=None, image_cache=None)
    ViLT.candidates(), .sites(), .attach(site, module), .base_trainable(policy), .encode_images(batch)
    ViLT.visual_embed(img, img_mask=None, max_image_len=None, generator=None) -> (x, mask, (patch_index, (Hp, Wp)))
    ViLT.expand_token_types_for_nlvr2() -> None
    ViLT.checkpoint_filter_fn(state_dict) -> state_dict   (also converts transformers' ``vilt.*`` names)
    VIT_VARIANTS: timm ViT hyper-parameters per ``vit`` name (``vit_base_patch32_384``, ``test_vilt_*``)

Weights: always random init here (no download, we run offline); real weights come from an original ViLT ``.ckpt``
(``vilt_200k_mlm_itm.ckpt`` or a fine-tuned one) through ``vlpeft.checkpoint`` and ``checkpoint_filter_fn``.

Parameter names equal the original checkpoints': ``text_embeddings.*``, ``token_type_embeddings.weight``,
``transformer.{patch_embed.proj, cls_token, pos_embed, blocks.i.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1,
mlp.fc2}, norm}``, ``pooler.dense``; PET sites keep the DAS names: ``transformer.blocks.i.adapter0|adapter1``
(parallel slots) and ``adapter_list.i.0`` (skip slot).

Differences from the original, on purpose (seeds.md §8):
- padding is read from the batch's explicit ``image_mask`` (downsampled to the patch grid with nearest
  interpolation, as the original did with its pixel-derived mask), never from pixel values;
- patch selection: when all valid patches are kept (``max_image_len`` < 0, the DAS setting) they stay in raster
  order and the padding slots are the first invalid positions; only a real cap draws random patches, from the
  ``generator`` passed (default: the global torch RNG, so ``seed_everything`` makes it reproducible). Padding
  slots are masked keys, and attention is permutation-equivariant, so ``cls_feats`` equal the original's;
- devices are taken from the module, never a hard-coded CUDA call; layer count, widths and grid come from the built model.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn
from transformers import BertConfig
from transformers.models.bert.modeling_bert import BertEmbeddings

from vlpeft.backbones._convert import hf_to_vilt_state_dict
from vlpeft.backbones._settings import ViltSpec
from vlpeft._init import init_weights_bert
from vlpeft.backbones._layers import Pooler
from vlpeft._protocol import Backbone, Candidates, LayerPlan, Site
from vlpeft.backbones._sites import attach_projection, attach_skip, base_policy_params, projection_sites
from vlpeft.backbones._variants import Variants
from vlpeft.backbones._layers import PatchConv
from vlpeft.search.placement import validate_skip

# ----------------------------------------------------------------------------------------------- ViT variants
# timm ``VisionTransformer`` hyper-parameters per ``vit`` name (data, as open_clip's model configs)
VIT_VARIANTS = Variants("ViT", "timm.models.vision_transformer.VisionTransformer", {
    # ViT-B/32 at 384 px (ViLT-B/32): 12 blocks, width 768, 12 heads, 12x12 position grid
    "vit_base_patch32_384": dict(img_size=384, patch_size=32, embed_dim=768, depth=12, num_heads=12, mlp_ratio=4.0),
    # test-only: width 64, 2 blocks, 4 heads, patch 16 at 64 px (4x4 grid)
    "test_vilt_tiny": dict(img_size=64, patch_size=16, embed_dim=64, depth=2, num_heads=4, mlp_ratio=4.0),
    # test-only: width 64, 4 blocks, 4 heads, patch 32 at 128 px (4x4 grid)
    "test_vilt_tiny_p32": dict(img_size=128, patch_size=32, embed_dim=64, depth=4, num_heads=4, mlp_ratio=4.0),
    # demo/test: width 128, 4 blocks, 4 heads, patch 16 at 64 px (4x4 grid)
    "test_vilt_small": dict(img_size=64, patch_size=16, embed_dim=128, depth=4, num_heads=4, mlp_ratio=4.0),
})


# ----------------------------------------------------------------------------------------------- modules
class DASBlock(Block):
    """timm's pre-norm ViT block with explicit PET slots, all empty by default (an empty slot costs nothing).

    Per sublayer (``attn``, ``mlp``), with ``X`` the block stream entering it and ``H`` its output (after ``ls``):
    ``Y = out_seq(H)`` (``out_attn`` / ``out_mlp``: a map with its own residual), ``Y += out_par(X)``
    (``out_par_attn`` / ``out_par_mlp``: a delta reading the sublayer input), ``Y ← Y ⊙ gate(X, Y)``
    (``gate_attn`` / ``gate_mlp``: VL-PET's G, scale included) — the fixed order of
    ``vlpeft.pet._sites_hf.compose_site`` —, then ``x = X + drop_path(Y)``, then the DAS parallel slot
    ``x += adapter0(X)`` / ``adapter1(X)`` (the original DAS checkpoints' names). ``attn_mask`` is a boolean key
    mask broadcastable to (B, heads, N, N), True = attend."""

    def __init__(self, dim: int, *args: Any, **kwargs: Any):
        super().__init__(dim, *args, **kwargs)
        self.adapter0: nn.Module | None = None  # par sites (DAS)
        self.adapter1: nn.Module | None = None
        self.out_attn: nn.Module | None = None  # out_seq sites: a map of the sublayer output (VL-Adapter style)
        self.out_mlp: nn.Module | None = None
        self.out_par_attn: nn.Module | None = None  # out_par sites: a delta from X added to the sublayer output
        self.out_par_mlp: nn.Module | None = None
        self.gate_attn: nn.Module | None = None  # gate sites: G(X, Y) multiplying the adapted output (VL-PET)
        self.gate_mlp: nn.Module | None = None

    @staticmethod
    def _compose(x: torch.Tensor, h: torch.Tensor, seq: nn.Module | None, par: nn.Module | None,
                 gate: nn.Module | None) -> torch.Tensor:
        if seq is not None:
            h = seq(h)
        if par is not None:
            h = h + par(x)
        if gate is not None:
            h = h * gate(x, h)
        return h

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        h = self.ls1(self.attn(self.norm1(x), attn_mask=attn_mask))
        h = x + self.drop_path1(self._compose(x, h, self.out_attn, self.out_par_attn, self.gate_attn))
        x = h if self.adapter0 is None else h + self.adapter0(x)
        h = self.ls2(self.mlp(self.norm2(x)))
        h = x + self.drop_path2(self._compose(x, h, self.out_mlp, self.out_par_mlp, self.gate_mlp))
        return h if self.adapter1 is None else h + self.adapter1(x)


def _check_max_image_len(v: Any) -> int | None:
    """None or a negative int: keep every valid patch; a positive int: cap the image tokens."""
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int) or v == 0:
        raise ValueError(f"max_image_len={v!r}: use a positive int to cap the image patches, or -1 to keep all")
    return None if v < 0 else v


class ViLT(Backbone):
    """Single-stream ViLT (BERT text embeddings + ViT-B/32 patches, shared blocks), a ``Backbone``.

    Random init only (offline; no timm or hub download): text embeddings, token types and pooler get the
    BERT init, the ViT timm's (trunc-normal 0.02). PET modules come later through ``vlpeft.pet.inject``
    (``sites()`` / ``attach()``); the ``das`` preset initialises its in-block adapters as timm's ViT init would
    have and its skip adapters BERT-style, as the original.
    """

    capabilities = frozenset({"classify", "pair_images", "score_pairs"})
    family = "vilt"
    # kind:scope policies: "encoder" is the single-stream ViT (blocks and final norm; the text embeddings'
    # LayerNorm is outside it), e.g. VL-PET's norms:encoder
    policy_scope_aliases = {"encoder": "transformer"}


    def __init__(self, spec: ViltSpec):
        super().__init__()
        hp = VIT_VARIANTS.lookup(spec.vit, "vit")
        if hp["embed_dim"] != spec.hidden_size:
            raise ValueError(
                f"vit={spec.vit!r} has width {hp['embed_dim']} but hidden_size={spec.hidden_size}; "
                f"set hidden_size={hp['embed_dim']} (text embeddings and ViT share one width)"
            )
        if hp["depth"] != spec.num_layers:
            raise ValueError(
                f"vit={spec.vit!r} has {hp['depth']} blocks but num_layers={spec.num_layers}; "
                f"set num_layers={hp['depth']} (the ViT variant fixes the depth)"
            )
        if spec.patch_size is not None and int(spec.patch_size) != hp["patch_size"]:
            raise ValueError(
                f"vit={spec.vit!r} uses {hp['patch_size']}-px patches but patch_size={spec.patch_size}; "
                f"set patch_size={hp['patch_size']} or choose another vit"
            )
        if spec.token_type_rows not in (2, 3):
            raise ValueError(f"token_type_rows={spec.token_type_rows}: must be 2 (or 3 for NLVR2)")
        self.spec = spec
        self.max_image_len = _check_max_image_len(spec.max_image_len)
        d = spec.hidden_size

        bert_config = BertConfig(
            vocab_size=spec.vocab_size, hidden_size=d, num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads, intermediate_size=int(d * spec.mlp_ratio),
            max_position_embeddings=spec.max_text_len, hidden_dropout_prob=spec.drop_rate,
            attention_probs_dropout_prob=spec.drop_rate,
        )
        self.text_embeddings = BertEmbeddings(bert_config)
        self.text_embeddings.apply(init_weights_bert)
        self.token_type_embeddings = nn.Embedding(2, d)
        self.token_type_embeddings.apply(init_weights_bert)

        self.transformer = VisionTransformer(
            img_size=hp["img_size"], patch_size=hp["patch_size"], embed_dim=d, depth=hp["depth"],
            num_heads=hp["num_heads"], mlp_ratio=hp["mlp_ratio"], qkv_bias=True, num_classes=0,
            drop_rate=0.0, pos_drop_rate=spec.drop_rate, proj_drop_rate=spec.drop_rate, attn_drop_rate=0.0,
            drop_path_rate=0.0, norm_layer=functools.partial(nn.LayerNorm, eps=1e-6),
            block_fn=DASBlock,
        )
        # the patch conv as one matmul (same parameters and names): a fixed per-image cost no DAS skip removes
        self.transformer.patch_embed.proj = PatchConv.adopt(self.transformer.patch_embed.proj)
        self.pooler = Pooler(d)
        self.pooler.apply(init_weights_bert)
        # one skip site per block: an empty Sequential is the identity; a PET skip module goes in as
        # adapter_list.i.0 (the original names)
        self.adapter_list = nn.ModuleList(nn.Sequential() for _ in range(self.num_layers))
        self.patch_generator: torch.Generator | None = None  # None: global torch RNG (see visual_embed)
        if spec.token_type_rows == 3:
            self.expand_token_types_for_nlvr2()

    # ------------------------------------------------------------------ sizes read from the built model
    @property
    def num_layers(self) -> int:
        return len(self.transformer.blocks)

    @property
    def hidden_size(self) -> int:
        return int(self.transformer.embed_dim)

    @property
    def patch_size(self) -> tuple[int, int]:
        return tuple(self.transformer.patch_embed.proj.kernel_size)

    @property
    def pos_grid(self) -> tuple[int, int]:
        return tuple(self.transformer.patch_embed.grid_size)

    # ------------------------------------------------------------------ NLVR2
    @torch.no_grad()
    def expand_token_types_for_nlvr2(self) -> None:
        """Rebuild ``token_type_embeddings`` with 3 rows: rows 0, 1 kept, row 2 := row 1 (second image)."""
        old = self.token_type_embeddings
        if old.num_embeddings == 3:
            return
        if old.num_embeddings != 2:
            raise ValueError(f"token_type_embeddings has {old.num_embeddings} rows; expected 2 before the NLVR2 expansion")
        new = nn.Embedding(3, old.embedding_dim, device=old.weight.device, dtype=old.weight.dtype)
        new.weight[:2] = old.weight
        new.weight[2] = old.weight[1]
        new.weight.requires_grad_(old.weight.requires_grad)
        self.token_type_embeddings = new

    # ------------------------------------------------------------------ embeddings
    def visual_embed(
        self,
        img: torch.Tensor,
        img_mask: torch.Tensor | None = None,
        max_image_len: int | None = None,
        generator: torch.Generator | None = None,
        sizes: Sequence[tuple[int, int]] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, tuple[torch.Tensor, tuple[int, int]]]:
        """Patch tokens of a top-left aligned, zero-padded image batch (seeds.md §3.1 steps 1–8).

        ``img_mask`` (B, H, W) bool, True on real pixels (None: every pixel is real). A patch is valid iff the
        nearest-downsampled mask says so (its top-left pixel is real). ``max_image_len``: None/negative keeps
        all valid patches (T = the largest valid count in the batch); a positive cap T keeps a uniformly random
        T-subset of a larger image, drawn from ``generator`` (default: the global torch RNG). Returns
        ``x`` (B, 1+T, d) with cls token and positions, ``mask`` (B, 1+T) long, ``(patch_index (B, T, 2), (Hp, Wp))``.
        """
        if img.dim() != 4:
            raise ValueError(f"image must be (B, 3, H, W); got shape {tuple(img.shape)}")
        proj = self.transformer.patch_embed.proj
        x = proj(img.to(device=proj.weight.device, dtype=proj.weight.dtype))
        B, D, Hp, Wp = x.shape
        dev = x.device
        if img_mask is None:
            pm = torch.ones(B, Hp, Wp, dtype=torch.bool, device=dev)
        else:
            if tuple(img_mask.shape) != (B, img.shape[2], img.shape[3]):
                raise ValueError(f"image mask shape {tuple(img_mask.shape)} does not match image "
                                 f"{tuple(img.shape)}; expected (B, H, W)")
            pm = F.interpolate(img_mask.to(dev)[:, None].float(), size=(Hp, Wp), mode="nearest")[:, 0] > 0.5
        H, W = img.shape[2], img.shape[3]
        if sizes is not None:
            # the collate's real pixel sizes (host data): the patch extents need no device→host copy
            if len(sizes) != B:
                raise ValueError(f"image sizes list has {len(sizes)} entries for {B} images")
            real = np.asarray([[int(h), int(w)] for h, w in sizes], dtype=np.int64).reshape(B, 2)
            hw = np.stack([_nearest_counts(real[:, 0], H, Hp), _nearest_counts(real[:, 1], W, Wp)], 1)
        else:  # derive them from the mask (one device sync; direct calls without the collate's sizes)
            x_h = pm[:, :, 0].sum(1)
            x_w = pm[:, 0, :].sum(1)
            rect = (torch.arange(Hp, device=dev)[None, :, None] < x_h[:, None, None]) & (
                torch.arange(Wp, device=dev)[None, None, :] < x_w[:, None, None])
            read = torch.cat([x_h, x_w, (pm == rect).all().long()[None]]).cpu().numpy()
            if not read[-1]:
                raise ValueError("image_mask must mark one top-left aligned rectangle per image (the collate's layout)")
            hw = np.stack([read[:B], read[B:2 * B]], 1)
        counts = hw[:, 0] * hw[:, 1]
        if not counts.all():
            raise ValueError(f"samples {np.flatnonzero(counts == 0).tolist()} have no valid image patch; check "
                             f"image_mask / image sizes (an image needs at least {self.patch_size} real pixels)")

        # position grid bilinearly resized (align_corners=True) to each image's patch extent, zero elsewhere: one
        # resize per distinct extent (F.interpolate itself, so each image's positions are bit-equal to its own
        # resize), then one index picks every image's grid; no per-image Python loop
        gh, gw = self.pos_grid
        grid = self.transformer.pos_embed[:, 1:].transpose(1, 2).reshape(1, D, gh, gw)
        uniq, inv = np.unique(hw, axis=0, return_inverse=True)
        table = torch.cat([F.pad(F.interpolate(grid, size=(int(h), int(w)), mode="bilinear", align_corners=True),
                                 (0, Wp - int(w), 0, Hp - int(h))) for h, w in uniq], 0)
        pos = table.expand(B, -1, -1, -1) if len(uniq) == 1 else table[torch.from_numpy(inv.reshape(B)).to(dev)]

        N = Hp * Wp
        # positions added before the selection (one gather instead of two; the same sums), in the dtype the cat
        # with the cls token promoted them to before
        dt = torch.promote_types(x.dtype, self.transformer.cls_token.dtype)
        x = x.flatten(2).transpose(1, 2).to(dt) + pos.flatten(2).transpose(1, 2).to(x.dtype).to(dt)
        valid = pm.flatten(1)
        patch_index = torch.stack(
            torch.meshgrid(torch.arange(Hp, device=dev), torch.arange(Wp, device=dev), indexing="ij"), -1
        ).view(N, 2)

        T = int(counts.max())
        cap = _check_max_image_len(max_image_len)
        if cap is not None:
            T = min(T, cap)
        # order: valid patches (raster order) then invalid ones; the first T of that order are kept
        base = torch.arange(N, device=dev)[None].expand(B, N) + N * (~valid).long()
        if T < int(counts.max()):
            # a cap bites: random valid subset (keys in [0, 1) for valid, >= N for invalid), then raster order
            r = torch.rand(B, N, generator=generator, device=generator.device if generator is not None else "cpu")
            key = torch.where(valid, r.to(dev, torch.float64), base.double())
            sel = key.argsort(1)[:, :T]
            sel = sel.gather(1, base.gather(1, sel).argsort(1))
        else:
            sel = base.argsort(1)[:, :T]
        x = x.gather(1, sel[..., None].expand(-1, -1, D))
        mask = valid.gather(1, sel).long()
        patch_index = patch_index[sel]

        cls = (self.transformer.cls_token + self.transformer.pos_embed[:, :1]).expand(B, -1, -1)
        x = self.transformer.pos_drop(torch.cat([cls, x], 1))
        mask = torch.cat([mask.new_ones(B, 1), mask], 1)
        return x, mask, (patch_index, (Hp, Wp))

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        batch: Mapping[str, Any],
        plan: LayerPlan = LayerPlan(),
        image_key: str = "image",
        image_token_type_idx: int = 1,
        mask_text: bool = False,
        image_embeds: torch.Tensor | None = None,
        image_masks: torch.Tensor | None = None,
        image_cache: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> dict[str, Any]:
        """Run text + image through the blocks; blocks in ``plan.skip`` are replaced by their skip adapter
        (the block itself is not computed). ``image_embeds``/``image_masks``: precomputed ``visual_embed``
        output (before token types), e.g. for retrieval over many captions per image."""
        skipset = set(validate_skip(sorted(plan.skip), self.num_layers))
        if image_cache is not None:  # one image's tokens, scored against every row of the text batch
            n = batch["text_ids"].shape[0]
            image_embeds, image_masks = image_cache[0].expand(n, -1, -1), image_cache[1].expand(n, -1)
        dev = self.token_type_embeddings.weight.device
        n_types = self.token_type_embeddings.num_embeddings
        if not 0 < int(image_token_type_idx) < n_types:
            raise ValueError(
                f"image_token_type_idx={image_token_type_idx} but token_type_embeddings has {n_types} rows; "
                "NLVR2's second image (2) needs expand_token_types_for_nlvr2() (build with loss_names nlvr2 >= 1)"
            )
        text_key = "text_ids_mlm" if mask_text else "text_ids"
        for k in (text_key, "text_masks"):
            if k not in batch:
                raise KeyError(f"ViLT.forward: batch has no {k!r} (keys: {sorted(batch)})")
        text_ids = batch[text_key].to(dev)
        text_masks = batch["text_masks"].to(dev)
        max_len = self.text_embeddings.position_embeddings.num_embeddings
        if text_ids.shape[1] > max_len:
            raise ValueError(f"text length {text_ids.shape[1]} exceeds max_text_len={max_len}; tokenize with "
                             f"max_length={max_len} or rebuild with a larger max_text_len")
        text_embeds = self.text_embeddings(input_ids=text_ids)

        patch_index = None
        if image_embeds is None:
            if image_key not in batch:
                raise KeyError(f"ViLT.forward: batch has no image {image_key!r} (keys: {sorted(batch)})")
            image_embeds, image_masks, patch_index = self.visual_embed(
                batch[image_key], batch.get(f"{image_key}_mask"), self.max_image_len, self.patch_generator,
                batch.get(f"{image_key}_sizes"))
        elif image_masks is None:
            raise ValueError("ViLT.forward: image_embeds given without image_masks")
        image_embeds, image_masks = image_embeds.to(dev), image_masks.to(dev)

        text_embeds = text_embeds + self.token_type_embeddings(torch.zeros_like(text_masks, dtype=torch.long))
        image_embeds = image_embeds + self.token_type_embeddings(
            torch.full_like(image_masks, int(image_token_type_idx), dtype=torch.long))
        x = torch.cat([text_embeds, image_embeds], 1)
        co_masks = torch.cat([text_masks, image_masks], 1)
        attn_mask = co_masks.bool()[:, None, None, :]  # keys only; (B, 1, 1, N)

        for i, blk in enumerate(self.transformer.blocks):
            x = self.adapter_list[i](x) if i in skipset else blk(x, attn_mask=attn_mask)
        x = self.transformer.norm(x)

        lt = text_embeds.shape[1]
        out = {
            "text_feats": x[:, :lt],
            "image_feats": x[:, lt:],
            "cls_feats": self.pooler(x),
            "raw_cls_feats": x[:, 0],
            "text_masks": text_masks,
            "image_masks": image_masks,
            "text_ids": text_ids,
            "patch_index": patch_index,
        }
        if "text_labels" in batch:
            out["text_labels"] = batch["text_labels"]
        return out

    # ------------------------------------------------------------------ the backbone protocol
    def candidates(self) -> Candidates:
        return Candidates(count=self.num_layers, skip=True, insert=False)

    def candidate_name(self, index: int) -> str:
        return f"transformer.blocks.{index}"

    def sites(self) -> list[Site]:
        """Per block: DAS ``par`` and ``skip`` slots, ``out_seq`` / ``out_par`` / ``gate`` slots per sublayer, and
        the projections. Stack ``vit`` (text and image in one stream) has the role ``encoder`` (``Site.role``), so
        encoder-only presets (VL-PET) place their encoder modules here."""
        d, out, enc = self.hidden_size, [], {"stack_role": "encoder"}
        for i in range(self.num_layers):
            b = f"transformer.blocks.{i}"
            out += [Site("vit", i, "attn", "par", d, f"{b}.adapter0", self.family, enc),
                    Site("vit", i, "ffn", "par", d, f"{b}.adapter1", self.family, enc),
                    Site("vit", i, "block", "skip", d, f"adapter_list.{i}.0", self.family, enc),
                    Site("vit", i, "attn", "out_seq", d, f"{b}.out_attn", self.family, enc),
                    Site("vit", i, "ffn", "out_seq", d, f"{b}.out_mlp", self.family, enc),
                    Site("vit", i, "attn", "out_par", d, f"{b}.out_par_attn", self.family, enc),
                    Site("vit", i, "ffn", "out_par", d, f"{b}.out_par_mlp", self.family, enc),
                    Site("vit", i, "attn", "gate", d, f"{b}.gate_attn", self.family, enc),
                    Site("vit", i, "ffn", "gate", d, f"{b}.gate_mlp", self.family, enc)]
        projs = projection_sites(self, self.family, r"^transformer\.blocks\.\d+\.(attn|mlp)\.")
        return out + [replace(s, meta={**s.meta, **enc}) for s in projs]

    def attach(self, site: Site, module: nn.Module) -> None:
        if site.anchor == "skip":
            return attach_skip(self.adapter_list, site, module)
        if site.anchor.startswith("proj:"):
            return attach_projection(self, site, module)
        blk = self.transformer.blocks[site.layer]
        attr = site.name.rsplit(".", 1)[-1]
        if getattr(blk, attr) is not None:
            raise ValueError(f"site {site.name} is taken; one module per slot")
        setattr(blk, attr, module)

    def base_trainable(self, policy: str) -> list[tuple[str, nn.Parameter]]:
        """``das_original``: what the original DAS name rule unfreezes in the backbone (the pooler and both
        token-type tables, ``text_embeddings.token_type_embeddings`` included, seeds.md §8 item 17); else the
        generic none / norms / bias / all."""
        if policy == "das_original":
            return [(n, p) for n, p in self.named_parameters() if "pooler" in n or "token_type_embeddings" in n]
        return base_policy_params(self, policy)

    def base_policies(self) -> tuple[str, ...]:
        return super().base_policies() + ("das_original",)

    def encode_images(self, batch: Mapping[str, Any], image_key: str = "image") -> tuple[torch.Tensor, torch.Tensor]:
        """Patch tokens of a batch's images, to score many captions against (``forward(..., image_cache=…)``)."""
        emb, masks, _ = self.visual_embed(batch[image_key], batch.get(f"{image_key}_mask"), self.max_image_len,
                                          self.patch_generator, batch.get(f"{image_key}_sizes"))
        return emb, masks

    def checkpoint_filter_fn(self, state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return checkpoint_filter_fn(state_dict, self)

    def shape_fix_hint(self, key: str) -> str:
        return _shape_fix(key)

    def hf_model_types(self) -> tuple[str, ...]:
        return ("vilt",)  # ViltForQuestionAnswering / ViltModel folders: names converted by checkpoint_filter_fn


@functools.lru_cache(maxsize=64)
def _nearest_sources(size: int, grid: int) -> np.ndarray:
    """The source pixel of each of ``grid`` nearest-downsampled positions of a ``size``-long axis (non-decreasing)."""
    scale = np.float32(size) / np.float32(grid)
    return np.minimum(np.floor(np.arange(grid, dtype=np.float32) * scale).astype(np.int64), size - 1)


def _nearest_counts(real: np.ndarray, size: int, grid: int) -> np.ndarray:
    """How many of ``grid`` nearest-downsampled positions of a ``size``-long axis fall on its first ``real[b]``
    pixels, as ``F.interpolate(mode="nearest")`` picks them (``visual_embed``'s mask), for every b at once."""
    if grid == size:
        return real.astype(np.int64)
    return np.searchsorted(_nearest_sources(int(size), int(grid)), real, side="left").astype(np.int64)


def build_vilt(spec: ViltSpec | Mapping[str, Any]) -> ViLT:
    """ViLT from its settings (or a flat config dict; keys listed in ``ViltSpec``). Random init, no download."""
    return ViLT(spec if isinstance(spec, ViltSpec) else ViltSpec.from_config(spec))


# ----------------------------------------------------------------------------------------------- checkpoints
class ViltCheckpointError(ValueError):
    """A checkpoint that does not fit the built ViLT; the message names the key, both shapes and the fix."""


def _shape_fix(key: str) -> str:
    if "adapter_list" in key:
        return "das_skip_adapter_dim of the config doesn't match the checkpoint"
    if ".adapter0." in key or ".adapter1." in key:
        return "das_adapter_dim of the config doesn't match the checkpoint"
    if "word_embeddings" in key:
        return "vocab_size of the config doesn't match the checkpoint"
    if "text_embeddings.position_embeddings" in key:
        return "max_text_len of the config doesn't match the checkpoint"
    if key == "token_type_embeddings.weight":
        return "the checkpoint has NLVR2 token types (3 rows): build with loss_names nlvr2 >= 1"
    return "vit/hidden_size of the config don't match the checkpoint"


_DROP_BUFFERS = ("text_embeddings.position_ids", "text_embeddings.token_type_ids")


def checkpoint_filter_fn(state_dict: Mapping[str, torch.Tensor], model: ViLT) -> dict[str, torch.Tensor]:
    """Adapt an original ViLT/DAS state dict (top-level ViLT names) to ``model`` (timm-style filter).

    - transformers ``Vilt*`` names (``vilt.…``) are converted to the original names;
    - ``text_embeddings.position_ids``/``token_type_ids`` buffers (old transformers saved them) are dropped;
    - ``transformer.pos_embed`` of another grid is resized (bilinear, align_corners=True, cls row kept);
    - a 2-row ``token_type_embeddings`` goes into a 3-row (NLVR2) model as rows 0, 1 and row 2 := row 1;
    - any other shape mismatch raises ``ViltCheckpointError`` naming the key, both shapes and the fix.
    Keys the model lacks pass through unchanged (the loader reports them as unexpected).
    """
    sd = dict(state_dict)
    if any(k.startswith("vilt.") for k in sd):
        sd = hf_to_vilt_state_dict(sd)
    own = model.state_dict()
    out: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if k in _DROP_BUFFERS:
            continue
        if k not in own or not isinstance(v, torch.Tensor) or own[k].shape == v.shape:
            out[k] = v
            continue
        want = own[k].shape
        if k == "transformer.pos_embed" and v.dim() == 3 and v.shape[-1] == want[-1]:
            old = v.shape[1] - 1
            side = int(round(old ** 0.5))
            if side * side != old:
                raise ViltCheckpointError(f"{k}: checkpoint grid of {old} positions is not square; cannot resize")
            out[k] = _resize_pos_embed(v, (side, side), model.pos_grid)
            continue
        if k == "token_type_embeddings.weight" and v.shape[0] == 2 and want[0] == 3 and v.shape[1] == want[1]:
            out[k] = torch.cat([v, v[1:2]], 0)
            continue
        raise ViltCheckpointError(
            f"checkpoint tensor {k} has shape {tuple(v.shape)} but the model's is {tuple(want)}: {_shape_fix(k)}"
        )
    return out


def _resize_pos_embed(posemb: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Resize the patch-position grid (cls row kept) the way ``visual_embed`` resizes it per image: bilinear,
    align_corners=True. (timm 1.0.29's ``resample_abs_pos_embed`` has no ``align_corners``.)"""
    d = posemb.shape[-1]
    grid = posemb[:, 1:].float().reshape(1, old[0], old[1], d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=tuple(new), mode="bilinear", align_corners=True)
    grid = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], d).to(posemb.dtype)
    return torch.cat([posemb[:, :1], grid], 1)


__all__ = [
    "VIT_VARIANTS", "DASBlock", "Pooler", "ViLT", "ViltSpec", "ViltCheckpointError",
    "build_vilt", "checkpoint_filter_fn", "init_weights_bert",
]

"""METER's task gate and its ITM (issue 16 item 3).

METER's ``set_task`` switches on every loss whose weight is > 0, so its F30K / COCO retrieval lines
(``itm=0.5, irtr=1``) train image-text matching beside retrieval and the DAS reward of a candidate is
``exp(-(irtr_loss + itm_loss))``; ViLT and DVP switch on weights >= 1 (ViLT's F30K itm=0.5 stays off). METER's
ITM: half the texts (``B // 2``) keep their own image, the others get a drawn false image, and the frozen
``itm_score`` head's [no match, match] logits are scored by cross-entropy against those labels. Here every
reference is restated by hand (per sample, one forward each) on weights moved off their init.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlpeft.backbones import task_gate
from vlpeft.build import false_images
from vlpeft.config import DEFAULTS, NAMED_CONFIGS, ConfigError, validate_config
from vlpeft.data.datamodule import MTDataModule
from vlpeft.data.datasets import CaptionDataset
from vlpeft.tasks.heads import active_tasks
from vlpeft.tasks.objectives import itm_labels


B = 6
FALSE_TEXTS = 2
SYNTHETIC = dict(seed=5, images=16, variants=("captions",))  # this module's arrows (tests/conftest.py)


def _config(named: str, arrows: Path | None = None, **updates) -> dict:
    cfg = copy.deepcopy(DEFAULTS)
    cfg.update(copy.deepcopy(NAMED_CONFIGS[named]))
    cfg.update(data_root=str(arrows or ""), per_gpu_batchsize=B, batch_size=B, num_gpus=0, num_workers=0,
               draw_false_text=FALSE_TEXTS, image_size=32, drop_rate=0.0)
    if cfg.get("backbone") == "meter":
        cfg.update(backbone="test_meter_bert", das_adapter_dim=8, das_skip_adapter_dim=16)
    cfg.update(updates)
    return cfg


# ---------------------------------------------------------------------------------------------- the task gate
@pytest.mark.parametrize("named, backbone, want", [
    ("task_finetune_irtr_f30k_clip_bert", "meter", ["irtr", "itm"]),  # METER: v > 0
    ("task_finetune_irtr_coco_clip_bert", "meter", ["irtr", "itm"]),
    ("task_finetune_irtr_f30k", "vilt", ["irtr"]),  # ViLT: v >= 1, its itm=0.5 is off
    ("task_finetune_irtr_coco", "vilt", ["irtr"]),
    ("dvp_search_bert_vqa", "clip_plm", ["vqa"]),  # DVP: v >= 1
])
def test_each_family_activates_tasks_by_its_originals_rule(named, backbone, want):
    loss_names = NAMED_CONFIGS[named]["loss_names"]
    # the named configs keep the originals' weights (METER / ViLT config.py: itm 0.5, irtr 1)
    if "irtr" in named:
        assert (loss_names["itm"], loss_names["irtr"]) == (0.5, 1)
    original = {"meter": lambda v: v > 0, "vilt": lambda v: v >= 1, "clip_plm": lambda v: v >= 1}[backbone]
    assert sorted(t for t, v in loss_names.items() if original(v)) == want
    assert sorted(active_tasks(loss_names, task_gate(backbone))) == want
    assert task_gate("test_meter") == task_gate("test_meter_bert") == ">0"  # the tiny entries follow their family


def test_meter_retrieval_builds_itm_and_irtr_and_refuses_itm_without_false_images(arrows):
    from vlpeft.build import assemble

    cfg = _config("task_finetune_irtr_f30k_clip_bert", arrows)
    a = assemble(cfg)
    assert [t.name for t in a.tasks] == ["itm", "irtr"]
    assert set(a.heads) == {"itm_score", "rank_output"}
    # the originals: rank_output starts as itm_score's match row; itm_score does not train
    assert torch.equal(a.heads["rank_output"].weight, a.heads["itm_score"].fc.weight[1:])
    assert not any(p.requires_grad for p in a.heads["itm_score"].parameters())
    # the data draws false images only where a task reads them (METER's ITM), one per item as draw_false_image=1
    assert false_images(cfg) == 1
    assert false_images(_config("task_finetune_irtr_f30k", arrows)) == 0
    with pytest.raises(ConfigError, match="draw_false_image=1"):
        validate_config(dict(cfg, draw_false_image=0))


# ---------------------------------------------------------------------------------------------- ITM negatives
def _caption_ds(arrows: Path, seed: int, **kw) -> CaptionDataset:
    from vlpeft.data.tokenizer import load_tokenizer

    return CaptionDataset(arrows, ["f30k_caption_karpathy_val"], transform_keys=["clip"], image_size=32,
                          tokenizer=load_tokenizer("bert-base-uncased"), seed=seed, draw_false_image=1, **kw)


def test_itm_negatives_are_seeded_and_split_exactly_half(arrows):
    a, again, other = _caption_ds(arrows, 3), _caption_ds(arrows, 3), _caption_ds(arrows, 4)
    for i in range(4):
        x, y = a[i], again[i]
        assert torch.equal(x["false_image_0"], y["false_image_0"]) and x["itm_draw"] == y["itm_draw"]
    assert [a[i]["itm_draw"] for i in range(8)] != [other[i]["itm_draw"] for i in range(8)]
    a.set_epoch(1)
    assert [a[i]["itm_draw"] for i in range(8)] != [again[i]["itm_draw"] for i in range(8)]
    # the false image is the image of another drawn item (the originals' get_false_image)
    images = {a.index(i)[0]: a.get_image(a.index(i)[0]) for i in range(len(a))}
    assert any(torch.equal(a[0]["false_image_0"], img) for img in images.values())
    # METER: B // 2 positives, B - B // 2 negatives, for odd and even batches
    for n in (5, 6):
        labels = itm_labels(torch.tensor([a[i]["itm_draw"] for i in range(n)]))
        assert int(labels.sum()) == n // 2 and labels.shape == (n,)


# ---------------------------------------------------------------------------------------------- loss and reward
def _perturb(module: torch.nn.Module, seed: int = 7) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)


def _reference_losses(module, batch, plan) -> tuple[float, float]:
    """METER's compute_irtr and compute_itm restated, one sample at a time."""
    bb, heads = module.backbone, module.heads
    rank_w, rank_b = heads["rank_output"].weight, heads["rank_output"].bias
    itm_w, itm_b = heads["itm_score"].fc.weight, heads["itm_score"].fc.bias

    def feats(ids, masks, image):
        return bb({"text_ids": ids[None], "text_masks": masks[None], "image": image[None]}, plan)["cls_feats"][0]

    irtr, itm = [], []
    labels = itm_labels(batch["itm_draw"])
    for b in range(batch["text_ids"].shape[0]):
        texts = [(batch["text_ids"][b], batch["text_masks"][b])] + [
            (batch[f"false_text_{k}_ids"][b], batch[f"false_text_{k}_masks"][b]) for k in range(FALSE_TEXTS)]
        scores = torch.stack([feats(i, m, batch["image"][b]) @ rank_w[0] + rank_b[0] for i, m in texts])
        irtr.append(-torch.log_softmax(scores.double(), 0)[0])  # the positive caption is first
        image = batch["image"][b] if int(labels[b]) == 1 else batch["false_image_0"][b]
        logits = feats(batch["text_ids"][b], batch["text_masks"][b], image) @ itm_w.T + itm_b
        itm.append(-torch.log_softmax(logits.double(), 0)[int(labels[b])])
    return float(torch.stack(irtr).mean()), float(torch.stack(itm).mean())


def test_meter_retrieval_loss_and_das_reward_include_itm(arrows):
    from vlpeft.lightning import VLPeftModule

    cfg = _config("task_finetune_irtr_f30k_clip_bert", arrows, stage="search", method="das", search="das",
                  skip_num=1, das_step=3)
    dm = MTDataModule(cfg, false_images=false_images(cfg))
    batch = next(iter(dm.search_dataloader()))
    assert batch["false_image_0"].shape == batch["image"].shape and batch["itm_draw"].shape == (B,)
    torch.manual_seed(0)
    module = VLPeftModule(cfg).eval()
    _perturb(module)
    plans = module.search.propose(module.base_plan)
    with torch.no_grad():
        outs = [module(batch, p) for p in plans]
        refs = [_reference_losses(module, batch, p) for p in plans]
    for out, (irtr, itm) in zip(outs, refs):
        assert float(out["irtr_loss"]) == pytest.approx(irtr, rel=1e-4, abs=1e-5)
        assert float(out["itm_loss"]) == pytest.approx(itm, rel=1e-4, abs=1e-5)
    values = torch.stack([module.search.reward_value(o, module.tasks[0]) for o in outs])
    info = module.search.update_plans(plans, values)
    # the DAS reward of each candidate is exp(-(irtr + itm)), not exp(-irtr)
    assert info["rewards"] == pytest.approx([math.exp(-(irtr + itm)) for irtr, itm in refs], rel=1e-4)
    assert all(itm > 0.05 for _, itm in refs)  # ITM really changes the reward


def test_itm_pairs_swap_the_padded_image_mask_and_sizes_with_the_image():
    from vlpeft.tasks.objectives import itm_batch

    img = torch.zeros(4, 3, 2, 2)
    false = torch.ones(4, 3, 2, 2)
    mask, fmask = torch.ones(4, 2, 2, dtype=torch.bool), torch.zeros(4, 2, 2, dtype=torch.bool)
    batch = {"image": img, "false_image_0": false, "image_mask": mask, "false_image_0_mask": fmask,
             "image_sizes": [(2, 2)] * 4, "false_image_0_sizes": [(1, 1)] * 4, "image_key": ["a"] * 4,
             "itm_draw": torch.tensor([0.9, 0.1, 0.5, 0.2], dtype=torch.float64)}
    pairs, labels = itm_batch(batch)
    assert labels.tolist() == [0, 1, 0, 1]  # the two smallest draws keep their own image
    assert pairs["image"][:, 0, 0, 0].tolist() == [1.0, 0.0, 1.0, 0.0]
    assert pairs["image_mask"][:, 0, 0].tolist() == [False, True, False, True]
    assert pairs["image_sizes"] == [(1, 1), (2, 2), (1, 1), (2, 2)]
    assert "image_key" not in pairs  # the row's own image key no longer names the image
    with pytest.raises(KeyError, match="draw_false_image"):
        itm_batch({k: v for k, v in batch.items() if k != "false_image_0"})

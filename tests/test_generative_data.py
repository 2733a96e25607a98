"""Generative data: collate (prefixes, targets, visual keys), answer draws, the multi-task schedule, and the
reader of VL-Adapter's .h5 CLIP features (written here in the originals' layout)."""

from __future__ import annotations

from collections import Counter

import h5py
import numpy as np
import pyarrow as pa
import pytest
import torch

from vlpeft.data.datamodule import MTDataModule
from vlpeft.data.features import FeatureError, FeatureReader, image_id_candidates, pool_grid
from vlpeft.data.generative import (GenerativeDataModule, MultitaskLoader, datamodule_for,
                                    multitask_batch_size)
from write_arrow.synthetic import write_synthetic

FEAT = 8


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen_synth")
    write_synthetic(root, seed=0, images=32, image_px=32)
    return root


def config(root, datasets, **kw):
    c = {"datasets": datasets, "data_root": str(root), "per_gpu_batchsize": 6, "num_workers": 0, "image_size": 32,
         "max_text_len": 40, "train_transform_keys": ["pixelbert"], "val_transform_keys": ["pixelbert"],
         "seed": 0, "tokenizer": "bert-base-uncased", "vqav2_label_size": 18, "loss_names": {}}
    c.update(kw)
    return c


def decode(dm, ids):
    return dm.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=False)


# ------------------------------------------------------------------------------------------- collate
def test_vqa_batches_prefix_targets_pixels(root):
    dm = GenerativeDataModule(config(root, ["vqa"]))
    batch = next(iter(dm.train_dataloader()))
    assert batch["task"] == "vqa" and batch["image"].shape[:2] == (6, 3) and "vis_feats" not in batch
    B = batch["text_ids"].shape[0]
    for b in range(B):
        text = decode(dm, batch["text_ids"][b][batch["text_masks"][b].bool()])
        assert text == f"[CLS] vqa : {batch['text'][b].lower()} [SEP]"
        # the target is one of the question's answers, with [CLS] ... [SEP] as tokenizer.encode gives it
        target = decode(dm, batch["target_ids"][b])
        assert batch["target_text"][b] in batch["vqa_answer"][b]
        assert target == f"[CLS] {batch['target_text'][b]} [SEP]"
    assert (batch["target_ids"] == -100).any() or batch["target_ids"].shape[1] == 3
    # no prefixes without use_tasks_prompts, as the originals
    dm2 = GenerativeDataModule(config(root, ["vqa"], use_tasks_prompts=False))
    b2 = next(iter(dm2.train_dataloader()))
    assert decode(dm2, b2["text_ids"][0][b2["text_masks"][0].bool()]) == f"[CLS] {b2['text'][0].lower()} [SEP]"


def test_truncation_as_the_originals(root):
    dm = GenerativeDataModule(config(root, ["vqa"], max_text_len=40, gen_max_length=20))
    long = " ".join(["word"] * 50)
    b = dm.collate([{"task": "vqa", "text": long, "target_text": long}])
    assert b["text_ids"].shape[1] == 20 and b["target_ids"].shape[1] == 10  # vqa: 20 question, 10 answer tokens
    b = dm.collate([{"task": "nlvr2", "text": long, "target_text": long, "nlvr2_label": 1}])
    assert b["text_ids"].shape[1] == 40 and b["target_ids"].shape[1] == 52  # max_text_len; targets not truncated
    b = dm.collate([{"task": "caption", "text": "", "target_text": long}])
    assert b["target_ids"].shape[1] == 20  # gen_max_length
    assert decode(dm, b["target_ids"][0][-1:]) == "[SEP]"  # truncation keeps the closing special token


def test_nlvr2_and_caption_batches(root):
    dm = GenerativeDataModule(config(root, ["nlvr2"]))
    batch = next(iter(dm.val_dataloader()))
    assert batch["task"] == "nlvr2" and batch["image_0"].shape == batch["image_1"].shape
    words = [decode(dm, t) for t in batch["target_ids"]]
    assert words == [f"[CLS] {'true' if y else 'false'} [SEP]" for y in batch["nlvr2_labels"].tolist()]
    assert decode(dm, batch["text_ids"][0]).startswith("[CLS] nlvr : ")

    dm = GenerativeDataModule(config(root, ["coco"], gen_max_length=6))
    train = next(iter(dm.train_dataloader()))
    assert train["task"] == "caption" and train["target_ids"].shape[1] <= 6  # truncated to gen_max_length
    assert decode(dm, train["text_ids"][0]) == "[CLS] caption : [SEP]"  # the prefix alone
    val = next(iter(dm.val_dataloader()))
    assert "target_ids" not in val and all(len(r) == 5 for r in val["references"])
    n_images = pa.ipc.open_file(pa.memory_map(str(root / "coco_caption_karpathy_val.arrow"))).read_all().num_rows
    assert len(dm.datasets["val"]["coco"]) == n_images  # one sample per image in evaluation
    assert len(dm.datasets["train"]["coco"]) > 4 * n_images  # one per caption in training


def test_answer_draw_follows_scores(root):
    dm = GenerativeDataModule(config(root, ["vqa"]))
    dm.setup("fit")
    ds = dm.datasets["train"]["vqa"]
    draws = Counter(ds.draw_answer(i, ["red", "dark red"], [1.0, 0.3]) for i in range(3000))
    assert draws["red"] / 3000 == pytest.approx(1 / 1.3, abs=0.03)
    assert ds.draw_answer(5, ["a"], [0.0]) == ""  # all-zero scores: the originals' empty answer
    first = [ds[i]["target_text"] for i in range(20)]
    assert first == [ds[i]["target_text"] for i in range(20)]  # a function of (seed, epoch, index)


# ------------------------------------------------------------------------------------------- multi-task
class _Loader(list):
    """A loader stand-in with a length (the schedule only needs len and iteration)."""

    sampler = None


def test_multitask_schedule_proportions():
    loaders = {"vqa": _Loader(f"v{i}" for i in range(6)), "nlvr2": _Loader(f"n{i}" for i in range(2)),
               "caption": _Loader(f"c{i}" for i in range(4))}
    rr = MultitaskLoader(loaders, "roundrobin", seed=3)
    e0 = list(rr)
    assert Counter(b[0] for b in e0) == {"v": 6, "n": 2, "c": 4}  # every batch of every task once
    assert sorted(e0) == sorted(x for dl in loaders.values() for x in dl)
    assert [b for b in e0 if b[0] == "v"] == [f"v{i}" for i in range(6)]  # each task's own order kept
    assert list(rr) == e0  # the same epoch repeats
    rr.set_epoch(1)
    assert list(rr) != e0 and len(rr) == 12
    bal = MultitaskLoader(loaders, "balanced", seed=3)
    assert Counter(b[0] for b in bal) == {"v": 4, "n": 4, "c": 4}  # sum // n_tasks each; nlvr2 restarts
    with pytest.raises(ValueError, match="multitask_sampling='mixed'"):
        MultitaskLoader(loaders, "mixed")


def test_multitask_datamodule_batches(root):
    dm = GenerativeDataModule(config(root, ["vqa", "nlvr2", "coco"]))
    loader = dm.train_dataloader()
    assert isinstance(loader, MultitaskLoader)
    sizes = {t: multitask_batch_size(t, 6) for t in ("vqa", "nlvr2", "caption")}
    assert sizes == {"vqa": 6, "nlvr2": 2, "caption": 5}  # multitask.py's ratios 1, 20/60, 50/60
    seen = Counter()
    for batch in loader:
        seen[batch["task"]] += 1
        assert batch["text_ids"].shape[0] <= sizes[batch["task"]]
    assert seen == {t: len(dl) for t, dl in loader.loaders.items()}
    val = dm.val_dataloader()
    tasks = [b["task"] for b in val]
    assert tasks[:3] == ["vqa", "nlvr2", "caption"]  # interleaved: a limited validation still sees every task
    assert Counter(tasks) == {t: len(dl) for t, dl in val.loaders.items()} and len(tasks) == len(val)
    dm.set_epoch(2)
    assert loader.epoch == 2
    with pytest.raises(ValueError, match="give one task twice"):
        GenerativeDataModule(config(root, ["coco", "f30k"]))
    with pytest.raises(ValueError, match=r"datasets \['snli_ve'\] have no generative task"):
        GenerativeDataModule(config(root, ["vqa", "snli_ve"]))
    assert type(datamodule_for(config(root, ["vqa"]), frozenset({"generate"}))) is GenerativeDataModule
    assert type(datamodule_for(config(root, ["vqa"]), frozenset({"classify", "generate"}))) is MTDataModule


# ------------------------------------------------------------------------------------------- h5 features
def write_h5(folder, img_id, feats, **extra):
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{img_id}.h5", "w") as f:  # the originals' layout: <id>.h5 → <id>/features
        f[f"{img_id}/features"] = feats
        for k, v in extra.items():
            f[f"{img_id}/{k}"] = v


def original_downsample(x: torch.Tensor, side: int = 6) -> torch.Tensor:
    """VL-T5's ``Downsample.downsample_inputs`` on one image: (L, D) → (side², D) by AdaptiveMaxPool2d."""
    inputs = x[None].permute(0, 2, 1)
    s = int(x.shape[0] ** 0.5)
    inputs = torch.nn.AdaptiveMaxPool2d((side, side))(inputs.reshape(1, x.shape[1], s, s))
    return inputs.reshape(1, x.shape[1], -1).permute(0, 2, 1)[0]


def test_h5_reader_layouts_and_pooling(tmp_path):
    rng = np.random.default_rng(0)
    grid = rng.standard_normal((49, FEAT)).astype(np.float32)  # RN101 at 224 px: a 7×7 grid
    write_h5(tmp_path / "att", "COCO_val2014_000000000042", grid)
    reader = FeatureReader(tmp_path / "att", n_boxes=36)
    feats, pos = reader.read(image_id_candidates("vqa", 42, "train"))  # falls back from train2014 to val2014
    assert feats.shape == (36, FEAT) and torch.equal(pos, torch.zeros(36, 4))  # the originals' zero boxes
    assert torch.equal(feats, original_downsample(torch.from_numpy(grid)))
    assert torch.equal(FeatureReader(tmp_path / "att", n_boxes=49).read(["COCO_val2014_000000000042"])[0],
                       torch.from_numpy(grid))
    # one file with every image's group; the Faster R-CNN layout with pixel boxes normalised by img_w / img_h
    with h5py.File(tmp_path / "all.h5", "w") as f:
        f["7/features"] = grid[:36]
        f["7/boxes"] = np.array([[10, 20, 50, 40]] * 36, dtype=np.float32)
        f["7/img_w"], f["7/img_h"] = 100, 80
    feats, pos = FeatureReader(tmp_path / "all.h5").read("7")
    assert torch.equal(feats, torch.from_numpy(grid[:36]))
    assert torch.allclose(pos[0], torch.tensor([0.1, 0.25, 0.5, 0.5]))
    pickled = __import__("pickle").loads(__import__("pickle").dumps(FeatureReader(tmp_path / "all.h5")))
    assert pickled.read("7")[0].shape == (36, FEAT)


def test_h5_reader_errors(tmp_path):
    with pytest.raises(FeatureError, match="does not exist"):
        FeatureReader(tmp_path / "nope")
    write_h5(tmp_path / "att", "a", np.zeros((49, FEAT), np.float32))
    write_h5(tmp_path / "att", "b", np.zeros((2, 49, FEAT), np.float32))
    write_h5(tmp_path / "att", "c", np.zeros((40, FEAT), np.float32))
    write_h5(tmp_path / "att", "d", np.zeros((49, FEAT + 1), np.float32))
    r = FeatureReader(tmp_path / "att")
    with pytest.raises(FeatureError, match=r"no features for image 'zz'.*\['zz.h5', 'yy.h5'\]"):
        r.read(["zz", "yy"])
    with pytest.raises(FeatureError, match="has shape"):
        r.read("b")
    with pytest.raises(FeatureError, match="cannot pool 40 features to n_boxes=36"):
        r.read("c")
    r.read("a")
    with pytest.raises(FeatureError, match="dim 9 but earlier images had 8"):
        r.read("d")
    with pytest.raises(FeatureError, match="cannot pool"):
        pool_grid(torch.zeros(49, 2), 30)
    assert image_id_candidates("nlvr2", identifier="dev-850-0-1", image_index=1) == ["dev-850-0-img1"]
    assert image_id_candidates("coco", "COCO_val2014_000000391895.jpg") == ["COCO_val2014_000000391895", "391895"]


def test_h5_non_finite_features_are_refused_naming_file_and_image(root, tmp_path):
    """All-NaN features used to train to a NaN loss with exit 0: refused when read, naming the .h5 file and image
    (and, through the dataset, the arrow file and row)."""
    grid = np.zeros((49, FEAT), np.float32)
    grid[3, 2] = np.nan
    write_h5(tmp_path / "att", "COCO_train2014_000000000007", grid)
    with pytest.raises(FeatureError) as e:
        FeatureReader(tmp_path / "att").read(image_id_candidates("vqa", 7, "train"))
    msg = str(e.value)
    assert f"{tmp_path / 'att' / 'COCO_train2014_000000000007.h5'} image 'COCO_train2014_000000000007'" in msg
    assert "1 non-finite value(s)" in msg and "re-extract" in msg
    with h5py.File(tmp_path / "all.h5", "w") as f:  # one file for every image: inf in the boxes, zero image width
        f["5/features"] = np.ones((36, FEAT), np.float32)
        f["5/boxes"] = np.full((36, 4), np.inf, np.float32)
        f["5/img_w"], f["5/img_h"] = 100, 80
        f["6/features"] = np.ones((36, FEAT), np.float32)
        f["6/boxes"] = np.ones((36, 4), np.float32)
        f["6/img_w"], f["6/img_h"] = 0, 80
    with pytest.raises(FeatureError, match=rf"{tmp_path / 'all.h5'} image '5': 5/boxes holds 144 non-finite"):
        FeatureReader(tmp_path / "all.h5").read("5")
    with pytest.raises(FeatureError, match=rf"{tmp_path / 'all.h5'} image '6': img_w=0.0"):
        FeatureReader(tmp_path / "all.h5").read("6")
    # through the datamodule: the arrow file and row too
    folder = tmp_path / "clip"
    t = pa.ipc.open_file(pa.memory_map(str(root / "vqav2_train.arrow"))).read_all()
    for iid, split in zip(t["image_id"].to_pylist(), t["split"].to_pylist()):
        write_h5(folder, f"COCO_{split}2014_{iid:012d}", np.full((49, FEAT), np.nan, np.float32))
    dm = GenerativeDataModule(config(root, ["vqa"], visual_features=str(folder)))
    dm.setup("fit")
    first = f"COCO_{t['split'][0]}2014_{t['image_id'][0].as_py():012d}"
    with pytest.raises(FeatureError, match=rf"vqav2_train.arrow row 0: {folder / first}.h5 image '{first}'"):
        dm.datasets["train"]["vqa"][0]


def test_h5_wrong_dtype_or_shape_names_file_and_image(tmp_path):
    write_h5(tmp_path / "att", "s", np.array([b"not", b"numbers"]))
    write_h5(tmp_path / "att", "i", np.ones((49, FEAT), np.int64))
    write_h5(tmp_path / "att", "b", np.zeros((2, 49, FEAT), np.float32))
    write_h5(tmp_path / "att", "c", np.zeros((40, FEAT), np.float32))
    r = FeatureReader(tmp_path / "att")
    for img, words in [("s", "has dtype |S7; expected floating-point"), ("i", "has dtype int64"),
                       ("b", r"has shape \(2, 49, 8\); expected \(boxes, dim\)"), ("c", "cannot pool 40 features")]:
        with pytest.raises(FeatureError, match=rf"{tmp_path / 'att' / img}.h5 image '{img}': .*{words}"):
            r.read(img)
    with h5py.File(tmp_path / "all.h5", "w") as f:
        f["7/features"] = np.ones((36, FEAT), np.float16)  # half precision is fine
        f["8/features"] = np.ones((36, FEAT), np.complex64)
    assert FeatureReader(tmp_path / "all.h5").read("7")[0].dtype == torch.float32
    with pytest.raises(FeatureError, match=rf"{tmp_path / 'all.h5'} image '8': 8/features has dtype complex64"):
        FeatureReader(tmp_path / "all.h5").read("8")


def test_generative_check_data_needs_image_ids_with_features(root, tmp_path):
    """With visual_features the rows' image_id names the feature files: checked before the model is built."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(root, data)
    t = pa.ipc.open_file(pa.memory_map(str(data / "vqav2_rest_val.arrow"))).read_all().drop_columns(["image_id"])
    with pa.OSFile(str(data / "new.arrow"), "wb") as sink, pa.ipc.new_file(sink, t.schema) as w:
        w.write_table(t)
    del t  # (overwriting a file still memory-mapped would crash the mapping's readers: replace it instead)
    (data / "new.arrow").replace(data / "vqav2_rest_val.arrow")
    GenerativeDataModule(config(data, ["vqa"])).check_data("fit")  # pixels: image_id is not read
    (tmp_path / "feats").mkdir()
    dm = GenerativeDataModule(config(data, ["vqa"], visual_features=str(tmp_path / "feats")))
    with pytest.raises(Exception, match=r"vqa val: .*vqav2_rest_val.arrow: missing column\(s\) \['image_id'\]"):
        dm.check_data("fit")


def test_datamodule_with_h5_features(root, tmp_path):
    """Every synthetic image gets a feature file named as VL-Adapter names it; batches carry vis_feats."""
    rng = np.random.default_rng(1)
    folder = tmp_path / "clip_features" / "data_clip_RN101_att"
    for name in ("vqav2_train", "vqav2_trainable_val", "vqav2_rest_val"):
        t = pa.ipc.open_file(pa.memory_map(str(root / f"{name}.arrow"))).read_all()
        for iid, split in zip(t["image_id"].to_pylist(), t["split"].to_pylist()):
            write_h5(folder, f"COCO_{split}2014_{iid:012d}", rng.standard_normal((49, FEAT)).astype(np.float32))
    for name in ("nlvr2_train", "nlvr2_dev"):
        t = pa.ipc.open_file(pa.memory_map(str(root / f"{name}.arrow"))).read_all()
        for ident in t["identifier"].to_pylist():
            for k in (0, 1):
                write_h5(folder, f"{ident.rsplit('-', 1)[0]}-img{k}", np.full((49, FEAT), k, np.float32))
    dm = GenerativeDataModule(config(root, ["vqa", "nlvr2"], visual_features=str(folder)))
    by_task = {}
    for batch in dm.train_dataloader():
        by_task.setdefault(batch["task"], batch)
    vqa, nlvr2 = by_task["vqa"], by_task["nlvr2"]
    assert "image" not in vqa and vqa["vis_feats"].shape == (6, 36, FEAT) and vqa["vis_pos"].shape == (6, 36, 4)
    assert "image_0" not in nlvr2 and nlvr2["vis_feats"].shape == (2, 72, FEAT)
    # image order ids 0 on the first image's 36 tokens, 1 on the second's (and the features follow)
    assert nlvr2["img_order_ids"].tolist() == [[0] * 36 + [1] * 36] * 2
    assert torch.equal(nlvr2["vis_feats"][:, 36:], torch.ones(2, 36, FEAT))
    missing = GenerativeDataModule(config(root, ["coco"], visual_features=str(folder)))
    missing.setup("fit")
    with pytest.raises(FeatureError, match=r"coco_caption_karpathy_train.arrow row 0: no features for image "
                                           r"'COCO_train2014_000000100000'"):
        missing.datasets["train"]["coco"][0]
    with pytest.raises(FeatureError, match=r"visual_features gives no folder for datasets \['nlvr2'\]"):
        GenerativeDataModule(config(root, ["vqa", "nlvr2"], visual_features={"vqa": str(folder)}))

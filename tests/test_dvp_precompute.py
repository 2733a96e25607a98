"""DVP's frozen CLIP features computed before the first epoch (vlpeft.frozen_features, issue #21 item 5).

The precompute must store exactly the uncached path's features (same bits), be used by the first epoch (no cache
miss while training), skip splits whose transform is random, respect the cache's capacity, shard by rank only
with a disk folder, and write only there, atomically."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import run as run_py  # noqa: E402
from vlpeft.backbones import LayerPlan  # noqa: E402
from vlpeft.backbones.clip_plm import build_dvp_backbone  # noqa: E402
from vlpeft.frozen_features import precompute_frozen_features  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

IMG = 32


class FakeTable:
    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class FakeImages:
    """The three things the precompute reads of a dataset: ``table`` rows, ``get_image(row)``, ``image_key(row)``."""

    image_columns = ("image",)

    def __init__(self, name: str, n: int, seed: int):
        self.name, self.table = name, FakeTable(n)
        self.images = torch.randn(n, 3, IMG, IMG, generator=torch.Generator().manual_seed(seed))
        self.read: list[int] = []

    def get_image(self, row: int) -> torch.Tensor:
        self.read.append(row)
        return self.images[row]

    def image_key(self, row: int) -> str:
        return f"{self.name}:{row}"


def make(**kw):
    torch.manual_seed(0)
    cfg = dict(clip_model="test_clip_tiny", language_model="BERT", plm_config="test_bert_tiny", num_heads=4,
               use_adapter=True, clip_precompute_batch=4)
    cfg.update(kw)
    bb = build_dvp_backbone(cfg)
    with torch.no_grad():  # weights off their init (CLIP's LayerNorms start at ones / zeros)
        g = torch.Generator().manual_seed(3)
        for p in bb.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return bb


def datasets(n_train: int = 10, n_val: int = 6):
    return {"train": {"vqa": FakeImages("train", n_train, 1)}, "val": {"vqa": FakeImages("val", n_val, 2)}}


def test_precomputed_features_are_the_uncached_bits_and_training_misses_nothing():
    bb = make()
    ds = datasets()
    out = precompute_frozen_features(bb, ds, stream=io.StringIO())
    assert out == {"images": 16, "computed": 16}
    ref = make(clip_feature_cache=False)  # same seed and perturbation: the uncached path
    for split, mode in (("train", True), ("val", False)):
        src = ds[split]["vqa"]
        rows = [5, 0, 3, 3] if split == "train" else [1, 4]
        batch = dict(image=src.images[rows], image_key=[src.image_key(r) for r in rows])
        bb.train(mode), ref.train(mode)
        misses = bb.feature_cache.misses
        got = bb.visual_features(batch)
        assert bb.feature_cache.misses == misses  # every row read from the precomputed cache
        # CLIP on the training batch, to float rounding: the precompute runs CLIP on batches of another size, and
        # CLIP's matmuls round differently with the batch's size (per image vs the batch: ~6e-7 here)
        torch.testing.assert_close(got, ref.visual_features(batch), rtol=0, atol=1e-5)
        torch.testing.assert_close(got, ref.clip(batch["image"]), rtol=0, atol=1e-5)


def test_results_of_a_training_step_equal_the_uncached_path():
    bb, ref = make(), make(clip_feature_cache=False)
    ds = datasets()
    precompute_frozen_features(bb, ds, stream=io.StringIO())
    src = ds["train"]["vqa"]
    g = torch.Generator().manual_seed(9)
    batch = dict(image=src.images[[2, 7, 9]], image_key=[src.image_key(r) for r in (2, 7, 9)],
                 text_ids=torch.randint(3, 100, (3, 6), generator=g), text_masks=torch.ones(3, 6, dtype=torch.long))
    bb.eval(), ref.eval()
    plan = LayerPlan(insert_layer=1)
    torch.testing.assert_close(bb(batch, plan)["cls_feats"], ref(batch, plan)["cls_feats"], rtol=0, atol=1e-5)


def test_random_transforms_are_not_precomputed():
    bb = make(train_transform_keys=["clip_randaug"])
    ds = datasets()
    out = precompute_frozen_features(bb, ds, stream=io.StringIO())
    assert out["images"] == 6 and ds["train"]["vqa"].read == []  # val only: its transform is deterministic
    assert make(clip_precompute=False).frozen_feature_splits() == ()
    assert make(clip_feature_cache=False).frozen_feature_splits() == ()


def test_splits_beyond_the_memory_cache_are_left_lazy_with_the_fix_named():
    bb = make(clip_cache_max_items=12)
    ds = datasets(n_train=10, n_val=6)
    log = io.StringIO()
    out = precompute_frozen_features(bb, ds, stream=log)
    assert out["images"] == 10 and ds["val"]["vqa"].read == []  # train fits, train + val would not
    assert "clip_cache_dir=" in log.getvalue() and "clip_cache_max_items>=16" in log.getvalue()


def test_disk_cache_shards_by_rank_and_writes_only_there(tmp_path):
    cache = tmp_path / "clip_cache"
    ranks = []
    for rank in (0, 1):
        bb = make(clip_cache_dir=str(cache))
        ds = datasets(n_train=5, n_val=3)
        calls = []
        out = precompute_frozen_features(bb, ds, rank=rank, world_size=2, barrier=lambda: calls.append(1),
                                         stream=io.StringIO())
        assert ds["train"]["vqa"].read == list(range(5))[rank::2] and calls == [1]
        ranks.append(out["computed"])
    assert ranks == [3 + 2, 2 + 1]
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(files) == 8 and all(cache in p.parents and p.suffix == ".pt" for p in files)  # no temp files left
    # a third process reads every feature from disk and computes nothing
    bb = make(clip_cache_dir=str(cache))
    assert precompute_frozen_features(bb, datasets(5, 3), stream=io.StringIO()) == {"images": 8, "computed": 0}


def test_in_memory_cache_every_rank_computes_every_image():
    ds = datasets(n_train=5, n_val=3)
    out = precompute_frozen_features(make(), ds, rank=1, world_size=2, stream=io.StringIO())
    assert out == {"images": 8, "computed": 8} and ds["train"]["vqa"].read == list(range(5))


def test_progress_lines_when_not_a_terminal():
    log = io.StringIO()
    precompute_frozen_features(make(), datasets(), interval=0.0, stream=log)
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("[vlpeft] frozen CLIP features: computing 16 images")
    assert any("/16 images (" in ln and "ETA" in ln for ln in lines) and "16/16 images done" in lines[-1]
    quiet = io.StringIO()
    precompute_frozen_features(make(), datasets(), rank=1, world_size=2, stream=quiet)
    assert quiet.getvalue() == ""  # rank 0 speaks


def test_bad_precompute_batch_is_one_clear_error():
    with pytest.raises(ValueError, match="clip_precompute_batch"):
        make(clip_precompute_batch=0)


@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("dvp_pre_arrows")
    write_synthetic(root, seed=4, images=16, variants=("vqa",))
    return root


class _Misses(pl.Callback):
    def __init__(self):
        self.at_start: tuple[int, int] | None = None
        self.after: list[int] = []

    def on_train_start(self, trainer, pl_module):
        c = pl_module.backbone.feature_cache
        self.at_start = (len(c.mem), c.misses)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.after.append(pl_module.backbone.feature_cache.misses)


def test_a_fit_precomputes_before_the_first_epoch(arrows, tmp_path, monkeypatch, capsys):
    from vlpeft import runner

    rec = _Misses()
    real = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer", lambda *a, **kw: real(*a, **dict(kw, extra_callbacks=[rec])))
    cfg = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), per_gpu_batchsize=8, batch_size=8,
               num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=1, backbone="test_clip_bert",
               image_size=32, insert_layer=1, max_epoch=1, pet="vl_adapter")
    run_py.ex.run(named_configs=["dvp_adaption_bert_vqa"], config_updates=cfg, options={"--loglevel": "ERROR"})
    n_images, misses = rec.at_start
    assert n_images > 16 and misses == n_images  # train and val images, each computed once before the epoch
    assert rec.after and set(rec.after) == {misses}  # the first epoch reads every image from the cache
    assert "frozen CLIP features: computing" in capsys.readouterr().out

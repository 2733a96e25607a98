"""End to end through run.py's sacred experiment: search → train (from placement.json) → test_only, on synthetic
arrow files; DDP consistency; resume; config errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from sacred.utils import ConfigAddedError
import torch

from vlpeft.config import ConfigError
from vlpeft.search.placement import Placement, PlacementError
from write_arrow.synthetic import write_synthetic

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = dict(images=16)  # this module's arrows (tests/conftest.py): small, these tests check no learning


def _updates(arrows: Path, log_dir: Path, **kw) -> dict:
    cfg = dict(data_root=str(arrows), log_dir=str(log_dir), per_gpu_batchsize=16, batch_size=16, max_epoch=1,
               das_epoch=2, das_turn=1, num_workers=0)
    cfg.update(kw)
    return cfg


def _test_qids(arrows: Path) -> set[int]:
    table = pa.ipc.open_file(pa.memory_map(str(arrows / "vqav2_test.arrow"))).read_all()
    return {q for row in table.column("question_id").to_pylist() for q in row}


def test_search_train_test_through_sacred(sacred, arrows, tmp_path):
    log = tmp_path / "result"
    # 1. search: writes placement.json and the PNG into its run folder
    r = sacred("demo", **_updates(arrows, log, stage="search", max_epoch=2))
    placement_path = Path(r.result["placement_path"])
    assert placement_path.is_file() and placement_path.parent == Path(r.result["run_dir"])
    placement = Placement.load(placement_path)
    assert placement.method == "das" and len(placement.skip) == 1 and placement.num_layers == 4
    assert len(placement.scores) == 4 and placement.meta["rounds"] > 0
    assert any(s != 0 for s in placement.scores)  # gates moved
    png = placement_path.with_name("placement.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 2. train on it, reading placement.json (no hand copying); "latest" finds the same file
    r = sacred("demo", **_updates(arrows, log, stage="train", placement="latest"))
    run_dir = Path(r.result["run_dir"])
    ckpts = sorted(run_dir.glob("checkpoints/*.ckpt"))
    assert ckpts
    ckpt = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert ckpt["vlpeft_placement"]["skip"] == list(placement.skip)  # the placement travels with the checkpoint
    trainable = run_dir / "trainable.safetensors"
    assert trainable.is_file() and trainable.stat().st_size < ckpts[0].stat().st_size / 5
    assert json.loads((run_dir / "trainable.json").read_text())["placement"]["skip"] == list(placement.skip)

    # 3. test_only: the VQAv2 server's submission file, one answer per test question, no duplicates
    best = next(p for p in ckpts if p.name.startswith("best"))
    r = sacred("demo", **_updates(arrows, log, stage="train", test_only=True, load_path=str(best)))
    sub = Path(r.result["submission"])
    # in the test run's own folder, named after the tested run and checkpoint (never shared between runs)
    assert sub == Path(r.result["run_dir"]) / f"vqa_submit_{run_dir.parent.name}_v{run_dir.name[8:]}_{best.stem}.json"
    rows = json.loads(sub.read_text())
    qids = [row["question_id"] for row in rows]
    assert sorted(qids) == qids and len(set(qids)) == len(qids)
    assert set(qids) == _test_qids(arrows)
    vocab = json.loads((arrows / "vqav2_label_vocab.json").read_text())
    assert all(set(row) == {"question_id", "answer"} and row["answer"] in vocab for row in rows)
    assert not list(log.glob("*.tmp"))


def test_trainable_weights_on_top_of_backbone(sacred, arrows, tmp_path):
    """load_path takes [backbone ckpt, trainable.safetensors]: same predictions as the full checkpoint."""
    log = tmp_path / "result"
    r = sacred("demo", **_updates(arrows, log, stage="train", skip_module=[2]))
    run_dir = Path(r.result["run_dir"])
    full = sorted(run_dir.glob("checkpoints/last.ckpt"))[0]
    a = sacred("demo", **_updates(arrows, log, stage="train", test_only=True, load_path=str(full), exp_name="a"))
    # a "backbone" checkpoint whose trainable tensors are wrong: the safetensors on top must restore them
    from safetensors.torch import load_file

    trained = load_file(str(run_dir / "trainable.safetensors"))
    assert any(k.startswith("heads.") for k in trained) and any("adapter" in k for k in trained)
    sd = torch.load(full, map_location="cpu", weights_only=True)["state_dict"]
    assert not any(k in trained for k, v in sd.items() if "word_embeddings" in k)  # frozen parts stay out
    sd = {k: (v + 1.0 if k in trained and v.is_floating_point() else v) for k, v in sd.items()}
    backbone_ckpt = tmp_path / "backbone.ckpt"
    torch.save({"state_dict": sd}, backbone_ckpt)
    b = sacred("demo", **_updates(arrows, log, stage="train", test_only=True, exp_name="b",
                           load_path=[str(backbone_ckpt), str(run_dir / "trainable.safetensors")]))
    ra = json.loads(Path(a.result["submission"]).read_text())
    rb = json.loads(Path(b.result["submission"]).read_text())
    assert ra == rb


def test_ddp_two_process_search_agrees(arrows, tmp_path):
    """A 2-process CPU DDP (gloo) search through the real command line: every rank re-runs run.py (Lightning's
    ddp launcher; under pytest itself that launcher would re-run pytest), and the run ends with identical search
    state on both ranks (checked by all-gather at fit end) and one placement.json."""
    import subprocess

    log = tmp_path / "result"
    cmd = [sys.executable, str(ROOT / "run.py"), "with", "demo", f"data_root={arrows}", f"log_dir={log}",
           "stage=search", "max_epoch=2", "das_epoch=2", "das_turn=1", "cpu_devices=2", "per_gpu_batchsize=8",
           "batch_size=16", "num_workers=0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = list(log.glob("*/version_*/placement.json"))
    assert len(found) == 1  # both ranks wrote into the same run folder, rank 0 alone wrote the file
    p = Placement.load(found[0])
    assert p.meta["world_size"] == 2 and p.meta["ranks_agree"] is True
    assert p.meta["rounds"] > 0 and any(s != 0 for s in p.scores)
    # the train stage on that placement.json, 2 processes: both ranks build its plan, one run folder with one
    # checkpoint of each kind and one metrics.json (rank 0 writes them)
    cmd = [sys.executable, str(ROOT / "run.py"), "with", "demo", f"data_root={arrows}", f"log_dir={log}",
           "stage=train", f"placement={found[0]}", "max_epoch=1", "cpu_devices=2", "per_gpu_batchsize=8",
           "batch_size=16", "num_workers=0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    plans = [line for line in proc.stdout.splitlines() if line.startswith("[vlpeft] plan: ")]
    assert plans == [f"[vlpeft] plan: skip {sorted(p.skip)}, insert_layer None"] * 2, proc.stdout[-3000:]
    runs = [d for d in log.glob("*/version_*") if d != found[0].parent]
    assert len(runs) == 1
    assert json.loads((runs[0] / "run.json").read_text())["placement_source"] == str(found[0])
    assert sorted(c.name.split("-")[0] for c in (runs[0] / "checkpoints").iterdir()) == ["best", "last.ckpt"]
    assert "val" in json.loads((runs[0] / "metrics.json").read_text())
    assert not list(log.rglob("*.tmp"))


def test_resume_continues_saved_search_state(sacred, arrows, tmp_path):
    log = tmp_path / "result"
    first = sacred("demo", **_updates(arrows, log, stage="search", max_epoch=2, das_epoch=3))
    last = Path(first.result["run_dir"]) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    gates, hist = saved["search.das_gate"], saved["search.history"]
    assert hist.shape[0] > 0
    second = sacred("demo", **_updates(arrows, log, stage="search", max_epoch=3, das_epoch=3, resume_from=str(last)))
    resumed = torch.load(Path(second.result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu",
                         weights_only=True)["state_dict"]
    # the resumed run's history starts with the saved one: it continued from the saved gates
    assert resumed["search.history"].shape[0] > hist.shape[0]
    assert torch.equal(resumed["search.history"][: hist.shape[0]], hist)
    assert torch.equal(resumed["search.history"][hist.shape[0] - 1], gates)
    assert int(resumed["search.draw_count"]) > int(saved["search.draw_count"])


class _Killed(RuntimeError):
    pass


def test_resumed_search_equals_uninterrupted_bit_for_bit(sacred, arrows, tmp_path, monkeypatch):
    """Kill a search after epoch 1 (its last.ckpt written), resume it: gates, history, draws, reward-batch
    position and every trained weight equal the same-seed uninterrupted run's, bit for bit (dropout on, so the
    RNG streams must be restored too)."""
    import pytorch_lightning as pl

    from vlpeft import runner

    upd = dict(stage="search", max_epoch=3, das_epoch=3, das_turn=2, drop_rate=0.1)
    full = sacred("demo", **_updates(arrows, tmp_path / "full", **upd))

    class KillAfterEpoch1(pl.Callback):
        def on_train_epoch_start(self, trainer, pl_module):
            if trainer.current_epoch == 2:
                raise _Killed("killed after epoch 1")

    real_build = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer",
                        lambda *a, **kw: real_build(*a, **dict(kw, extra_callbacks=[KillAfterEpoch1()])))
    log = tmp_path / "killed"
    with pytest.raises(_Killed):
        sacred("demo", **_updates(arrows, log, **upd))
    monkeypatch.setattr(runner, "build_trainer", real_build)
    last = next(log.glob("*/version_0/checkpoints/last.ckpt"))
    assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] == 1
    resumed = sacred("demo", **_updates(arrows, log, resume_from=str(last), **upd))

    def final(r):
        return torch.load(Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu",
                          weights_only=True)["state_dict"]

    a, b = final(full), final(resumed)
    assert int(a["search.reward_batches"]) > 0 and a["search.history"].shape[0] > 1
    assert a.keys() == b.keys()
    differ = [k for k in a if not torch.equal(a[k], b[k])]
    assert differ == []
    assert json.loads(Path(full.result["placement_path"]).read_text())["scores"] == \
        json.loads(Path(resumed.result["placement_path"]).read_text())["scores"]


@pytest.mark.parametrize(
    "updates, error, words",
    [
        (dict(skip_modul=[1]), (ConfigError, ConfigAddedError), "skip_modul"),  # sacred names the unknown key
        (dict(test_only="true"), ConfigError, "test_only=True"),
        (dict(skip_module=[4]), PlacementError, "out of range"),
        (dict(skip_module=[1, 1]), PlacementError, "more than once"),
        (dict(batch_size=24), ConfigError, "multiple of"),
    ],
)
def test_bad_config_is_rejected_clearly(sacred, arrows, tmp_path, updates, error, words):
    with pytest.raises(error, match=words):
        sacred("demo", **_updates(arrows, tmp_path / "r", stage="train", **updates))


def test_missing_arrow_files_name_the_fix(sacred, tmp_path):
    with pytest.raises(Exception, match="DATA.md"):
        sacred("demo", **_updates(tmp_path / "nowhere", tmp_path / "r", stage="train", vqav2_label_size=18))


def test_unknown_key_suggests_the_known_one():
    from vlpeft.config import BASE_CONFIG, NEW_KEYS, validate_config

    with pytest.raises(ConfigError, match="did you mean 'skip_module'"):
        validate_config({**BASE_CONFIG, **NEW_KEYS, "skip_modul": [1]})


@pytest.fixture(scope="module")
def pair_and_caption_arrows(make_arrows) -> Path:
    return make_arrows("arrows_nlvr2_f30k", seed=2, images=32, variants=("nlvr2", "captions"))


def test_nlvr2_and_f30k_tasks_train_and_evaluate(sacred, pair_and_caption_arrows, tmp_path):
    """NLVR2 (image pairs, 3-row token types) and Flickr30K retrieval (rank loss, IR/TR recall@k) run end to end."""
    root = pair_and_caption_arrows
    common = dict(data_root=str(root), stage="train", per_gpu_batchsize=8, batch_size=8, max_epoch=1, num_workers=0,
                  skip_module=[1], train_transform_keys=["pixelbert"])
    r = sacred("demo", "task_finetune_nlvr2", log_dir=str(tmp_path / "n"), **common)
    ckpt = torch.load(Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["state_dict"]["backbone.token_type_embeddings.weight"].shape[0] == 3
    assert ckpt["state_dict"]["heads.nlvr2_classifier.3.weight"].shape == (2, 256)

    r = sacred("demo", "task_finetune_irtr_f30k", log_dir=str(tmp_path / "f"), draw_false_text=3,
                **common)
    events = list(Path(r.result["run_dir"]).glob("events.out.tfevents.*"))
    assert events
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(events[0]))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    for k in ("val/ir_r1", "val/tr_r1", "val/ir_r10", "val/tr_r10", "val/the_metric"):
        assert k in tags, tags
    r1 = acc.Scalars("val/ir_r1")[-1].value + acc.Scalars("val/tr_r1")[-1].value
    assert abs(acc.Scalars("val/the_metric")[-1].value - r1) < 1e-6  # the_metric = IR@1 + TR@1
    assert all(0.0 <= acc.Scalars(k)[-1].value <= 1.0 for k in ("val/ir_r1", "val/tr_r10"))


def test_trainable_used_trains_only_the_adapters_the_placement_runs():
    from vlpeft.config import BASE_CONFIG, NAMED_CONFIGS, NEW_KEYS
    from vlpeft.lightning import VLPeftModule

    cfg = {**BASE_CONFIG, **NEW_KEYS, **NAMED_CONFIGS["demo"], "vqav2_label_size": 18, "stage": "train"}
    blocks = lambda m: sorted({".".join(n.split(".")[1:5]) for n, p in m.named_parameters()  # noqa: E731
                               if p.requires_grad and "adapter" in n})
    used = blocks(VLPeftModule(dict(cfg, trainable="used"), placement=Placement.das([1])))
    assert used == ["adapter_list.1.0.adapter_layer_norm_before", "adapter_list.1.0.down_proj",
                    "adapter_list.1.0.up_proj"] + [f"transformer.blocks.{i}.adapter{a}" for i in (0, 2, 3)
                                                   for a in (0, 1)]
    original = blocks(VLPeftModule(cfg, placement=Placement.das([1])))
    assert len(original) > len(used)  # the original rule trains every adapter, used or not


def test_ddp_two_process_generative_multitask_shards_per_rank(tmp_path):
    """A tiny VL-BART trained on VQA + NLVR2 (single-task batches) by 2 CPU processes: each rank trains on its own
    share of every task's items (the generative datamodule shards them; Lightning does not shard its custom
    loaders), and the run ends with one folder, one checkpoint of each kind and one metrics.json. The items are
    recorded per rank by tests/ddp_record_items.py, which every rank re-runs."""
    import os
    import subprocess

    write_synthetic(tmp_path / "data", seed=0, images=16, image_px=32, variants=("vqa", "nlvr2"))
    log, rec = tmp_path / "result", tmp_path / "rec"
    rec.mkdir()
    cmd = [sys.executable, str(ROOT / "tests" / "ddp_record_items.py"), "with", "backbone=test_vl_bart",
           "pet=vl_pet_large", "vl_pet_down_dim=8", "vl_pet_gate_dim=8", "vl_pet_vpa_dim=8",
           f"data_root={tmp_path / 'data'}", f"log_dir={log}", "exp_name=gen", 'datasets=["vqa", "nlvr2"]',
           'loss_names={"vqa": 1, "nlvr2": 1, "itm": 0, "mlm": 0}', "per_gpu_batchsize=4", "batch_size=8",
           "image_size=32", "num_beams=1", "gen_max_length=6", "max_text_len=20", "max_epoch=1", "max_steps=None",
           "vqav2_label_size=0", "skip_module=[]", "num_gpus=0", "cpu_devices=2", "num_workers=0", "warmup_steps=0",
           'train_transform_keys=["clip"]', 'val_transform_keys=["clip"]', "seed=0"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, RECORD_DIR=str(rec)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((rec / f"rank{k}.json").read_text()) for k in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    a, b = (r["seen"] for r in ranks)
    assert set(a) == set(b) == {"vqa", "nlvr2"}  # both tasks trained on both ranks
    for task in a:
        assert a[task] and len(a[task]) == len(b[task])  # equal shares: the ranks step together
        assert len(set(a[task])) == len(a[task]) and not set(a[task]) & set(b[task]), task  # disjoint, once each
    runs = list(log.glob("*/version_*"))
    assert len(runs) == 1
    assert sorted(c.name.split("-")[0] for c in (runs[0] / "checkpoints").iterdir()) == ["best", "last.ckpt"]
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert {"vqa_score", "nlvr2_accuracy"} <= set(metrics["val"])
    assert not list(log.rglob("*.tmp"))

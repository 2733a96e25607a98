"""Video-text data and tasks (#19): the VALUE converters on a hand-written fixture, the items VL-Adapter's
``video/*_data.py`` build (text, resized frames, targets), the collate (prefix after the text, 600 / 20 token
limits), QA accuracy and caption scores against hand-computed values, the originals' test dump formats, the
four-task schedule, and the synthetic clips (deterministic; colour, shape and motion readable from the frames)."""

from __future__ import annotations

import functools
import json
import math
from collections import Counter

import numpy as np
import pyarrow as pa
import pytest
import torch

from vlpeft import evaluate
from vlpeft.data.features import FeatureError
from vlpeft.data.generative import GenerativeDataModule, MultitaskLoader
from vlpeft.data.video import TVCDataset, TVQADataset, YC2CDataset, resize_frames
from vlpeft.tasks import TASKS, TaskSettings
from vlpeft.tasks._base import compute
from vlpeft.tasks._video import option_index, qa_correct
from vlpeft.tasks.caption_eval import caption_scores
from vlpeft.tasks.dumps import write_test_dumps
from vlpeft.tasks import metrics as tm
from vlpeft.tasks.metrics import TaskMetrics
from write_arrow import WriteArrowError, write_video
from write_arrow.synthetic_video import COLOURS, MOTIONS, SHAPES, _World, write_synthetic_video

VIDEO_TASKS = ("tvqa", "how2qa", "tvc", "yc2c")


# ------------------------------------------------------------------------------------------- fixtures
def _jsonl(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def value(tmp_path_factory):
    """A tiny VALUE folder by hand: v1 has 3 fp16 frames (padded to 64), v2 70 frames (pooled), v3 is unused."""
    root = tmp_path_factory.mktemp("value")
    rng = np.random.default_rng(0)
    feats = {"v1": rng.normal(size=(3, 512)).astype(np.float16), "v2": rng.normal(size=(70, 512)).astype(np.float32),
             "v3": np.ones((5, 512), np.float32)}
    d = root / "vis_features" / "tv" / "clip-vit"
    d.mkdir(parents=True)
    for k, v in feats.items():
        np.savez(d / f"{k}.npz", features=v)
    _jsonl(root / "ann" / "tv_subtitles.jsonl", [
        {"vid_name": "v1", "sub": [{"start": 0, "end": 1, "text": " Hello there. "}, {"start": 1, "end": 2,
                                                                                        "text": "Bye"}]},
        {"vid_name": "v2", "sub": []}, {"vid_name": "v3", "sub": []}])
    q = {"q": " Where is he? ", "ts": "1.5-3.2", "show_name": "friends",
         "a0": "home.", "a1": " work ", "a2": "the pub...", "a3": "nowhere", "a4": "bed. "}
    _jsonl(root / "ann" / "tvqa" / "tvqa_train.jsonl", [{**q, "qid": 7, "vid_name": "v1", "answer_idx": 2},
                                                         {**q, "qid": 8, "vid_name": "v2", "answer_idx": 0}])
    _jsonl(root / "ann" / "tvqa" / "tvqa_test_public.jsonl", [{**q, "qid": 9, "vid_name": "v2"}])
    _jsonl(root / "ann" / "tvc" / "tvc_train_release.jsonl", [
        {"vid_name": "v1", "clip_id": 11, "ts": [1.5, 3.25], "duration": 60.0,
         "descs": [{"desc": "He waves.", "desc_id": 100, "type": "v"}, {"desc": "He talks.", "desc_id": 101,
                                                                        "type": "t"}]}])
    _jsonl(root / "ann" / "tvc" / "tvc_test_release.jsonl",
           [{"vid_name": "v2", "clip_id": 12, "ts": [0.5, 2.0], "duration": 30.0}])
    return root, feats


@pytest.fixture(scope="module")
def converted(value, tmp_path_factory):
    root, _ = value
    out = tmp_path_factory.mktemp("value_arrow")
    return out, {**write_video("tvqa", root, out, progress=False), **write_video("tvc", root, out, progress=False)}


def _ds(cls, root, names, n_boxes=64):
    return cls(root, names, n_boxes=n_boxes, transform_keys=["pixelbert"], image_size=32, tokenizer=None)


def window_max(x: np.ndarray, n: int) -> np.ndarray:
    """Adaptive max pooling over time restated: output i is the max over frames [⌊iL/n⌋, ⌈(i+1)L/n⌉)."""
    L = x.shape[0]
    return np.stack([x[(i * L) // n: -(-((i + 1) * L) // n)].max(0) for i in range(n)])


# ------------------------------------------------------------------------------------------- converters
def test_converter_rows_features_and_subtitles(converted, value):
    out, written = converted
    _, feats = value
    assert {k: w.rows for k, w in written.items()} == {"tvqa_train": 2, "tvqa_test_public": 1, "tv_videos": 3,
                                                       "tvc_train_release": 1, "tvc_test_release": 1}
    with pa.memory_map(str(out / "tv_videos.arrow")) as f:
        videos = pa.ipc.open_file(f).read_all().to_pylist()
    v1 = next(v for v in videos if v["video_id"] == "v1")
    assert (v1["n_frames"], v1["dim"], v1["subtitles"]) == (3, 512, [" Hello there. ", "Bye"])
    np.testing.assert_array_equal(np.frombuffer(v1["features"], "<f4").reshape(3, 512),
                                  feats["v1"].astype(np.float32))
    with pa.memory_map(str(out / "tvqa_test_public.arrow")) as f:
        row = pa.ipc.open_file(f).read_all().to_pylist()[0]
    assert (row["qid"], row["answer_idx"], row["ts"], row["type"]) == ("9", -1, '"1.5-3.2"', "friends")


def test_converter_errors_name_the_file_and_what_is_missing(value, tmp_path):
    root, _ = value
    (root / "vis_features" / "tv" / "clip-vit" / "v2.npz").rename(tmp_path / "v2.npz")
    try:
        with pytest.raises(WriteArrowError, match=r"1 videos' features \(.npz\) named in tvqa_train.jsonl not found "
                                                  r"\(e.g. v2\)"):
            write_video("tvqa", root, tmp_path / "out", progress=False)
    finally:
        (tmp_path / "v2.npz").rename(root / "vis_features" / "tv" / "clip-vit" / "v2.npz")
    with pytest.raises(WriteArrowError, match="none of the how2qa annotation files"):
        write_video("how2qa", root, tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------- items
def test_qa_item_is_the_originals_text_frames_and_target(converted, value):
    out, _ = converted
    _, feats = value
    ds = _ds(TVQADataset, out, ["tvqa_train"])
    a, b = ds[0], ds[1]
    assert a["text"] == ("[Subs] Hello there. Bye [Q] Where is he? [TS] (1.5-3.2) "
                         "[Choices] a0: home. a1: work. a2: the pub. a3: nowhere. a4: bed.")
    assert (a["target_text"], a["qid"], a["type"], a["video_id"]) == ("a2", "7", "friends", "v1")
    # 3 frames: kept, then zero rows up to 64; 70 frames: max-pooled over time windows
    assert a["vis_feats"].shape == (64, 512) and a["vis_pos"].shape == (64, 4) and not a["vis_pos"].any()
    np.testing.assert_array_equal(a["vis_feats"][:3].numpy(), feats["v1"].astype(np.float32))
    assert not a["vis_feats"][3:].any()
    np.testing.assert_array_equal(b["vis_feats"].numpy(), window_max(feats["v2"], 64))
    assert b["text"].startswith("[Subs]  [Q] Where")  # no subtitle lines: the original's empty join
    test = _ds(TVQADataset, out, ["tvqa_test_public"])[0]
    assert "target_text" not in test and "answer" not in test
    assert resize_frames(torch.ones(64, 2), 64).shape == (64, 2)


def test_caption_items_per_description_and_per_test_clip(converted):
    out, _ = converted
    train = _ds(TVCDataset, out, ["tvc_train_release"])
    assert len(train) == 2
    assert [train[i]["qid"] for i in range(2)] == ["100", "101"]
    assert train[1]["text"] == "[Subs] Hello there. Bye [TS] ([1.5, 3.25])"
    assert (train[1]["target_text"], train[1]["references"], train[1]["type"]) == ("He talks.", ["He talks."], "t")
    test = _ds(TVCDataset, out, ["tvc_test_release"])
    assert len(test) == 1 and test[0]["qid"] == "12" and "target_text" not in test[0]
    assert test[0]["ts"] == "[0.5, 2.0]" and test[0]["clip_id"] == "12"


# ------------------------------------------------------------------------------------------- synthetic + datamodule
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("video_synth")
    written = write_synthetic_video(root, seed=3, n_train=8, progress=False)
    return root, written


def config(root, datasets, **kw):
    c = {"datasets": list(datasets), "data_root": str(root), "per_gpu_batchsize": 3, "num_workers": 0,
         "image_size": 32, "max_text_len": 40, "train_transform_keys": ["pixelbert"],
         "val_transform_keys": ["pixelbert"], "seed": 0, "tokenizer": "bert-base-uncased", "loss_names": {},
         "n_boxes": 64}
    c.update(kw)
    return c


def decode(dm, ids):
    return dm.tokenizer.decode([int(i) for i in ids if int(i) >= 0], skip_special_tokens=False)


def test_collate_puts_the_prefix_after_the_text_and_truncates_as_the_originals(synth):
    root, _ = synth
    dm = GenerativeDataModule(config(root, ["tvqa"]))
    b = dm.collate([{"task": "tvqa", "text": "[Subs] hi [Q] why?", "target_text": "a3"}])
    assert decode(dm, b["text_ids"][0]) == "[CLS] [ subs ] hi [ q ] why? tvqa : [SEP]"
    assert decode(dm, b["target_ids"][0]) == "[CLS] a3 [SEP]"
    long = " ".join(["word"] * 700)
    b = dm.collate([{"task": "tvc", "text": long, "target_text": long}])
    # 600 input tokens (the prefix, last, is cut with the tail, as the original's encode truncates), 20 target
    assert b["text_ids"].shape[1] == 600 and "tvc" not in decode(dm, b["text_ids"][0])
    assert b["target_ids"].shape[1] == 20
    plain = GenerativeDataModule(config(root, ["tvqa"], use_tasks_prompts=False))
    b = plain.collate([{"task": "tvqa", "text": "why?"}])
    assert decode(plain, b["text_ids"][0]) == "[CLS] why? [SEP]"


def test_four_task_schedule_and_batches(synth):
    root, written = synth
    assert {k: w.rows for k, w in written.items() if k.endswith("_videos")} == {
        "tv_videos": 16, "how2_videos": 16, "yc2_videos": 16}  # 8 train + 4 val + 4 test
    dm = GenerativeDataModule(config(root, VIDEO_TASKS))
    dm.check_data("fit")
    loader = dm.train_dataloader()
    assert isinstance(loader, MultitaskLoader)
    # every task its own per_gpu_batchsize (multitask_video.py gives all four args.batch_size):
    # 16 QA rows → 6 batches of 3; 8 clips × 2 descriptions → 6 batches
    assert loader.task_lengths == {"tvqa": 6, "how2qa": 6, "tvc": 6, "yc2c": 6}
    seen = Counter()
    for batch in loader:
        seen[batch["task"]] += 1
        assert batch["vis_feats"].shape[1:] == (64, 512) and batch["vis_feats"].dtype == torch.float32
        assert batch["vis_pos"].shape[1:] == (64, 4) and not batch["vis_pos"].any()
        assert batch["text_ids"].shape[0] <= 3 and "target_ids" in batch
    assert seen == {t: 6 for t in VIDEO_TASKS}
    bal = MultitaskLoader(loader.loaders, "balanced", seed=0)
    assert Counter(b["task"] for b in bal) == {t: 6 for t in VIDEO_TASKS}  # sum // n_tasks each
    with pytest.raises(FeatureError, match=r"read their frames from <source>_videos.arrow .* unset visual_features"):
        GenerativeDataModule(config(root, ["tvqa"], visual_features="features/"))
    tests = {b["task"]: b for b in dm.test_dataloader()}
    assert set(tests) == set(VIDEO_TASKS) and all("target_ids" not in b for b in tests.values())


def test_synthetic_clips_are_deterministic_and_carry_colour_shape_motion(synth, tmp_path):
    root, _ = synth
    again = tmp_path / "again"
    write_synthetic_video(again, seed=3, n_train=8, src=again / "value", progress=False)
    for name in ("tv_videos.arrow", "tvqa_train.arrow", "yc2c_val_release.arrow"):
        assert (root / name).read_bytes() == (again / name).read_bytes()
    world = _World(3)
    pinv = np.linalg.pinv(world.proj)
    caps = _ds(TVCDataset, root, ["tvc_train_release"])
    assert len(caps) == 16
    for i in range(0, 16, 2):
        item = caps[i]
        words = item["target_text"].rstrip(".").split()  # "A <colour> <shape> moves <motion>"
        frames = np.load(root / "value_synthetic" / "vis_features" / "tv" / "clip-vit" /
                         f"{item['video_id']}.npz")["features"]
        mean = frames.mean(0)
        colour = COLOURS[int(np.argmax(world.colour @ mean))]
        shape = SHAPES[int(np.argmax(world.shape @ mean))]
        # the motion: the position code decoded from the frames (cos(πx) falls as x grows, cos(πy) as y grows)
        enc = (frames - world.colour[COLOURS.index(colour)] - world.shape[SHAPES.index(shape)]) @ pinv
        # (columns: sin of x·2^k·π, sin of y·…, cos of x·…, cos of y·…, k = 0..7)
        dx, dy = enc[:5, 16].mean() - enc[-5:, 16].mean(), enc[:5, 24].mean() - enc[-5:, 24].mean()
        motion = ("right" if dx > 0 else "left") if abs(dx) > abs(dy) else ("down" if dy > 0 else "up")
        assert [colour, shape, motion] == [words[1], words[2], words[4]]
        # the subtitles name the shape, never the colour or the motion
        assert shape in item["text"] and not any(w in item["text"] for w in COLOURS + tuple(MOTIONS))


# ------------------------------------------------------------------------------------------- metrics and dumps
def _tasks(*names):
    return [TASKS.build(n).configured(TaskSettings(), "generate") for n in names]


def test_qa_accuracy_is_exact_match_as_the_original(synth):
    assert qa_correct(["a1", "a 2", "a3", "A0"], ["a1", "a2", None, "a0"])[:2] == [1.0, 0.0]
    assert math.isnan(qa_correct(["a3"], [None])[0])
    tasks = _tasks("tvqa")
    batch = {"task": "tvqa", "answer": ["a1", "a2", "a0", "a4"], "qid": ["1", "2", "3", "4"]}

    def infer(b, generate=False, **kw):
        return {"generated": ["a1", "a2", "a4", " a4"]} if generate else {}

    out = compute(tasks, infer, torch.nn.ModuleDict(), batch, generate=True)
    metrics = TaskMetrics(tasks)
    metrics.update(out, batch)
    metrics.update(out, {**batch, "answer": [None] * 4})  # unannotated questions are not counted
    assert metrics.compute_and_reset() == {"tvqa_accuracy": 0.5}  # 2 of 4: " a4" is not "a4"
    assert tasks[0].selection({"tvqa_accuracy": 0.5}) == [("tvqa_accuracy", 0.5)]


def test_caption_scores_per_description(monkeypatch):
    # the Python PTB tokenizer and no METEOR: no Java subprocess (seconds each) in this test
    monkeypatch.setattr(tm, "caption_scores", functools.partial(caption_scores, tokenizer="python", meteor=False))
    tasks = _tasks("tvc")
    refs = ["a red star moves up", "the star is red and goes up", None]
    gen = ["a red star moves up", "a blue star goes down", "anything"]
    batch = {"task": "tvc", "qid": ["d0", "d1", "c9"], "references": [[r] if r else [] for r in refs],
             "video_id": ["v", "v", "w"], "clip_id": ["c", "c", "c9"], "ts": ["[1, 2]"] * 3}
    out = compute(tasks, lambda b, generate=False, **kw: {"generated": gen} if generate else {},
                  torch.nn.ModuleDict(), batch, generate=True)
    metrics = TaskMetrics(tasks)
    metrics.update(out, batch)
    got = metrics.compute_and_reset()
    want = caption_scores({"d0": [refs[0]], "d1": [refs[1]]}, {"d0": gen[0], "d1": gen[1]}, tokenizer="python",
                          meteor=False)
    assert got == pytest.approx({f"tvc_{k}": v for k, v in want.items()})  # the test clip (no reference) not scored
    # ROUGE-L by hand: d0 identical (1.0); d1 LCS "star ... goes" = 2 of 5 (candidate) / 7 (reference) tokens,
    # F with β = 1.2
    p, r, beta = 2 / 5, 2 / 7, 1.2
    assert got["tvc_rouge_l"] == pytest.approx((1.0 + (1 + beta**2) * p * r / (r + beta**2 * p)) / 2)


def test_test_dumps_in_the_originals_formats(tmp_path):
    assert [option_index(a) for a in ("a3", "a", "ab", "b2", "a12")] == [3, 0, 0, 2, 1]
    by_task = {t.name: t for t in _tasks(*VIDEO_TASKS)}
    qa = [{"qid": "12", "answer": "a4"}, {"qid": "7", "answer": "oops"}, {"qid": "12", "answer": "a4"}]
    cap = [{"qid": "c2", "video_id": "v2", "clip_id": "c2", "ts": "[0.5, 2.0]", "desc": "x"},
           {"qid": "c1", "video_id": "v1", "clip_id": "c1", "ts": "[1, 3.5]", "desc": "y"}]
    paths = write_test_dumps({"tvqa": qa, "how2qa": qa[:1], "tvc": cap, "yc2c": cap}, {}, tmp_path, "run",
                             tasks=by_task)
    assert {t: p.name for t, p in paths.items()} == {
        "tvqa": "tvqa_test_predictions_run.json", "how2qa": "how2qa_test_public_predictions_run.json",
        "tvc": "tvc_test_predictions_run.jsonl", "yc2c": "yc2c_test_predictions_run.jsonl"}
    assert json.loads(paths["tvqa"].read_text()) == {"7": 0, "12": 4}
    lines = [json.loads(x) for x in paths["tvc"].read_text().splitlines()]
    assert lines == [{"vid_name": "v1", "clip_id": "c1", "ts": [1, 3.5], "descs": [{"desc": "y"}]},
                     {"vid_name": "v2", "clip_id": "c2", "ts": [0.5, 2.0], "descs": [{"desc": "x"}]}]
    assert json.loads(paths["yc2c"].read_text().splitlines()[0]) == {"vid_name": "v1", "clip_id": "c1",
                                                                       "descs": [{"desc": "y"}]}


def test_yc2c_text_has_no_time_span(synth):
    root, _ = synth
    item = _ds(YC2CDataset, root, ["yc2c_val_release"])[0]
    assert item["text"] == "[Subs] Look at this " + item["text"].split("this ")[1] and "[TS]" not in item["text"]


# ------------------------------------------------------------------------------------------- official scorers
def test_evaluate_scores_video_dumps_against_value_annotations(tmp_path, monkeypatch, capsys):
    ann = tmp_path / "tvqa_val.jsonl"
    _jsonl(ann, [{"qid": 1, "answer_idx": 2, "show_name": "a"}, {"qid": 2, "answer_idx": 0, "show_name": "a"},
                 {"qid": 3, "answer_idx": 4, "show_name": "b"}])
    (tmp_path / "pred.json").write_text(json.dumps({"1": 2, "2": 1, "3": 4}))
    assert evaluate.main(["tvqa", "--annotations", str(ann), "--predictions", str(tmp_path / "pred.json"),
                          "--json", str(tmp_path / "r.json")]) == 0
    got = json.loads((tmp_path / "r.json").read_text())
    assert got["correct"] == 2 and got["total"] == 3 and got["per_type"] == {"a": 50.0, "b": 100.0}
    (tmp_path / "bad.json").write_text(json.dumps({"1": "a2"}))
    assert evaluate.main(["how2qa", "--annotations", str(ann), "--predictions", str(tmp_path / "bad.json")]) == 2
    assert "expected an option index" in capsys.readouterr().err
    # captions: one caption per clip against all its descriptions (no Java in this test)
    monkeypatch.setattr(evaluate, "caption_scores", functools.partial(caption_scores, tokenizer="python",
                                                                      meteor=False))
    cap = tmp_path / "tvc_val.jsonl"
    _jsonl(cap, [{"clip_id": 5, "vid_name": "v", "descs": [{"desc": "a red star moves up"}, {"desc": "it goes up"}]}])
    _jsonl(tmp_path / "pred.jsonl", [{"vid_name": "v", "clip_id": 5, "descs": [{"desc": "a red star moves up"}]}])
    r = evaluate.video_caption_scores_files(cap, tmp_path / "pred.jsonl")
    assert r["total"] == 1 and r["rouge_l"] == pytest.approx(100.0) and r["bleu4"] == pytest.approx(100.0, abs=1e-3)

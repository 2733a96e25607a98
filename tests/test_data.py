"""Data layer: hand-written ViLT-layout arrow files → datasets → collate → Batch."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch
from PIL import Image

from vlpeft.data.arrow import ArrowSchemaError, MissingArrowFilesError, open_arrow
from vlpeft.data.collate import Collator, CollateError
from vlpeft.data.datamodule import SPLITS, MTDataModule, SearchSampler
from vlpeft.data.datasets import (CaptionDataset, GQADataset, ImageDecodeError, LabelError, METERSNLIDataset,
                                  NLVR2Dataset, SNLIVEDataset, VQADataset, dedupe)
from vlpeft.data.tokenizer import TokenizerError, load_tokenizer

REPO = Path(__file__).resolve().parents[1]
L = 12  # max_text_len


# ----------------------------------------------------------------------------- arrow files, pyarrow only
def jpeg(w: int, h: int, color=(200, 30, 60)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), color).save(buf, format="JPEG")
    return buf.getvalue()


def write_arrow(path: Path, columns: dict[str, pa.Array]) -> Path:
    table = pa.table(columns)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)
    return path


def vqa_columns(sizes, questions, labels, scores, answers, qids, test=False):
    n = len(sizes)
    cols = {
        "image": pa.array([jpeg(w, h) for w, h in sizes], type=pa.binary()),
        "questions": pa.array(questions, type=pa.list_(pa.string())),
        "image_id": pa.array(range(n), type=pa.int64()),
        "question_id": pa.array(qids, type=pa.list_(pa.int64())),
        "split": pa.array(["test" if test else "train"] * n),
    }
    if test:  # the original writer stores [] per row (type list<null>) on test splits
        for c in ("answers", "answer_labels", "answer_scores"):
            cols[c] = pa.array([[] for _ in range(n)], type=pa.list_(pa.null()))
    else:
        cols["answers"] = pa.array(answers, type=pa.list_(pa.list_(pa.string())))
        cols["answer_labels"] = pa.array(labels, type=pa.list_(pa.list_(pa.int64())))
        cols["answer_scores"] = pa.array(scores, type=pa.list_(pa.list_(pa.float64())))
    return cols


VQA_TRAIN = dict(
    sizes=[(64, 48), (48, 64), (80, 40)],
    questions=[["what color is it?", "is it red?"], ["how many?"], ["where is the cat?", "why?"]],
    labels=[[[1, 3], [0]], [[2]], [[4], [3, 1]]],
    scores=[[[1.0, 0.3], [0.6]], [[0.9]], [[1.0], [0.3, 0.6]]],
    answers=[[["red", "pink"], ["yes"]], [["2"]], [["sofa"], ["pink", "red"]]],
    qids=[[10, 11], [20], [30, 31]],
)


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("bert-base-uncased")


@pytest.fixture()
def vqa_root(tmp_path):
    write_arrow(tmp_path / "vqav2_train.arrow", vqa_columns(**VQA_TRAIN))
    write_arrow(tmp_path / "vqav2_trainable_val.arrow", vqa_columns(
        sizes=[(40, 40)], questions=[["is this a dog?"]], labels=[[[0]]], scores=[[[1.0]]], answers=[[["yes"]]],
        qids=[[40]]))
    write_arrow(tmp_path / "vqav2_rest_val.arrow", vqa_columns(
        sizes=[(64, 64), (32, 96)], questions=[["q one?", "q two?"], ["q three?"]], labels=[[[0], [2]], [[1]]],
        scores=[[[1.0], [0.3]], [[0.6]]], answers=[[["yes"], ["2"]], [["red"]]], qids=[[50, 51], [60]]))
    write_arrow(tmp_path / "vqav2_test.arrow", vqa_columns(
        sizes=[(64, 48)], questions=[["test q?", "another?"]], labels=None, scores=None, answers=None,
        qids=[[70, 71]], test=True))
    return tmp_path


def vqa_config(root, **kw):
    cfg = dict(datasets=["vqa"], data_root=str(root), per_gpu_batchsize=2, num_workers=0, image_size=64,
               max_text_len=L, train_transform_keys=["pixelbert"], val_transform_keys=["pixelbert"],
               tokenizer="bert-base-uncased", draw_false_text=0, vqav2_label_size=5, gqa_label_size=1843, seed=0)
    cfg.update(kw)
    return cfg


def vqa_ds(root, tok, names=("vqav2_train",), **kw):
    return VQADataset(root, list(names), transform_keys=["pixelbert"], image_size=64, tokenizer=tok,
                      max_text_len=L, **kw)


# ----------------------------------------------------------------------------- tokenizer
def test_default_tokenizer_is_full_bert_vocab(tok):
    assert len(tok) == 30522 and tok.vocab_size == 30522
    assert (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id, tok.mask_token_id) == (101, 102, 0, 103)
    assert tok("hello world")["input_ids"] == [101, 7592, 2088, 102]
    assert load_tokenizer("") is tok  # "" is the default too, and loads are cached


def test_tiny_vocab_and_unknown_names_are_refused(tmp_path):
    folder = tmp_path / "stub"
    folder.mkdir()
    (folder / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "BertTokenizer"}))
    with pytest.raises(TokenizerError, match="only 5 tokens"):
        load_tokenizer(folder)
    with pytest.raises(TokenizerError, match="not a local folder"):
        load_tokenizer("no-such-org/no-such-tokenizer-xyz")


# ----------------------------------------------------------------------------- VQA batch
def test_vqa_items_and_batch(vqa_root, tok):
    ds = vqa_ds(vqa_root, tok)
    assert len(ds) == 5  # one item per question
    items = [ds[i] for i in range(5)]
    assert [it["qid"] for it in items] == [10, 11, 20, 30, 31]
    assert [it["image_key"] for it in items] == ["vqav2_train:0", "vqav2_train:0", "vqav2_train:1",
                                                 "vqav2_train:2", "vqav2_train:2"]
    # pixelbert at 64: longer bound int(1333/800*64) = 106. 64x48 → 85x64 → floor32 64x64; 48x64 → 64x64;
    # 80x40 → 128x64 capped by 106/128 → 106x53 → 96x32 (W x H)
    assert [tuple(it["image"].shape) for it in items] == [(3, 64, 64)] * 3 + [(3, 32, 96)] * 2
    b = Collator(tok, {"vqa": 5})(items)
    assert set(b) == {"image", "image_mask", "image_sizes", "image_key", "table_name", "text", "text_ids",
                      "text_masks", "text_labels", "vqa_targets", "vqa_labels", "vqa_scores", "vqa_answer", "vqa_has_answers", "qid",
                      "task"}
    assert b["task"] == "vqa"  # the Lightning module runs the forward in pet_context(task=b["task"])
    assert b["image"].shape == (5, 3, 64, 96) and b["image"].dtype == torch.float32
    assert b["image_mask"].shape == (5, 64, 96) and b["image_mask"].dtype == torch.bool
    assert b["image_mask"][0].sum() == 64 * 64 and b["image_mask"][0, :, :64].all()
    assert not b["image_mask"][0, :, 64:].any() and (b["image"][0, :, :, 64:] == 0).all()
    assert b["image_mask"][3].sum() == 32 * 96 and not b["image_mask"][3, 32:].any()
    assert (b["image"][3, :, 32:] == 0).all()
    # the JPEG's red channel survives the transform inside the mask: (200/255 - .5)/.5 ≈ 0.57
    assert abs(float(b["image"][0, 0, 30, 30]) - (200 / 255 - 0.5) / 0.5) < 0.05
    expected = torch.zeros(5, 5)
    expected[0, 1], expected[0, 3] = 1.0, 0.3
    expected[1, 0] = 0.6
    expected[2, 2] = 0.9
    expected[3, 4] = 1.0
    expected[4, 3], expected[4, 1] = 0.3, 0.6
    assert torch.equal(b["vqa_targets"], expected) and b["vqa_targets"].dtype == torch.float32
    assert b["vqa_labels"][0] == [1, 3] and b["vqa_scores"][4] == pytest.approx([0.3, 0.6])
    assert b["vqa_answer"][0] == ["red", "pink"] and b["table_name"] == ["vqav2_train"] * 5
    assert b["text_ids"].shape == (5, L) and b["text_ids"].dtype == torch.long
    assert b["text_masks"].dtype == torch.long and (b["text_ids"][:, 0] == 101).all()
    assert torch.equal(b["text_ids"][2, :5], torch.tensor(tok("how many?")["input_ids"]))
    assert b["text_masks"][2].tolist() == [1] * 5 + [0] * (L - 5)  # [CLS] how many ? [SEP]
    assert (b["text_ids"][b["text_masks"] == 0] == 0).all()
    assert (b["text_labels"] == -100).all() and b["text_labels"].shape == (5, L)


def test_long_text_is_truncated_to_max_text_len(vqa_root, tok):
    ds = vqa_ds(vqa_root, tok)
    enc = ds.encode("word " * 50)
    assert len(enc["input_ids"]) == L and enc["input_ids"][-1] == 102 and sum(enc["attention_mask"]) == L


def test_split_concatenation_and_test_split(vqa_root, tok):
    ds = vqa_ds(vqa_root, tok, names=("vqav2_train", "vqav2_trainable_val"))
    assert len(ds) == 6
    last = ds[5]
    assert last["image_key"] == "vqav2_trainable_val:0" and last["table_name"] == "vqav2_trainable_val"
    assert last["qid"] == 40 and last["vqa_labels"] == [0]
    test = vqa_ds(vqa_root, tok, names=("vqav2_test",), split="test")
    items = [test[0], test[1]]
    assert items[1]["vqa_labels"] == [] and items[1]["vqa_answer"] == [] and items[1]["qid"] == 71
    b = Collator(tok, {"vqa": 5})(items)
    assert torch.equal(b["vqa_targets"], torch.zeros(2, 5))


def test_label_outside_label_size_is_an_error(vqa_root, tok):
    ds = vqa_ds(vqa_root, tok)
    with pytest.raises(CollateError, match=r"outside \[0, 3\)"):
        Collator(tok, {"vqa": 3})([ds[0]])
    with pytest.raises(CollateError, match="vqav2_label_size"):
        Collator(tok, {})([ds[0]])


# ----------------------------------------------------------------------------- errors
def test_schema_error_names_file_and_missing_columns(tmp_path, tok):
    cols = vqa_columns(**VQA_TRAIN)
    del cols["answer_labels"], cols["question_id"]
    path = write_arrow(tmp_path / "vqav2_train.arrow", cols)
    with pytest.raises(ArrowSchemaError) as e:
        vqa_ds(tmp_path, tok)
    assert str(path) in str(e.value) and "answer_labels" in str(e.value) and "question_id" in str(e.value)


def test_missing_files_one_error_lists_every_expected_file(tmp_path):
    write_arrow(tmp_path / "vqav2_train.arrow", vqa_columns(**VQA_TRAIN))
    dm = MTDataModule(vqa_config(tmp_path, datasets=["vqa", "nlvr2"]))
    with pytest.raises(MissingArrowFilesError) as e:
        dm.setup("fit")
    msg = str(e.value)
    for name in ["vqav2_train", "vqav2_trainable_val", "vqav2_rest_val", "nlvr2_train", "nlvr2_dev"]:
        assert str(tmp_path / f"{name}.arrow") in msg
    assert "vqav2_test" not in msg  # fit needs train + val only
    assert "MISSING" in msg and "ok      " + str(tmp_path / "vqav2_train.arrow") in msg
    assert "DATA.md" in msg and "python -m write_arrow" in msg
    assert "4 of 5" in msg


def test_corrupt_image_names_file_and_row(tmp_path, tok):
    cols = vqa_columns(**VQA_TRAIN)
    imgs = cols["image"].to_pylist()
    imgs[1] = b"\xff\xd8 definitely not a jpeg"
    cols["image"] = pa.array(imgs, type=pa.binary())
    path = write_arrow(tmp_path / "vqav2_train.arrow", cols)
    ds = vqa_ds(tmp_path, tok)
    ds[0]  # other rows still decode
    with pytest.raises(ImageDecodeError) as e:
        ds[2]  # item 2 = row 1
    assert str(path) in str(e.value) and "row 1" in str(e.value)


def test_wrong_column_type_names_file_column_and_fix(tmp_path, tok):
    """A column of the wrong type is refused when the file opens, naming it (labels stored as strings used to
    convert silently; two files disagreeing on a type raised a bare ArrowTypeError from the concatenation)."""
    cols = vqa_columns(**VQA_TRAIN)
    cols["answer_labels"] = pa.array([[[str(x) for x in q] for q in r] for r in VQA_TRAIN["labels"]],
                                     type=pa.list_(pa.list_(pa.string())))
    path = write_arrow(tmp_path / "vqav2_train.arrow", cols)
    with pytest.raises(ArrowSchemaError) as e:
        vqa_ds(tmp_path, tok)
    msg = str(e.value)
    assert str(path) in msg and "'answer_labels' is list<item: list<item: string>>" in msg
    assert "expected list<list<int>>" in msg and "python -m write_arrow" in msg
    # acceptable types that still differ between the files of one split: every file named with its type
    write_arrow(tmp_path / "vqav2_train.arrow", vqa_columns(**VQA_TRAIN))
    cols = vqa_columns(**VQA_TRAIN)
    cols["question_id"] = pa.array(VQA_TRAIN["qids"], type=pa.list_(pa.int32()))
    other = write_arrow(tmp_path / "vqav2_trainable_val.arrow", cols)
    with pytest.raises(ArrowSchemaError) as e:
        vqa_ds(tmp_path, tok, names=("vqav2_train", "vqav2_trainable_val"))
    msg = str(e.value)
    assert f"{path}: question_id list<item: int64>" in msg and f"{other}: question_id list<item: int32>" in msg


def _corrupt_offsets(path: Path, old: list[int], new: list[int]) -> None:
    """Overwrite the first int32 offsets buffer equal to ``old`` (a list column's) with ``new`` in the file."""
    raw = path.read_bytes()
    pattern = np.asarray(old, np.int32).tobytes()
    assert pattern in raw
    path.write_bytes(raw.replace(pattern, np.asarray(new, np.int32).tobytes(), 1))


@pytest.mark.parametrize("offsets", [[0, 2, 3, 1 << 30], [0, 1 << 30, 3, 5], [0, 4, 3, 5]],
                         ids=["last_past_values", "middle_past_values", "decreasing"])
def test_corrupt_list_offsets_are_refused_when_opening(tmp_path, tok, offsets):
    """Offsets running past the values would ask for GBs when the row is read (or make len() absurd): refused,
    naming the file — the last offset by every open (validate()), every offset by the runner's check before the
    model is built (check_data: the monotonicity pass)."""
    path = write_arrow(tmp_path / "vqav2_train.arrow", vqa_columns(**VQA_TRAIN))
    _corrupt_offsets(path, [0, 2, 3, 5], offsets)  # the questions column: 2, 1, 2 questions per row
    with pytest.raises(ArrowSchemaError) as e:
        open_arrow(path, all_offsets=True)
    assert f"{path} is corrupt" in str(e.value) and "python -m write_arrow" in str(e.value)
    dm = MTDataModule(vqa_config(tmp_path, data_splits={"vqa": {"train": ["vqav2_train"], "val": ["vqav2_train"]}}))
    with pytest.raises(ArrowSchemaError, match=rf"vqa train: {path} is corrupt"):
        dm.check_data("fit")
    if offsets[-1] != 5:
        with pytest.raises(ArrowSchemaError, match=rf"{path} is corrupt"):
            vqa_ds(tmp_path, tok)


def test_check_data_lists_every_unreadable_split_before_any_dataset_is_built(vqa_root):
    dm = MTDataModule(vqa_config(vqa_root))
    dm.check_data("fit")
    dm.check_data("test")  # the test split's list<null> answers match any list type
    cols = vqa_columns(**VQA_TRAIN)
    cols["questions"] = pa.array(["one string per row"] * 3)
    write_arrow(vqa_root / "vqav2_trainable_val.arrow", cols)
    _corrupt_offsets(vqa_root / "vqav2_rest_val.arrow", [0, 2, 3], [0, 2, 1 << 20])
    with pytest.raises(ArrowSchemaError) as e:
        dm.check_data("fit")
    msg = str(e.value)
    assert msg.startswith(f"2 split(s) under data_root={str(vqa_root)!r} cannot be read")
    assert f"vqa train: {vqa_root / 'vqav2_trainable_val.arrow'}: column 'questions' is string" in msg
    assert f"vqa val: {vqa_root / 'vqav2_rest_val.arrow'} is corrupt" in msg and "write_arrow" in msg
    assert dm.datasets == {"train": {}, "val": {}, "test": {}}
    (vqa_root / "vqav2_test.arrow").unlink()
    with pytest.raises(MissingArrowFilesError, match=r"MISSING .*vqav2_test.arrow[\s\S]*data_root="):
        dm.check_data("test")


def test_runner_checks_the_data_before_building_the_model(sacred, vqa_root, tmp_path, monkeypatch):
    """Missing or broken arrow files are named before the model is built and its weights are loaded."""
    import vlpeft.runner as runner

    def no_model(*a, **k):
        raise AssertionError("the model was built before the data was checked")

    monkeypatch.setattr(runner, "_build_module", no_model)
    (vqa_root / "vqav2_rest_val.arrow").unlink()
    updates = dict(data_root=str(vqa_root), log_dir=str(tmp_path / "log"), stage="train", vqav2_label_size=5,
                   per_gpu_batchsize=2, batch_size=2, max_epoch=1, num_workers=0)
    with pytest.raises(MissingArrowFilesError) as e:
        sacred("demo", **updates)
    assert f"MISSING {vqa_root / 'vqav2_rest_val.arrow'}" in str(e.value) and "python -m write_arrow" in str(e.value)
    cols = vqa_columns(**VQA_TRAIN)
    cols["answer_scores"] = pa.array([[["high"]], [["low"]], [["x"], ["y"]]], type=pa.list_(pa.list_(pa.string())))
    write_arrow(vqa_root / "vqav2_rest_val.arrow", cols)
    with pytest.raises(ArrowSchemaError, match=r"vqav2_rest_val.arrow: column 'answer_scores' is list<item: list<"):
        sacred("demo", **updates)


def test_unknown_dataset_key_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vg"):
        MTDataModule(vqa_config(tmp_path, datasets=["vqa", "vg"]))


# ----------------------------------------------------------------------------- other tasks
def test_nlvr2_pairs(tmp_path, tok):
    write_arrow(tmp_path / "nlvr2_train.arrow", {
        "image_0": pa.array([jpeg(64, 64), jpeg(96, 32)], type=pa.binary()),
        "image_1": pa.array([jpeg(32, 64), jpeg(64, 64)], type=pa.binary()),
        "questions": pa.array([["left has two dogs", "right is empty"], ["both red"]]),
        "answers": pa.array([["True", "False"], ["True"]]),
        "identifier": pa.array(["train-1-0", "train-2-1"]),
    })
    ds = NLVR2Dataset(tmp_path, ["nlvr2_train"], transform_keys=["pixelbert"], image_size=64, tokenizer=tok,
                      max_text_len=L)
    b = Collator(tok)([ds[i] for i in range(3)])
    assert b["nlvr2_labels"].tolist() == [1, 0, 1] and b["nlvr2_labels"].dtype == torch.long
    # one common pad size over both image keys: image_1 of row 0 (32x64 → 32 wide, 96 high) sets Hmax = 96,
    # image_0 of row 1 (96x32 → 96 wide, 32 high) sets Wmax = 96
    assert b["image_0"].shape == b["image_1"].shape == (3, 3, 96, 96)
    assert b["image_1_mask"][0].sum() == 96 * 32 and b["image_1_mask"][0, :, :32].all()
    assert b["image_0_mask"][2].sum() == 32 * 96 and b["image_0_mask"][2, :32].all()
    assert b["image_0_key"][2] == "nlvr2_train:1:image_0" and b["image_1_key"][0] == "nlvr2_train:0:image_1"
    assert b["image_key"] == ["nlvr2_train:0", "nlvr2_train:0", "nlvr2_train:1"] and "image" not in b


def test_gqa_and_snli_ve_labels(tmp_path, tok):
    write_arrow(tmp_path / "gqa_val.arrow", {
        "image": pa.array([jpeg(40, 40)], type=pa.binary()), "questions": pa.array([["is it a cat?", "color?"]]),
        "answers": pa.array([[["yes"], []]]), "answer_labels": pa.array([[[0], []]], type=pa.list_(pa.list_(pa.int64()))),
        "answer_scores": pa.array([[[1.0], []]], type=pa.list_(pa.list_(pa.float64()))),
        "image_id": pa.array(["n161313"]), "question_id": pa.array([["0123", "0456"]]), "split": pa.array(["val"])})
    g = GQADataset(tmp_path, ["gqa_val"], transform_keys=["clip"], image_size=32, tokenizer=tok, max_text_len=L)
    b = Collator(tok, {"gqa": 1843})([g[0], g[1]])
    assert b["gqa_labels"].tolist() == [0, -100] and b["qid"] == ["0123", "0456"]
    assert b["image"].shape == (2, 3, 32, 32) and b["image_mask"].all()  # clip: fixed size, mask all True
    write_arrow(tmp_path / "snli_ve_dev.arrow", {
        "image": pa.array([jpeg(40, 40)], type=pa.binary()),
        "questions": pa.array([["a man sleeps", "a man", "a dog"]]),
        "answers": pa.array([["entailment", "neutral", "contradiction"]]), "identifier": pa.array([123])})
    s = SNLIVEDataset(tmp_path, ["snli_ve_dev"], transform_keys=["clip"], image_size=32, tokenizer=tok,
                      max_text_len=L)
    assert Collator(tok)([s[i] for i in range(3)])["snli_ve_labels"].tolist() == [2, 1, 0]


def test_meter_snli_files_read_the_hypothesis_and_label_ids(tmp_path, tok):
    """METER's write_snli.py layout (seeds.md §2.4): ``sentences`` = [premise, hypothesis] pairs, ``labels`` = ids,
    no id column; the dataset reads the stripped hypothesis only. ``datasets=["snli"]`` (the METER named config)
    finds ``snli_{train,dev,test}``."""
    pairs = pa.array([[["a man sleeps on a bench", " a man sleeps "], ["a man", "a dog runs"]]],
                     type=pa.list_(pa.list_(pa.string())))
    write_arrow(tmp_path / "snli_dev.arrow", {"image": pa.array([jpeg(40, 40)], type=pa.binary()),
                                              "sentences": pairs, "labels": pa.array([[2, 0]])})
    s = METERSNLIDataset(tmp_path, ["snli_dev"], transform_keys=["clip"], image_size=32, tokenizer=tok,
                         max_text_len=L)
    assert len(s) == 2 and [s[i]["text"] for i in range(2)] == ["a man sleeps", "a dog runs"]
    b = Collator(tok)([s[0], s[1]])
    assert b["snli_ve_labels"].tolist() == [2, 0] and b["task"] == "snli_ve"
    assert SPLITS["snli"] == {"train": ["snli_train"], "val": ["snli_dev"], "test": ["snli_test"]}
    write_arrow(tmp_path / "snli_test.arrow", {"image": pa.array([jpeg(40, 40)], type=pa.binary()),
                                               "sentences": pairs, "labels": pa.array([[2, 7]])})
    bad = METERSNLIDataset(tmp_path, ["snli_test"], transform_keys=["clip"], image_size=32, tokenizer=tok,
                           max_text_len=L)
    with pytest.raises(LabelError, match="label id 7"):
        bad[1]


def caption_root(tmp_path, n_images=6):
    caps = [[f"caption {i} {j}" for j in range(3)] for i in range(n_images)]
    caps[0] = ["b dog", "a cat", "b dog", "c bird"]  # duplicate removed, order kept
    write_arrow(tmp_path / "f30k_caption_karpathy_val.arrow", {
        "image": pa.array([jpeg(48, 48, (i * 40, 0, 0)) for i in range(n_images)], type=pa.binary()),
        "caption": pa.array(caps), "image_id": pa.array([f"{i}.jpg" for i in range(n_images)]),
        "split": pa.array(["val"] * n_images)})
    return tmp_path


def test_captions_dedupe_negatives_and_iid(tmp_path, tok):
    assert dedupe(["b", "a", "b", "c", "a"]) == ["b", "a", "c"]
    root = caption_root(tmp_path)
    kw = dict(transform_keys=["pixelbert"], image_size=64, tokenizer=tok, max_text_len=L, draw_false_text=3, seed=7)
    ds = CaptionDataset(root, ["f30k_caption_karpathy_val"], **kw)
    assert ds.texts[0] == ["b dog", "a cat", "c bird"] and len(ds) == 3 + 5 * 3
    items = [ds[i] for i in (0, 1, 4)]
    b = Collator(tok)(items)
    assert b["iid"].tolist() == [0, 0, 1] and b["iid"].dtype == torch.long
    assert b["text"] == ["b dog", "a cat", "caption 1 1"]
    for i in range(3):
        assert b[f"false_text_{i}_ids"].shape == (3, L) and b[f"false_text_{i}_masks"].shape == (3, L)
    # the same seed → the same negatives in a fresh dataset (another worker / rank / run)
    again = CaptionDataset(root, ["f30k_caption_karpathy_val"], **kw)
    negs = lambda d, e: [[d[i][f"false_text_{k}"] for k in range(3)] for i in range(len(d)) if d.set_epoch(e) is None]
    n0 = negs(ds, 0)
    assert n0 == negs(again, 0)
    assert negs(ds, 1) != n0  # a new epoch draws new negatives
    assert CaptionDataset(root, ["f30k_caption_karpathy_val"], **{**kw, "seed": 8})[0]["false_text_0"] is not None


# ----------------------------------------------------------------------------- MLM
def test_mlm_masks_only_real_tokens(vqa_root, tok):
    ds = vqa_ds(vqa_root, tok)
    items = [ds[i] for i in range(5)]
    for wwm in (False, True):
        torch.manual_seed(0)
        b = Collator(tok, {"vqa": 5}, mlm=True, mlm_prob=0.5, whole_word_masking=wwm)(items)
        ids, mlm_ids, labels = b["text_ids"], b["text_ids_mlm"], b["text_labels_mlm"]
        assert mlm_ids.shape == labels.shape == (5, L)
        chosen = labels != -100
        assert chosen.any()
        assert torch.equal(labels[chosen], ids[chosen])  # labels are the original ids where chosen
        assert torch.equal(mlm_ids[~chosen], ids[~chosen])  # untouched elsewhere
        special = (ids == 101) | (ids == 102) | (ids == 0)
        assert not (chosen & special).any()


# ----------------------------------------------------------------------------- datamodule
def test_datamodule_splits_order_and_vocab(vqa_root):
    assert SPLITS["vqa"] == {"train": ["vqav2_train", "vqav2_trainable_val"], "val": ["vqav2_rest_val"],
                             "test": ["vqav2_test"]}
    assert SPLITS["nlvr2"]["val"] == ["nlvr2_dev"]  # held out, not nlvr2_train
    first = lambda dm: [q for b in dm.train_dataloader() for q in b["qid"]]
    dm = MTDataModule(vqa_config(vqa_root))
    dm.setup("fit")
    order = first(dm)
    assert sorted(order) == [10, 11, 20, 30, 31, 40]
    assert first(MTDataModule(vqa_config(vqa_root))) == order  # same seed → same order
    orders = {tuple(first(MTDataModule(vqa_config(vqa_root, seed=s)))) for s in range(6)}
    assert len(orders) > 1
    vb = next(iter(dm.val_dataloader()))
    assert vb["qid"] == [50, 51] and vb["table_name"] == ["vqav2_rest_val"] * 2
    tb = next(iter(dm.test_dataloader()))
    assert tb["qid"] == [70, 71] and torch.equal(tb["vqa_targets"], torch.zeros(2, 5))
    # answer vocabulary derived from train + val tables (as the original), unknown ids → "unknown"
    amap = dm.id2answer("vqa")
    assert dict(amap) == {0: "yes", 1: "red", 2: "2", 3: "pink", 4: "sofa"}
    assert amap[99] == "unknown" and dm.label2ans("vqa") == ["yes", "red", "2", "pink", "sofa"]
    (vqa_root / "vqav2_label_vocab.json").write_text(json.dumps(["a", "b", "c"]))
    assert MTDataModule(vqa_config(vqa_root)).label2ans("vqa") == ["a", "b", "c"]
    dm0 = MTDataModule(vqa_config(vqa_root, vqav2_label_size=0))
    assert dm0.collate.label_sizes["vqa"] == 3


def test_search_dataloader_advances_each_pass(vqa_root):
    dm = MTDataModule(vqa_config(vqa_root, per_gpu_batchsize=1))
    loader = dm.search_dataloader(1)
    assert isinstance(loader.sampler, SearchSampler)
    passes = [tuple(q for b in loader for q in b["qid"]) for _ in range(6)]
    assert all(sorted(p) == [50, 51, 60] for p in passes)
    assert len(set(passes)) > 1  # not the same order (hence not the same first batch) forever
    loader.sampler.set_epoch(0)
    assert tuple(q for b in loader for q in b["qid"]) == passes[0]  # explicit set_epoch reproduces a pass
    again = MTDataModule(vqa_config(vqa_root, per_gpu_batchsize=1)).search_dataloader(1)
    assert [tuple(q for b in again for q in b["qid"]) for _ in range(6)] == passes


def test_recall_datasets(tmp_path, tok):
    root = caption_root(tmp_path)
    cfg = vqa_config(root, datasets=["f30k"], draw_false_text=2)
    dm = MTDataModule(cfg)
    texts = dm.recall_text_dataset("val")
    images = dm.recall_image_dataset("val")
    assert len(texts) == 3 + 5 * 3 and len(images) == 6
    t = texts[4]
    assert "image" not in t and "false_text_0" not in t and t["iid"] == 1 and t["text"] == "caption 1 1"
    i = images[5]
    assert i["iid"] == 5 and i["image_key"] == "f30k_caption_karpathy_val:5" and "text" not in i
    tb = next(iter(dm.recall_loader(texts, batch_size=4)))
    assert tb["text_ids"].shape == (4, L) and tb["iid"].tolist() == [0, 0, 0, 1] and "image" not in tb
    ib = next(iter(dm.recall_loader(images, batch_size=4)))
    assert ib["image"].shape == (4, 3, 64, 64) and ib["iid"].tolist() == [0, 1, 2, 3] and "text_ids" not in ib


def test_dataset_pickles_without_the_table(vqa_root, tok):
    import pickle

    ds = vqa_ds(vqa_root, tok)
    blob = pickle.dumps(ds)
    clone = pickle.loads(blob)
    assert clone[3]["qid"] == 30 and torch.equal(clone[3]["image"], ds[3]["image"])


def test_workers_give_the_same_batches(vqa_root):
    cfg = vqa_config(vqa_root, num_workers=2, train_transform_keys=["pixelbert_randaug"])
    batches = []
    for _ in range(2):
        dm = MTDataModule(cfg)
        batches.append([b for b in dm.train_dataloader()])
    for a, b in zip(*batches):
        assert a["qid"] == b["qid"] and torch.equal(a["image"], b["image"])


# ----------------------------------------------------------------------------- memory map
def test_memory_mapped_open_does_not_load_images(tmp_path):
    path = tmp_path / "vqav2_big.arrow"
    rng = np.random.default_rng(0)
    rows, blob = 100, 512 * 1024  # ~50 MB of image bytes
    schema = pa.schema([("image", pa.binary()), ("questions", pa.list_(pa.string()))])
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
        for start in range(0, rows, 10):  # small batches: the writer never holds the whole file
            w.write_batch(pa.record_batch([pa.array([rng.bytes(blob) for _ in range(10)], type=pa.binary()),
                                           pa.array([[f"q{start + k}"] for k in range(10)])], schema=schema))
    # RssAnon (private memory): file pages the kernel maps around a read (read-ahead, up to MBs) are shared page
    # cache and show up in RssFile only; the whole-file read shows what a non-mapped reader costs
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import pyarrow as pa
        from vlpeft.data.arrow import load_split, open_arrow
        def anon():
            for line in open("/proc/self/status"):
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        open_arrow({str(path)!r})  # warm up pyarrow's lazy imports/allocations
        before = anon()
        st = load_split({str(tmp_path)!r}, ["vqav2_big"], ["image", "questions"])
        qs = st.column_pylist("questions")
        one = st.binary("image", 57)
        mapped = anon() - before
        whole = pa.ipc.open_file(pa.OSFile({str(path)!r})).read_all()
        print(mapped, anon() - before - mapped, len(qs), len(one))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    mapped, whole, n, size = map(int, out.stdout.split())
    assert (n, size) == (rows, blob)
    assert mapped < 8 * 2**20, f"opening a {rows * blob >> 20} MB file memory-mapped grew RSS by {mapped >> 20} MB"
    assert whole > 40 * 2**20  # the contrast: reading it whole costs the file size
    assert open_arrow(path).num_rows == rows


# ----------------------------------------------------------------------------- parity with the pre-issue-12 reader
# A reference copy of the data path as it was before issue 12 (Python columns converted up front, HWC numpy
# normalisation), kept here to pin the new per-item Arrow reads and planar normalisation to the same bits.
class _RefToNormalizedTensor:
    def __init__(self, mean, std):
        std = np.asarray(std, dtype=np.float32)
        self.scale = (1.0 / (255.0 * std)).astype(np.float32)
        self.shift = (np.asarray(mean, dtype=np.float32) / std).astype(np.float32)

    def __call__(self, img):
        arr = np.asarray(img, dtype=np.float32)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        arr = arr * self.scale - self.shift
        return torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 0, 1)))


def _ref_transform(key, size):
    """Today's transform with every ToNormalizedTensor swapped for the reference copy."""
    from vlpeft.data.transforms import ToNormalizedTensor, keys_to_transforms

    def swap(t):
        if isinstance(t, ToNormalizedTensor):
            return _RefToNormalizedTensor(t.mean, t.std)
        if hasattr(t, "transforms"):
            t.transforms = [swap(x) for x in t.transforms]
        return t

    return swap(keys_to_transforms([key], size)[0])


def _ref_items(root, names, tok, key, size, task, image_cols=("image",), text_col="questions", dedup=False):
    """Items the way the pre-issue-12 datasets built them (whole columns as Python lists)."""
    tables = [open_arrow(root / f"{n}.arrow") for n in names]
    table = pa.concat_tables(tables, promote_options="default")
    locate = [(n, r) for n, t in zip(names, tables) for r in range(t.num_rows)]
    cols = {c: table[c].to_pylist() for c in table.column_names if c not in ("image", "image_0", "image_1")}
    tf = _ref_transform(key, size)
    items = []
    for row in range(table.num_rows):
        texts = [str(t) for t in (cols[text_col][row] or [])]
        if dedup:
            texts = list(dict.fromkeys(texts))
        for cap, text in enumerate(texts):
            name, local = locate[row]
            item = {"task": task, "table_name": name, "row": row}
            for c in image_cols:
                img = Image.open(io.BytesIO(table[c][row].as_py())).convert("RGB")
                item["image" if c == "image" else c] = tf(img)
            item["image_key"] = f"{name}:{local}"
            if image_cols != ("image",):
                for c in image_cols:
                    item[f"{c}_key"] = f"{name}:{local}:{c}"
            item["text"] = text
            item["text_encoding"] = {k: list(v) for k, v in tok(
                text, padding="max_length", truncation=True, max_length=L, return_special_tokens_mask=True,
                return_offsets_mapping=True).items() if k != "token_type_ids"}
            per_q = lambda c: [] if not cols[c][row] or cap >= len(cols[c][row]) or cols[c][row][cap] is None \
                else list(cols[c][row][cap])
            if task in ("vqa", "gqa"):
                item[f"{task}_labels"] = [int(x) for x in per_q("answer_labels")]
                item[f"{task}_scores"] = [float(x) for x in per_q("answer_scores")]
                item[f"{task}_answer"] = [str(a) for a in per_q("answers")]
                item["qid"] = (int if task == "vqa" else str)(cols["question_id"][row][cap])
            elif task == "nlvr2":
                item["nlvr2_label"] = int(str(cols["answers"][row][cap]) == "True")
            elif task == "snli_ve":
                item["snli_ve_label"] = {"contradiction": 0, "neutral": 1, "entailment": 2}[cols["answers"][row][cap]]
            elif task == "irtr":
                item["iid"] = row
            items.append(item)
    return items


def _noise_jpeg(w, h, seed, mode="RGB", fmt="JPEG"):
    rng = np.random.default_rng(seed)
    shape = (h, w, 3) if mode != "L" else (h, w)
    img = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8))
    if mode == "P":
        img = img.convert("P")
    elif mode == "RGBA":
        img = img.convert("RGBA")
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def _assert_same_items(new, ref):
    assert len(new) == len(ref)
    for a, b in zip(new, ref):
        assert set(a) == set(b), (set(a) ^ set(b))
        for k in a:
            if isinstance(a[k], torch.Tensor):
                assert a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]), k  # to the bit
            else:
                assert a[k] == b[k] and type(a[k]) is type(b[k]), k


@pytest.mark.parametrize("key,size", [("pixelbert", 64), ("pixelbert", 96), ("clip", 48), ("imagenet", 40),
                                      ("vit", 32)])
def test_vqa_items_bit_identical_to_the_old_reader(tmp_path, tok, key, size):
    # photo-like noise (resize rounding everywhere), grey / palette / RGBA images (converted to RGB), two files,
    # a test split whose label columns are list<null>, a null question list and a null answers entry
    write_arrow(tmp_path / "vqav2_a.arrow", {
        "image": pa.array([_noise_jpeg(160, 120, 0), _noise_jpeg(90, 200, 1, "L"), _noise_jpeg(47, 33, 2, "P", "PNG"),
                           _noise_jpeg(70, 70, 3, "RGBA", "PNG"), _noise_jpeg(333, 100, 4)], type=pa.binary()),
        "questions": pa.array([["what is it?", "is it red?"], ["how many?"], None, ["a", "b", "c"], ["why?"]],
                              type=pa.list_(pa.string())),
        "answers": pa.array([[["red"], ["yes", "no"]], [["2"]], None, [["x"], None, ["z"]], [[]]],
                            type=pa.list_(pa.list_(pa.string()))),
        "answer_labels": pa.array([[[1], [0, 4]], [[2]], None, [[3], None, [1]], [[]]],
                                  type=pa.list_(pa.list_(pa.int64()))),
        "answer_scores": pa.array([[[1.0], [0.3, 0.6]], [[0.9]], None, [[1.0], None, [0.3]], [[]]],
                                  type=pa.list_(pa.list_(pa.float64()))),
        "question_id": pa.array([[1, 2], [3], None, [4, 5, 6], [7]], type=pa.list_(pa.int64())),
    })
    write_arrow(tmp_path / "vqav2_b.arrow", vqa_columns(
        sizes=[(64, 48)], questions=[["test q?", "another?"]], labels=None, scores=None, answers=None,
        qids=[[70, 71]], test=True))
    names = ["vqav2_a", "vqav2_b"]
    ds = VQADataset(tmp_path, names, transform_keys=[key], image_size=size, tokenizer=tok, max_text_len=L)
    new = [ds[i] for i in range(len(ds))]
    _assert_same_items(new, _ref_items(tmp_path, names, tok, key, size, "vqa"))
    assert len(new) == 9 and new[-1]["vqa_labels"] == [] and new[4]["vqa_labels"] == []  # null entry → []


def test_other_tasks_bit_identical_to_the_old_reader(tmp_path, tok):
    write_arrow(tmp_path / "nlvr2_train.arrow", {
        "image_0": pa.array([_noise_jpeg(64, 64, 5), _noise_jpeg(96, 32, 6)], type=pa.binary()),
        "image_1": pa.array([_noise_jpeg(32, 64, 7), _noise_jpeg(64, 80, 8)], type=pa.binary()),
        "questions": pa.array([["left has two dogs", "right is empty"], ["both red"]]),
        "answers": pa.array([["True", "False"], ["True"]]), "identifier": pa.array(["a", "b"])})
    ds = NLVR2Dataset(tmp_path, ["nlvr2_train"], transform_keys=["pixelbert"], image_size=64, tokenizer=tok,
                      max_text_len=L)
    _assert_same_items([ds[i] for i in range(len(ds))],
                       _ref_items(tmp_path, ["nlvr2_train"], tok, "pixelbert", 64, "nlvr2", ("image_0", "image_1")))
    write_arrow(tmp_path / "snli_ve_dev.arrow", {
        "image": pa.array([_noise_jpeg(50, 40, 9)], type=pa.binary()), "questions": pa.array([["a", "b", "c"]]),
        "answers": pa.array([["entailment", "neutral", "contradiction"]]), "identifier": pa.array([1])})
    ds = SNLIVEDataset(tmp_path, ["snli_ve_dev"], transform_keys=["clip"], image_size=32, tokenizer=tok,
                       max_text_len=L)
    _assert_same_items([ds[i] for i in range(len(ds))],
                       _ref_items(tmp_path, ["snli_ve_dev"], tok, "clip", 32, "snli_ve"))
    write_arrow(tmp_path / "gqa_val.arrow", {
        "image": pa.array([_noise_jpeg(40, 60, 10)], type=pa.binary()), "questions": pa.array([["q1?", "q2?"]]),
        "answers": pa.array([[["yes"], []]]), "answer_labels": pa.array([[[0], []]], type=pa.list_(pa.list_(pa.int64()))),
        "answer_scores": pa.array([[[1.0], []]], type=pa.list_(pa.list_(pa.float64()))),
        "question_id": pa.array([["0123", "0456"]])})
    ds = GQADataset(tmp_path, ["gqa_val"], transform_keys=["vit"], image_size=32, tokenizer=tok, max_text_len=L)
    _assert_same_items([ds[i] for i in range(len(ds))], _ref_items(tmp_path, ["gqa_val"], tok, "vit", 32, "gqa"))
    root = caption_root(tmp_path)
    ds = CaptionDataset(root, ["f30k_caption_karpathy_val"], transform_keys=["pixelbert"], image_size=64,
                        tokenizer=tok, max_text_len=L)
    _assert_same_items([ds[i] for i in range(len(ds))],
                       _ref_items(root, ["f30k_caption_karpathy_val"], tok, "pixelbert", 64, "irtr", text_col="caption",
                                  dedup=True))


def test_randaug_items_bit_identical_under_a_seed(tmp_path, tok):
    write_arrow(tmp_path / "vqav2_train.arrow", vqa_columns(**VQA_TRAIN))
    ds = VQADataset(tmp_path, ["vqav2_train"], transform_keys=["pixelbert_randaug"], image_size=64, tokenizer=tok,
                    max_text_len=L)
    torch.manual_seed(5)
    new = [ds[i]["image"] for i in range(len(ds))]
    torch.manual_seed(5)
    ref = [it["image"] for it in _ref_items(tmp_path, ["vqav2_train"], tok, "pixelbert_randaug", 64, "vqa")]
    assert all(torch.equal(a, b) for a, b in zip(new, ref))


def test_dataset_keeps_columns_in_arrow_and_pickles_small(tmp_path, tok):
    n_rows = 4000
    rng = np.random.default_rng(0)
    tiny = jpeg(8, 8)
    write_arrow(tmp_path / "vqav2_train.arrow", {
        "image": pa.array([tiny] * n_rows, type=pa.binary()),
        "questions": pa.array([[f"question {r} {q} " + "word " * 5 for q in range(5)] for r in range(n_rows)]),
        "answers": pa.array([[["yes", "no"]] * 5] * n_rows, type=pa.list_(pa.list_(pa.string()))),
        "answer_labels": pa.array([[[int(x) for x in rng.integers(0, 9, 2)]] * 5 for _ in range(n_rows)],
                                  type=pa.list_(pa.list_(pa.int64()))),
        "answer_scores": pa.array([[[1.0, 0.3]] * 5] * n_rows, type=pa.list_(pa.list_(pa.float64()))),
        "image_id": pa.array(range(n_rows), type=pa.int64()),
        "question_id": pa.array([[r * 10 + q for q in range(5)] for r in range(n_rows)], type=pa.list_(pa.int64())),
        "split": pa.array(["train"] * n_rows)})
    import pickle

    ds = vqa_ds(tmp_path, tok)
    assert len(ds) == 5 * n_rows and ds[5 * 1234 + 3]["qid"] == 12343
    assert ds[5 * 1234 + 3]["text"] == "question 1234 3 " + "word " * 5
    assert not any(isinstance(v, list) and len(v) > 100 for v in vars(ds).values())  # no Python columns
    state = len(pickle.dumps(ds)) - len(pickle.dumps(tok))
    assert state < 9 * n_rows + 20_000, f"{state} bytes pickled into each worker for {n_rows} rows"
    assert pickle.loads(pickle.dumps(ds))[5 * 1234 + 3]["qid"] == 12343


def test_collate_emits_real_image_sizes_as_host_ints(vqa_root, tmp_path, tok):
    ds = vqa_ds(vqa_root, tok)
    b = Collator(tok, {"vqa": 5})([ds[i] for i in range(5)])
    # pixelbert at 64: 64x64 for rows 0-1, 96 wide x 32 high for row 2 (see test_vqa_items_and_batch)
    assert b["image_sizes"] == [(64, 64)] * 3 + [(32, 96)] * 2
    assert all(type(v) is int for hw in b["image_sizes"] for v in hw) and isinstance(b["image_sizes"], list)
    for (h, w), m in zip(b["image_sizes"], b["image_mask"]):  # the same rectangle as the mask
        assert int(m.sum()) == h * w and m[:h, :w].all()
    from pytorch_lightning.utilities import move_data_to_device

    moved = move_data_to_device(b, torch.device("cpu"))
    assert moved["image_sizes"] == b["image_sizes"]  # plain host data: the device transfer leaves it alone
    write_arrow(tmp_path / "nlvr2_train.arrow", {
        "image_0": pa.array([jpeg(64, 64), jpeg(96, 32)], type=pa.binary()),
        "image_1": pa.array([jpeg(32, 64), jpeg(64, 64)], type=pa.binary()),
        "questions": pa.array([["a"], ["b"]]), "answers": pa.array([["True"], ["False"]])})
    nl = NLVR2Dataset(tmp_path, ["nlvr2_train"], transform_keys=["pixelbert"], image_size=64, tokenizer=tok,
                      max_text_len=L)
    nb = Collator(tok)([nl[0], nl[1]])
    assert "image_sizes" not in nb and nb["image_0"].shape[-2:] == (96, 96)
    assert nb["image_0_sizes"] == [(64, 64), (32, 96)] and nb["image_1_sizes"] == [(96, 32), (64, 64)]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, num_workers=1, collate_fn=Collator(tok, {"vqa": 5}))
    assert [lb["image_sizes"] for lb in loader] == [[(64, 64)] * 3, [(32, 96)] * 2]  # through a worker too


# ----------------------------------------------------------------------------- label size without the vocab json
def _vilt_rule(tables):
    """The original ViLT VQAv2DataModule.setup rule, restated: (num_class, id2answer)."""
    all_answers = [a for t in tables for row in t["answers"].to_pylist() if row is not None for q in row for a in q]
    all_labels = [x for t in tables for row in t["answer_labels"].to_pylist() if row is not None for q in row
                  for x in q]
    answer2id = {k: v for k, v in zip(all_answers, all_labels)}
    id2answer = {}
    for k, v in sorted(answer2id.items(), key=lambda x: x[1]):
        id2answer[v] = k
    return max(answer2id.values()) + 1, id2answer


def test_vqa_label_size_from_tables_without_vocab_json(vqa_root):
    from vlpeft.data.datamodule import answer_map, vqa_label_size

    assert not (vqa_root / "vqav2_label_vocab.json").exists()
    assert vqa_label_size(vqa_root) == 5  # labels 0..4 in vqav2_train + vqav2_trainable_val + vqav2_rest_val
    names = ["vqav2_train", "vqav2_trainable_val", "vqav2_rest_val"]
    assert (5, dict(answer_map(vqa_root, names))) == _vilt_rule([open_arrow(vqa_root / f"{n}.arrow") for n in names])
    (vqa_root / "vqav2_label_vocab.json").write_text(json.dumps(["a", "b", "c"]))
    assert vqa_label_size(vqa_root) == 3  # the json wins when present


def test_vqa_label_size_follows_the_original_rule_exactly(tmp_path):
    from vlpeft.data.datamodule import answer_map, vqa_label_size

    # "x" first has label 7, later 2 → answer2id["x"] = 2, so the size is 3 (not 8); "p" and "q" both end on 5:
    # id2answer[5] is the one first seen last ("q"); a null row and an empty question are skipped
    write_arrow(tmp_path / "vqav2_train.arrow", vqa_columns(
        sizes=[(8, 8)] * 3, questions=[["a", "b"], ["c"], ["d"]], qids=[[1, 2], [3], [4]],
        answers=[[["x", "p"], []], [["q", "y"]], [["x"]]], labels=[[[7, 5], []], [[5, 1]], [[2]]],
        scores=[[[1.0, 1.0], []], [[1.0, 1.0]], [[1.0]]]))
    write_arrow(tmp_path / "vqav2_trainable_val.arrow", {
        "image": pa.array([jpeg(8, 8)] * 2, type=pa.binary()), "questions": pa.array([["e"], ["f"]]),
        "answers": pa.array([None, [["z"]]], type=pa.list_(pa.list_(pa.string()))),
        "answer_labels": pa.array([None, [[0]]], type=pa.list_(pa.list_(pa.int64()))),
        "answer_scores": pa.array([None, [[1.0]]], type=pa.list_(pa.list_(pa.float64()))),
        "question_id": pa.array([[5], [6]], type=pa.list_(pa.int64()))})
    write_arrow(tmp_path / "vqav2_rest_val.arrow", vqa_columns(
        sizes=[(8, 8)], questions=[["g"]], qids=[[7]], answers=[[["p"]]], labels=[[[5]]], scores=[[[1.0]]]))
    names = ["vqav2_train", "vqav2_trainable_val", "vqav2_rest_val"]
    size, id2answer = _vilt_rule([open_arrow(tmp_path / f"{n}.arrow") for n in names])
    assert (size, id2answer) == (6, {0: "z", 1: "y", 2: "x", 5: "q"})
    assert vqa_label_size(tmp_path) == 6 and dict(answer_map(tmp_path)) == id2answer
    assert vqa_label_size(tmp_path, ["vqav2_train"]) == 6  # x→2, q→5 (p's last label is 5 too), y→1
    assert dict(answer_map(tmp_path, ["vqav2_train"])) == {1: "y", 2: "x", 5: "q"}


def test_vqa_label_size_errors_name_data_root_and_files(tmp_path):
    from vlpeft.data.datamodule import LabelVocabError, vqa_label_size

    with pytest.raises(LabelVocabError, match=r"data_root='[^']*nowhere' does not exist") as e:
        vqa_label_size(tmp_path / "nowhere")
    assert str(e.value).startswith("data_root=")  # a data_root problem, not a label-size one
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LabelVocabError) as e:
        vqa_label_size(empty)
    msg = str(e.value)
    assert f"data_root={str(empty)!r}" in msg and "3 of 3 arrow files are missing" in msg
    for n in ("vqav2_train", "vqav2_trainable_val", "vqav2_rest_val"):
        assert f"MISSING {empty / n}.arrow" in msg
    assert str(empty / "vqav2_label_vocab.json") in msg and "write_arrow" in msg
    write_arrow(empty / "vqav2_train.arrow", {"image": pa.array([jpeg(8, 8)], type=pa.binary()),
                                              "questions": pa.array([["q"]])})
    with pytest.raises(LabelVocabError, match=r"vqav2_train.arrow: missing column\(s\) \['answers', 'answer_labels'\]"):
        vqa_label_size(empty, ["vqav2_train"])
    labels_as_text = vqa_columns(**VQA_TRAIN)
    labels_as_text["answer_labels"] = pa.array([[["1"]], [["2"]], [["3"]]], type=pa.list_(pa.list_(pa.string())))
    write_arrow(empty / "vqav2_train.arrow", labels_as_text)  # used to fail in pc.fill_null, naming no file
    with pytest.raises(LabelVocabError, match=r"vqav2_train.arrow: column 'answer_labels' is list<item: list<item: "
                                              r"string>>, expected list<list<int>>"):
        vqa_label_size(empty, ["vqav2_train"])
    (empty / "vqav2_label_vocab.json").write_text("[]")
    with pytest.raises(LabelVocabError, match="is empty"):
        vqa_label_size(empty)


def test_runner_derives_vqav2_label_size_without_vocab_json(vqa_root, tmp_path):
    from vlpeft.config import ConfigError
    from vlpeft.runner import _finalize_label_sizes

    cfg = lambda root, **kw: {"vqav2_label_size": 0, "loss_names": {"vqa": 1}, "data_root": str(root), **kw}
    assert _finalize_label_sizes(cfg(vqa_root))["vqav2_label_size"] == 5
    # data_splits overrides choose the files: vqav2_rest_val alone holds labels 0..2
    only = {"vqa": {"train": ["vqav2_rest_val"], "val": ["vqav2_rest_val"]}}
    assert _finalize_label_sizes(cfg(vqa_root, data_splits=only))["vqav2_label_size"] == 3
    assert _finalize_label_sizes(cfg(vqa_root, vqav2_label_size=7))["vqav2_label_size"] == 7  # explicit: kept
    with pytest.raises(ConfigError, match=r"data_root='[^']*nowhere' does not exist"):
        _finalize_label_sizes(cfg(tmp_path / "nowhere"))

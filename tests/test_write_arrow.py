"""write_arrow converters on tiny raw fixtures in the real release formats, and the answer normaliser."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pytest

import write_arrow._common as common
import write_arrow.vqa as vqa_mod
from fixtures_raw import (
    COCO_IMAGES,
    F30K_IMAGES,
    GQA_IMAGE_TAGS,
    NLVR2_PAIRS,
    VQA_VOCAB,
    image_tag,
    make_coco,
    make_f30k,
    make_gqa,
    make_nlvr2,
    make_snli_ve,
    make_vqa,
)
from vlpeft.data.normalize import normalize_word, prep_ans, process_punctuation
from write_arrow import (
    WriteArrowError,
    write_coco,
    write_f30k,
    write_gqa,
    write_nlvr2,
    write_snli_ve,
    write_vqa,
)
from write_arrow.__main__ import main as cli_main


def read(path: Path) -> pa.Table:
    """Exactly how the original readers open a file: memory map + IPC file reader."""
    return pa.ipc.open_file(pa.memory_map(str(path), "r")).read_all()


def rows_by(table: pa.Table, key: str) -> dict:
    return {r[key]: r for r in table.to_pylist()}


# --------------------------------------------------------------------------------------- normaliser
@pytest.mark.parametrize("raw, expected", [
    ("Two.", "2"),
    ("dont", "don't"),
    ("the dog", "dog"),
    ("1,000", "1000"),
    ("yes!", "yes"),
    ("Yes", "yes"),
    ("none", "0"),
    ("a red car", "red car"),
    ("t-shirt", "t shirt"),          # "-" not next to a space → replaced by a space
    ("t - shirt", "t shirt"),        # "- " occurs → every "-" deleted, spaces collapse
    ("3.5", "3.5"),                  # a period before a digit stays
    ("mr. smith's", "mr smith's"),
    ("hot dog, fries", "hot dog fries"),
    ("isnt it", "isn't it"),
    ("  Ten   Cats ", "10 cats"),
    ("a", ""),
])
def test_normalize_word_known_cases(raw, expected):
    assert normalize_word(raw) == expected
    assert prep_ans(raw) == expected


def test_period_rule_keeps_the_official_count_quirk():
    # the official code passes re.UNICODE (32) as re.sub's count: only the first 32 periods go
    assert process_punctuation("." * 40) == "." * 8
    assert process_punctuation("a.b.c") == "abc"


def test_normaliser_does_not_mutate_module_state():
    import vlpeft.data.normalize as nz

    before = dict(nz.NUMBER_WORDS), dict(nz.CONTRACTIONS)
    for w in ("zebra", "giraffe", "dont"):
        normalize_word(w)
    assert (dict(nz.NUMBER_WORDS), dict(nz.CONTRACTIONS)) == before


def test_soft_score_equals_official_leave_one_out_accuracy():
    for n in range(11):
        official = (n * min(1, (n - 1) / 3) + (10 - n) * min(1, n / 3)) / 10 if n else 0.0
        assert common.vqa_score(n) == pytest.approx(official)


# ---------------------------------------------------------------------------------------------- VQA
@pytest.fixture(scope="module")
def vqa_raw(tmp_path_factory):
    return make_vqa(tmp_path_factory.mktemp("vqa_raw"))


@pytest.fixture(scope="module")
def vqa_out(vqa_raw, tmp_path_factory):
    dst = tmp_path_factory.mktemp("vqa_arrow")
    written = write_vqa(vqa_raw, dst, seed=0, rest_val_images=3, min_answer_count=2, progress=False)
    return dst, written


def test_vqa_files_vocab_and_row_counts(vqa_out):
    dst, written = vqa_out
    assert {n: w.rows for n, w in written.items()} == {
        "vqav2_train": 2, "vqav2_val": 7, "vqav2_trainable_val": 4, "vqav2_rest_val": 3, "vqav2_test": 3,
        "vqav2_test-dev": 2}
    assert json.loads((dst / "vqav2_label_vocab.json").read_text()) == VQA_VOCAB
    assert sorted(p.name for p in dst.iterdir()) == sorted(
        [f"{n}.arrow" for n in written] + ["vqav2_label_vocab.json"])  # no temp files left behind


def test_vqa_train_rows_hand_computed(vqa_out):
    dst, _ = vqa_out
    rows = rows_by(read(dst / "vqav2_train.arrow"), "image_id")
    assert set(rows) == {1, 2}  # image 3's only answer (zebra) is below the count threshold: dropped
    r1 = rows[1]
    assert image_tag(r1["image"]) == 1
    assert r1["questions"] == ["What number is shown?", "Is it sunny?"]
    assert r1["question_id"] == [101, 102]
    # "Two"×4 + "2"×3 + "two."×2 all normalise to "2": 9 annotators → 1.0; "yes" once → 0.3
    assert r1["answer_labels"] == [[0, 1], [1]]
    assert r1["answer_scores"] == [[1.0, 0.3], [1.0]]
    assert r1["answers"] == [["2", "yes"], ["yes"]]
    assert r1["split"] == "train"
    r2 = rows[2]
    # question 202 ("1,000"/"none") has no vocabulary answer → dropped; "red","red","Red" → 3 → 0.9
    assert r2["question_id"] == [201]
    assert r2["answer_labels"] == [[2, 4]] and r2["answer_scores"] == [[0.9, 1.0]]
    assert r2["answers"] == [["red", "blue"]]


def test_vqa_val_rest_val_split_and_scores(vqa_out):
    dst, _ = vqa_out
    val = read(dst / "vqav2_val.arrow")
    rows = rows_by(val, "image_id")
    assert set(rows) == set(range(10, 17))
    expected = {10: ([[3]], [[1.0]]), 11: ([[3, 1]], [[0.9, 1.0]]), 12: ([[4]], [[1.0]]),
                13: ([[4]], [[0.6]]), 14: ([[1]], [[1.0]]), 15: ([[0]], [[1.0]]), 16: ([[2]], [[1.0]])}
    for iid, (labels, scores) in expected.items():
        assert (rows[iid]["answer_labels"], rows[iid]["answer_scores"]) == (labels, scores), iid
        assert image_tag(rows[iid]["image"]) == iid
    order = val["image_id"].to_pylist()
    trainable = read(dst / "vqav2_trainable_val.arrow")["image_id"].to_pylist()
    rest = read(dst / "vqav2_rest_val.arrow")["image_id"].to_pylist()
    assert trainable == order[:4] and rest == order[4:]  # rest_val = the last rest_val_images rows of val


def test_vqa_test_splits_have_no_answers(vqa_out):
    dst, _ = vqa_out
    test = rows_by(read(dst / "vqav2_test.arrow"), "image_id")
    assert set(test) == {20, 21, 22}
    assert test[20]["questions"] == ["What is this?", "Who is there?"] and test[20]["question_id"] == [2001, 2002]
    assert test[20]["answers"] == [] and test[20]["answer_labels"] == [] and test[20]["answer_scores"] == []
    assert test[20]["split"] == "test" and image_tag(test[20]["image"]) == 20
    dev = rows_by(read(dst / "vqav2_test-dev.arrow"), "image_id")
    assert set(dev) == {20, 21} and dev[21]["split"] == "test-dev"


def test_vqa_arrow_schema_with_pyarrow_alone(vqa_out):
    dst, _ = vqa_out
    t = read(dst / "vqav2_train.arrow")
    expected = {"image": pa.binary(), "questions": pa.list_(pa.string()),
                "answers": pa.list_(pa.list_(pa.string())), "answer_labels": pa.list_(pa.list_(pa.int64())),
                "answer_scores": pa.list_(pa.list_(pa.float64())), "image_id": pa.int64(),
                "question_id": pa.list_(pa.int64()), "split": pa.string()}
    assert t.column_names == list(expected)
    for name, typ in expected.items():
        assert t.schema.field(name).type == typ, name
    # what the readers do: per-row image bytes and the list-valued text column
    assert isinstance(t["image"][0].as_py(), bytes)
    assert all(isinstance(q, list) for q in t["questions"].to_pylist())
    # test + train concatenate (the datamodule concatenates splits)
    both = pa.concat_tables([t, read(dst / "vqav2_test.arrow")])
    assert both.num_rows == 5


def test_vqa_original_answer_matching_flag(vqa_raw, tmp_path):
    written = write_vqa(vqa_raw, tmp_path, rest_val_images=1, min_answer_count=2, original_answer_matching=True,
                        include_test=False, progress=False)
    assert set(written) == {"vqav2_train", "vqav2_val", "vqav2_trainable_val", "vqav2_rest_val"}
    train = rows_by(read(tmp_path / "vqav2_train.arrow"), "image_id")
    # raw strings: only the 3 literal "2" match → 0.9; "red" twice → 0.6 ("Red" is not a vocabulary entry)
    assert train[1]["answer_scores"] == [[0.9, 0.3], [1.0]]
    assert train[2]["answer_scores"] == [[0.6, 1.0]]
    val = rows_by(read(tmp_path / "vqav2_val.arrow"), "image_id")
    # "Yes!", "two", "Red" never match raw: those images lose their only question
    assert set(val) == {10, 11, 12, 13}
    assert val[13]["answer_scores"] == [[0.3]]


def test_vqa_rows_reproducible_under_seed(vqa_raw, tmp_path):
    kw = dict(rest_val_images=3, min_answer_count=2, progress=False)
    write_vqa(vqa_raw, tmp_path / "a", seed=5, **kw)
    write_vqa(vqa_raw, tmp_path / "b", seed=5, **kw)
    write_vqa(vqa_raw, tmp_path / "c", seed=6, **kw)
    for name in ("vqav2_train", "vqav2_val", "vqav2_rest_val", "vqav2_test"):
        assert (tmp_path / "a" / f"{name}.arrow").read_bytes() == (tmp_path / "b" / f"{name}.arrow").read_bytes()
    order = [read(tmp_path / d / "vqav2_val.arrow")["image_id"].to_pylist() for d in "ac"]
    assert sorted(order[0]) == sorted(order[1]) and order[0] != order[1]


def test_vqa_default_threshold_on_tiny_data_is_a_clear_error(vqa_raw, tmp_path):
    with pytest.raises(WriteArrowError, match="min_answer_count"):
        write_vqa(vqa_raw, tmp_path, rest_val_images=3, progress=False)


def test_vqa_rest_val_larger_than_val_is_an_error(vqa_raw, tmp_path):
    with pytest.raises(WriteArrowError, match="rest_val_images=7"):
        write_vqa(vqa_raw, tmp_path, rest_val_images=7, min_answer_count=2, progress=False)


def test_vqa_missing_questions_file_is_named(vqa_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in vqa_raw.iterdir():
        if p.name != "v2_OpenEnded_mscoco_val2014_questions.json":
            (raw / p.name).symlink_to(p)
    with pytest.raises(WriteArrowError, match="v2_OpenEnded_mscoco_val2014_questions.json: file not found"):
        write_vqa(raw, tmp_path / "out", min_answer_count=2, progress=False)
    assert not (tmp_path / "out").exists()  # validation happens before anything is written


def test_vqa_unexpected_json_is_named(vqa_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in vqa_raw.iterdir():
        (raw / p.name).symlink_to(p)
    bad = raw / "v2_mscoco_train2014_annotations.json"
    bad.unlink()
    bad.write_text(json.dumps({"annotations": [{"question_id": 1, "image_id": 1}]}))
    with pytest.raises(WriteArrowError) as e:
        write_vqa(raw, tmp_path / "out", min_answer_count=2, progress=False)
    assert "v2_mscoco_train2014_annotations.json" in str(e.value)
    assert "annotations[0]" in str(e.value) and "multiple_choice_answer" in str(e.value)
    (raw / "broken.json").write_text("{not json")
    with pytest.raises(WriteArrowError, match="broken.json: not valid JSON"):
        common.load_json(raw / "broken.json", "something")


def test_vqa_missing_image_is_named(vqa_raw, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for p in vqa_raw.iterdir():
        if p.name != "val2014":
            (raw / p.name).symlink_to(p)
    (raw / "val2014").mkdir()
    for p in (vqa_raw / "val2014").iterdir():
        if "000000000012" not in p.name:
            (raw / "val2014" / p.name).symlink_to(p)
    with pytest.raises(WriteArrowError, match="COCO_val2014_000000000012.jpg"):
        write_vqa(raw, tmp_path / "out", rest_val_images=3, min_answer_count=2, progress=False)


def test_interrupted_write_leaves_no_file(vqa_raw, tmp_path, monkeypatch):
    kw = dict(rest_val_images=3, min_answer_count=2, progress=False)
    write_vqa(vqa_raw, tmp_path, **kw)
    good = (tmp_path / "vqav2_train.arrow").read_bytes()
    (tmp_path / "vqav2_train.arrow").unlink()
    (tmp_path / "vqav2_val.arrow").unlink()
    val_before = {p.name: p.read_bytes() for p in tmp_path.glob("*.arrow")}

    real_read = vqa_mod.read_bytes
    calls = {"n": 0}

    def flaky(path):
        calls["n"] += 1
        if calls["n"] == 2:  # the second image of the first file: one record batch is already on disk
            raise KeyboardInterrupt("simulated interruption")
        return real_read(path)

    monkeypatch.setattr(vqa_mod, "read_bytes", flaky)
    monkeypatch.setattr(common, "BATCH_ROWS", 1)
    with pytest.raises(KeyboardInterrupt):
        write_vqa(vqa_raw, tmp_path, **kw)
    assert not (tmp_path / "vqav2_train.arrow").exists()
    assert not list(tmp_path.glob(".*tmp"))  # the temporary file is removed too
    assert {p.name: p.read_bytes() for p in tmp_path.glob("*.arrow")} == val_before  # others untouched

    monkeypatch.setattr(vqa_mod, "read_bytes", real_read)
    write_vqa(vqa_raw, tmp_path, **kw)  # a rerun completes (with 1-row batches: same rows, other layout)
    assert read(tmp_path / "vqav2_train.arrow").equals(pa.ipc.open_file(pa.BufferReader(good)).read_all())


def test_cli_vqa_and_error_exit(vqa_raw, tmp_path, capsys):
    rc = cli_main(["vqa", "--src", str(vqa_raw), "--dst", str(tmp_path / "a"), "--seed", "3",
                   "--rest-val-images", "2", "--min-answer-count", "2", "--no-progress"])
    assert rc == 0
    assert read(tmp_path / "a" / "vqav2_rest_val.arrow").num_rows == 2
    assert "vqav2_train.arrow  (2 rows)" in capsys.readouterr().out
    rc = cli_main(["vqa", "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path / "b"), "--no-progress"])
    assert rc == 2
    assert "v2_OpenEnded_mscoco_train2014_questions.json: file not found" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- GQA
def test_gqa_rows_and_labels(tmp_path):
    raw = make_gqa(tmp_path / "raw")
    written = write_gqa(raw, tmp_path / "out", dicts=raw / "dicts.json", progress=False)
    assert {n: w.rows for n, w in written.items()} == {"gqa_train": 2, "gqa_test-dev": 1, "gqa_val": 1}
    t = read(tmp_path / "out" / "gqa_train.arrow")
    assert t.schema.field("image_id").type == pa.string()
    assert t.schema.field("question_id").type == pa.list_(pa.string())
    rows = rows_by(t, "image_id")
    assert set(rows) == {"2354786", "100"}  # n161313's only train answer ("purple") is not in dicts.json
    r = rows["2354786"]
    assert r["question_id"] == ["q1", "q2"] and r["questions"] == ["Is it?", "Which color?"]
    assert r["answer_labels"] == [[0], [3]] and r["answers"] == [["yes"], ["red"]]  # "the red" → "red"
    assert r["answer_scores"] == [[1.0], [1.0]] and r["split"] == "train"
    assert image_tag(r["image"]) == GQA_IMAGE_TAGS["2354786"]
    assert rows["100"]["answers"] == [["left"]]  # "left." → "left"
    dev = read(tmp_path / "out" / "gqa_test-dev.arrow").to_pylist()
    assert dev[0]["image_id"] == "n161313" and dev[0]["split"] == "test-dev" and dev[0]["answer_labels"] == [[1]]
    val = read(tmp_path / "out" / "gqa_val.arrow").to_pylist()
    assert val[0]["answers"] == [["no"]] and val[0]["split"] == "val"  # "No!" → "no"


def test_gqa_bad_dicts_and_missing_questions(tmp_path):
    raw = make_gqa(tmp_path / "raw")
    (tmp_path / "d.json").write_text(json.dumps({"yes": 0}))
    with pytest.raises(WriteArrowError, match=r"d\.json: unexpected content.*ans_to_ix, ix_to_ans"):
        write_gqa(raw, tmp_path / "out", dicts=tmp_path / "d.json", progress=False)
    (raw / "val_balanced_questions.json").unlink()
    with pytest.raises(WriteArrowError, match="val_balanced_questions.json: file not found"):
        write_gqa(raw, tmp_path / "out", progress=False)


# ------------------------------------------------------------------------------------------ SNLI-VE
def test_snli_ve_rows(tmp_path):
    raw = make_snli_ve(tmp_path / "raw")
    written = write_snli_ve(raw, tmp_path / "out", progress=False)
    assert {n: w.rows for n, w in written.items()} == {"snli_ve_train": 2, "snli_ve_dev": 1, "snli_ve_test": 1}
    t = read(tmp_path / "out" / "snli_ve_train.arrow")
    assert t.column_names == ["image", "questions", "answers", "identifier"]
    assert t.schema.field("identifier").type == pa.int64()
    rows = t.to_pylist()
    assert [r["identifier"] for r in rows] == [111, 222]  # file order of first appearance
    assert rows[0]["questions"] == ["A dog runs.", "A cat sleeps."]
    assert rows[0]["answers"] == ["entailment", "contradiction"]
    assert rows[1]["questions"] == ["Two cats."]  # the row without a hypothesis is dropped
    assert [image_tag(r["image"]) for r in rows] == [11, 22]
    test = read(tmp_path / "out" / "snli_ve_test.arrow")
    assert test.schema.field("identifier").type == pa.string() and test["identifier"][0].as_py() == "abc"


def test_snli_ve_bad_label_names_line(tmp_path):
    raw = make_snli_ve(tmp_path / "raw")
    p = raw / "snli_ve_dev.tsv"
    p.write_text(p.read_text().replace("entailment", "maybe"))
    with pytest.raises(WriteArrowError, match=r"snli_ve_dev.tsv, line 1: label 'maybe'"):
        write_snli_ve(raw, tmp_path / "out", progress=False)


# -------------------------------------------------------------------------------------------- NLVR2
def test_nlvr2_all_seven_files(tmp_path):
    raw = make_nlvr2(tmp_path / "raw")
    written = write_nlvr2(raw, tmp_path / "out", progress=False)
    assert {n: w.rows for n, w in written.items()} == {
        "nlvr2_train": 2, "nlvr2_dev": 2, "nlvr2_test1": 1, "nlvr2_balanced_dev": 1, "nlvr2_balanced_test1": 1,
        "nlvr2_unbalanced_dev": 1, "nlvr2_unbalanced_test1": 1}
    t = read(tmp_path / "out" / "nlvr2_train.arrow")
    assert t.column_names == ["image_0", "image_1", "questions", "answers", "identifier"]
    assert t.schema.field("image_0").type == pa.binary()
    rows = rows_by(t, "identifier")
    r = rows["train-10108-0"]  # two sentences about one image pair share a row
    assert r["questions"] == ["The left image has two dogs.", "There are no dogs."]
    assert r["answers"] == ["True", "False"]
    for iden, row in {**rows, **rows_by(read(tmp_path / "out" / "nlvr2_unbalanced_dev.arrow"), "identifier")}.items():
        assert (image_tag(row["image_0"]), image_tag(row["image_1"])) == NLVR2_PAIRS[iden]


def test_nlvr2_missing_image_is_named(tmp_path):
    raw = make_nlvr2(tmp_path / "raw")
    (raw / "dev" / "dev-2-3-img1.png").unlink()
    with pytest.raises(WriteArrowError, match="dev-2-3-img1.png"):
        write_nlvr2(raw, tmp_path / "out", progress=False)


# ----------------------------------------------------------------------------------------- Karpathy
def test_f30k_karpathy(tmp_path):
    raw = make_f30k(tmp_path / "raw")
    written = write_f30k(raw, tmp_path / "out", progress=False)
    assert {n: w.rows for n, w in written.items()} == {
        "f30k_caption_karpathy_train": 2, "f30k_caption_karpathy_val": 1, "f30k_caption_karpathy_test": 1}
    t = read(tmp_path / "out" / "f30k_caption_karpathy_train.arrow")
    assert t.column_names == ["image", "caption", "image_id", "split"]
    assert t.schema.field("caption").type == pa.list_(pa.string())
    rows = rows_by(t, "image_id")
    for f, split, tag, caps in F30K_IMAGES:
        if split == "train":
            assert rows[f]["caption"] == caps and rows[f]["split"] == "train" and image_tag(rows[f]["image"]) == tag


def test_coco_karpathy(tmp_path):
    raw = make_coco(tmp_path / "raw")
    written = write_coco(raw, tmp_path / "out", progress=False)
    assert {n: w.rows for n, w in written.items()} == {
        f"coco_caption_karpathy_{s}": 1 for s in ("train", "val", "restval", "test")}
    for _, f, split, tag, caps in COCO_IMAGES:
        (row,) = read(tmp_path / "out" / f"coco_caption_karpathy_{split}.arrow").to_pylist()
        assert (row["image_id"], row["split"], row["caption"], image_tag(row["image"])) == (f, split, caps, tag)


def test_karpathy_missing_json_and_folder(tmp_path):
    with pytest.raises(WriteArrowError, match="dataset_flickr30k.json: file not found"):
        write_f30k(tmp_path, tmp_path / "out", progress=False)
    raw = make_coco(tmp_path / "coco")
    for p in (raw / "val2014").iterdir():
        p.unlink()
    (raw / "val2014").rmdir()
    with pytest.raises(WriteArrowError, match="val2014: folder not found"):
        write_coco(raw, tmp_path / "out", progress=False)

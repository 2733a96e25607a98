"""LaVIN-DAS's four benchmarks (issue 19 item 5): prompts and answer texts as LaVIN-DAS builds them, answers read
back as its evaluation scripts read them, ScienceQA's per-category table, the converters from the public releases
and the synthetic stand-ins. Expected strings are written out by hand from the originals' formats."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from vlpeft.data.generative import GEN_DATASETS, GenerativeCollator
from vlpeft.data.splits import SPLITS
from vlpeft.data.tokenizer import load_tokenizer
from vlpeft.data.transforms import keys_to_transforms
from vlpeft.tasks import TASKS
from vlpeft.tasks import boolq, csqa, gsm8k, scienceqa
from vlpeft.tasks._lavin import FAILED, answer_letter
from write_arrow import (WriteArrowError, write_boolq_synthetic, write_csqa, write_csqa_synthetic, write_gsm8k,
                         write_gsm8k_synthetic, write_scienceqa_synthetic)
from write_arrow.__main__ import main


# --- answer extraction ------------------------------------------------------------------------------------------------
def test_option_letter_as_eval_mmlu_reads_it():
    assert answer_letter("Answer: The answer is B. False.") == "B"
    assert answer_letter("the answer is C, surely. The answer is A.") == "C"  # the first match counts
    assert answer_letter("Answer: D") == "D"  # the second pattern, when the first finds nothing
    assert answer_letter("The answer is E") == FAILED  # "." needs one more character after the letter
    assert answer_letter("no idea") == FAILED


def test_gsm8k_number_as_eval_mmlu_reads_it():
    assert gsm8k.extract_number("Answer: The answer is 1,234.\n\nBecause: ...") == "1234"
    assert gsm8k.extract_number("The answer is $18.50 dollars.") == "18.50"
    assert gsm8k.extract_number("the answer is 7 apples. Later the answer is 9.") == "7"
    assert gsm8k.extract_number("The answer is -3.") == "3"  # [^\d]* eats the sign, as the original
    assert gsm8k.extract_number("I think 12") == FAILED
    assert gsm8k.gold_number("She pays 2*600=<<2*600=1200>>1200.\n#### 1,200") == "1200"


def test_scienceqa_choice_as_eval_scienceqa_reads_it():
    assert scienceqa.extract_choice("The answer is C. BECAUSE: ...", 4, "7") == 2
    assert scienceqa.extract_choice("I pick B. maybe", 3, "7") == 1  # the "[A-E]." fallback
    # a letter past the problem's choices, or none: a random choice, the same one on every call for a problem
    picks = {scienceqa.extract_choice("The answer is E. x", 2, "7") for _ in range(3)}
    assert len(picks) == 1 and picks <= {0, 1}
    assert scienceqa.extract_choice("nothing", 3, "8") in {0, 1, 2}


# --- prompts and answer texts -------------------------------------------------------------------------------------
def test_prompts_and_targets_match_lavin_das():
    assert boolq.lavin_prompt("P.", "is it") == ("The following are yes/no questions (with answers) based on the "
                                                 "given passage.\n\nPassage: P.\n\nQuestion: is it\n\n"
                                                 "Options: A. True\nB. False\n\n")
    assert boolq.lavin_prompt("P.", "is it", test=True).startswith("The following are yes/no questions (with "
                                                                  "answers) based on the given passage\n\n")
    assert (boolq.lavin_target(True), boolq.lavin_target(False)) == ("Answer: The answer is A. True.",
                                                                     "Answer: The answer is B. False.")
    assert csqa.lavin_prompt("river", "Where?", ["a", "b"], "AB") == (
        "The following are multiple choice questions (with answers) about river.\n\nQuestion: Where?\n"
        "Options: A. a\nB. b\n")
    assert csqa.lavin_target("B", ["a", "b"], "AB") == "Answer: The answer is B. b."
    ans = "She has 2+3=<<2+3=5>>5.\n#### 5"
    assert gsm8k.lavin_target(ans) == "Answer: The answer is 5.\n\nBecause: She has 2+3=5.\n"
    assert gsm8k.lavin_prompt("Q?") .endswith("Question: Q?\n\n") and gsm8k.lavin_prompt("Q?", test=True).endswith(
        "Question: Q?\n")
    assert scienceqa.lavin_prompt("Question: a  b\nContext: N/A\nOptions: (A) x (B) y") == \
        "Question: a b\nContext: N/A\nOptions: (A) x (B) y\nResponse:"
    assert scienceqa.lavin_target(1, "Line one.\nTwo.", "So B.") == \
        "The answer is B. BECAUSE: Line one.\\nTwo. So B."
    assert scienceqa.lavin_target(0, "", "") == "The answer is A. BECAUSE:"  # the original's leftover, kept


# --- the per-category table ---------------------------------------------------------------------------------------
def _meta(subject, grade, image, hint):
    return {"subject": subject, "grade": grade, "has_image": image, "has_hint": hint}


ROWS = [  # (pred, label, meta)
    (0, 0, _meta("natural science", "grade3", True, False)),    # NAT IMG G1-6, right
    (1, 0, _meta("natural science", "grade8", True, True)),     # NAT TXT IMG G7-12, wrong
    (2, 2, _meta("social science", "grade8", False, True)),     # SOC TXT G7-12, right
    (1, 1, _meta("language science", "grade1", False, False)),  # LAN NO G1-6, right
    (0, 1, _meta("language science", "grade12", False, False)),  # LAN NO G7-12, wrong
    (3, 3, _meta("social science", "grade6", True, False)),     # SOC IMG G1-6, right
]


def test_scienceqa_table_hand_computed():
    rows = [{"pred": p, "label": y, "meta": m} for p, y, m in ROWS]
    want = {"NAT": "50.00", "SOC": "100.00", "LAN": "50.00", "TXT": "50.00", "IMG": "66.67", "NO": "50.00",
            "G1-6": "100.00", "G7-12": "33.33", "Avg": "66.67"}
    assert scienceqa.scienceqa_table(rows) == want
    # the metric (fractions, sum-reduced states) gives the same numbers, fed in two batches
    metric = scienceqa.ScienceQATable()
    for part in (ROWS[:4], ROWS[4:]):
        metric.update([p == y for p, y, _ in part], [m for _, _, m in part])
    got = metric.compute()
    assert list(got) == list(scienceqa.CATEGORIES)
    assert {h: f"{100 * got[k]:.2f}" for h, k in zip(scienceqa.TABLE_HEADER, scienceqa.CATEGORIES)} == want


def test_scienceqa_generate_mode_scores_and_tables():
    task = TASKS.build("scienceqa").configured(mode="generate")
    metas = [dict(_meta("natural science", "grade2", True, False), qid="1", num_choices=3),
             dict(_meta("social science", "grade9", False, True), qid="2", num_choices=2)]
    batch = {"scienceqa_gold": ["2", "0"], "scienceqa_meta": metas, "qid": ["1", "2"]}
    out = task.score_generated(["The answer is C. BECAUSE: x", "The answer is B. y"], batch)
    assert out["scienceqa_pred"] == ["2", "1"] and out["scienceqa_gen_scores"].tolist() == [1.0, 0.0]
    metrics = task.make_metrics()
    task.update_metrics(metrics, {**out, "scienceqa_generated": ["a", "b"]}, batch)
    table = metrics["scienceqa"].compute()
    assert (table["nat"], table["soc"], table["avg"], float(metrics["scienceqa_accuracy"].compute())) == \
        (1.0, 0.0, 0.5, 0.5)
    rows = task.predictions({**out, "scienceqa_generated": ["a", "b"]}, batch)
    assert [(r["qid"], r["pred"], r["label"]) for r in rows] == [("1", 2, 2), ("2", 1, 0)]


@pytest.mark.parametrize("name,generated,gold,want", [
    ("boolq", ["Answer: The answer is A. True.", "Answer: The answer is A. True."], ["A", "B"], [1.0, 0.0]),
    ("csqa", ["Answer: The answer is D. quack.", "garbage"], ["D", "A"], [1.0, 0.0]),
    ("gsm8k", ["Answer: The answer is 1,200.\n\nBecause: x", "The answer is 5"], ["1200", "6"], [1.0, 0.0]),
])
def test_language_tasks_score_generated_answers(name, generated, gold, want):
    task = TASKS.build(name).configured(mode="generate")
    out = task.score_generated(generated, {f"{name}_gold": gold, "qid": ["a", "b"]})
    assert out[f"{name}_gen_scores"].tolist() == want
    rows = task.predictions({**out, f"{name}_generated": generated}, {f"{name}_gold": gold, "qid": ["a", "b"]})
    assert [r["label"] for r in rows] == gold and rows[0]["answer"] == generated[0]


# --- converters and the synthetic sets ----------------------------------------------------------------------------
def test_csqa_and_gsm8k_converters_from_the_release_formats(tmp_path):
    src = tmp_path / "csqa"
    src.mkdir()
    rec = {"id": "q1", "answerKey": "B", "question": {"question_concept": "river", "stem": "Where is water?",
                                                     "choices": [{"label": "A", "text": "desert"},
                                                                 {"label": "B", "text": "river"}]}}
    for name in ("train_rand_split", "dev_rand_split"):
        (src / f"{name}.jsonl").write_text(json.dumps(rec) + "\n")
    written = write_csqa(src, tmp_path / "out", progress=False)
    assert {k: w.rows for k, w in written.items()} == {"csqa_train": 1, "csqa_val": 1}
    ds = GEN_DATASETS["csqa"](tmp_path / "out", SPLITS["csqa"]["test"], transform_keys=["clip"], image_size=32,
                              tokenizer=None, split="test")
    item = ds[0]
    assert item["text"] == ("The following are multiple choice questions (with answers) about river.\n\n"
                            "Question: Where is water?\nOptions: A. desert\nB. river\n")
    assert (item["target_text"], item["csqa_gold"], item["qid"]) == ("Answer: The answer is B. river.", "B", "q1")
    (src / "dev_rand_split.jsonl").write_text(json.dumps(dict(rec, answerKey="C")) + "\n")
    with pytest.raises(WriteArrowError, match=r"record 0: answerKey 'C' is not one of the option labels"):
        write_csqa(src, tmp_path / "out2", progress=False)

    src = tmp_path / "gsm8k"
    src.mkdir()
    good = {"question": "Tom has 2 and gets 3. How many?", "answer": "2+3=<<2+3=5>>5\n#### 5"}
    (src / "train.jsonl").write_text(json.dumps(good) + "\n" + json.dumps(good) + "\n")
    (src / "test.jsonl").write_text(json.dumps(good) + "\n")
    written = write_gsm8k(src, tmp_path / "out", progress=False)
    assert {k: w.rows for k, w in written.items()} == {"gsm8k_train": 2, "gsm8k_test": 1}
    item = GEN_DATASETS["gsm8k"](tmp_path / "out", SPLITS["gsm8k"]["train"], transform_keys=["clip"], image_size=32,
                                 tokenizer=None, split="train")[1]
    assert (item["target_text"], item["gsm8k_gold"], item["qid"]) == (
        "Answer: The answer is 5.\n\nBecause: 2+3=5\n", "5", "train-1")
    (src / "test.jsonl").write_text(json.dumps({"question": "q", "answer": "no number"}) + "\n")
    with pytest.raises(WriteArrowError, match=r"test.jsonl, record 0: the answer has no '#### <number>' line"):
        write_gsm8k(src, tmp_path / "out3", progress=False)


def test_synthetic_sets_read_as_lavin_das_reads_them(tmp_path):
    write_boolq_synthetic(tmp_path, n_train=8, n_val=4)
    write_scienceqa_synthetic(tmp_path, n_train=8, n_small=4, image_px=32)
    write_csqa_synthetic(tmp_path, n_train=8, n_val=4)
    write_gsm8k_synthetic(tmp_path, n_train=8, n_test=4)
    for name in ("boolq", "scienceqa", "csqa", "gsm8k"):
        ds = GEN_DATASETS[name](tmp_path, SPLITS[name]["train"], transform_keys=["clip"], image_size=32,
                                tokenizer=None, split="train")
        task = TASKS.build(name).configured(mode="generate")
        for i in range(len(ds)):
            item = ds[i]
            # the answer text, read back by the task's own scorer, gives the gold answer: learnable and scorable
            batch = {f"{name}_gold": [item[f"{name}_gold"]], "qid": [item["qid"]],
                     "scienceqa_meta": [item.get("scienceqa_meta")]}
            assert task.score_generated([item["target_text"]], batch)[f"{name}_gen_scores"].tolist() == [1.0]
    meta = GEN_DATASETS["scienceqa"](tmp_path, ["scienceqa_test"], transform_keys=["clip"], image_size=32,
                                     tokenizer=None, split="test")
    metas = [meta[i]["scienceqa_meta"] for i in range(len(meta))]
    assert {m["subject"] for m in metas} <= {"natural science", "social science"}
    assert all(m["has_image"] != m["has_hint"] for m in metas)  # image problems or text-context ones


def test_cli_writes_csqa_and_gsm8k(tmp_path):
    assert main(["csqa_synthetic", "--dst", str(tmp_path), "--images", "8", "--no-progress"]) == 0
    assert main(["gsm8k_synthetic", "--dst", str(tmp_path), "--images", "8", "--no-progress"]) == 0
    assert sorted(p.name for p in tmp_path.glob("*.arrow")) == ["csqa_train.arrow", "csqa_val.arrow",
                                                                 "gsm8k_test.arrow", "gsm8k_train.arrow"]
    assert main(["gsm8k", "--dst", str(tmp_path)]) == 2  # the real converter needs --src
    assert main(["csqa", "--src", str(tmp_path / "nowhere"), "--dst", str(tmp_path)]) == 2


# --- LaVIN's tokenisation ---------------------------------------------------------------------------------------------
def test_collate_tokenises_prompt_and_answer_as_lavin_does():
    """BOS + tokens(prompt + answer) + EOS, cut after the prompt's own tokens, both truncated together to
    max_text_len (LaVIN's ``tokenize``); at test time (no answer) the prompt alone after BOS."""
    tok = load_tokenizer("bert-base-uncased")  # the tiny test LMs' vocabulary: BOS = [CLS] 101, EOS = [SEP] 102
    collate = GenerativeCollator(tok, max_text_len=64)
    items = [{"task": "csqa", "text": "Question: where is water?\n", "target_text": "Answer: The answer is B. river.",
              "csqa_gold": "B", "qid": "1"},
             {"task": "csqa", "text": "Question: why?\n", "target_text": "Answer: The answer is A. x.",
              "csqa_gold": "A", "qid": "2"}]
    batch = collate(items)
    for b, it in enumerate(items):
        text = batch["text_ids"][b][batch["text_masks"][b].bool()].tolist()
        target = [t for t in batch["target_ids"][b].tolist() if t != -100]
        assert text == [101] + tok(it["text"], add_special_tokens=False)["input_ids"]
        assert text + target == [101] + tok(it["text"] + it["target_text"], add_special_tokens=False)["input_ids"] \
            + [102]
    assert batch["csqa_gold"] == ["B", "A"] and batch["qid"] == ["1", "2"]
    prompt = [101] + tok(items[0]["text"], add_special_tokens=False)["input_ids"]
    short = GenerativeCollator(tok, max_text_len=len(prompt) + 1)(items[:1])  # the prompt and 1 answer token
    assert short["text_ids"][0].tolist() == prompt
    assert short["target_ids"].tolist() == [[tok.convert_tokens_to_ids("answer")]]
    test = collate([{k: v for k, v in items[0].items() if k != "target_text"}])
    assert "target_ids" not in test and test["text_ids"][0].tolist() == prompt


def test_lavin_transform_squashes_without_cropping():
    """LaVIN resizes to 224 × 224 (bicubic) and normalises with ImageNet's mean / std: a wide image keeps both ends
    (the ``imagenet`` key would crop them)."""
    img = Image.new("RGB", (64, 16), (255, 0, 0))
    img.paste((0, 0, 255), (48, 0, 64, 16))  # the right quarter blue
    x = keys_to_transforms(["lavin"], 32)[0](img)
    assert x.shape == (3, 32, 32)
    red = torch.tensor([(1 - 0.485) / 0.229, (0 - 0.456) / 0.224, (0 - 0.406) / 0.225])
    blue = torch.tensor([(0 - 0.485) / 0.229, (0 - 0.456) / 0.224, (1 - 0.406) / 0.225])
    assert torch.allclose(x[:, 16, 0], red, atol=1e-4) and torch.allclose(x[:, 16, 31], blue, atol=1e-4)
    assert not torch.allclose(keys_to_transforms(["imagenet"], 32)[0](img)[:, 16, 31], blue, atol=1e-2)

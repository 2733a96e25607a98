"""Generative tasks (vqa / gqa / nlvr2 answered by generation, caption): task choice, scoring against
hand-computed values, a real generative fixture that learns planted answers, caption metrics against
pycocoevalcap's own scorers, and the test dumps."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tests.helpers import fixture_vl_bart
from vlpeft.data.generative import GenerativeCollator
from vlpeft.tasks import metrics as tm
from vlpeft.tasks._base import build_tasks, compute
from vlpeft.tasks.caption_eval import caption_scores, java_available, tokenize_captions
from vlpeft.tasks.dumps import SubmissionError, write_caption_results, write_test_dumps
from vlpeft.tasks import TASKS, TaskSettings, settings_from_config
from vlpeft.tasks.generative import nlvr2_predictions, soft_scores
from vlpeft.tasks.heads import build_heads

GEN = frozenset({"generate"})

# ------------------------------------------------------------------------------------------ caption fixture
REFS = {1: ["A man riding a horse on the beach.", "A person rides a brown horse along the shore!",
            "Man on horseback (near water)."],
        2: ["Two dogs don't play with a red ball.", "The dog's ball is red, and two dogs play.",
            "Dogs playing in a t-shirt, 3.5 times."],
        3: ["A plate of food with broccoli and rice.", "Rice, broccoli -- and chicken on a plate.",
            'A "healthy" meal on a white plate...']}
PREDS = {1: "a man riding a horse on a beach", 2: "two dogs playing with a ball", 3: "a plate of rice and broccoli"}
# what Stanford's PTBTokenizer (pycocoevalcap, -lowerCase) + the package's punctuation filter give: note the
# "-lrb-" / "-rrb-" tokens it keeps (its filter spells them in upper case) and the split clitics
PTB_TOKENS = {1: ["a man riding a horse on the beach", "a person rides a brown horse along the shore",
                  "man on horseback -lrb- near water -rrb-"],
              2: ["two dogs do n't play with a red ball", "the dog 's ball is red and two dogs play",
                  "dogs playing in a t-shirt 3.5 times"],
              3: ["a plate of food with broccoli and rice", "rice broccoli and chicken on a plate",
                  "a healthy meal on a white plate"]}
# pycocoevalcap 1.2 on this fixture (Java 17): the numbers our wrapper must reproduce
EXPECTED = {"bleu4": 0.4370507373684653, "cider": 2.1618254145399765, "rouge_l": 0.6918458470608635,
            "meteor": 0.3681525238002208}


def package_scores(refs, preds):
    """The package's scorers called directly, as coco-caption's COCOEvalCap does."""
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.rouge.rouge import Rouge
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in refs.items()})
    res = tok.tokenize({k: [{"caption": v}] for k, v in preds.items()})
    meteor = Meteor()
    out = {"bleu4": Bleu(4).compute_score(gts, res)[0][3], "cider": Cider().compute_score(gts, res)[0],
           "rouge_l": Rouge().compute_score(gts, res)[0], "meteor": meteor.compute_score(gts, res)[0]}
    meteor.meteor_p.kill()
    return out


def test_python_tokenizer_reproduces_ptb_rules():
    assert tokenize_captions(REFS, "python") == PTB_TOKENS
    if java_available():
        assert tokenize_captions(REFS, "ptb") == PTB_TOKENS


def test_caption_scores_equal_package_and_stated_values():
    ours = caption_scores(REFS, PREDS)
    if java_available():
        assert set(ours) == {"bleu4", "cider", "rouge_l", "meteor"}
        ref = package_scores(REFS, PREDS)
        for k in ref:
            assert ours[k] == pytest.approx(ref[k], abs=1e-9), k
    else:  # METEOR needs Java: absent, never a made-up number
        assert set(ours) == {"bleu4", "cider", "rouge_l"}
    for k, v in ours.items():
        assert v == pytest.approx(EXPECTED[k], abs=1e-6), k
    # the Python tokenizer gives the same numbers (BLEU/CIDEr/ROUGE only depend on the tokens)
    py = caption_scores(REFS, PREDS, tokenizer="python", meteor=False)
    for k in ("bleu4", "cider", "rouge_l"):
        assert py[k] == pytest.approx(EXPECTED[k], abs=1e-9), k


def test_caption_scores_bad_input():
    with pytest.raises(ValueError, match="different images"):
        caption_scores(REFS, {1: "a man"}, meteor=False)
    with pytest.raises(ValueError, match="no reference caption"):
        caption_scores({1: []}, {1: "a man"}, meteor=False)
    with pytest.raises(ValueError, match="tokenizer="):
        tokenize_captions(REFS, "spacy")


def _gen(name: str):
    """The registered task in its generate mode (default settings)."""
    return TASKS.build(name).configured(mode="generate")


def test_caption_metric_through_task_metrics_and_the_metric():
    task = _gen("caption")
    metrics = tm.TaskMetrics([task])
    ids = list(REFS)
    # two eval batches (one sample per image, references, no target); the second repeats image 3 (sampler padding)
    metrics.update({"caption_generated": [PREDS[1], PREDS[2]]},
                   {"task": "caption", "image_id": ids[:2], "references": [REFS[1], REFS[2]]})
    metrics.update({"caption_generated": [PREDS[3], PREDS[3]]},
                   {"task": "caption", "image_id": [3, 3], "references": [REFS[3], REFS[3]]})
    values = metrics.compute_and_reset()
    assert values["caption_cider"] == pytest.approx(EXPECTED["cider"], abs=1e-6)
    assert values["caption_bleu4"] == pytest.approx(EXPECTED["bleu4"], abs=1e-6)
    assert "caption_loss" not in values  # no target in evaluation: no loss, not a zero
    assert tm.the_metric(values) == pytest.approx(EXPECTED["cider"], abs=1e-6)
    assert metrics.compute_and_reset() == {}  # reset


# ------------------------------------------------------------------------------------------ task choice
def test_build_tasks_picks_generative_variants():
    tasks = build_tasks({"vqa": 1, "gqa": 1, "nlvr2": 1, "caption": 1, "irtr": 0}, GEN, "vl_bart",
                        settings_from_config({"num_beams": 5, "gen_max_length": 7}))
    assert [t.name for t in tasks] == ["vqa", "gqa", "nlvr2", "caption"]
    assert all(t.mode == "generate" and t.generative and t.head_names() == () for t in tasks)
    assert tasks[0].generation == {"num_beams": 5, "gen_max_length": 7}
    # a classifying backbone keeps the classifiers; caption is refused there, naming the capability
    vqa = build_tasks({"vqa": 1}, frozenset({"classify"}), "vilt")[0]
    assert not vqa.generative and vqa.heads == ("vqa_classifier",)
    with pytest.raises(ValueError, match=r"caption needs the backbone capability \['generate'\].*backbone=vilt"):
        build_tasks({"caption": 1}, frozenset({"classify"}), "vilt")
    both = build_tasks({"vqa": 1, "caption": 1}, frozenset({"classify", "generate"}), "x")
    assert [t.mode for t in both] == ["classify", "generate"]  # caption is generative only
    with pytest.raises(ValueError, match="generation options must be >= 1"):
        TaskSettings(num_beams=0)
    # generative tasks build no classifier head
    heads = build_heads({"loss_names": {"vqa": 1, "caption": 1}, "vqav2_label_size": 10}, 16,
                        only=[t.name for t in tasks if not t.generative])
    assert len(heads) == 0


# ------------------------------------------------------------------------------------------ scoring
def test_soft_scores_hand_computed():
    answers = [["red", "dark red"], ["2 dogs", "dogs"], ["yes"], []]
    scores = [[1.0, 0.3], [0.6, 0.3], [1.0], []]
    # "Red." → "red"; "two dogs" → "2 dogs" (number words become digits); "the dark red" would be "dark red"
    got = soft_scores(["Red.", "two dogs", "no", "anything"], answers, scores)
    assert got[:3] == [1.0, 0.6, 0.0] and math.isnan(got[3])
    assert soft_scores(["the dark red"], [answers[0]], [scores[0]]) == [0.3]
    m = tm.Scores()
    m.update(torch.tensor(got, dtype=torch.float64))
    assert float(m.compute()) == pytest.approx((1.0 + 0.6 + 0.0) / 3)  # the test question is not counted
    with pytest.raises(ValueError, match="3 answers generated for 2 questions"):
        soft_scores(["a", "b", "c"], answers[:2], scores[:2])


def test_nlvr2_generated_words():
    assert nlvr2_predictions(["true", "False.", " TRUE ", "maybe", ""]) == [1, 0, 1, -1, -1]
    task = _gen("nlvr2")
    metrics = tm.TaskMetrics([task])
    out = {"nlvr2_generated": ["true", "false", "maybe", "true"], "nlvr2_pred": torch.tensor([1, 0, -1, 1]),
           "nlvr2_labels": torch.tensor([1, 1, 0, 1]), "nlvr2_loss": torch.tensor(0.5)}
    metrics.update(out, {"task": "nlvr2", "table_name": ["nlvr2_dev"] * 2 + ["nlvr2_test1"] * 2})
    v = metrics.compute_and_reset()
    assert v["nlvr2_accuracy"] == pytest.approx(0.5) and v["nlvr2_dev_accuracy"] == pytest.approx(0.5)
    assert v["nlvr2_test_accuracy"] == pytest.approx(0.5) and v["nlvr2_loss"] == pytest.approx(0.5)


def test_multitask_batch_updates_only_its_task():
    vqa, gqa = _gen("vqa"), _gen("gqa")
    metrics = tm.TaskMetrics([vqa, gqa])
    metrics.update({"gqa_loss": torch.tensor(2.0), "gqa_generated": ["x"],
                    "gqa_gen_scores": torch.tensor([1.0], dtype=torch.float64)}, {"task": "gqa"})
    v = metrics.compute_and_reset()
    assert v == {"gqa_loss": 2.0, "gqa_accuracy": 1.0}
    assert vqa.predictions({"gqa_generated": ["x"]}, {"qid": [1]}) == []


# ------------------------------------------------------------------------------------------ real fixture
@pytest.fixture(scope="module")
def trained():
    """The fixture VL-BART trained to answer two planted VQA questions from their visual features."""
    torch.manual_seed(0)
    bb = fixture_vl_bart()
    collate = GenerativeCollator(bb.tokenizer, max_text_len=40, gen_max_length=20)
    g = torch.Generator().manual_seed(1)
    items = [{"task": "vqa", "text": "what color is the ball?", "target_text": "red", "qid": 11,
              "vqa_answer": ["red", "dark red"], "vqa_scores": [1.0, 0.3],
              "vis_feats": torch.randn(36, 8, generator=g), "vis_pos": torch.zeros(36, 4)},
             {"task": "vqa", "text": "how many dogs?", "target_text": "two dogs", "qid": 7,
              "vqa_answer": ["2 dogs", "dogs"], "vqa_scores": [0.6, 0.3],
              "vis_feats": torch.randn(36, 8, generator=g), "vis_pos": torch.zeros(36, 4)}]
    batch = collate(items)
    opt = torch.optim.Adam(bb.parameters(), 3e-3)
    for _ in range(80):
        loss = bb(batch, None)["lm_loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    bb.eval()
    return bb, batch


def test_lm_loss_equals_hf_loss(trained):
    bb, batch = trained
    tasks = build_tasks({"vqa": 1}, bb.capabilities, "fixture")
    out = compute(tasks, lambda b, **kw: bb(b, None, **kw), None, batch)
    embeds, mask = bb.encoder_inputs(batch)
    ref = bb.model(inputs_embeds=embeds, attention_mask=mask, labels=batch["target_ids"]).loss
    assert torch.allclose(out["vqa_loss"], ref, atol=1e-6)
    assert torch.equal(out["loss"], out["vqa_loss"])
    assert "vqa_generated" not in out  # training steps do not decode


def test_generation_scores_and_dumps(trained, tmp_path):
    bb, batch = trained
    tasks = build_tasks({"vqa": 1}, bb.capabilities, "fixture", TaskSettings(num_beams=3, gen_max_length=6))
    seen = {}

    def infer(b, **kw):
        seen.update(kw)
        return bb(b, None, **kw)

    out = compute(tasks, infer, None, batch, generate=True)
    assert seen == {"generate": True, "gen_max_length": 6, "num_beams": 3}
    assert out["vqa_generated"] == ["red", "two dogs"]  # the planted answers
    # "red" scores 1.0; "two dogs" is normalised to "2 dogs", the label of score 0.6
    assert out["vqa_gen_scores"].tolist() == [1.0, 0.6]
    metrics = tm.TaskMetrics(tasks)
    metrics.update(out, batch)
    v = metrics.compute_and_reset()
    assert v["vqa_score"] == pytest.approx(0.8) and tm.the_metric(v) == pytest.approx(0.8)
    # test dumps: the EvalAI submission from generated strings, no answer vocabulary needed
    rows = tasks[0].predictions(out, batch)
    assert rows == [{"question_id": 11, "answer": "red"}, {"question_id": 7, "answer": "two dogs"}]
    written = write_test_dumps({"vqa": rows}, {}, tmp_path, "run")
    assert json.loads(written["vqa"].read_text()) == [{"question_id": 7, "answer": "two dogs"},
                                                      {"question_id": 11, "answer": "red"}]
    # the test split has no targets: generation alone, no loss
    test_batch = {k: v for k, v in batch.items() if k not in ("target_ids", "vqa_answer", "vqa_scores")}
    out = compute(tasks, infer, None, test_batch, generate=True)
    assert "vqa_loss" not in out and out["vqa_generated"] == ["red", "two dogs"] and out["loss"] == 0


def test_caption_results_json(tmp_path):
    path = write_caption_results(["COCO_val2014_000000000042", "COCO_val2014_000000000007",
                                  "COCO_val2014_000000000042"], ["a dog", "a cat", "a dog"], tmp_path / "c.json")
    assert json.loads(path.read_text()) == [{"image_id": "COCO_val2014_000000000007", "caption": "a cat"},
                                            {"image_id": "COCO_val2014_000000000042", "caption": "a dog"}]
    assert not list(tmp_path.glob("*.tmp*"))  # atomic: no temporary left behind
    with pytest.raises(SubmissionError, match="predicted twice with different values"):
        write_caption_results([1, 1], ["a", "b"], tmp_path / "d.json")
    with pytest.raises(SubmissionError, match="1 expected image_ids missing"):
        write_caption_results([1], ["a"], tmp_path / "e.json", expected_ids=[1, 2])
    task = _gen("caption")
    rows = task.predictions({"caption_generated": ["a cat", "a dog"]},
                            {"image_id": ["COCO_val2014_000000000007.jpg", 42]})  # Karpathy file name → COCO id
    written = write_test_dumps({"caption": rows, "nlvr2": [{"identifier": "dev-1-0-0", "prediction": "true",
                                                            "label": 1}]}, {}, tmp_path, "x")
    assert written["caption"].name == "caption_result_x.json"
    assert json.loads(written["caption"].read_text()) == [{"image_id": 7, "caption": "a cat"},
                                                          {"image_id": 42, "caption": "a dog"}]
    assert json.loads(written["nlvr2"].read_text())[0]["prediction"] == "true"


def test_classification_task_objects_unchanged():
    metrics = tm.TaskMetrics([TASKS.build("gqa")])  # classify mode (and names) keep their metrics
    assert set(metrics.metrics) == {"gqa_loss", "gqa_accuracy"}
    assert set(tm.TaskMetrics(["gqa"]).metrics) == {"gqa_loss", "gqa_accuracy"}

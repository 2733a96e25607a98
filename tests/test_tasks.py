"""Task heads, objectives, metrics, the_metric, test dumps and the trainable-parameter utilities."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

from vlpeft.pet.trainable import count_parameters, format_trainable
from vlpeft.tasks import TASKS, dumps, settings_from_config
from vlpeft.tasks.heads import build_heads, init_rank_output_from_itm
from vlpeft.tasks.metrics import Accuracy, Scalar, TaskMetrics, VQAScore, predictions, recall_at_k, the_metric
from vlpeft.tasks.objectives import (
    compute_gqa,
    compute_irtr,
    compute_nlvr2,
    compute_tasks,
    compute_vqa,
    score_for_search,
)


def softplus(x: float) -> float:
    return math.log1p(math.exp(x))


def feats_infer(feats: torch.Tensor):
    """A stub backbone whose infer returns fixed cls_feats."""
    return lambda batch, **kw: {"cls_feats": feats}


# 2 samples × 3 answers; argmax rows: 0 and 1
VQA_LOGITS = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
VQA_TARGETS = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.6, 0.9]])
# BCE(x, t) = softplus(x) - t·x ; mean over the 6 entries, × C = 3
VQA_LOSS = (
    (softplus(2) - 2 + softplus(0) + softplus(-1)) + (softplus(0) + softplus(1) - 0.6 + softplus(0))
) / 6 * 3  # = 1.616446...


# ----------------------------------------------------------------------------------------------- heads
def _config(**loss_names):
    return {"loss_names": {"vqa": 0, "nlvr2": 0, "irtr": 0, "itm": 0.5, "mlm": 0, **loss_names},
            "vqav2_label_size": 7, "gqa_label_size": 5}


def test_build_heads_names_shapes_and_init():
    heads = build_heads(_config(vqa=1, gqa=1, snli_ve=1, nlvr2=1), hidden_size=8)
    assert sorted(heads) == ["gqa_classifier", "nlvr2_classifier", "snli_ve_classifier", "vqa_classifier"]
    shapes = {n: tuple(p.shape) for n, p in heads.named_parameters()}
    assert shapes["vqa_classifier.0.weight"] == (16, 8)
    assert shapes["vqa_classifier.1.weight"] == (16,)  # LayerNorm(2d)
    assert shapes["vqa_classifier.3.weight"] == (7, 16)
    assert shapes["gqa_classifier.3.weight"] == (5, 16)
    assert shapes["snli_ve_classifier.3.weight"] == (3, 16)
    assert shapes["nlvr2_classifier.0.weight"] == (16, 16)  # input [cls0; cls1] = 2d
    assert shapes["nlvr2_classifier.3.weight"] == (2, 16)
    assert torch.all(heads["vqa_classifier"][1].weight == 1) and torch.all(heads["vqa_classifier"][1].bias == 0)
    assert torch.all(heads["vqa_classifier"][0].bias == 0) and torch.all(heads["vqa_classifier"][3].bias == 0)
    w = build_heads(_config(vqa=1), hidden_size=256)["vqa_classifier"][0].weight
    assert abs(float(w.detach().std()) - 0.02) < 0.002  # N(0, 0.02)


def test_build_heads_llama_width_and_inactive_tasks():
    cfg = dict(_config(vqa=1), head_hidden=12)
    heads = build_heads(cfg, hidden_size=8)
    assert list(heads) == ["vqa_classifier"]  # itm = 0.5 is not active
    assert tuple(heads["vqa_classifier"][0].weight.shape) == (12, 8)
    assert tuple(heads["vqa_classifier"][3].weight.shape) == (7, 12)
    with pytest.raises(ValueError, match="mlm=0"):
        build_heads(_config(vqa=1, mlm=1), hidden_size=8)


def test_irtr_heads_rank_output_from_itm_row_1():
    heads = build_heads(_config(irtr=1), hidden_size=6)
    assert sorted(heads) == ["itm_score", "rank_output"]
    fc = heads["itm_score"].fc
    assert torch.equal(heads["rank_output"].weight, fc.weight[1:2])
    assert not any(p.requires_grad for p in heads["itm_score"].parameters())
    with torch.no_grad():  # a checkpoint load replaces itm_score; re-seeding copies the new row
        fc.weight.fill_(0.5)
        fc.bias.copy_(torch.tensor([1.0, 2.0]))
    init_rank_output_from_itm(heads)
    assert torch.all(heads["rank_output"].weight == 0.5) and float(heads["rank_output"].bias.detach()) == 2.0
    assert heads["rank_output"].weight.data_ptr() != fc.weight.data_ptr()


# ------------------------------------------------------------------------------------------ objectives
def test_vqa_loss_and_score_by_hand():
    heads = nn.ModuleDict({"vqa_classifier": nn.Identity()})
    out = compute_vqa(feats_infer(VQA_LOGITS), heads, {"vqa_targets": VQA_TARGETS})
    assert float(out["vqa_loss"]) == pytest.approx(VQA_LOSS, abs=1e-6)
    assert float(out["vqa_score"]) == pytest.approx((1.0 + 0.6) / 2)
    assert torch.equal(out["vqa_targets"], VQA_TARGETS)
    assert score_for_search("vqa", out) == pytest.approx(80.0)
    with pytest.raises(ValueError, match="vqav2_label_size"):
        compute_vqa(feats_infer(VQA_LOGITS), heads, {"vqa_targets": torch.zeros(2, 4)})


def test_gqa_cross_entropy_ignores_missing_labels():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [5.0, 0.0]])
    heads = nn.ModuleDict({"gqa_classifier": nn.Identity()})
    out = compute_gqa(feats_infer(logits), heads, {"gqa_labels": torch.tensor([0, 0, -100])})
    expected = ((softplus(-2.0)) + (math.log(math.exp(0) + math.exp(1)) - 0.0)) / 2  # CE of samples 0 and 1
    assert float(out["gqa_loss"]) == pytest.approx(expected, abs=1e-6)
    assert float(out["gqa_accuracy"]) == pytest.approx(0.5)
    assert score_for_search("gqa", out) == pytest.approx(50.0)
    # a test split without any label: loss 0 (not NaN) and no accuracy
    out = compute_gqa(feats_infer(logits), heads, {"gqa_labels": torch.full((3,), -100)})
    assert float(out["gqa_loss"]) == 0.0 and math.isnan(float(out["gqa_accuracy"]))


def test_nlvr2_two_passes_with_image_keys_and_token_types():
    calls = []

    def infer(batch, **kw):
        calls.append(kw)
        return {"cls_feats": torch.full((2, 1), float(kw["image_token_type_idx"]))}

    heads = nn.ModuleDict({"nlvr2_classifier": nn.Identity()})  # logits = [cls0; cls1] = [1, 2]
    out = compute_nlvr2(infer, heads, {"nlvr2_labels": torch.tensor([0, 1])})
    assert calls == [{"image_key": "image_0", "image_token_type_idx": 1},
                     {"image_key": "image_1", "image_token_type_idx": 2}]
    assert out["nlvr2_logits"].tolist() == [[1.0, 2.0], [1.0, 2.0]]
    lse = math.log(math.exp(1) + math.exp(2))
    assert float(out["nlvr2_loss"]) == pytest.approx(((lse - 1) + (lse - 2)) / 2, abs=1e-6)
    assert float(out["nlvr2_accuracy"]) == 0.5


def test_irtr_one_infer_with_repeated_images_and_positive_first():
    bsz, length, n_false = 2, 3, 2
    image = torch.arange(bsz, dtype=torch.float).view(bsz, 1, 1, 1).expand(bsz, 3, 4, 4).contiguous()
    # first token id = the score the stub gives the pair; image 0's positive wins, image 1's does not
    first = {"text_ids": [3, 1], "false_text_0_ids": [1, 4], "false_text_1_ids": [2, 0]}
    batch = {"image": image, "image_mask": torch.ones(bsz, 4, 4, dtype=torch.bool),
             "image_key": ["t:0", "t:1"], "iid": torch.tensor([0, 1])}
    for key, vals in first.items():
        ids = torch.zeros(bsz, length, dtype=torch.long)
        ids[:, 0] = torch.tensor(vals)
        batch[key] = ids
        batch[key.replace("_ids", "_masks")] = torch.ones(bsz, length, dtype=torch.long)
    seen = []

    def infer(b, **kw):
        seen.append(b)
        return {"cls_feats": b["text_ids"][:, :1].float()}

    rank = nn.Linear(1, 1)
    with torch.no_grad():
        rank.weight.fill_(1.0)
        rank.bias.zero_()
    out = compute_irtr(infer, nn.ModuleDict({"rank_output": rank}), batch)
    assert len(seen) == 1  # one forward for all B·(1+n) pairs
    pairs = seen[0]
    assert pairs["text_ids"].shape == (bsz * (1 + n_false), length)
    assert pairs["image"].shape == (6, 3, 4, 4)
    assert pairs["image"][:, 0, 0, 0].tolist() == [0, 0, 0, 1, 1, 1]  # image b repeated for its candidates
    assert pairs["image_key"] == ["t:0"] * 3 + ["t:1"] * 3
    assert bool((pairs["text_labels"] == -100).all())
    assert out["irtr_logits"].tolist() == [[3.0, 1.0, 2.0], [1.0, 4.0, 0.0]]
    assert out["irtr_labels"].tolist() == [0, 0]
    ce0 = math.log(math.exp(3) + math.exp(1) + math.exp(2)) - 3
    ce1 = math.log(math.exp(1) + math.exp(4) + math.exp(0)) - 1
    assert float(out["irtr_loss"].detach()) == pytest.approx((ce0 + ce1) / 2, abs=1e-6)
    assert float(out["irtr_accuracy"]) == 0.5
    del batch["false_text_0_ids"], batch["false_text_1_ids"]
    with pytest.raises(ValueError, match="draw_false_text"):
        compute_irtr(infer, nn.ModuleDict({"rank_output": rank}), batch)


def test_compute_tasks_sums_losses_of_active_tasks():
    heads = nn.ModuleDict({"vqa_classifier": nn.Identity(), "gqa_classifier": nn.Identity()})
    batch = {"vqa_targets": VQA_TARGETS, "gqa_labels": torch.tensor([0, 1])}
    out = compute_tasks(feats_infer(VQA_LOGITS), heads, batch, {"vqa": 1, "gqa": 1, "itm": 0.5})
    assert float(out["loss"]) == pytest.approx(float(out["vqa_loss"]) + float(out["gqa_loss"]))
    only_vqa = compute_tasks(feats_infer(VQA_LOGITS), heads, batch, {"vqa": 1, "gqa": 0})
    assert "gqa_loss" not in only_vqa and float(only_vqa["loss"]) == pytest.approx(VQA_LOSS, abs=1e-6)
    with pytest.raises(ValueError, match="no active task"):
        compute_tasks(feats_infer(VQA_LOGITS), heads, batch, {"vqa": 0})


# --------------------------------------------------------------------------------------------- metrics
def test_vqa_score_metric_over_two_updates():
    m = VQAScore()
    m.update(VQA_LOGITS, VQA_TARGETS)  # 1.0 + 0.6
    m.update(torch.tensor([[0.0, 0.0, 5.0]]), torch.tensor([[0.3, 0.0, 0.0]]))  # 0.0
    assert float(m.compute()) == pytest.approx(1.6 / 3)


def test_accuracy_drops_minus_100_and_scalar_mean():
    acc = Accuracy()
    logits = torch.tensor([[9.0, 0, 0], [0, 9.0, 0], [0, 0, 9.0], [0, 9.0, 0]])  # argmax 0, 1, 2, 1
    acc.update(logits, torch.tensor([0, -100, 1, 1]))
    assert float(acc.compute()) == pytest.approx(2 / 3)
    acc.update(logits[:1], torch.tensor([0]))
    assert float(acc.compute()) == pytest.approx(3 / 4)
    s = Scalar()
    for v in (1.0, torch.tensor(2.0), torch.tensor([6.0])):
        s.update(v)
    assert float(s.compute()) == pytest.approx(3.0)


# 3 images (ids 10, 11, 12) × 6 captions (two per image)
S = torch.tensor([
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.0],
    [0.5, 0.4, 0.3, 0.95, 0.2, 0.1],
    [0.7, 0.6, 0.65, 0.1, 0.05, 0.2],
])
IIDS, TIIDS = [10, 11, 12], [10, 10, 11, 11, 12, 12]


def test_recall_at_k_by_hand():
    r = recall_at_k(S, IIDS, TIIDS, ks=(1, 2, 5, 10))
    # TR: best text of img0 = t0 (10 ✓), img1 = t3 (11 ✓), img2 = t0 (10 ✗); img2's top-2 are t0, t2 (✗),
    # its top-5 include t5 (✓)
    assert r["tr_r1"] == pytest.approx(2 / 3) and r["tr_r2"] == pytest.approx(2 / 3)
    assert r["tr_r5"] == 1.0 and r["tr_r10"] == 1.0
    # IR: best image per text: t0→img0 ✓, t1→img2 ✗, t2→img0 ✗, t3→img1 ✓, t4→img0 ✗, t5→img2 ✓;
    # top-2 adds nothing (t1: img2, img1; t2: img0, img2; t4: img0, img1); top-5 (capped at 3) is everything
    assert r["ir_r1"] == 0.5 and r["ir_r2"] == 0.5
    assert r["ir_r5"] == 1.0 and r["ir_r10"] == 1.0
    assert sorted(recall_at_k(S, IIDS, TIIDS)) == ["ir_r1", "ir_r10", "ir_r5", "tr_r1", "tr_r10", "tr_r5"]
    with pytest.raises(ValueError, match="image ids"):
        recall_at_k(S, IIDS[:2], TIIDS)


def test_the_metric_uses_held_out_dev_accuracy():
    assert the_metric({"vqa_score": 0.7, "vqa_loss": 3.0}) == pytest.approx(0.7)
    assert the_metric({"gqa_accuracy": 0.55}) == pytest.approx(0.55)
    nlvr2 = {"nlvr2_accuracy": 0.6, "nlvr2_dev_accuracy": 0.7, "nlvr2_test_accuracy": 0.8}
    assert the_metric(nlvr2) == pytest.approx(0.7)  # the originals took test (0.8)
    assert the_metric({"nlvr2_accuracy": 0.6}) == pytest.approx(0.6)  # train phase: no dev split
    assert the_metric({"snli_ve_dev_accuracy": 0.4, "snli_ve_test_accuracy": 0.9}) == pytest.approx(0.4)
    assert the_metric({"irtr_loss": 1.0}) == 0.0
    assert the_metric({"irtr_loss": 1.0, "ir_r1": 0.3, "tr_r1": 0.4}) == pytest.approx(0.7)
    assert the_metric({"vqa_score": float("nan")}) == 0.0


def test_task_metrics_split_dev_and_test_by_table_name():
    tm = TaskMetrics(["nlvr2"], prefix="val")
    logits = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])  # preds 0, 0, 1, 1
    out = {"nlvr2_loss": torch.tensor(0.5), "nlvr2_logits": logits, "nlvr2_labels": torch.tensor([0, 1, 1, 1])}
    tm.update(out, {"table_name": ["nlvr2_dev", "nlvr2_dev", "nlvr2_test1", "nlvr2_test1"]})
    v = tm.compute_and_reset()
    assert v == pytest.approx({"nlvr2_loss": 0.5, "nlvr2_accuracy": 0.75, "nlvr2_dev_accuracy": 0.5,
                               "nlvr2_test_accuracy": 1.0})
    assert the_metric(v) == pytest.approx(0.5)
    tm.update(out, {"table_name": ["nlvr2_train"] * 4})
    assert tm.compute_and_reset() == pytest.approx({"nlvr2_loss": 0.5, "nlvr2_accuracy": 0.75})  # reset worked


def test_predictions_rows_for_dumps():
    out = {"vqa_logits": VQA_LOGITS, "gqa_logits": VQA_LOGITS}
    rows = predictions(out, {"qid": [7, 3]}, ["vqa"])
    assert rows == {"vqa": [{"question_id": 7, "pred": 0}, {"question_id": 3, "pred": 1}]}
    assert predictions(out, {"qid": ["a1", "b2"]}, ["gqa"])["gqa"][1] == {"questionId": "b2", "pred": 1}


# ----------------------------------------------------------------------------------------------- dumps
def test_vqa_submission_sorted_deduplicated_atomic(tmp_path):
    path = tmp_path / "result" / "vqa_submit_x.json"
    # qid 2 twice with the same answer = DistributedSampler padding: kept once
    dumps.write_vqa_submission([5, 2, 9, 2], ["yes", "2", "red", "2"], path, expected_qids=[2, 5, 9])
    assert json.loads(path.read_text()) == [{"question_id": 2, "answer": "2"}, {"question_id": 5, "answer": "yes"},
                                            {"question_id": 9, "answer": "red"}]
    assert sorted(p.name for p in path.parent.iterdir()) == ["vqa_submit_x.json"]  # no temp file left
    before = path.read_text()
    with pytest.raises(dumps.SubmissionError, match="question_id 2"):
        dumps.write_vqa_submission([2, 2], ["yes", "no"], path)
    with pytest.raises(dumps.SubmissionError, match=r"2 expected question_ids missing \(first: \[4, 7\]\)"):
        dumps.write_vqa_submission([2], ["yes"], path, expected_qids=[2, 4, 7])
    with pytest.raises(dumps.SubmissionError, match="1 question ids but 2"):
        dumps.write_vqa_submission([2], ["yes", "no"], path)
    assert path.read_text() == before  # failed writes leave the previous file intact
    assert sorted(p.name for p in path.parent.iterdir()) == ["vqa_submit_x.json"]


def test_gqa_and_snli_ve_prediction_files(tmp_path):
    p = dumps.write_gqa_predictions(["20", "3", "3"], ["no", "yes", "yes"], tmp_path / "gqa.json")
    assert json.loads(p.read_text()) == [{"questionId": "3", "prediction": "yes"},
                                         {"questionId": "20", "prediction": "no"}]
    with pytest.raises(dumps.SubmissionError, match="questionId"):
        dumps.write_gqa_predictions(["3", "3"], ["no", "yes"], tmp_path / "gqa.json")
    rows = [{"text": "a dog", "prediction": "entailment"}, {"text": "a cat", "prediction": "neutral"}]
    p = dumps.write_predictions(rows, tmp_path / "snli_ve.json")
    assert json.loads(p.read_text()) == rows
    assert dumps.answers_from_ids([1, 5], ["no", "yes"]) == ["yes", "unknown"]
    assert dumps.gather_predictions(iter([1, 2])) == [1, 2]  # no process group: the list itself


# ------------------------------------------------------------------------------------ trainable params
def test_count_and_format_trainable():
    m = nn.Module()
    m.emb = nn.Embedding(1000, 1000)  # 1,000,000 trainable
    m.frozen = nn.Linear(1000, 3)  # 3,003 frozen
    m.frozen.requires_grad_(False)
    m.tied = m.emb  # shared: counted once
    assert count_parameters(m) == (1_000_000, 1_003_003)
    # 1e6 / 1,003,003 = 0.99700599…
    assert format_trainable(m) == "trainable params: 1,000,000 || all params: 1,003,003 || trainable%: 99.7006"
    assert format_trainable(nn.Module()) == "trainable params: 0 || all params: 0 || trainable%: 0.0000"


def test_vqa_split_without_answers_reports_no_score():
    """A test split has no annotations: no vqa_score (nor loss) is reported, instead of a misleading 0.0."""
    m = TaskMetrics(["vqa"], prefix="test")
    out = {"vqa_loss": torch.tensor(0.7), "vqa_logits": VQA_LOGITS, "vqa_targets": torch.zeros_like(VQA_TARGETS)}
    m.update(out, {"vqa_has_answers": [False, False]})
    assert m.compute_and_reset() == {}
    # mixed: only the annotated sample counts (row 0: argmax 0 → target 1.0)
    m.update({**out, "vqa_targets": VQA_TARGETS}, {"vqa_has_answers": [True, False]})
    got = m.compute_and_reset()
    assert got["vqa_score"] == pytest.approx(1.0) and got["vqa_loss"] == pytest.approx(0.7)


def test_test_dev_submission_is_filled_to_every_test_question(tmp_path):
    """vqa_fill_questions: the run's VQA dump covers every test2015 question (EvalAI's test-dev phase)."""
    questions = tmp_path / "v2_OpenEnded_mscoco_test2015_questions.json"
    questions.write_text(json.dumps({"questions": [{"question_id": q} for q in (1, 2, 3, 4)]}))

    class DM:
        def id2answer(self, task):
            return ["yes", "no", "2"]

    parts = [{"vqa": [{"question_id": 2, "pred": 1}, {"question_id": 1, "pred": 2}]}]
    cfg = {"_dump_dir": str(tmp_path), "_dump_name": "run_v0_last", "vqa_fill_questions": str(questions),
           "vqa_fill_answer": "yes"}
    settings = settings_from_config(cfg)
    written = dumps.write_run_dumps(parts, DM(), [TASKS.build("vqa").configured(settings)], settings.dump_dir,
                                    settings.dump_name, is_global_zero=True)
    rows = json.loads(written["vqa"].read_text())
    assert rows == [{"question_id": 1, "answer": "2"}, {"question_id": 2, "answer": "no"},
                    {"question_id": 3, "answer": "yes"}, {"question_id": 4, "answer": "yes"}]
    assert written["vqa"].name == "vqa_submit_run_v0_last.json"

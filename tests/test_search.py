"""DAS and KAB-APP placement searches: hand-computed updates, planted answers, determinism/resume, plots."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from vlpeft.search import DASSearch, KABSearch, Placement, PlacementError, format_progress, save_history_plot

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------------------------------------------
# DAS: update arithmetic
# --------------------------------------------------------------------------------------------------------------
def test_das_update_from_zero_gates_matches_hand_computation():
    das = DASSearch(num_layers=4, skip_num=1)
    out = das.update([[0], [1], [2]], torch.tensor([0.5, 1.0, 2.0]))
    # gates 0 → p = 0.5 → p(1-p) = 0.25 for every block; lr = 1.
    # R = exp(-[0.5, 1.0, 2.0]) = [0.6065306597, 0.3678794412, 0.1353352832]
    # b = (0.6065306597 + 0.3678794412 + 0.1353352832) / 3 = 1.1097453841 / 3 = 0.3699151280
    # g0 = 0.25 * (0.6065306597 - 0.3699151280) = 0.25 *  0.2366155317 =  0.0591538829
    # g1 = 0.25 * (0.3678794412 - 0.3699151280) = 0.25 * -0.0020356868 = -0.0005089217
    # g2 = 0.25 * (0.1353352832 - 0.3699151280) = 0.25 * -0.2345798448 = -0.0586449612
    # g3 = 0 (in no candidate)
    expected = [0.0591538829, -0.0005089217, -0.0586449612, 0.0]
    assert das.das_gate.tolist() == pytest.approx(expected, abs=1e-7)
    assert out["rewards"] == pytest.approx([0.6065306597, 0.3678794412, 0.1353352832], abs=1e-9)
    assert out["baseline"] == pytest.approx(0.3699151280, abs=1e-9)
    # same by formula, to make the reading of the spec explicit
    r = [math.exp(-x) for x in (0.5, 1.0, 2.0)]
    b = sum(r) / 3
    assert das.das_gate.tolist()[:3] == pytest.approx([0.25 * (ri - b) for ri in r], abs=1e-7)
    assert das.best() == [0]
    assert int(das.round_count) == 1


def test_das_update_nonzero_gates_overlapping_blocks_accumulate_with_snapshot_p():
    das = DASSearch(num_layers=4, skip_num=2)
    das.das_gate.copy_(torch.tensor([1.0, -1.0, 0.0, 2.0]))
    das.update([[0, 1], [1, 3], [2, 3]], [0.2, 0.7, 1.5])
    # p = sigmoid([1, -1, 0, 2]) = [0.7310585786, 0.2689414214, 0.5, 0.8807970780]
    # w = p(1-p)               = [0.1966119332, 0.1966119332, 0.25, 0.1049935854]
    # R = exp(-[0.2, 0.7, 1.5]) = [0.8187307531, 0.4965853038, 0.2231301601];  b = 0.5128154057
    # R - b = [0.3059153474, -0.0162301019, -0.2896852455]
    # g0 = 1 + 0.3059153474 * 0.1966119332                        =  1.0601466079
    # g1 = -1 + (0.3059153474 - 0.0162301019) * 0.1966119332        = -0.9430444238  (block 1 in sets 0 and 1)
    # g2 = 0 + (-0.2896852455) * 0.25                               = -0.0724213114
    # g3 = 2 + (-0.0162301019 - 0.2896852455) * 0.1049935854        =  1.9678808508  (block 3 in sets 1 and 2)
    # Both terms of an overlapping block use w from *before* the update (snapshot p).
    assert das.das_gate.tolist() == pytest.approx([1.0601466079, -0.9430444238, -0.0724213114, 1.9678808508],
                                                  abs=1e-6)
    assert das.best() == [0, 3]
    p = das.placement()
    assert p.method == "das" and p.skip == (0, 3) and p.num_layers == 4
    assert list(p.scores) == pytest.approx(das.das_gate.tolist())
    assert Placement.from_dict(p.to_dict()) == p


def test_das_best_top_k_sorted_by_index_and_ties_to_higher_index():
    das = DASSearch(num_layers=6, skip_num=3)
    das.das_gate.copy_(torch.tensor([0.5, 2.0, 0.5, -1.0, 3.0, 0.5]))
    # largest: 3.0 (4), 2.0 (1), then a three-way tie at 0.5 → the original takes the highest index, 5
    assert das.best() == [1, 4, 5]
    das.das_gate.zero_()
    assert das.best() == [3, 4, 5]  # torch.sort(zeros)[1][-3:] in the original


def test_das_update_rejects_bad_input():
    das = DASSearch(num_layers=4, skip_num=1)
    with pytest.raises(ValueError, match="3 candidate sets but 2 losses"):
        das.update([[0], [1], [2]], [1.0, 2.0])
    with pytest.raises(ValueError, match="outside 0..3"):
        das.update([[0], [4], [2]], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="non-finite"):
        das.update([[0], [1], [2]], [1.0, float("nan"), 3.0])
    assert das.das_gate.tolist() == [0.0] * 4


# --------------------------------------------------------------------------------------------------------------
# DAS: sampling
# --------------------------------------------------------------------------------------------------------------
def test_das_sample_train_skip_follows_multinomial_of_sigmoid_gates():
    das = DASSearch(num_layers=4, skip_num=1, seed=7)
    das.das_gate.copy_(torch.tensor([2.0, 0.0, 0.0, -2.0]))
    # p = [0.8808, 0.5, 0.5, 0.1192], sum = 2.0 → P(first draw) = p / 2 = [0.4404, 0.25, 0.25, 0.0596]
    n = 4000
    counts = torch.zeros(4)
    for _ in range(n):
        (i,) = das.sample_train_skip()
        counts[i] += 1
    assert (counts / n).tolist() == pytest.approx([0.4404, 0.25, 0.25, 0.0596], abs=0.03)
    assert int(das.draw_count) == n


def test_das_candidates_are_distinct_sorted_subsets_of_size_k():
    das = DASSearch(num_layers=5, skip_num=2, das_step=4, seed=3)
    for _ in range(50):
        cands = das.propose_candidates()
        assert len(cands) == 4
        assert len({tuple(c) for c in cands}) == 4
        for c in cands:
            assert c == sorted(c) and len(set(c)) == 2 and all(0 <= i < 5 for i in c)
        sk = das.sample_train_skip()
        assert sk == sorted(sk) and len(set(sk)) == 2
    # exactly C(n,k) == das_step still terminates: C(3,2) = 3 → all three pairs
    small = DASSearch(num_layers=3, skip_num=2, das_step=3)
    assert sorted(small.propose_candidates()) == [[0, 1], [0, 2], [1, 2]]


def test_das_candidates_terminate_with_degenerate_gates():
    # Gate 0 is huge: almost every draw of k=1 is block 0, so new subsets need the fallback.
    das = DASSearch(num_layers=4, skip_num=1, das_step=3)
    das.das_gate.copy_(torch.tensor([0.0, -700.0, -700.0, -700.0]))
    cands = das.propose_candidates()
    assert len({tuple(c) for c in cands}) == 3 and [0] in cands


def test_das_warmup_and_cadence():
    das = DASSearch(num_layers=4, skip_num=1, das_turn=3, das_epoch=2, warmup_epochs=1)
    assert das.in_search(0) and das.in_search(1) and not das.in_search(2)
    # epoch 0 (warm-up): counted, never a reward round
    assert [das.should_score(0) for _ in range(7)] == [False] * 7
    assert int(das.das_count) == 7
    # epoch 1: the count carried over (7 >= 3) → round at once, then every 3rd forward
    got = [das.should_score(1) for _ in range(10)]
    assert got == [True, False, False, True, False, False, True, False, False, True]
    assert int(das.das_count) == 0
    # after das_epoch: no search, nothing counted
    assert [das.step_counter(2) for _ in range(5)] == [False] * 5
    assert int(das.das_count) == 0

    # a warm-up shorter than das_turn: the first round comes when the count reaches das_turn
    das2 = DASSearch(num_layers=4, skip_num=1, das_turn=3, das_epoch=2, warmup_epochs=1)
    assert das2.should_score(0) is False
    assert [das2.should_score(1) for _ in range(5)] == [False, True, False, False, True]


def _run_das_search(seed: int, planted: int, num_layers: int = 6, epochs: int = 3, steps_per_epoch: int = 60):
    das = DASSearch(num_layers=num_layers, skip_num=1, das_step=3, das_turn=2, das_epoch=epochs,
                    warmup_epochs=1, lr=1.0, seed=seed)
    noise = torch.Generator().manual_seed(10_000 + seed)
    for epoch in range(epochs):
        for _ in range(steps_per_epoch):
            das.sample_train_skip()
            if das.should_score(epoch):
                cands = das.propose_candidates()
                # stub: skipping the planted block costs little, any other block costs more (plus noise)
                losses = torch.tensor([0.3 if planted in c else 1.2 for c in cands], dtype=torch.float64)
                losses += 0.2 * torch.randn(len(cands), generator=noise, dtype=torch.float64)
                das.update(cands, losses)
                das.record_history()
    return das


def test_das_finds_planted_block():
    hits = 0
    for seed in range(10):
        planted = seed % 6
        das = _run_das_search(seed, planted)
        hits += das.best() == [planted]
        assert das.history.shape == (int(das.round_count), 6)
    assert hits >= 8, f"DAS found the planted block in only {hits}/10 seeds"


# --------------------------------------------------------------------------------------------------------------
# KAB
# --------------------------------------------------------------------------------------------------------------
def test_kab_update_matches_hand_computation_and_repeated_arm_accumulates():
    kab = KABSearch(num_layers=4, search_sample=4, lr=0.005)
    out = kab.update([1, 2, 1, 3], torch.tensor([60.0, 80.0, 50.0, 70.0]))
    # π = 1/4 for every arm → w = π(1-π) = 0.25 * 0.75 = 0.1875
    # mean score = (60 + 80 + 50 + 70) / 4 = 65 → r = [-5, 15, -15, 5]
    # α1 = 0.005*(-5)*0.1875 + 0.005*(-15)*0.1875 = -0.0046875 - 0.0140625 = -0.01875  (arm 1 drawn twice)
    # α2 = 0.005*15*0.1875 = 0.0140625 ; α3 = 0.005*5*0.1875 = 0.0046875 ; α0 = 0
    assert kab.layer_alphas.tolist() == pytest.approx([0.0, -0.01875, 0.0140625, 0.0046875], abs=1e-8)
    assert out["mean_score"] == pytest.approx(65.0)
    assert out["max_reward"] == pytest.approx(15.0)
    assert out["rewards"] == pytest.approx([-5.0, 15.0, -15.0, 5.0])
    assert out["arch_loss"] == pytest.approx(math.log(4))  # -log(1/4) for every draw
    assert out["best"] == 2 and kab.best() == 2
    p = kab.placement()
    assert p.method == "kab" and p.insert_layer == 2 and p.num_layers == 4
    assert list(p.scores) == pytest.approx(kab.layer_alphas.tolist())
    line = format_progress(1, 200, out, ce_loss=0.5)
    assert "Arch Loss 1.3863" in line and "Ave Score 65.00" in line and "Max Reward 15.00" in line
    assert line.endswith("Insert Layer is 2 !")


def test_kab_second_update_uses_current_softmax():
    kab = KABSearch(num_layers=3, search_sample=2, lr=0.1)
    kab.layer_alphas.copy_(torch.tensor([math.log(2.0), 0.0, 0.0]))
    # π = softmax([ln 2, 0, 0]) = [2/4, 1/4, 1/4] → w0 = 0.5*0.5 = 0.25, w2 = 0.25*0.75 = 0.1875
    # scores [10, 30] on arms [0, 2]: mean 20, r = [-10, 10]
    # α0 = ln 2 + 0.1*(-10)*0.25 = 0.6931471806 - 0.25 = 0.4431471806 ; α2 = 0.1*10*0.1875 = 0.1875
    kab.update([0, 2], [10.0, 30.0])
    assert kab.layer_alphas.tolist() == pytest.approx([0.4431471806, 0.0, 0.1875], abs=1e-6)


def test_kab_best_ties_lowest_index_and_sampling_distributions():
    kab = KABSearch(num_layers=5, search_sample=5, seed=11)
    assert kab.best() == 0
    kab.layer_alphas.copy_(torch.tensor([0.0, 1.0, 0.0, 1.0, -1.0]))
    assert kab.best() == 1
    # training layers: uniform over all layers regardless of α
    n = 3000
    train = torch.bincount(torch.tensor([kab.sample_train_layer() for _ in range(n)]), minlength=5) / n
    assert train.tolist() == pytest.approx([0.2] * 5, abs=0.03)
    # proposals: softmax(α) with replacement; π = e^α / Σ e^α
    e = [math.exp(a) for a in (0.0, 1.0, 0.0, 1.0, -1.0)]
    pi = [x / sum(e) for x in e]
    draws = [k for _ in range(600) for k in kab.propose_layers()]
    assert len(draws) == 3000
    freq = torch.bincount(torch.tensor(draws), minlength=5) / len(draws)
    assert freq.tolist() == pytest.approx(pi, abs=0.03)
    with pytest.raises(ValueError, match="2 layers but 3 scores"):
        kab.update([0, 1], [1.0, 2.0, 3.0])
    with pytest.raises(ValueError, match="outside 0..4"):
        kab.update([0, 5], [1.0, 2.0])


def test_kab_finds_planted_layer():
    # Default lr 0.005 (the spec's value) converges within 400 stages for this planted gap (80 vs 50 ± 5).
    for seed, planted in ((0, 5), (1, 2), (2, 7)):
        kab = KABSearch(num_layers=8, search_sample=5, lr=0.005, seed=seed)
        noise = torch.Generator().manual_seed(500 + seed)
        for _ in range(400):
            kab.sample_train_layer()
            layers = kab.propose_layers()
            scores = torch.tensor([80.0 if k == planted else 50.0 for k in layers], dtype=torch.float64)
            scores += 5.0 * torch.randn(len(layers), generator=noise, dtype=torch.float64)
            kab.update(layers, scores)
            kab.record_history()
        pi = kab.probabilities()
        assert kab.best() == planted
        assert int(torch.argmax(pi)) == planted
        assert pi[planted] > 0.5, pi.tolist()
        assert kab.history.shape == (400, 8) and int(kab.stage_count) == 400
        assert kab.progress_due(100) and not kab.progress_due(300)


# --------------------------------------------------------------------------------------------------------------
# Determinism and resume (also what keeps DDP ranks in step)
# --------------------------------------------------------------------------------------------------------------
def _das_steps(das: DASSearch, n: int, epoch: int = 1) -> list:
    trace = []
    for step in range(n):
        skip = das.sample_train_skip()
        trace.append(("skip", skip))
        if das.should_score(epoch):
            cands = das.propose_candidates()
            # deterministic stub loss that depends on the candidate, so the gates move
            losses = [0.1 * sum(c) + 0.05 * step for c in cands]
            das.update(cands, losses)
            das.record_history()
            trace.append(("cands", cands, das.das_gate.tolist()))
    return trace


def test_das_same_seed_same_stream_and_resume_continues_it():
    a = DASSearch(num_layers=8, skip_num=2, das_turn=3, seed=5)
    b = DASSearch(num_layers=8, skip_num=2, das_turn=3, seed=5)
    assert _das_steps(a, 20) == _das_steps(b, 20)  # two "ranks" in lock-step
    c = DASSearch(num_layers=8, skip_num=2, das_turn=3, seed=6)
    assert _das_steps(c, 20) != _das_steps(DASSearch(num_layers=8, skip_num=2, das_turn=3, seed=5), 20)

    # checkpoint mid-run (history has rows), resume into a freshly built module (empty history)
    saved = copy.deepcopy(a.state_dict())
    assert saved["history"].shape[0] > 0
    resumed = DASSearch(num_layers=8, skip_num=2, das_turn=3, seed=5)
    resumed.load_state_dict(saved)
    assert torch.equal(resumed.history, a.history) and int(resumed.draw_count) == int(a.draw_count)
    assert int(resumed.das_count) == int(a.das_count)
    assert _das_steps(resumed, 25) == _das_steps(a, 25)
    assert torch.equal(resumed.das_gate, a.das_gate) and torch.equal(resumed.history, a.history)

    # loading a shorter history into a longer one also works (e.g. rolling back to an earlier checkpoint)
    resumed.load_state_dict(saved)
    assert resumed.history.shape == saved["history"].shape

    # nested inside a bigger module (as in the LightningModule checkpoint): keys are prefixed, same result
    outer = torch.nn.ModuleDict({"search": a})
    fresh_outer = torch.nn.ModuleDict({"search": DASSearch(num_layers=8, skip_num=2, das_turn=3, seed=5)})
    fresh_outer.load_state_dict(copy.deepcopy(outer.state_dict()))
    assert torch.equal(fresh_outer["search"].history, a.history)
    assert fresh_outer["search"].sample_train_skip() == a.sample_train_skip()

    # a different layer count is refused
    with pytest.raises(RuntimeError, match="das_gate"):
        DASSearch(num_layers=6, skip_num=2).load_state_dict(saved)


def test_kab_same_seed_same_stream_and_resume_continues_it():
    def steps(kab: KABSearch, n: int) -> list:
        trace = []
        for i in range(n):
            t = kab.sample_train_layer()
            layers = kab.propose_layers()
            kab.update(layers, [float(10 * k + i % 3) for k in layers])
            kab.record_history()
            trace.append((t, layers, kab.layer_alphas.tolist()))
        return trace

    a, b = KABSearch(num_layers=6, seed=9), KABSearch(num_layers=6, seed=9)
    assert steps(a, 15) == steps(b, 15)
    saved = copy.deepcopy(a.state_dict())
    resumed = KABSearch(num_layers=6, seed=9)
    resumed.load_state_dict(saved)
    assert steps(resumed, 15) == steps(a, 15)
    assert torch.equal(resumed.history, a.history) and resumed.history.shape == (30, 6)
    assert set(saved) == {"draw_count", "history", "layer_alphas", "reward_batches", "stage_count"}


# --------------------------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------------------------
def test_das_validation_errors():
    with pytest.raises(ValueError, match=r"skip_num=5 is larger than the number of layers \(4\)"):
        DASSearch(num_layers=4, skip_num=5)
    with pytest.raises(ValueError, match=r"das_step=3.*C\(4, skip_num=4\) = 1"):
        DASSearch(num_layers=4, skip_num=4, das_step=3)
    with pytest.raises(ValueError, match=r"das_step=7.*C\(4, skip_num=2\) = 6"):
        DASSearch(num_layers=4, skip_num=2, das_step=7)
    with pytest.raises(ValueError, match="skip_num=0"):
        DASSearch(num_layers=4, skip_num=0)
    with pytest.raises(ValueError, match="das_step=1"):
        DASSearch(num_layers=4, skip_num=1, das_step=1)
    with pytest.raises(ValueError, match="num_layers"):
        DASSearch(num_layers=0, skip_num=1)
    DASSearch(num_layers=4, skip_num=2, das_step=6)  # C(4,2) = 6 is enough


def test_kab_validation_and_bad_placements():
    with pytest.raises(ValueError, match="search_sample=1"):
        KABSearch(num_layers=4, search_sample=1)
    with pytest.raises(PlacementError, match=r"layer\(s\) \[5\] out of range"):
        Placement.das([5], num_layers=4)
    with pytest.raises(PlacementError, match="insert_layer=4 is out of range"):
        Placement.kab(4, num_layers=4)
    with pytest.raises(PlacementError, match="listed more than once"):
        Placement.das([1, 1], num_layers=4)
    # a search result validated against a backbone with another layer count
    with pytest.raises(PlacementError, match="searched on a backbone with 4 layers"):
        DASSearch(num_layers=4, skip_num=1).placement().validate(6)


# --------------------------------------------------------------------------------------------------------------
# Plots
# --------------------------------------------------------------------------------------------------------------
def test_plots_are_png_files_written_atomically(tmp_path):
    das = _run_das_search(seed=0, planted=2, steps_per_epoch=20)
    out = das.save_plot(tmp_path / "plots" / "das_gates.png")
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000

    kab = KABSearch(num_layers=12, seed=1)
    for _ in range(5):
        layers = kab.propose_layers()
        kab.update(layers, [float(k) for k in layers])
        kab.record_history()
    out2 = kab.save_plot(tmp_path / "kab.png")
    assert out2.read_bytes()[:8] == PNG_MAGIC and out2.stat().st_size > 10_000

    # list input, string transform, empty history
    out3 = save_history_plot([[0.0, 1.0], [0.5, 0.2]], tmp_path / "list.png", "t", "y", chosen=[1],
                             transform="softmax")
    assert out3.read_bytes()[:8] == PNG_MAGIC
    out4 = save_history_plot(torch.zeros(0, 3), tmp_path / "empty.png", "t", "y")
    assert out4.read_bytes()[:8] == PNG_MAGIC
    with pytest.raises(ValueError, match="chosen layer"):
        save_history_plot(torch.zeros(2, 3), tmp_path / "bad.png", "t", "y", chosen=[3])
    # no temp files left behind
    assert sorted(p.name for p in tmp_path.rglob("*") if p.is_file()) == [
        "das_gates.png", "empty.png", "kab.png", "list.png"]


def test_das_reward_cadence_counts_micro_batches_as_the_original():
    """das_turn counts training forwards by default; das_count_unit=optimizer_step counts optimizer steps."""
    micro = DASSearch(num_layers=4, skip_num=1, das_turn=2, warmup_epochs=0)
    steps = DASSearch(num_layers=4, skip_num=1, das_turn=2, warmup_epochs=0, count_unit="optimizer_step")
    accumulation = 4
    due_micro = [micro.round_due(0, (i + 1) % accumulation == 0) for i in range(8)]
    due_steps = [steps.round_due(0, (i + 1) % accumulation == 0) for i in range(8)]
    assert due_micro == [False, True] * 4  # every 2nd micro-batch
    assert due_steps == [False] * 7 + [True]  # every 2nd optimizer step = every 8th micro-batch
    with pytest.raises(ValueError, match="das_count_unit"):
        DASSearch(num_layers=4, skip_num=1, count_unit="epoch")

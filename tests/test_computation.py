"""Issue 10, items 4–5: FLOPs of a plan, computation.json / metrics.json of runs, the report table, and the
pruned (deployable) export."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from vlpeft.backbones import LayerPlan
from vlpeft.computation import count_flops, plan_flops
from vlpeft.config import DEFAULTS, NAMED_CONFIGS
from vlpeft.search.placement import Placement

SYNTHETIC = dict(seed=3, images=24)  # this module's arrows (tests/conftest.py)
B, TEXT, HW = 2, 8, 64  # batch, text tokens, image side (the demo ViLT: d=128, 16-px patches, 4 blocks)


def _module(skip=(1,), **kw):
    from vlpeft.lightning import VLPeftModule

    cfg = {**DEFAULTS, **NAMED_CONFIGS["demo"], "stage": "train", "vqav2_label_size": 7, "das_adapter_dim": 8,
           "das_skip_adapter_dim": 16, **kw}
    return VLPeftModule(cfg, placement=Placement.das(list(skip))).eval()


def _batch() -> dict:
    g = torch.Generator().manual_seed(0)
    return {"text_ids": torch.randint(0, 1000, (B, TEXT), generator=g), "text_masks": torch.ones(B, TEXT, dtype=torch.long),
            "image": torch.randn(B, 3, HW, HW, generator=g), "image_mask": torch.ones(B, HW, HW, dtype=torch.bool),
            "vqa_targets": torch.zeros(B, 7)}


def _linear_flops(module: nn.Module, tokens: int) -> int:
    """2·in·out multiply-adds per token for every Linear of ``module`` (from the shapes alone)."""
    return sum(2 * tokens * m.in_features * m.out_features for m in module.modules() if isinstance(m, nn.Linear))


@pytest.mark.parametrize("skip", [(1,), (0, 2), (0, 1, 3)])
def test_skipping_k_blocks_removes_exactly_their_flops_and_adds_the_skip_adapters(skip):
    m = _module(skip)
    bb, batch = m.backbone, _batch()
    full = plan_flops(m, batch, LayerPlan())
    chosen = plan_flops(m, batch, LayerPlan.of(skip))
    # independently, from the tiny model's shapes: N tokens = text + patches + the image CLS token
    d = bb.hidden_size
    n = TEXT + (HW // bb.patch_size[0]) * (HW // bb.patch_size[1]) + 1
    attention = 2 * (2 * B * n * n * d)  # Q·Kᵀ and A·V over all heads
    block = [_linear_flops(bb.transformer.blocks[i], B * n) + attention for i in range(bb.num_layers)]
    adapter = [_linear_flops(bb.adapter_list[i], B * n) for i in range(bb.num_layers)]
    assert all(a > 0 for a in adapter) and len(set(block)) == 1
    assert chosen == full - sum(block[i] for i in skip) + sum(adapter[i] for i in skip)
    # and by counting one block alone on a token tensor of that shape
    x, mask = torch.randn(B, n, d), torch.ones(B, 1, 1, n, dtype=torch.bool)
    one = count_flops(lambda: bb.transformer.blocks[0](x, attn_mask=mask))
    ad = count_flops(lambda: bb.adapter_list[skip[0]](x))
    assert one == block[0] and ad == adapter[skip[0]]
    assert chosen == full - len(skip) * one + len(skip) * ad


# ------------------------------------------------------------------------------------------- through run.py
@pytest.fixture(scope="module")
def runs(sacred, arrows, tmp_path_factory):
    """A tiny search, then a train on its placement (export_pruned=True)."""
    log = tmp_path_factory.mktemp("comp") / "result"
    common = dict(data_root=str(arrows), log_dir=str(log), per_gpu_batchsize=8, batch_size=8, num_workers=0,
                  das_epoch=1, das_turn=1, das_warmup_epoch=0, das_adapter_dim=8, das_skip_adapter_dim=16)
    s = sacred("demo", **dict(common, stage="search", max_epoch=1))
    t = sacred("demo", **dict(common, stage="train", placement="latest", max_epoch=1, export_pruned=True))
    return log, Path(s.result["run_dir"]), Path(t.result["run_dir"])


def _first_val_batch(config):
    from vlpeft.data.datamodule import MTDataModule

    return next(iter(MTDataModule(config).val_dataloader()))


def _restore(ckpt: Path, load: Path | None = None):
    """The model a checkpoint's config + placement builds, with ``load`` (default: the checkpoint) loaded."""
    from vlpeft.checkpoint import load_weights
    from vlpeft.lightning import VLPeftModule

    c = torch.load(ckpt, map_location="cpu", weights_only=True)
    m = VLPeftModule(c["hyper_parameters"]["config"], placement=Placement.from_dict(c["vlpeft_placement"]))
    (report,) = load_weights(m, str(load or ckpt))  # a search's history buffer is resized on load
    if load is None:
        assert report.missing == [] and report.unexpected == []
    return m.eval(), c["hyper_parameters"]["config"]


def test_runs_record_computation_and_metrics(runs):
    _, search_dir, train_dir = runs
    for run_dir, stage in ((search_dir, "search"), (train_dir, "train")):
        rec = json.loads((run_dir / "computation.json").read_text())
        assert rec["stage"] == stage and rec["speedup"]["indicative"] is True and rec["speedup"]["median"] > 0
        ckpt = run_dir / "checkpoints" / "last.ckpt"
        m, config = _restore(ckpt)
        batch = _first_val_batch(config)
        plan = Placement.from_dict(torch.load(ckpt, weights_only=True)["vlpeft_placement"]).plan(m.base_plan)
        assert rec["plan"]["skip"] == sorted(plan.skip) and len(plan.skip) == 1
        assert rec["flops"]["chosen"] == plan_flops(m, batch, plan)  # a direct count equals the record
        assert rec["flops"]["full"] == plan_flops(m, batch, LayerPlan())
        assert rec["flops"]["reduction"] == 1 - rec["flops"]["chosen"] / rec["flops"]["full"] > 0
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert set(metrics) >= {"train", "val"} and "the_metric" in metrics["val"]
    placement = json.loads((search_dir / "placement.json").read_text())
    assert placement["meta"]["computation"] == json.loads((search_dir / "computation.json").read_text())
    assert (search_dir / "placement.png").read_bytes()[:4] == b"\x89PNG"


def test_report_numbers_are_the_runs_own(runs, tmp_path, capsys):
    from vlpeft import report

    log, search_dir, train_dir = runs
    assert report.main([str(log), "--csv", str(tmp_path / "t.csv"), "--md", str(tmp_path / "t.md")]) == 0
    rows = {r["run"]: r for r in csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text()))}
    for run_dir, stage in ((search_dir, "search"), (train_dir, "train")):
        r = rows[str(run_dir.relative_to(log))]
        rec = json.loads((run_dir / "computation.json").read_text())
        metrics = json.loads((run_dir / "metrics.json").read_text())
        assert r["stage"] == stage
        assert r["metric_name"] == "val/vqa_score" and r["metric_unit"] == "%"
        assert float(r["metric"]) == 100 * metrics["val"]["vqa_score"]
        assert int(r["trainable_params"]) == rec["params"]["trainable"]
        assert float(r["trainable_pct"]) == rec["params"]["percent"]
        assert int(r["flops"]) == rec["flops"]["chosen"] and int(r["flops_full"]) == rec["flops"]["full"]
        assert float(r["flops_reduction_pct"]) == 100 * rec["flops"]["reduction"]
        assert float(r["speedup"]) == rec["speedup"]["median"]
        assert r["placement"] == f"skip {rec['plan']['skip']}"
    md = (tmp_path / "t.md").read_text()
    assert md.count("\n") == 2 + len(rows) and str(train_dir.relative_to(log)) in md
    assert report.main([str(log)]) == 0 and capsys.readouterr().out == md


def test_pruned_export_loads_and_predicts_identically(sacred, runs, tmp_path):
    from vlpeft.export import dropped_keys, main as export_main

    _, _, train_dir = runs
    last = train_dir / "checkpoints" / "last.ckpt"
    pruned = train_dir / "pruned.ckpt"  # written by the run (export_pruned=True): the weights at fit end
    ref, config = _restore(last)
    got, _ = _restore(last, load=pruned)
    batch = _first_val_batch(config)
    skip = sorted(ref.plan().skip)
    sd = torch.load(pruned, weights_only=True)["state_dict"]
    assert not any(k.startswith(f"backbone.transformer.blocks.{skip[0]}.") for k in sd)
    assert any(k.startswith(f"backbone.adapter_list.{skip[0]}.0.") for k in sd)
    assert not any(k.startswith("backbone.adapter_list.") and not k.startswith(f"backbone.adapter_list.{skip[0]}.")
                   for k in sd)
    with torch.no_grad():
        a, b = ref(batch), got(batch)
    assert torch.equal(a["vqa_logits"], b["vqa_logits"])
    # the model loaded from the pruned file is built without the dropped units: fewer parameters by exactly theirs
    from vlpeft.export import PrunedUnit

    drop_params = sum(p.numel() for n, p in ref.named_parameters() if n in set(dropped_keys(ref)))
    assert drop_params > 0
    assert sum(p.numel() for p in got.parameters()) == sum(p.numel() for p in ref.parameters()) - drop_params
    assert isinstance(got.backbone.candidate_module(skip[0]), PrunedUnit)
    assert set(got.state_dict()) == set(sd)  # it holds exactly the file's tensors
    # smaller by the skipped share: file size over an unpruned file of the same format, to 1 %
    full = ref.state_dict()
    drop = set(dropped_keys(ref))
    nbytes = lambda keys: sum(full[k].numel() * full[k].element_size() for k in keys)  # noqa: E731
    share = 1 - nbytes(drop) / nbytes(full)
    assert 0.5 < share < 0.99  # one of 4 blocks; the word embeddings dominate
    unpruned = tmp_path / "unpruned.ckpt"
    torch.save({"state_dict": full}, unpruned)
    assert abs(pruned.stat().st_size / unpruned.stat().st_size - share) < 0.01
    # the CLI on the run folder exports its best checkpoint the same way; test_only accepts it (no "random PET")
    out = tmp_path / "best_pruned.ckpt"
    assert export_main([str(train_dir), "--out", str(out)]) == 0
    best = next(train_dir.glob("checkpoints/best*.ckpt"))
    ref_best, _ = _restore(best)
    got_best, _ = _restore(best, load=out)
    with torch.no_grad():
        assert torch.equal(ref_best(batch)["vqa_logits"], got_best(batch)["vqa_logits"])
    log = train_dir.parents[1]
    r = sacred("demo", data_root=config["data_root"], log_dir=str(log), per_gpu_batchsize=8, batch_size=8,
               num_workers=0, das_adapter_dim=8, das_skip_adapter_dim=16, stage="train", test_only=True,
               load_path=str(out))
    assert json.loads((Path(r.result["run_dir"]) / "metrics.json").read_text()).keys() >= {"test"}


def test_search_png_title_and_placement_meta_get_the_flops_reduction(tmp_path):
    from vlpeft.computation import annotate_search

    class FakeSearch:
        titles: list = []

        def save_plot(self, path, title="DAS skip probabilities"):
            self.titles.append((Path(path).name, title))

    Placement.das([2], num_layers=4, meta={"rounds": 3}).save(tmp_path / "placement.json")
    rec = {"flops": {"chosen": 75, "full": 100, "reduction": 0.25}}
    annotate_search(FakeSearch(), tmp_path, rec)
    assert FakeSearch.titles == [("placement.png", "DAS skip probabilities — FLOPs −25.00 % vs unskipped")]
    assert Placement.load(tmp_path / "placement.json").meta == {"rounds": 3, "computation": rec}

"""Golden numbers: the architecture refactor (issue 8) must not change what a run computes.

Recorded on the code before the refactor (``python tests/test_golden.py --record`` rewrites the file; only do
that for a deliberate, documented change). Each case runs through ``run.py``'s sacred experiment; a callback
overwrites every parameter with a tensor that is a function of its *name* and shape alone, so the numbers do not
depend on the order in which the code builds modules (only on the original parameter names, which must not
change either). Dropout is off where the config allows it; data order and search draws are seeded by position.

Checked per case (tolerance 1e-5 relative + 1e-6 absolute: the thread count changes float summation order,
which moved a 12.0 loss by 2 ulps after 6 steps; a real change of the computation moves it by far more): the training losses of the first steps, the trainable parameter names, and for
search runs the placement and final gate/preference values (placement.json).
"""

from __future__ import annotations

import json
import sys
import zlib
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402
from write_arrow.synthetic import write_synthetic  # noqa: E402

GOLDEN = Path(__file__).with_name("golden") / "arch_v1.json"
STEPS = 6
_DVP = dict(clip_model="test_clip_tiny", image_size=32, tokenizer="bert-base-uncased", num_heads=4,
            dvp_llama_xattn_dim=32, drop_rate=0.0, search_sample=3, use_adapter=True)
_VILT = dict(das_warmup_epoch=0, das_turn=2, drop_rate=0.0)
CASES: dict[str, tuple[str, dict]] = {
    "vilt_das_search": ("demo", dict(_VILT, stage="search")),
    "vilt_das_train": ("demo", dict(_VILT, stage="train", skip_module=[1])),
    "dvp_bert_search": ("dvp_search_bert_vqa", dict(_DVP, plm_config="test_bert_tiny_bertvocab")),
    "dvp_bert_train": ("dvp_adaption_bert_vqa", dict(_DVP, plm_config="test_bert_tiny_bertvocab", insert_layer=1)),
    "dvp_t5_search": ("dvp_search_t5_vqa", dict(_DVP, plm_config="test_t5_tiny_bertvocab")),
    "dvp_t5_train": ("dvp_adaption_t5_vqa", dict(_DVP, plm_config="test_t5_tiny_bertvocab", insert_layer=2)),
    "dvp_llama_search": ("dvp_search_llama_vqa", dict(_DVP, plm_config="test_llama_tiny_bertvocab")),
    "dvp_llama_train": ("dvp_adaption_llama_vqa", dict(_DVP, plm_config="test_llama_tiny_bertvocab",
                                                        insert_layer=1)),
}


def golden_tensor(name: str, shape: torch.Size) -> torch.Tensor:
    """A tensor determined by the parameter's name: N(0, 0.05²), or 1 + that for 1-D weights (norm gains)."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    t = torch.randn(shape, generator=g) * 0.05
    if name.endswith("weight") and len(shape) == 1:
        t += 1.0
    return t


class _Record(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.trainable: list[str] = []

    def setup(self, trainer, pl_module, stage):
        with torch.no_grad():
            for name, p in pl_module.named_parameters():
                p.copy_(golden_tensor(name, p.shape))
        self.trainable = sorted(n for n, p in pl_module.named_parameters() if p.requires_grad)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if len(self.losses) < STEPS:
            self.losses.append(float(outputs["loss"]))


def run_case(name: str, arrows: Path, log_dir: Path, monkeypatch) -> dict:
    from vlpeft import runner

    named, upd = CASES[name]
    rec = _Record()
    real = runner.build_trainer
    monkeypatch.setattr(runner, "build_trainer", lambda *a, **kw: real(*a, **dict(kw, extra_callbacks=[rec])))
    cfg = dict(data_root=str(arrows), log_dir=str(log_dir), per_gpu_batchsize=8, batch_size=8, max_epoch=1,
               max_steps=STEPS, num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=3, **upd)
    r = run_py.ex.run(named_configs=[named], config_updates=cfg, options={"--loglevel": "ERROR"})
    monkeypatch.setattr(runner, "build_trainer", real)
    out = {"losses": rec.losses, "trainable": rec.trainable}
    if r.result.get("placement_path") not in (None, "None"):
        p = json.loads(Path(r.result["placement_path"]).read_text())
        out["placement"] = {k: p.get(k) for k in ("method", "skip", "insert_layer", "num_layers", "scores")}
        out["rounds"] = p["meta"]["rounds"]
    return out


@pytest.fixture(scope="module")
def arrows(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("golden_arrows")
    write_synthetic(root, seed=5, images=24, variants=("vqa",))
    return root


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, arrows, tmp_path, monkeypatch):
    want = json.loads(GOLDEN.read_text())[name]
    got = run_case(name, arrows, tmp_path / "result", monkeypatch)
    assert len(got["losses"]) == STEPS
    assert got["losses"] == pytest.approx(want["losses"], abs=1e-6, rel=1e-5)
    assert got["trainable"] == want["trainable"]
    assert ("placement" in got) == ("placement" in want)
    if "placement" in want:
        gp, wp = got["placement"], want["placement"]
        assert {k: gp[k] for k in gp if k != "scores"} == {k: wp[k] for k in wp if k != "scores"}
        assert gp["scores"] == pytest.approx(wp["scores"], abs=1e-6, rel=1e-5)
        assert got["rounds"] == want["rounds"] > 0


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    class _MP:  # a minimal stand-in for pytest's monkeypatch
        def setattr(self, obj, name, value):
            setattr(obj, name, value)

    with tempfile.TemporaryDirectory() as d:
        root = Path(d) / "arrows"
        write_synthetic(root, seed=5, images=24, variants=("vqa",))
        results = {name: run_case(name, root, Path(d) / "result", _MP()) for name in sorted(CASES)}
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(results, indent=1) + "\n")
    print(f"wrote {GOLDEN}")

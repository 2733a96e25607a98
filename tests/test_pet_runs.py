"""The zoo through ``run.py`` on the synthetic data: ViLT with LoRA (fused qkv, q/v mask) and with VL-PET-large
(multi-head adapters and large gates on the single stream, encoder norms), CLIP+BERT with LoRA and
with a VL-Adapter, and a DAS search with a Compacter recipe; each trains only its injected modules (+ the preset's
backbone policy) and lowers its training loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch

SYNTHETIC = dict(seed=6, images=48)  # this module's arrows (tests/conftest.py)


class _Losses(pl.Callback):
    def __init__(self):
        self.losses: list[float] = []
        self.trainable: list[str] = []

    def on_fit_start(self, trainer, pl_module):
        self.trainable = [n for n, p in pl_module.named_parameters() if p.requires_grad]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


@pytest.fixture
def train_recorded(sacred, arrows, tmp_path, trainer_callbacks):
    """``train_recorded(named, **updates)``: runs the named config (tiny settings) on this module's arrows and returns
    the recorder of its training losses and trainable parameter names."""

    def run(named: str, **updates) -> _Losses:
        rec = _Losses()
        trainer_callbacks[:] = [rec]
        sacred(named, data_root=str(arrows), log_dir=str(tmp_path / "result"), per_gpu_batchsize=16, batch_size=16,
               num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=1, **updates)
        return rec

    return run


def _improved(losses: list[float], k: int = 6) -> bool:
    return sum(losses[-k:]) / k < 0.9 * sum(losses[:k]) / k


_CLIP_BERT = dict(backbone="test_clip_bert", image_size=32, insert_layer=1, max_epoch=4, learning_rate=1e-3)
CASES = {
    "vilt_lora": ("demo", dict(stage="train", skip_module=[], pet="lora", lora_r=8, lora_alpha=16, max_epoch=3,
                               learning_rate=2e-3), ("attn.qkv.lora_A", "heads.")),
    "vilt_vl_pet_large": ("demo", dict(stage="train", skip_module=[], pet="vl_pet_large", max_epoch=3,
                                       learning_rate=2e-3), ("out_attn.", "gate_mlp.", "norm1.", "heads.")),
    "clip_bert_lora": ("dvp_adaption_bert_vqa", dict(_CLIP_BERT, pet="lora", lora_r=8, lora_alpha=16),
                       ("query.lora_A", "value.lora_B", "cross_attn.")),
    "clip_bert_vl_adapter": ("dvp_adaption_bert_vqa", dict(_CLIP_BERT, pet="vl_adapter"), ("plm.adapters.0.",)),
    "clip_bert_das_search_compacter": ("dvp_search_bert_vqa", dict(_CLIP_BERT, search="das", pet="compacter",
                                                                   skip_num=1, das_turn=2, das_warmup_epoch=0),
                                       ("plm.adapters.0.",)),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_preset_trains_through_run_py(case, train_recorded):
    named, updates, must_train = CASES[case]
    rec = train_recorded(named, **updates)
    assert len(rec.losses) >= 12 and all(torch.isfinite(torch.tensor(rec.losses)))
    assert _improved(rec.losses), rec.losses
    for piece in must_train:
        assert any(piece in n for n in rec.trainable), (piece, rec.trainable[:10])
    # the frozen backbone stays frozen: no attention weight of the backbone itself trains
    assert not any(n.endswith(("attn.qkv.weight", "attention.self.query.weight")) for n in rec.trainable)


def test_merge_pet_gives_the_unmerged_predictions(sacred, arrows, tmp_path, capsys):
    """``merge_pet=True``: test_only folds the trained LoRA into the projection weights; the VQA submission equals the
    unmerged one (answers by argmax: identical unless two logits tie within float rounding)."""
    import json

    from vlpeft.config import ConfigError

    upd = dict(data_root=str(arrows), log_dir=str(tmp_path / "result"), per_gpu_batchsize=16, batch_size=16,
               num_gpus=0, precision=32, num_workers=0, vqav2_label_size=0, seed=1, stage="train", skip_module=[],
               pet="lora", lora_r=8, lora_alpha=16, max_epoch=1, learning_rate=2e-3)
    r = sacred("demo", **upd)
    last = Path(r.result["run_dir"]) / "checkpoints" / "last.ckpt"
    saved = torch.load(last, map_location="cpu", weights_only=True)["state_dict"]
    assert any(k.endswith("lora_B") and v.abs().sum() > 0 for k, v in saved.items())  # LoRA moved off B = 0
    subs = {}
    for merge in (False, True):
        res = sacred("demo", **dict(upd, test_only=True, load_path=str(last), merge_pet=merge)).result
        subs[merge] = json.loads(Path(res["submission"]).read_text())
        merged_line = "[vlpeft] merge_pet: LoRA merged into 4 projection weights"  # fused qkv of 4 blocks
        assert (merged_line in capsys.readouterr().out) == merge
    assert subs[True] and subs[True] == subs[False]
    with pytest.raises(ConfigError, match="merge_pet=True but pet='ia3'"):
        sacred("demo", **dict(upd, pet="ia3", test_only=True, load_path=str(last), merge_pet=True,
                              allow_random_init=True))

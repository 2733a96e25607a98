"""A non-finite training loss stops the run (non-zero exit, no weights written), naming the step, the batch's arrow
rows and ids, and the likely cause; on a GPU the check waits for nothing (deferred through events)."""

from __future__ import annotations

import math
import re
from types import SimpleNamespace

import pytest
import torch

import run as run_py  # the command line's own entry (run_commandline), on sys.path through tests/conftest.py
from vlpeft.data.datasets import VQADataset
from vlpeft.finite_loss import LossGuard, NonFiniteLossError
from vlpeft.lightning import VLPeftModule

SYNTHETIC = dict(images=24)  # this module's arrows (tests/conftest.py)


def test_nan_input_stops_the_run_non_zero_naming_step_rows_and_cause(arrows, tmp_path, monkeypatch, capsys):
    root, log = arrows, tmp_path / "log"
    get_image = VQADataset.get_image

    def nan_row_1(self, row, column="image"):  # stands in for any non-finite input (e.g. NaN features)
        image = get_image(self, row, column)
        return torch.full_like(image, math.nan) if self.table.locate(row)[:2] == ("vqav2_train", 1) else image

    monkeypatch.setattr(VQADataset, "get_image", nan_row_1)
    argv = ["run.py", "with", "demo", "stage=train", f"data_root={root}", f"log_dir={log}", "per_gpu_batchsize=8",
            "batch_size=8", "max_epoch=2", "num_workers=0", "--loglevel=ERROR"]
    with pytest.raises(SystemExit) as e:
        run_py.ex.run_commandline(argv)
    assert e.value.code not in (0, None)  # the exit status of `python run.py ...`
    err = capsys.readouterr().err
    # the loss of the batch holding the NaN input, or (a forward that stays finite, as this ViLT's does) the next
    # one after that batch's update made the weights NaN; either way the message names that batch's rows
    found = re.search(r"NonFiniteLossError: training loss is nan at global step (\d+) \(epoch 0, batch (\d+)\).*"
                      r"; the batch came from .*vqav2_.*\.arrow rows .*Likely cause: (non-finite values in this "
                      r"batch's inputs: |the batch of global step (\d+) \(epoch 0, batch \d+\) held non-finite "
                      r"inputs — )image in samples \[\d+\] \((.*?)\)", err)
    assert found, err[-3000:]
    step = int(found[1])
    assert step == int(found[2]) and (found[4] is None or int(found[4]) == step - 1)  # stopped at once
    assert found[5].startswith(f"{root / 'vqav2_train.arrow'} rows [1]; qid [1000001")  # image 1's questions
    assert "Fix those inputs" in err and "no weights are written" in err
    run_dir = next(log.glob("*/version_*"))
    assert not list(run_dir.rglob("*.ckpt")) and not list(run_dir.rglob("*.safetensors"))


class _Event:
    """A CUDA event stand-in: ``query`` says whether the copy has landed; ``synchronize`` waits for it."""

    def __init__(self):
        self.done, self.waited = False, False

    def query(self) -> bool:
        return self.done

    def synchronize(self) -> None:
        self.waited, self.done = True, True


def _batch(n=2, table="vqav2_train", first_row=4):
    return {"image": torch.zeros(n, 3, 4, 4), "image_key": [f"{table}:{first_row + i}" for i in range(n)],
            "qid": [100 + i for i in range(n)]}


def test_deferred_check_never_waits_until_weights_are_written(tmp_path):
    events = []
    guard = LossGuard(tmp_path, event_factory=lambda: events.append(_Event()) or events[-1])
    guard.push(torch.tensor(0.5), _batch(), step=0, epoch=0, batch_idx=0)
    guard.push(torch.tensor(float("inf")), _batch(first_row=9), step=1, epoch=0, batch_idx=1)
    guard.push(torch.tensor(0.7), _batch(), step=2, epoch=0, batch_idx=2)
    assert not any(ev.waited for ev in events)  # the steps went on without waiting for the device
    events[0].done = True
    guard.poll()  # step 0 is finite; step 1's copy has not landed: nothing raised, nothing waited for
    assert not any(ev.waited for ev in events)
    events[1].done = True
    with pytest.raises(NonFiniteLossError) as e:
        guard.push(torch.tensor(0.1), _batch(), step=3, epoch=0, batch_idx=3)  # the next step reads it
    msg = str(e.value)
    assert msg.startswith("training loss is inf at global step 1 (epoch 0, batch 1)")
    assert f"{tmp_path / 'vqav2_train.arrow'} rows [9, 10]; qid [100, 101]" in msg
    assert "the model diverged: lower learning_rate" in msg  # the inputs were finite


def test_a_finite_loss_with_non_finite_weights_is_caught_before_they_are_written(tmp_path):
    """A NaN gradient after the last checked loss: ``flush`` (before a checkpoint) checks the trainable weights
    and names the batch that held a non-finite input."""
    layer = torch.nn.Linear(2, 2)
    guard = LossGuard(tmp_path, layer.named_parameters)
    batch = _batch(first_row=20)
    batch["image"][0] = float("inf")
    guard.push(torch.tensor(0.3), batch, step=7, epoch=2, batch_idx=0)
    guard.flush()  # finite weights: nothing to say
    with torch.no_grad():
        layer.bias[1] = float("nan")
    with pytest.raises(NonFiniteLossError) as e:
        guard.flush()
    msg = str(e.value)
    assert msg.startswith("trainable weights are non-finite after global step 7 (epoch 2, batch 0) although every "
                          "loss was finite: ['bias']")
    assert f"the batch of global step 7 (epoch 2, batch 0) held non-finite inputs — image in samples [0] " \
           f"({tmp_path / 'vqav2_train.arrow'} rows [20]; qid [100])" in msg


def test_weights_are_not_written_after_a_pending_non_finite_loss(tmp_path):
    """``on_save_checkpoint`` and ``on_train_end`` wait for the queued checks before any weights are written;
    a host far ahead of the device waits for the oldest check (few batches kept for the diagnosis)."""
    for hook in (VLPeftModule.on_save_checkpoint, VLPeftModule.on_train_end):
        events = []
        guard = LossGuard(tmp_path, event_factory=lambda: events.append(_Event()) or events[-1])
        batch = _batch()
        batch["image"][1, 0, 0, 0] = float("nan")
        guard.push(torch.tensor(float("nan")), batch, step=5, epoch=1, batch_idx=2)
        module = SimpleNamespace(_loss_guard=guard)
        with pytest.raises(NonFiniteLossError, match=r"at global step 5 .* image in samples \[1\] "
                                                     r"\(.*vqav2_train.arrow rows \[5\]; qid \[101\]\)"):
            hook(module, {}) if hook is VLPeftModule.on_save_checkpoint else hook(module)
        assert events[0].waited
    events = []
    guard = LossGuard(tmp_path, event_factory=lambda: events.append(_Event()) or events[-1])
    for step in range(6):
        guard.push(torch.tensor(1.0), _batch(), step=step, epoch=0, batch_idx=step)
    assert [ev.waited for ev in events] == [True, True] + [False] * 4 and len(guard._pending) == 4

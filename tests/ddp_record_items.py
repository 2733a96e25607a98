"""run.py's command line with a callback that records, per rank, the ids of the training items each batch carried
(``<RECORD_DIR>/rank<k>.json``). tests/test_runner.py runs it as a subprocess: Lightning's ddp launcher re-runs this
file for every rank, so each rank records its own share."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytorch_lightning as pl

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import run as run_py  # noqa: E402  (registers the sacred main)
from vlpeft import runner  # noqa: E402

ID_KEYS = {"vqa": "qid", "gqa": "qid", "nlvr2": "identifier", "caption": "image_id"}


class RecordItems(pl.Callback):
    def __init__(self):
        self.seen: dict[str, list] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        task = batch["task"]
        self.seen.setdefault(task, []).extend(str(i) for i in batch[ID_KEYS[task]])

    def on_train_end(self, trainer, pl_module):
        out = Path(os.environ["RECORD_DIR"]) / f"rank{trainer.global_rank}.json"
        out.write_text(json.dumps({"world_size": trainer.world_size, "seen": self.seen}))


_build = runner.build_trainer
runner.build_trainer = lambda *a, **kw: _build(*a, **dict(kw, extra_callbacks=[*kw.get("extra_callbacks", ()),
                                                                               RecordItems()]))

if __name__ == "__main__":
    run_py.ex.run_commandline()

"""The LightningModule: wiring only. What is built comes from ``vlpeft.build.assemble`` (backbone × PET recipe ×
search × tasks); this file runs steps, one generic search round, metrics, checkpoints and dumps."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, Iterator

import pytorch_lightning as pl
import torch

from vlpeft._rng import RNG_KEY, rng_state, set_rng_state
from vlpeft.api import answer_vocabularies, check_checkpoint_plan, generate, predict
from vlpeft.backbones import LayerPlan
from vlpeft.build import assemble
from vlpeft.config import RunConfig, sections
from vlpeft.finite_loss import LossGuard
from vlpeft.frozen_features import precompute_frozen_features
from vlpeft.optim import build_optimizer, build_scheduler
from vlpeft.pet.context import pet_context
from vlpeft.pet.trainable import format_trainable
from vlpeft.search._base import finish_search, mean_across_ranks, reward_stream
from vlpeft.search.placement import Placement
from vlpeft.tasks import metrics as tm
from vlpeft.tasks._base import compute
from vlpeft.tasks.dumps import write_run_dumps

PLACEMENT_KEY = "vlpeft_placement"
ANSWERS_KEY = "vlpeft_answers"  # {task: [answer of class id 0, 1, ...]}: the vocabulary the heads were trained on


class VLPeftModule(pl.LightningModule):
    def __init__(self, config: RunConfig | dict[str, Any], placement: Placement | dict | None = None):
        super().__init__()
        # the runner passes its typed sections (axes resolved once, by from_sacred); load_from_checkpoint passes the
        # saved flat keys, turned into sections here. The flat keys are what the checkpoint stores.
        self.rc = sections(config)
        self.config = copy.deepcopy(self.rc.flat)
        self.save_hyperparameters({"config": self.config})  # only the config: no datasets or tensors
        if isinstance(placement, dict):  # load_from_checkpoint passes the hparams' plain dict (see on_save_checkpoint)
            placement = Placement.from_dict(placement, source="checkpoint hyper_parameters")
        self.answers: dict[str, list[str]] = {}  # filled from a checkpoint's ANSWERS_KEY (vlpeft.api.predict)
        a = assemble(self.rc, placement)
        self.backbone, self.heads, self.search = a.backbone, a.heads, a.search
        self.tasks, self.pet_report, self.base_plan, self.policy = a.tasks, a.report, a.base_plan, a.policy
        self.task_settings = self.tasks[0].settings if self.tasks else self.rc.tasks
        self.train_metrics, self.val_metrics, self.test_metrics = (
            tm.TaskMetrics(self.tasks, prefix=p) for p in ("train", "val", "test"))  # objects: generative metrics
        if self.search is not None:
            self.search.ddp_ignore(self)  # host-side state, identical on every rank by construction
        self._search_iter: Iterator | None = None
        self._test_outputs: list[dict[str, list[dict]]] = []
        self._loss_guard = LossGuard(self.rc.run.data_root, self.named_parameters)  # NaN / inf stops the run

    def trainable_summary(self) -> str:
        return f"{format_trainable(self)}\n{self.pet_report.summary()}"

    def plan(self) -> LayerPlan:
        return self.base_plan if self.search is None else self.search.eval_plan(self.base_plan)

    def current_placement(self) -> Placement:
        if self.search is not None:
            return self.search.placement(base=self.base_plan)
        return Placement.from_plan(self.base_plan, self.backbone.num_layers)

    def batch_task(self, batch: dict[str, Any]) -> str:
        """The task a (single-task) batch belongs to: ``batch["task"]`` (set by the collate), else the first task."""
        task = batch.get("task") if isinstance(batch, dict) else None
        return str(task) if task else self.tasks[0].name

    def forward(self, batch: dict[str, Any], plan: LayerPlan | None = None, generate: bool = False) -> dict[str, Any]:
        plan = self.plan() if plan is None else plan
        # per-task PET modules (TaskSwitch) read the task from the context. Routing's x_v is not set here: a
        # backbone would have to compute it (e.g. a pooled visual vector) before the PLM layers run and enter
        # pet_context(x_v=...) around them itself.
        with pet_context(task=self.batch_task(batch)):
            return compute(self.tasks, lambda b, **kw: self.backbone(b, plan, **kw), self.heads, batch, generate)

    # ------------------------------------------------------------------ training and the search round
    def on_fit_start(self) -> None:
        # frozen image-tower features (DVP's CLIP) computed once, in large batches, on this rank's device, so that
        # the first epoch already reads them from the cache (vlpeft.frozen_features; a no-op for other backbones)
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and isinstance(getattr(dm, "datasets", None), dict):
            # the precompute draws from the random streams (image loading, transforms): the run's own draws (dropout,
            # sampling, the search) must be those of a run without it, so every generator is restored afterwards
            state = rng_state()
            precompute_frozen_features(self.backbone, dm.datasets, rank=self.trainer.global_rank,
                                       world_size=self.trainer.world_size, barrier=self.trainer.strategy.barrier,
                                       num_workers=int(getattr(dm, "num_workers", 0)),
                                       interval=float(self.rc.trainer.progress_interval))
            set_rng_state(state)

    def on_train_start(self) -> None:
        if self.search is not None:  # a round cadence given as a share of the epoch (LaVIN-DAS) needs its length
            msg = self.search.fit_epoch_length(self.trainer.num_training_batches,
                                               max(1, self.trainer.accumulate_grad_batches))
            if msg and self.trainer.is_global_zero:
                print(msg, flush=True)

    def on_train_epoch_start(self) -> None:
        if hasattr(self.trainer.datamodule, "set_epoch"):
            self.trainer.datamodule.set_epoch(self.current_epoch)  # new retrieval negatives, seeded by epoch

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        plan = self.base_plan if self.search is None else self.search.train_plan(self.current_epoch, self.base_plan)
        out = self(batch, plan)
        self.train_metrics.update(out, batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=_batch_len(batch))
        # deferred on a GPU (no host sync per step); raises naming the step and the batch's rows (vlpeft.finite_loss)
        self._loss_guard.push(out["loss"], batch, step=self.global_step, epoch=self.current_epoch, batch_idx=batch_idx)
        self._maybe_search_round(batch_idx, "before_backward")  # DAS: the weights this forward used
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self._maybe_search_round(batch_idx, "after_step")  # KAB: after the optimizer step

    def _maybe_search_round(self, batch_idx: int, timing: str) -> None:
        """Count the step and run a due round, at the point of the step where the search's original scores
        (``SearchStrategy.round_timing``); the count happens once per training step, at that point."""
        if self.search is None or self.search.round_timing != timing:
            return
        optimizer_step = (batch_idx + 1) % max(1, self.trainer.accumulate_grad_batches) == 0
        if self.search.round_due(self.current_epoch, optimizer_step):
            self._search_round()

    @torch.no_grad()
    def _search_round(self) -> None:
        batch = self._next_search_batch()
        plans = self.search.propose(self.base_plan)
        was_training = self.training
        if self.rc.search_batch.score_mode == "eval":
            self.eval()  # score candidates with dropout off (the originals scored in train mode)
        try:
            if all(t.single_pass for t in self.tasks):  # backbones may share work between the plans
                with pet_context(task=self.batch_task(batch)):
                    feats = self.backbone.forward_many(batch, plans)
                outs = [compute(self.tasks, lambda b, f=f, **kw: f, self.heads, batch) for f in feats]
            else:
                outs = [self(batch, p) for p in plans]
        finally:
            self.train(was_training)
        values = mean_across_ranks(torch.stack([self.search.reward_value(o, self.tasks[0]) for o in outs]))
        info = self.search.update_plans(plans, values.cpu())
        self.search.record_history()
        msg = self.search.round_message(self.current_epoch, info, float(sum(o["loss"] for o in outs)) / len(outs))
        if msg and self.trainer.is_global_zero:
            print(msg, flush=True)
        self.log("search/value_mean", float(values.mean()), batch_size=1)

    def _next_search_batch(self) -> dict[str, Any]:
        if self._search_iter is None:
            # continue the stream where the saved state says it stood (a resumed search sees the same batches)
            loader = self.trainer.datamodule.search_dataloader(self.search.search_batch_size(self.rc.search_batch))
            start_pass, skip = divmod(int(self.search.reward_batches), max(1, len(loader)))
            self._search_iter = reward_stream(loader, start_pass, skip)
        batch = next(self._search_iter)
        self.search.reward_batches += 1
        return self.transfer_batch_to_device(batch, self.device, 0)

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics, "train")
        msg = self.search.epoch_message(self.current_epoch) if self.search is not None else None
        if msg and self.trainer.is_global_zero:
            print("\n" + msg, flush=True)

    def on_fit_end(self) -> None:
        if self.search is not None:
            run_dir = Path(self.rc.run.run_dir or self.trainer.log_dir or ".")
            finish_search(self.search, self.base_plan, run_dir, self.trainer.is_global_zero)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self.val_metrics.update(self(batch, generate=True), batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics, "val", self._epoch_metrics("val"))
        msg = self.search.val_message(self.current_epoch) if self.search is not None else None
        if msg and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            print(msg, flush=True)

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch, generate=True)
        self.test_metrics.update(out, batch)
        self._test_outputs.append({t.name: t.predictions(out, batch) for t in self.tasks})

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics, "test", self._epoch_metrics("test"))
        self.test_dumps = write_run_dumps(self._test_outputs, self.trainer.datamodule, self.tasks,
                                          self.task_settings.dump_dir, self.task_settings.dump_name,
                                          self.trainer.is_global_zero)

    def _epoch_metrics(self, split: str) -> dict[str, float]:
        return {k: v for t in self.tasks for k, v in t.epoch_metrics(self, split).items()}

    def _log_epoch(self, metrics: tm.TaskMetrics, phase: str, extra: dict[str, float] | None = None) -> None:
        values = {**metrics.compute_and_reset(), **(extra or {})}
        for k, v in values.items():
            self.log(f"{phase}/{k}", v, sync_dist=False)
        if values:  # a split without labels (e.g. VQA test) has no metric to report, not a zero
            self.log(f"{phase}/the_metric", tm.the_metric(values, self.tasks), sync_dist=False)
        self.epoch_results = getattr(self, "epoch_results", {})
        self.epoch_results[phase] = dict(values, the_metric=tm.the_metric(values, self.tasks)) if values else {}

    # ------------------------------------------------------------------ optimisation and checkpoints
    def configure_optimizers(self):
        opt = build_optimizer(self.named_parameters(), self.rc.optim)
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, self.rc.optim, total)}

    def on_train_end(self) -> None:
        self._loss_guard.flush()  # every loss checked before fit returns and the runner writes weights

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._loss_guard.flush()  # no checkpoint after a non-finite loss
        checkpoint[PLACEMENT_KEY] = self.current_placement().to_dict()  # test_only reads it back
        # also a constructor argument, so load_from_checkpoint builds the trained plan, not skip_module's
        checkpoint["hyper_parameters"] = {**checkpoint.get("hyper_parameters", {}),
                                          "placement": checkpoint[PLACEMENT_KEY]}
        checkpoint[ANSWERS_KEY] = answer_vocabularies(self, getattr(self._trainer, "datamodule", None))
        checkpoint[RNG_KEY] = rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        check_checkpoint_plan(self, checkpoint.get(PLACEMENT_KEY))
        self.answers = dict(checkpoint.get(ANSWERS_KEY) or {})
        if RNG_KEY in checkpoint:
            set_rng_state(checkpoint[RNG_KEY])

    # ------------------------------------------------------------------ the Python API (vlpeft.api)
    def predict(self, image: Any, question: Any, **kw: Any) -> str | list[str]:
        """Answer(s) to question(s) about raw image(s); see ``vlpeft.api.predict``."""
        return predict(self, image, question, **kw)

    def generate(self, image: Any, **kw: Any) -> str | list[str]:
        """Caption(s) of raw image(s) (a captioning backbone); see ``vlpeft.api.generate``."""
        return generate(self, image, **kw)


def _batch_len(batch: dict[str, Any]) -> int:
    for k in ("text_ids", "image", "image_0"):
        if k in batch and hasattr(batch[k], "shape"):
            return int(batch[k].shape[0])
    return 1

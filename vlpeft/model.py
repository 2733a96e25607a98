"""The LightningModule: the one place where backbone, PEFT modules, task heads and search strategy meet."""

from __future__ import annotations

import copy
import functools
import random
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch import nn

from vlpeft.backbones import build_backbone
from vlpeft.optim import build_optimizer, build_scheduler
from vlpeft.pet.trainable import ORIGINAL_DAS_TRAINABLE, format_trainable, mark_trainable
from vlpeft.search.das import DASSearch
from vlpeft.search.kab import KABSearch, format_progress
from vlpeft.search.placement import Placement
from vlpeft.tasks import metrics as tm
from vlpeft.tasks.dumps import gather_predictions, write_test_dumps
from vlpeft.tasks.heads import active_tasks, build_heads
from vlpeft.tasks.objectives import compute_tasks, score_for_search

PLACEMENT_KEY = "vlpeft_placement"
RNG_KEY = "vlpeft_rng_state"


class VLPeftModule(pl.LightningModule):
    """Backbone + heads (+ search strategy in the search stage) for one config.

    ``placement`` (train stage) says which layers to skip (DAS) or where the prompt enters (DVP);
    in the search stage the strategy samples placements during training and reports the best one.
    """

    def __init__(self, config: dict[str, Any], placement: Placement | None = None):
        super().__init__()
        self.config = copy.deepcopy(config)
        # only the config: no datasets or tensors in hparams (fix of the originals' bloat)
        self.save_hyperparameters({"config": self.config})
        self.method = config["method"]
        self.searching = config["stage"] == "search"
        self.backbone = build_backbone(config)
        self.heads = build_heads(config, self.backbone.hidden_size)
        self.tasks = active_tasks(config["loss_names"])
        if not self.tasks:
            raise ValueError("no active task: set loss_names, e.g. with task_finetune_vqa_randaug or a dvp_* config")
        n = self.backbone.num_layers
        self.search: DASSearch | KABSearch | None = None
        if self.searching and self.method == "das":
            self.search = DASSearch(
                n, config["skip_num"], das_step=config["das_step"], das_turn=config["das_turn"],
                das_epoch=config["das_epoch"], warmup_epochs=config["das_warmup_epoch"], lr=config["das_lr"],
                seed=config["seed"],
            )
        elif self.searching and self.method == "dvp":
            self.search = KABSearch(n, search_sample=config["search_sample"], lr=config["kab_lr"], seed=config["seed"])
        if self.search is not None:
            # the plot starts from the initial preferences; also keeps the buffer non-empty (a 0-byte shared
            # storage cannot be sent to ddp_spawn workers)
            self.search.record_history()
        self.placement = placement.validate(n) if placement is not None else None
        if not self.searching and self.placement is None:
            raise ValueError("a train run needs a placement (skip_module / insert_layer / placement=)")
        self._set_trainable()
        self.train_metrics = tm.TaskMetrics(self.tasks, prefix="train")
        self.val_metrics = tm.TaskMetrics(self.tasks, prefix="val")
        self.test_metrics = tm.TaskMetrics(self.tasks, prefix="test")
        self._search_iter: Iterator | None = None
        self._test_outputs: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ trainable set
    def _set_trainable(self) -> None:
        cfg = self.config
        if cfg["full_finetune"]:
            for p in self.parameters():
                p.requires_grad_(True)
        elif self.method == "das":
            # the original DAS rule: a parameter trains iff its name contains one of these substrings
            mark_trainable(self, include=ORIGINAL_DAS_TRAINABLE)
            if cfg["trainable"] == "used" and self.placement is not None:
                self._freeze_unused_das_adapters()
        else:
            # DVP: the backbone decides what of the PLM trains (full fine-tuning or adapters + norms)
            for p in self.heads.parameters():
                p.requires_grad_(True)
        if self.search is not None:
            for p in self.search.parameters():
                p.requires_grad_(False)

    def _freeze_unused_das_adapters(self) -> None:
        skip = set(self.placement.skip)
        for name, p in self.backbone.named_parameters():
            parts = name.split(".")
            if name.startswith("transformer.blocks.") and "adapter" in parts[3] and int(parts[2]) in skip:
                p.requires_grad_(False)  # the in-block adapters of a skipped block never run
            elif name.startswith("adapter_list.") and int(parts[1]) not in skip:
                p.requires_grad_(False)  # the skip adapter of a block that runs never runs

    def trainable_summary(self) -> str:
        adapters = sum(p.numel() for n, p in self.named_parameters() if "adapter" in n)
        return f"{format_trainable(self)}\nextra parameter (adapters): {adapters:,d}"

    # ------------------------------------------------------------------ placement-aware inference
    def _placement_kwargs(self, training_draw: bool = False) -> dict[str, Any]:
        if self.search is None:
            p = self.placement
            return {"skip": list(p.skip)} if p.method == "das" else {"insert_layer": int(p.insert_layer)}
        if isinstance(self.search, DASSearch):
            if training_draw and self.search.in_search(self.current_epoch):
                return {"skip": self.search.sample_train_skip()}
            return {"skip": self.search.best()}
        if training_draw:
            return {"insert_layer": self.search.sample_train_layer()}
        return {"insert_layer": self.search.best()}

    def infer_fn(self, **placement_kw: Any):
        return functools.partial(self.backbone.infer, **placement_kw)

    def forward(self, batch: dict[str, Any], **placement_kw: Any) -> dict[str, Any]:
        if not placement_kw:
            placement_kw = self._placement_kwargs()
        return compute_tasks(self.infer_fn(**placement_kw), self.heads, batch, self.config["loss_names"])

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is not None and hasattr(dm, "set_epoch"):
            dm.set_epoch(self.current_epoch)  # new retrieval negatives each epoch, reproducible under the seed

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        out = compute_tasks(self.infer_fn(**self._placement_kwargs(training_draw=True)), self.heads, batch,
                            self.config["loss_names"])
        self.train_metrics.update(out, batch)
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=_batch_len(batch))
        return out["loss"]

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.search is None:
            return
        optimizer_step = (batch_idx + 1) % max(1, self.trainer.accumulate_grad_batches) == 0
        if isinstance(self.search, DASSearch):
            # the original DAS counts training forwards (micro-batches); das_count_unit=optimizer_step counts steps
            if self.config["das_count_unit"] == "optimizer_step" and not optimizer_step:
                return
            if self.search.in_search(self.current_epoch) and self.search.step_counter(self.current_epoch):
                self._das_round()
        elif optimizer_step:
            self._kab_round()  # KAB: a sampling stage after every optimizer step, as the original

    def _next_search_batch(self) -> dict[str, Any]:
        if self._search_iter is None:
            # continue the stream where the saved state says it stood (a resumed search sees the same batches)
            loader = self._search_loader()
            start_pass, skip = divmod(int(self.search.reward_batches), max(1, len(loader)))
            self._search_iter = _cycle(loader, start_pass, skip)
        batch = next(self._search_iter)
        self.search.reward_batches += 1
        return self.transfer_batch_to_device(batch, self.device, 0)

    def _search_loader(self):
        dm = self.trainer.datamodule
        # defaults as the originals: DAS per_gpu_batchsize; DVP config["batch_size"] // 2 (the global batch size)
        bs = self.config["search_val_batch_size"] or (
            self.config["per_gpu_batchsize"] if self.method == "das" else max(1, self.config["batch_size"] // 2)
        )
        return dm.search_dataloader(bs)

    def _scoring_mode(self):
        return _ScoringMode(self, self.config["search_score_mode"] == "eval")

    @torch.no_grad()
    def _das_round(self) -> None:
        batch = self._next_search_batch()
        cands = self.search.propose_candidates()
        with self._scoring_mode():
            losses = torch.stack([
                compute_tasks(self.infer_fn(skip=c), self.heads, batch, self.config["loss_names"])["loss"].float()
                for c in cands
            ])
        losses = _mean_across_ranks(losses)
        info = self.search.update(cands, losses.cpu())
        self.search.record_history()
        self.log("search/reward_mean", float(info.get("baseline", losses.neg().exp().mean())), batch_size=1)

    @torch.no_grad()
    def _kab_round(self) -> None:
        batch = self._next_search_batch()
        layers = self.search.propose_layers()
        with self._scoring_mode():
            outs = self.backbone.infer_many(batch, layers) if self.config["kab_shared_prefix"] else [
                self.backbone.infer(batch, insert_layer=k) for k in layers
            ]
            task = self.tasks[0]
            scores, losses = [], []
            for feats in outs:
                res = compute_tasks(lambda b, **kw: feats, self.heads, batch, self.config["loss_names"])
                scores.append(score_for_search(task, res))
                losses.append(float(res["loss"]))
        scores_t = _mean_across_ranks(torch.tensor(scores, dtype=torch.float64, device=self.device))
        info = self.search.update(layers, scores_t.cpu())
        self.search.record_history()
        if self.search.progress_due(100) and self.trainer.is_global_zero:
            print(format_progress(self.current_epoch, int(self.search.reward_batches), info, sum(losses) / len(losses)), flush=True)
        self.log("search/mean_score", float(info["mean_score"]), batch_size=1)

    def on_train_epoch_end(self) -> None:
        self._log_epoch(self.train_metrics, "train")
        if isinstance(self.search, DASSearch) and self.trainer.is_global_zero:
            print(f"\n[DAS] epoch {self.current_epoch}: skip {self.search.best()}  "
                  f"gates {[round(float(g), 4) for g in self.search.das_gate]}", flush=True)

    def on_fit_end(self) -> None:
        """A search ends by checking every rank holds the same state, then printing and saving its placement."""
        if self.search is None:
            return
        state = torch.cat([b.detach().double().flatten().cpu() for _, b in self.search.named_buffers()])
        agree, world = True, 1
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            world = dist.get_world_size()
            gathered = [None] * world
            dist.all_gather_object(gathered, state.tolist())
            agree = all(g == gathered[0] for g in gathered)
            if not agree:
                raise RuntimeError(f"search state differs across DDP ranks: {gathered}")
        if not self.trainer.is_global_zero:
            return
        placement = self.search.placement(meta={"world_size": world, "ranks_agree": agree,
                                                "rounds": int(self.search.reward_batches)})
        run_dir = Path(self.config.get("_run_dir") or self.trainer.log_dir or ".")
        placement.save(run_dir / "placement.json")
        self.search.save_plot(run_dir / "placement.png")
        das = isinstance(self.search, DASSearch)
        chosen = list(placement.skip) if das else [placement.insert_layer]
        what = f"skip layers {chosen}" if das else f"insert the visual prompt at layer {chosen[0]}"
        print(f"\n[vlpeft] search finished: {what}\n[vlpeft] wrote {run_dir / 'placement.json'} and "
              f"{run_dir / 'placement.png'}", flush=True)

    # ------------------------------------------------------------------ evaluation
    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        self.val_metrics.update(out, batch)

    def on_validation_epoch_end(self) -> None:
        self._log_epoch(self.val_metrics, "val", extra=self._recall_metrics("val"))
        if isinstance(self.search, KABSearch) and self.trainer.is_global_zero and not self.trainer.sanity_checking:
            print(f"\n{'=' * 20} Current Architecture [{self.current_epoch}] Insert Layer is {self.search.best()} !",
                  flush=True)

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        out = self(batch)
        self.test_metrics.update(out, batch)
        self._test_outputs.append(tm.predictions(out, batch, self.tasks))

    def on_test_epoch_start(self) -> None:
        self._test_outputs = []

    def on_test_epoch_end(self) -> None:
        self._log_epoch(self.test_metrics, "test", extra=self._recall_metrics("test"))
        # every rank's predictions, gathered in memory; rank 0 writes the files (atomic, de-duplicated)
        merged: dict[str, list[dict]] = {}
        for part in self._test_outputs:
            for task, rows in part.items():
                merged.setdefault(task, []).extend(rows)
        merged = {t: gather_predictions(rows) for t, rows in sorted(merged.items())}
        self.test_dumps = {}
        if self.trainer.is_global_zero and self.config.get("_dump_dir"):
            dm = self.trainer.datamodule
            vocab = {t: dm.id2answer(t) for t in merged if t in ("vqa", "gqa")}
            self.test_dumps = write_test_dumps(merged, vocab, self.config["_dump_dir"], self.config["_dump_name"])
            for task, path in self.test_dumps.items():
                print(f"[vlpeft] wrote {task} test dump: {path}", flush=True)

    @torch.no_grad()
    def _recall_metrics(self, split: str) -> dict[str, float]:
        """IR/TR recall@1/5/10 over every (image, caption) pair of the split (``get_recall_metric=True``).

        Each image is embedded once and scored against every caption batch (ViLT's ``image_embeds`` path);
        every rank scores the whole split, so no gather is needed (the split is small next to training).
        """
        if not (self.config["get_recall_metric"] and "irtr" in self.tasks) or self.trainer.sanity_checking:
            return {}
        dm = self.trainer.datamodule
        texts = [self.transfer_batch_to_device(b, self.device, 0)
                 for b in dm.recall_loader(dm.recall_text_dataset(split), batch_size=64)]
        txt_iids = torch.cat([b["iid"] for b in texts]).cpu()
        rows, img_iids = [], []
        kw = self._placement_kwargs()
        for ib in dm.recall_loader(dm.recall_image_dataset(split), batch_size=1):
            ib = self.transfer_batch_to_device(ib, self.device, 0)
            emb, masks, _ = self.backbone.visual_embed(ib["image"], ib.get("image_mask"), self.backbone.max_image_len,
                                                       self.backbone.patch_generator)
            scores = []
            for tb in texts:
                n = tb["text_ids"].shape[0]
                out = self.backbone.infer(tb, image_embeds=emb.expand(n, -1, -1), image_masks=masks.expand(n, -1),
                                          **kw)
                scores.append(self.heads["rank_output"](out["cls_feats"])[:, 0].float().cpu())
            rows.append(torch.cat(scores))
            img_iids.append(int(ib["iid"][0]))
        recalls = tm.recall_at_k(torch.stack(rows), img_iids, txt_iids)
        if self.trainer.is_global_zero:
            print(f"[vlpeft] {split} recall: " + "  ".join(f"{k} {v:.4f}" for k, v in sorted(recalls.items())),
                  flush=True)
        return recalls

    def _log_epoch(self, metrics: "tm.TaskMetrics", phase: str, extra: dict[str, float] | None = None) -> None:
        values = metrics.compute_and_reset()
        values.update(extra or {})
        for k, v in values.items():
            self.log(f"{phase}/{k}", v, sync_dist=False)
        self.log(f"{phase}/the_metric", tm.the_metric(values), sync_dist=False)
        self.epoch_results = getattr(self, "epoch_results", {})
        self.epoch_results[phase] = dict(values, the_metric=tm.the_metric(values))

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        opt = build_optimizer(self.named_parameters(), self.config)
        total = int(self.trainer.estimated_stepping_batches)
        return {"optimizer": opt, "lr_scheduler": build_scheduler(opt, self.config, total)}

    # ------------------------------------------------------------------ checkpoints carry the placement
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        p = self.current_placement()
        if p is not None:
            checkpoint[PLACEMENT_KEY] = p.to_dict()
        # the RNG streams (dropout, random transforms in the main process) so that a resumed run continues
        # exactly as the uninterrupted one (the data order and the search draws are seeded by position)
        checkpoint[RNG_KEY] = _rng_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if RNG_KEY in checkpoint:
            _set_rng_state(checkpoint[RNG_KEY])

    def current_placement(self) -> Placement | None:
        if self.search is not None:
            return self.search.placement()
        return self.placement


class _ScoringMode:
    """Score search candidates in eval mode (dropout off), restoring the previous mode afterwards."""

    def __init__(self, module: nn.Module, use_eval: bool):
        self.module, self.use_eval = module, use_eval

    def __enter__(self):
        self.was_training = self.module.training
        if self.use_eval:
            self.module.eval()

    def __exit__(self, *exc):
        self.module.train(self.was_training)


def _cycle(loader, start_pass: int = 0, skip_batches: int = 0) -> Iterator:
    epoch = start_pass
    while True:
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)  # a new order each pass (the originals reused one batch forever)
        if skip_batches:
            sampler.skip = skip_batches * loader.batch_size
            skip_batches = 0
        yielded = False
        for b in loader:
            yielded = True
            yield b
        if not yielded:
            raise ValueError("the search split is empty; check the val split files under data_root")
        epoch += 1


def _mean_across_ranks(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        t /= dist.get_world_size()
    return t


def _batch_len(batch: dict[str, Any]) -> int:
    for k in ("text_ids", "image", "image_0"):
        if k in batch and hasattr(batch[k], "shape"):
            return int(batch[k].shape[0])
    return 1


def _rng_state() -> dict[str, Any]:
    # plain tensors, ints and tuples only: Lightning resumes with torch.load(weights_only=True)
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])

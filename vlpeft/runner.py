"""Builds data, model and Trainer for a stage; a search writes the placement; the demo chains the stages.

    search  : fit with a search strategy → <run>/placement.json + <run>/placement.png
    train   : fit on a placement (placement=, skip_module= or insert_layer=) → checkpoints + trainable.safetensors
    test    : test_only=True → metrics, and for VQA <log_dir>/vqa_submit_<name>.json
"""

from __future__ import annotations

import copy
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch

from vlpeft.checkpoint import load_weights, save_trainable
from vlpeft.config import ConfigError, validate_config
from vlpeft.search.placement import Placement, PlacementError

VERSION_ENV = "VLPEFT_RUN_VERSION"


@dataclass
class RunResult:
    stage: str
    run_dir: Path
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)
    placement: Placement | None = None
    placement_path: Path | None = None
    checkpoint: Path | None = None
    trainable_path: Path | None = None
    submission: Path | None = None
    stages: dict[str, "RunResult"] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- helpers
def load_name(config: dict[str, Any]) -> str:
    paths = config["load_path"] if isinstance(config["load_path"], (list, tuple)) else [config["load_path"]]
    first = next((p for p in paths if p), "")
    return Path(first).stem if first else "scratch"


def resolve_placement(config: dict[str, Any]) -> Placement | None:
    """The train stage's placement: ``placement=`` wins; else skip_module (das) / insert_layer (dvp)."""
    src = config["placement"]
    if src:
        if src == "latest":
            found = sorted(Path(config["log_dir"]).glob("**/placement.json"), key=lambda p: p.stat().st_mtime)
            if not found:
                raise PlacementError(f"placement=latest: no placement.json under log_dir={config['log_dir']}; "
                                     "run the search stage first or pass placement=<path>")
            src = str(found[-1])
        p = Placement.load(src)
        want = "das" if config["method"] == "das" else "kab"
        if p.method != want:
            raise PlacementError(f"placement {src} is a {p.method!r} placement but method={config['method']} "
                                 f"needs a {want!r} one")
        return p
    if config["method"] == "das":
        skip = config["skip_module"]
        if not isinstance(skip, (list, tuple)):
            raise ConfigError(f"skip_module={skip!r} must be a list, e.g. skip_module=[3,7] or skip_module=[]")
        return Placement.das(skip)
    return Placement.kab(config["insert_layer"])


def _devices(config: dict[str, Any]) -> dict[str, Any]:
    n_gpus = config["num_gpus"] if isinstance(config["num_gpus"], int) else len(config["num_gpus"])
    if n_gpus > 0:
        if not torch.cuda.is_available():
            raise ConfigError(f"num_gpus={n_gpus} but no GPU is visible; pass num_gpus=0 to run on the CPU")
        devices, accel = config["num_gpus"], "gpu"
    else:
        devices, accel = int(config["cpu_devices"]), "cpu"
    n = n_gpus if n_gpus > 0 else devices
    strategy = config["strategy"]
    if strategy == "auto" and n * config["num_nodes"] > 1:
        strategy = "ddp"
    if strategy in ("ddp", "ddp_spawn"):
        from pytorch_lightning.strategies import DDPStrategy

        # a skipped block's modules (and the prompt modules of layers not drawn) get no gradient in a step
        strategy = DDPStrategy(find_unused_parameters=True, start_method="spawn" if strategy == "ddp_spawn" else "popen")
    precision = config["precision"]
    if accel == "cpu" and str(precision) in ("16", "16-mixed"):
        print("[vlpeft] precision=16 needs a GPU; running in 32-bit on the CPU")
        precision = 32
    elif str(precision) == "16":
        precision = "16-mixed"
    elif str(precision) == "bf16":
        precision = "bf16-mixed"
    return dict(accelerator=accel, devices=devices, strategy=strategy, precision=precision, world=n * config["num_nodes"])


def grad_steps(config: dict[str, Any], world: int) -> int:
    per = config["per_gpu_batchsize"]
    if not isinstance(per, int) or per <= 0:
        raise ConfigError("per_gpu_batchsize must be set to a positive integer on the command line, "
                          "e.g. per_gpu_batchsize=32")
    denom = per * world
    if config["batch_size"] < denom or config["batch_size"] % denom:
        raise ConfigError(
            f"batch_size={config['batch_size']} must be a positive multiple of per_gpu_batchsize×devices×nodes "
            f"= {per}×{world} = {denom} (gradient accumulation = batch_size // that)"
        )
    return config["batch_size"] // denom


def _run_dir(config: dict[str, Any], name: str) -> tuple[str, int]:
    """Pick the run version once, in the launching process, so every DDP rank writes to the same folder."""
    if VERSION_ENV in os.environ:
        return name, int(os.environ[VERSION_ENV])
    root = Path(config["log_dir"]) / name
    versions = [int(p.name.split("_")[1]) for p in root.glob("version_*") if p.name.split("_")[1].isdigit()]
    version = max(versions) + 1 if versions else 0
    return name, version


def _finalize_label_sizes(config: dict[str, Any]) -> dict[str, Any]:
    """vqav2_label_size=0 means: take it from the data — ``vqav2_label_vocab.json`` next to the arrow files, else
    the train + val tables' answer labels as the original ViLT datamodule (``vlpeft.data.datamodule.vqa_label_size``)."""
    if config.get("vqav2_label_size", 1) == 0 and config["loss_names"].get("vqa", 0) >= 1:
        from vlpeft.data.datamodule import LabelVocabError, vocab_file_names, vqa_label_size

        try:
            names = vocab_file_names("vqa", config.get("data_splits"))
            config["vqav2_label_size"] = vqa_label_size(config["data_root"], names)
        except LabelVocabError as e:
            raise ConfigError(f"{e}\n(needed for vqav2_label_size=0; or set vqav2_label_size explicitly)") from e
    return config


class _CleanDDPExit(pl.Callback):
    """Ranks otherwise sometimes abort at exit on CPU/gloo ("terminate called without an active exception")."""

    def teardown(self, trainer, pl_module, stage):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            dist.barrier()


# ---------------------------------------------------------------------------------------------- stages
def build_trainer(config: dict[str, Any], run_dir_name: str, version: int, *, extra_callbacks=(), enable_ckpt=True):
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint
    from pytorch_lightning.loggers import TensorBoardLogger

    dev = _devices(config)
    accumulate = grad_steps(config, dev["world"])
    logger = TensorBoardLogger(config["log_dir"], name=run_dir_name, version=version, default_hp_metric=False)
    callbacks = list(extra_callbacks) + [_CleanDDPExit()]
    if enable_ckpt:
        callbacks.append(ModelCheckpoint(monitor="val/the_metric", mode="max", save_top_k=1, save_last=True,
                                         filename="best-{epoch}-{step}"))
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    max_steps = config["max_steps"]
    trainer = pl.Trainer(
        accelerator=dev["accelerator"], devices=dev["devices"], num_nodes=config["num_nodes"], strategy=dev["strategy"],
        precision=dev["precision"], max_epochs=config["max_epoch"] if max_steps is None else 1000,
        max_steps=-1 if max_steps is None else max_steps, accumulate_grad_batches=accumulate,
        val_check_interval=config["val_check_interval"], fast_dev_run=config["fast_dev_run"], logger=logger,
        callbacks=callbacks, log_every_n_steps=10, deterministic=False, benchmark=dev["accelerator"] == "gpu",
        num_sanity_val_steps=0, enable_progress_bar=True,
    )
    return trainer


def run(config: dict[str, Any]) -> RunResult:
    config = validate_config(copy.deepcopy(config))
    if config["stage"] == "demo":
        from vlpeft.demo import run_demo

        return run_demo(config)
    pl.seed_everything(config["seed"], workers=True, verbose=False)
    if config["test_only"]:
        return run_test(config)
    if config["stage"] == "search":
        return run_fit(config, search=True)
    return run_fit(config, search=False)


def _datamodule(config: dict[str, Any]):
    from vlpeft.data.datamodule import MTDataModule

    return MTDataModule(config)


def _build_module(config: dict[str, Any], placement: Placement | None, *, fresh_heads: bool):
    from vlpeft.model import VLPeftModule

    module = VLPeftModule(config, placement=placement)
    for report in load_weights(module, config["load_path"], fresh_heads=fresh_heads):
        print(f"[vlpeft] {report.summary()}")
    return module


def run_fit(config: dict[str, Any], *, search: bool) -> RunResult:
    config = _finalize_label_sizes(config)
    name, version = _run_dir(config, f"{config['exp_name']}_seed{config['seed']}_from_{load_name(config)}")
    run_dir = Path(config["log_dir"]) / name / f"version_{version}"
    os.environ[VERSION_ENV] = str(version)  # DDP ranks re-running this script land in the same folder
    try:
        placement = None if search else resolve_placement(config)
        dm = _datamodule(config)
        module = _build_module(dict(config, _run_dir=str(run_dir)), placement, fresh_heads=True)
        if placement is not None:
            print(f"[vlpeft] placement: {placement.to_dict()}")
        print(f"[vlpeft] {module.trainable_summary()}")
        trainer = build_trainer(config, name, version)
        trainer.fit(module, datamodule=dm, ckpt_path=config["resume_from"])
    finally:
        os.environ.pop(VERSION_ENV, None)
    result = RunResult(stage="search" if search else "train", run_dir=run_dir)
    result.metrics = getattr(module, "epoch_results", {})
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None:
        best = ckpt_cb.best_model_path or ckpt_cb.last_model_path
        result.checkpoint = Path(best) if best else None
    if trainer.is_global_zero:
        result.placement = module.current_placement()
        if search:
            result.placement_path = run_dir / "placement.json"
            if not result.placement_path.is_file():  # written by the module at fit end; ddp_spawn keeps it there
                result.placement.save(result.placement_path)
            print(f"[vlpeft] search result: {result.placement.to_dict()}  → {result.placement_path}")
        if config["save_trainable"]:
            result.trainable_path = save_trainable(module, run_dir, config,
                                                   result.placement.to_dict() if result.placement else None)
            _report_sizes(result)
    return result


def _report_sizes(result: RunResult) -> None:
    full = result.checkpoint
    t = result.trainable_path
    if t is None:
        return
    msg = f"[vlpeft] trainable weights alone: {t} ({t.stat().st_size / 2**20:.2f} MiB)"
    if full is not None and full.is_file():
        msg += f"; full Lightning checkpoint: {full.stat().st_size / 2**20:.2f} MiB"
    print(msg)


def run_test(config: dict[str, Any]) -> RunResult:
    """test_only=True: load ``load_path`` (placement from the checkpoint unless given) and write the dumps."""
    from vlpeft.checkpoint import _as_list
    from vlpeft.model import VLPeftModule

    config = _finalize_label_sizes(config)
    if not _as_list(config["load_path"]):
        raise ConfigError("test_only=True needs load_path=<checkpoint of a trained run>")
    name, version = _run_dir(config, f"{config['exp_name']}_seed{config['seed']}_test_{load_name(config)}")
    run_dir = Path(config["log_dir"]) / name / f"version_{version}"
    dm = _datamodule(config)
    cfg = dict(config, stage="train", _dump_dir=str(config["log_dir"]), _dump_name=load_name(config))
    # build with a provisional placement, load once, then apply the placement the checkpoint carries
    module = VLPeftModule(cfg, placement=resolve_placement(config))
    reports = load_weights(module, config["load_path"], fresh_heads=False)
    for report in reports:
        print(f"[vlpeft] {report.summary()}")
    if not config["placement"]:
        saved = next((r.placement for r in reversed(reports) if r.placement), None)
        if saved:
            module.placement = Placement.from_dict(saved, source="checkpoint").validate(module.backbone.num_layers)
    placement = module.placement
    print(f"[vlpeft] placement: {placement.to_dict()}")
    trainer = build_trainer(cfg, name, version, enable_ckpt=False)
    trainer.test(module, datamodule=dm)
    result = RunResult(stage="test", run_dir=run_dir, placement=placement)
    result.metrics = getattr(module, "epoch_results", {})
    dumps = getattr(module, "test_dumps", {})
    result.submission = dumps.get("vqa") or next(iter(dumps.values()), None)
    return result

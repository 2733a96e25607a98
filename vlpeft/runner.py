"""Builds data, model and Trainer for a stage; a search writes the placement; the demo chains the stages.

    search  : fit with a search strategy → <run>/placement.json + <run>/placement.png
    train   : fit on a placement (placement=, skip_module= or insert_layer=) → checkpoints + trainable.safetensors
    test    : test_only=True → metrics, and for VQA <test run>/vqa_submit_<tested run>_v<N>_<ckpt>.json
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from pytorch_lightning.utilities.exceptions import SIGTERMException

from vlpeft._io import DISK_FULL, DiskFullError, write_bytes_atomic
from vlpeft.checkpoint import CheckpointError, load_weights, safe_globals_for, save_trainable, torch_load
from vlpeft.computation import after_fit, save_metrics
from vlpeft.config import ConfigError, from_sacred
from vlpeft.pruning import dropped_keys
from vlpeft.backbones import BACKBONES
from vlpeft.build import false_images
from vlpeft.config import RunConfig, RunSection, TrainerConfig, sections
from vlpeft.loggers import build_logger
from vlpeft.progress import progress_callbacks
from vlpeft.rundir import (VERSION_ENV, PlacementKeys, check_name_part, dump_name, ranks_join, release_run_dir, reserve_run_dir,
                           resolve_placement_source, update_run_info)
from vlpeft.search.placement import Placement
from vlpeft.backbones._folders import take_loaded
from vlpeft.checkpoint import _as_list, TRAINABLE_CONFIG
from vlpeft.data.generative import datamodule_for
from vlpeft.lightning import VLPeftModule
from vlpeft.pet._wrap import merge_all
from vlpeft.run_summary import print_summary
from vlpeft.tasks import TASKS
from vlpeft.tasks._base import all_tasks
from vlpeft.data.datamodule import LabelVocabError, answer_map, vocab_file_names


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
    computation: dict[str, Any] | None = None  # computation.json (vlpeft.computation)
    pruned_path: Path | None = None  # export_pruned=True: the deployable checkpoint
    placement_source: str | None = None  # the placement file (or checkpoint) a train / test run read its plan from
    last_checkpoint: Path | None = None
    best_metric: float | None = None  # val/the_metric of the kept (best) checkpoint
    dumps: dict[str, Path] = field(default_factory=dict)  # test: task → prediction / submission file


# ---------------------------------------------------------------------------------------------- helpers
def load_name(config: RunConfig | dict[str, Any]) -> str:
    load_path = sections(config).run.load_path
    paths = load_path if isinstance(load_path, (list, tuple)) else [load_path]
    first = next((p for p in paths if p), "")
    return Path(first).stem if first else "scratch"


def resolve_placement(config: RunConfig | dict[str, Any]) -> Placement | None:
    """The train stage's placement file (``placement=``: a path, its run folder, or ``latest`` of the same
    exp_name, recorded in run.json); None when the plan comes from ``skip_module`` / ``insert_layer``."""
    r = sections(config).run
    if not r.placement:
        return None
    where = PlacementKeys(r.placement, log_dir=r.log_dir, exp_name=r.exp_name, seed=r.seed, run_dir=r.run_dir)
    return Placement.load(resolve_placement_source(where, load_name(config)))


def check_placement(rc: RunConfig) -> Placement | None:
    """Read the train stage's placement file once before the run folder is reserved (a bad file leaves no empty
    version_N/), and refuse one that decides what this backbone lacks (a KAB/DVP prompt layer given to ViLT); a DVP
    run (``method=dvp`` or a non-zero ``insert_layer``) on a backbone without a prompt layer is refused too, instead of
    training it without its prompt."""
    backbone = rc.axes.backbone
    entry = BACKBONES.get(backbone)
    kinds = BACKBONES.get(entry.meta.get("family", backbone)).meta.get("candidate_kinds", ())
    if "insert" not in kinds and (rc.build.method == "dvp" or rc.build.insert_layer not in (None, 0)):
        raise ConfigError(
            f"method={rc.build.method} insert_layer={rc.build.insert_layer} asks for DVP's visual prompt, but "
            f"backbone={backbone} has no prompt layer (its candidates: {list(kinds)}); use a backbone with one "
            "(backbone=clip_plm), or drop the prompt (method=das insert_layer=0)")
    placement = resolve_placement(rc)
    if placement is None:
        return None
    if placement.insert_layer is not None and "insert" not in kinds:
        raise ConfigError(
            f"placement {placement.source or rc.run.placement} places a visual prompt (method={placement.method}, "
            f"insert_layer={placement.insert_layer}: from a KAB/DVP search), but backbone={backbone} takes no inserted "
            f"prompt; pass placement=<the placement.json of a DAS search on {backbone}> (or skip_module=[...]), or "
            "train a backbone with a prompt layer (backbone=clip_plm)")
    return placement


def _devices(t: TrainerConfig) -> dict[str, Any]:
    n_gpus = t.num_gpus if isinstance(t.num_gpus, int) else len(t.num_gpus)
    if n_gpus > 0:
        if not torch.cuda.is_available():
            raise ConfigError(f"num_gpus={n_gpus} but no GPU is visible; pass num_gpus=0 to run on the CPU")
        devices, accel = t.num_gpus, "gpu"
    else:
        devices, accel = int(t.cpu_devices), "cpu"
    n = n_gpus if n_gpus > 0 else devices
    strategy = t.strategy
    if strategy == "auto" and n * t.num_nodes > 1:
        strategy = "ddp"
    if strategy in ("ddp", "ddp_spawn"):
        from pytorch_lightning.strategies import DDPStrategy

        # a skipped block's modules (and the prompt modules of layers not drawn) get no gradient in a step
        strategy = DDPStrategy(find_unused_parameters=True, start_method="spawn" if strategy == "ddp_spawn" else "popen")
    precision = t.precision
    if accel == "cpu" and str(precision) in ("16", "16-mixed"):
        print("[vlpeft] precision=16 needs a GPU; running in 32-bit on the CPU")
        precision = 32
    elif str(precision) == "16":
        precision = "16-mixed"
    elif str(precision) == "bf16":
        precision = "bf16-mixed"
    return dict(accelerator=accel, devices=devices, strategy=strategy, precision=precision, world=n * t.num_nodes)


def grad_steps(t: TrainerConfig, world: int) -> int:
    """Gradient accumulation; the values were checked by ``vlpeft.config.check_trainer`` before any build."""
    return t.batch_size // (t.per_gpu_batchsize * world)


def _run_dir(config: RunConfig | dict[str, Any], name: str) -> tuple[str, int]:
    """Reserve the run folder once, in the launching process (atomic mkdir); DDP ranks join it via VERSION_ENV."""
    return name, reserve_run_dir(sections(config).run.log_dir, name)[1]


def _finalize_label_sizes(config: RunConfig | dict[str, Any]) -> Any:
    """A label size of 0 (``vqav2_label_size=0``) means: take it from the data — the task's vocabulary json next to
    the arrow files, else the train + val tables' answer labels as the original ViLT datamodule
    (``vlpeft.data.datamodule.answer_map``); for every active task with an answer vocabulary. Returns the config in
    the form given (a RunConfig, or the flat dict, updated in place)."""
    rc = sections(config)
    r = rc.run
    updates: dict[str, int] = {}
    for task in all_tasks():
        if not task.answer_vocab_file:
            continue
        key = task.option_keys[task.answer_vocab_option][0]
        if rc.tasks.option(task.name, task.answer_vocab_option, 1) == 0 and (r.loss_names or {}).get(task.name, 0) >= 1:
            try:
                names = vocab_file_names(task.name, r.data_splits)
                updates[key] = max(answer_map(r.data_root, names, task.name)) + 1
            except LabelVocabError as e:
                raise ConfigError(f"{e}\n(needed for {key}=0; or set {key} explicitly)") from e
    if not updates:
        return config
    if isinstance(config, RunConfig):
        return rc.updated(**updates)
    config.update(updates)
    return config


class _CleanDDPExit(pl.Callback):
    """Ranks otherwise sometimes abort at exit on CPU/gloo ("terminate called without an active exception")."""

    def teardown(self, trainer, pl_module, stage):
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized() and trainer.world_size > 1:
            dist.barrier()


class _AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoints written through ``vlpeft._io``'s atomic write: Lightning 2.6 writes last.ckpt in
    place, so a full disk would leave a truncated file where the resumable one was; here the old file stays whole
    and the error names the file and the space it needed."""

    def save_checkpoint(self, checkpoint, path, storage_options=None):
        buf = io.BytesIO()
        torch.save(checkpoint, buf)
        write_bytes_atomic(path, buf.getbuffer())


# ---------------------------------------------------------------------------------------------- stages
def build_trainer(config: RunConfig | TrainerConfig, run_dir_name: str, version: int, *, extra_callbacks=(),
                  enable_ckpt=True):
    from pytorch_lightning.callbacks import LearningRateMonitor, ModelCheckpoint

    t = config.trainer if isinstance(config, RunConfig) else config
    dev = _devices(t)
    accumulate = grad_steps(t, dev["world"])
    logger = build_logger(t, run_dir_name, version)  # config key logger (vlpeft.loggers)
    callbacks = list(extra_callbacks) + [_CleanDDPExit()] + progress_callbacks(t)
    if enable_ckpt:
        callbacks.append(ModelCheckpoint(monitor="val/the_metric", mode="max", save_top_k=1,
                                         filename="best-{epoch}-{step}"))
        # last.ckpt = the state after the latest epoch. Lightning 2.6's save_last=True only rewrites it when the
        # monitored metric improved, so a resume from "last" would restart from the best epoch instead.
        callbacks.append(ModelCheckpoint(monitor=None, save_top_k=1, filename="last", enable_version_counter=False))
    callbacks.append(LearningRateMonitor(logging_interval="step"))
    max_steps = t.max_steps
    trainer = pl.Trainer(
        accelerator=dev["accelerator"], devices=dev["devices"], num_nodes=t.num_nodes, strategy=dev["strategy"],
        precision=dev["precision"], max_epochs=t.max_epoch if max_steps is None else 1000,
        max_steps=-1 if max_steps is None else max_steps, accumulate_grad_batches=accumulate,
        val_check_interval=t.val_check_interval, fast_dev_run=t.fast_dev_run, logger=logger,
        callbacks=callbacks, log_every_n_steps=10, deterministic=False, benchmark=dev["accelerator"] == "gpu",
        num_sanity_val_steps=0, enable_progress_bar=True,
        gradient_clip_val=float(t.gradient_clip_val or 0.0) or None, plugins=[_AtomicCheckpointIO()],
    )
    return trainer


def run(config: dict[str, Any]) -> RunResult:
    """One stage of one run (the demo, which chains stages, lives in ``vlpeft.demo``)."""
    rc = from_sacred(config)
    check_name_part("exp_name", rc.run.exp_name)  # the run folder must stay inside log_dir
    pl.seed_everything(rc.run.seed, workers=True, verbose=False)
    result = run_test(rc) if rc.test_only else run_fit(rc, search=rc.stage == "search")
    from pytorch_lightning.utilities import rank_zero_only

    if getattr(rank_zero_only, "rank", 0) == 0:  # every run ends saying how it did and what it read and wrote
        print_summary(result, rc.run.load_path)
    return result


def _datamodule(config: RunConfig | dict[str, Any]):
    """``MTDataModule``, or the generative one (prefixes, targets, .h5 features, multi-task schedule) for a
    backbone registered with the ``generate`` capability and without ``classify``."""
    rc = sections(config)
    entry = BACKBONES.get(rc.axes.backbone)
    family = BACKBONES.get(entry.meta.get("family", entry.name))
    return datamodule_for(rc.data, frozenset(family.meta.get("capabilities", ("classify",))),
                          false_images=false_images(rc), tasks=rc.tasks)


def _build_module(rc: RunConfig, placement: Placement | None, *, fresh_heads: bool):
    take_loaded()  # forget loads of an earlier build in this process
    module = VLPeftModule(rc, placement=placement)  # its sections as resolved here; it saves the flat keys
    loaded = take_loaded()
    run_dir = rc.run.run_dir or rc.run.dump_dir
    if loaded and run_dir and Path(run_dir).is_dir() and os.environ.get("LOCAL_RANK", "0") == "0":
        update_run_info(run_dir, pretrained=loaded)  # which pretrained folders the run is on (name, layers, width)
    reports = load_weights(module, rc.run.load_path, fresh_heads=fresh_heads)
    for report in reports:
        print(f"[vlpeft] {report.summary()}")
    return module, reports


def run_fit(config: RunConfig | dict[str, Any], *, search: bool) -> RunResult:
    rc = _finalize_label_sizes(sections(config))
    r = rc.run
    if not search:
        check_placement(rc)  # read again below, with the run folder, where its source is recorded
    dm = _datamodule(rc)
    dm.check_data("fit")  # every file the run reads opens, with its columns, before a folder or a model exists
    name, version = _run_dir(rc, f"{r.exp_name}_seed{r.seed}_from_{load_name(rc)}")
    run_dir = Path(r.log_dir) / name / f"version_{version}"
    joined = os.environ.get(VERSION_ENV, "") != ""  # a DDP rank in a folder its launcher reserved
    os.environ[VERSION_ENV] = str(version)  # DDP ranks re-running this script land in the same folder
    try:
        with _released_on_early_failure(run_dir, joined):
            in_run = rc.updated(_run_dir=str(run_dir))
            placement = None if search else resolve_placement(in_run)
            module, _ = _build_module(in_run, placement, fresh_heads=True)
            print(f"[vlpeft] plan: skip {sorted(module.base_plan.skip)}, insert_layer {module.base_plan.insert_layer}"
                  + ("" if module.search is None else f" (search={type(module.search).__name__} decides "
                                                      f"{module.search.plan_field})"))
            print(f"[vlpeft] {module.trainable_summary()}")
            trainer = build_trainer(rc, name, version)
            resume = r.resume_from
            allowed = safe_globals_for(resume) if resume else []
        # training randomness (dropout, draws) starts from the seed whatever building the model consumed
        pl.seed_everything(r.seed, workers=True, verbose=False)
        try:
            # resume_from is unpickled as load_path is: weights_only, the containers' stand-ins only
            with torch.serialization.safe_globals(allowed):
                trainer.fit(module, datamodule=dm, ckpt_path=resume, weights_only=True)
        except SIGTERMException:
            raise SystemExit(_preempted(run_dir, "search" if search else "train")) from None
        except OSError as e:
            if e.errno in DISK_FULL and not isinstance(e, DiskFullError):
                raise _disk_full_in_run(e, run_dir) from None
            raise
    finally:
        os.environ.pop(VERSION_ENV, None)
    result = RunResult(stage="search" if search else "train", run_dir=run_dir,
                       placement_source=placement.source if placement is not None else None)
    result.metrics = getattr(module, "epoch_results", {})
    ckpt_cb = trainer.checkpoint_callback
    if ckpt_cb is not None:
        best = ckpt_cb.best_model_path or ckpt_cb.last_model_path
        result.checkpoint = Path(best) if best else None
        last = [cb.best_model_path for cb in trainer.checkpoint_callbacks if cb.monitor is None and cb.best_model_path]
        result.last_checkpoint = Path(last[0]) if last else None  # the unmonitored one keeps last.ckpt
        result.best_metric = None if ckpt_cb.best_model_score is None else float(ckpt_cb.best_model_score)
    if trainer.is_global_zero:
        result.placement = module.current_placement()
        if search:
            result.placement_path = run_dir / "placement.json"
            if not result.placement_path.is_file():  # written by the module at fit end; ddp_spawn keeps it there
                result.placement.save(result.placement_path)
            print(f"[vlpeft] search result: {result.placement.to_dict()}  → {result.placement_path}")
        if r.save_trainable:
            result.trainable_path = save_trainable(module, run_dir, rc.flat,  # trainable.json keeps the flat keys
                                                   result.placement.to_dict() if result.placement else None)
            _report_sizes(result)
        after_fit(module, dm, run_dir, rc.run, result, search=search)  # metrics.json, computation.json, export
    return result


def _disk_full_in_run(e: OSError, run_dir: Path) -> OSError:
    """A full disk met by a file Lightning or TensorBoard writes itself (hparams.yaml, event files): name it, and
    what is and is not whole."""
    what = e.filename or "a log file"
    try:
        free = f" ({shutil.disk_usage(run_dir.parent).free / 2**20:.1f} MiB free there)"
    except OSError:
        free = ""
    last = run_dir / "checkpoints" / "last.ckpt"
    again = f"resume with resume_from={last}" if last.is_file() else "run it again"
    return OSError(e.errno, f"no space left on the device writing {what} in the run {run_dir}{free}. That file is "
                   "Lightning's / TensorBoard's own, written in place, and may be incomplete; vlpeft's own files "
                   "(checkpoints, placement, trainable weights, metrics, dumps) are never half-written. Free space "
                   f"(or point log_dir= elsewhere), then {again}")


PREEMPTED_EXIT = 143  # 128 + SIGTERM, as a shell reports a process the signal ended


def _preempted(run_dir: Path, stage: str) -> int:
    """A run stopped by SIGTERM did not finish: say so, how to resume it, and give the exit status scripts see.

    (Lightning raises its SIGTERMException, a SystemExit without a code: the process would exit 0 and a script
    with ``set -e`` would go on, e.g. train on an older placement.)"""
    last = run_dir / "checkpoints" / "last.ckpt"
    argv = list(sys.argv)
    if Path(argv[0]).name in ("run.py", "run_search.py", "run_train.py"):
        argv = [a for a in argv if not a.startswith("resume_from=")]
        cmd = shlex.join(["python", *argv, *([] if "with" in argv else ["with"]), f"resume_from={last}"])
    else:
        cmd = f"the same command with resume_from={shlex.quote(str(last))}"
    if last.is_file():
        how = f"resume it (it continues from the last saved epoch, search state included) with:\n  {cmd}"
    else:
        how = "no checkpoint was saved before it stopped; run it again from the start"
    print(f"[vlpeft] the {stage} run in {run_dir} was stopped by SIGTERM before it finished (exit status "
          f"{PREEMPTED_EXIT}); {how}", file=sys.stderr, flush=True)
    return PREEMPTED_EXIT


@contextlib.contextmanager
def _released_on_early_failure(run_dir: Path, joined: bool):
    """A run that fails before training (or testing) starts gives its reserved run folder back (it holds only
    run.json), so failed attempts leave no empty ``version_N`` behind; a DDP rank never removes its launcher's."""
    try:
        yield
    except BaseException:
        if not joined:
            release_run_dir(run_dir)
        raise


def _report_sizes(result: RunResult) -> None:
    full = result.checkpoint
    t = result.trainable_path
    if t is None:
        return
    msg = f"[vlpeft] trainable weights alone: {t} ({t.stat().st_size / 2**20:.2f} MiB)"
    if full is not None and full.is_file():
        msg += f"; full Lightning checkpoint: {full.stat().st_size / 2**20:.2f} MiB"
    print(msg)


def run_test(config: RunConfig | dict[str, Any]) -> RunResult:
    """test_only=True: load ``load_path`` (placement from the checkpoint unless given) and write the dumps."""
    rc = _finalize_label_sizes(sections(config))
    r = rc.run
    if not _as_list(r.load_path):
        raise ConfigError("test_only=True needs load_path=<checkpoint of a trained run>")
    check_placement(rc)
    dm = _datamodule(rc)
    dm.check_data("test")  # before a folder is reserved and the model and its checkpoint are loaded
    name, version = _run_dir(rc, f"{r.exp_name}_seed{r.seed}_test_{load_name(rc)}")
    run_dir = Path(r.log_dir) / name / f"version_{version}"
    with _released_on_early_failure(run_dir, os.environ.get(VERSION_ENV, "") != ""):
        cfg = rc.updated(stage="train", _dump_dir=str(run_dir), _dump_name=dump_name(r.load_path))
        placement = resolve_placement(rc)
        if placement is None:  # the plan the checkpoint was trained with (peeked before building the model)
            placement = saved_placement(r.load_path)
        module, reports = _build_module(cfg, placement, fresh_heads=False)
        check_loaded(module, reports, r)
        if r.merge_pet:
            merge_pet(module, r)
        print(f"[vlpeft] plan: skip {sorted(module.base_plan.skip)}, insert_layer {module.base_plan.insert_layer}")
        trainer = build_trainer(cfg, name, version, enable_ckpt=False)
    with ranks_join(version):  # DDP ranks write into this run folder too
        try:
            trainer.test(module, datamodule=dm)
        except SIGTERMException:
            print(f"[vlpeft] the test run in {run_dir} was stopped by SIGTERM before it finished; its dumps are "
                  "incomplete or missing: run it again", file=sys.stderr, flush=True)
            raise SystemExit(PREEMPTED_EXIT) from None
    result = RunResult(stage="test", run_dir=run_dir, placement=module.current_placement(),
                       placement_source=placement.source if placement is not None else None)
    result.metrics = getattr(module, "epoch_results", {})
    if trainer.is_global_zero:
        save_metrics(run_dir, result.metrics)
    dumps = result.dumps = dict(getattr(module, "test_dumps", None) or {})
    # the submission file: the dump of the task that declares one (VQA's EvalAI file), else the first
    result.submission = next((p for t, p in dumps.items() if t in TASKS and TASKS.build(t).submission),
                             next(iter(dumps.values()), None))
    return result


def merge_pet(module, r: RunSection) -> int:
    """``merge_pet=True`` (test only): fold every LoRA delta into the frozen projection weight it sits on
    (``vlpeft.pet._wrap.merge_all``), so inference runs the plain projections; predictions equal the unmerged
    ones up to float rounding. Returns how many projections were merged."""
    try:
        n = merge_all(module.backbone)
    except RuntimeError as e:
        raise ConfigError(f"merge_pet=True: {e}; set merge_pet=False for pet={r.pet!r}") from None
    if n == 0:
        raise ConfigError(f"merge_pet=True but pet={r.pet!r} put no mergeable module (LoRA shared by "
                          f"every task) on a projection; set merge_pet=False")
    print(f"[vlpeft] merge_pet: LoRA merged into {n} projection weights")
    return n


def saved_placement(load_path) -> Placement | None:
    """The placement stored with the last file of ``load_path`` that has one (checkpoint entry or trainable.json)."""
    for path in reversed(_as_list(load_path)):
        p = Path(path)
        if p.suffix == ".safetensors":
            side = p.with_name(TRAINABLE_CONFIG)
            saved = json.loads(side.read_text()).get("placement") if side.is_file() else None
        else:
            saved = _peek(p).get("vlpeft_placement")
        if saved:
            placement = Placement.from_dict(saved, source=str(p))
            object.__setattr__(placement, "source", str(p))  # the run's closing block names where its plan came from
            return placement
    return None


def check_loaded(module, reports, r: RunSection) -> None:
    """A test run must not evaluate randomly initialised PET modules or heads: refuse, naming them and the fixes."""
    missing = set().union(*(set(r.missing) for r in reports)) if reports else set()
    if len(reports) > 1:  # a later file may supply what an earlier one lacked
        missing = set.intersection(*(set(r.missing) for r in reports))
    missing -= set(dropped_keys(module))  # a pruned export (vlpeft.export) leaves out what the plan never runs
    pet = sorted(k for k in missing if k.removeprefix("backbone.") in module.pet_report.param_names())
    heads = sorted(k for k in missing if k.startswith("heads."))
    if not (pet or heads):
        return
    what = []
    if pet:
        what.append(f"{len(pet)} tensors of PET modules (pet={module.pet_report.recipe.name}; first: {pet[0]})")
    if heads:
        what.append(f"{len(heads)} head tensors (first: {heads[0]})")
    msg = (f"load_path {r.load_path} lacks {' and '.join(what)}: they would run with random weights. "
           "If the checkpoint has no PET modules (a released backbone), pass pet=none; to evaluate random "
           "weights on purpose, pass allow_random_init=True")
    if not r.allow_random_init:
        raise CheckpointError(msg)
    print(f"[vlpeft] WARNING: {msg}", flush=True)


def _peek(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}  # load_weights names the missing file
    try:  # memory-mapped: reading one entry of a large checkpoint costs little
        ckpt = torch_load(path, mmap=True)
    except CheckpointError:
        raise
    except Exception:  # noqa: BLE001 - an old (non-zip) file cannot be memory-mapped
        try:
            ckpt = torch_load(path)
        except CheckpointError:
            raise
        except Exception:  # noqa: BLE001 - load_weights reports what is wrong with the file
            return {}
    return ckpt if isinstance(ckpt, dict) else {}

"""The experiment logger of a run (config key ``logger``): ``tensorboard`` (default), ``csv`` or ``wandb``.

Every choice keeps the run folder ``<log_dir>/<name>/version_<N>/`` (``vlpeft.rundir``): TensorBoard and Lightning's
``CSVLogger`` (``metrics.csv``, ``hparams.yaml``) write there and Lightning puts ``checkpoints/`` under the first
logger's folder. ``wandb`` therefore runs beside a TensorBoard logger (first, so the folder stays the same) and
keeps its own files in the run folder too; wandb is optional and imported only when asked for.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

from vlpeft.sections import key, take

LOGGERS = ("tensorboard", "csv", "wandb")


@dataclass(frozen=True)
class LoggerKeys:
    """What choosing and building the logger reads (the trainer section has both)."""

    logger: str = key(default="tensorboard", shared=True)  # the key's default is the base config's
    log_dir: str = key(default="result", shared=True)


def check_logger(config: LoggerKeys | Any, error: type[Exception] = ValueError) -> None:
    """Refuse a bad ``logger`` value (or a missing wandb) before any model is built (``error``: the exception
    class to raise; ``vlpeft.config`` passes its ``ConfigError``)."""
    name = take(LoggerKeys, config).logger
    if name not in LOGGERS:
        raise error(f"logger={name!r} is not one of {list(LOGGERS)}; e.g. logger=csv")
    if name == "wandb" and importlib.util.find_spec("wandb") is None:
        raise error("logger=wandb needs the wandb package, which is not installed: `pip install wandb` "
                          "(or use logger=tensorboard / logger=csv)")


def build_logger(config: LoggerKeys | Any, name: str, version: int) -> Any:
    """The Lightning logger(s) writing into ``<log_dir>/<name>/version_<version>``."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    keys = take(LoggerKeys, config)
    check_logger(keys)
    kind = keys.logger
    if kind == "csv":
        import warnings

        # the run folder already holds the run's config files (vlpeft.rundir), never an earlier metrics.csv: a new
        # run or resume gets a new version folder, so Lightning's "exists and is not empty" warning is noise here
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        return CSVLogger(keys.log_dir, name=name, version=version)
    tb = TensorBoardLogger(keys.log_dir, name=name, version=version, default_hp_metric=False)
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        return [tb, WandbLogger(name=f"{name}/version_{version}", save_dir=tb.log_dir)]
    return tb


__all__ = ["LOGGERS", "LoggerKeys", "build_logger", "check_logger"]

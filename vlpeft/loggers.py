"""The experiment logger of a run (config key ``logger``): ``tensorboard`` (default), ``csv`` or ``wandb``.

Every choice keeps the run folder ``<log_dir>/<name>/version_<N>/`` (``vlpeft.rundir``): TensorBoard and Lightning's
``CSVLogger`` (``metrics.csv``, ``hparams.yaml``) write there and Lightning puts ``checkpoints/`` under the first
logger's folder. ``wandb`` therefore runs beside a TensorBoard logger (first, so the folder stays the same) and
keeps its own files in the run folder too; wandb is optional and imported only when asked for.
"""

from __future__ import annotations

import importlib.util
from typing import Any

LOGGERS = ("tensorboard", "csv", "wandb")


def check_logger(config: dict[str, Any], error: type[Exception] = ValueError) -> None:
    """Refuse a bad ``logger`` value (or a missing wandb) before any model is built (``error``: the exception
    class to raise; ``vlpeft.config`` passes its ``ConfigError``)."""
    name = config.get("logger", "tensorboard")
    if name not in LOGGERS:
        raise error(f"logger={name!r} is not one of {list(LOGGERS)}; e.g. logger=csv")
    if name == "wandb" and importlib.util.find_spec("wandb") is None:
        raise error("logger=wandb needs the wandb package, which is not installed: `pip install wandb` "
                          "(or use logger=tensorboard / logger=csv)")


def build_logger(config: dict[str, Any], name: str, version: int) -> Any:
    """The Lightning logger(s) writing into ``<log_dir>/<name>/version_<version>``."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    check_logger(config)
    kind = config.get("logger", "tensorboard")
    if kind == "csv":
        import warnings

        # the run folder already holds the run's config files (vlpeft.rundir), never an earlier metrics.csv: a new
        # run or resume gets a new version folder, so Lightning's "exists and is not empty" warning is noise here
        warnings.filterwarnings("ignore", message=r"Experiment logs directory .* exists and is not empty")
        return CSVLogger(config["log_dir"], name=name, version=version)
    tb = TensorBoardLogger(config["log_dir"], name=name, version=version, default_hp_metric=False)
    if kind == "wandb":
        from pytorch_lightning.loggers import WandbLogger

        return [tb, WandbLogger(name=f"{name}/version_{version}", save_dir=tb.log_dir)]
    return tb


__all__ = ["LOGGERS", "build_logger", "check_logger"]

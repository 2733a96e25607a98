"""The data side's section of a run's config: what the datamodules, their datasets and collates read.

Built once per run by ``vlpeft.config.sections`` (``RunConfig.data``) and passed to ``datamodule_for``; a
datamodule given a flat dict (tests, notebooks) builds it through the same reader (``vlpeft.sections.take``).
Every key here belongs to another section (the base config, or the generative tasks' keys): the defaults below are
the fallbacks of a direct build from a partial dict, as the datamodule's earlier ``.get`` defaults were.

This module imports only ``vlpeft.sections``, so the config can import it without torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from vlpeft.sections import key


def _int_or(fallback: int):
    return lambda v: int(v or fallback)


@dataclass(frozen=True)
class DataSection:
    """The data keys of a run (original key names)."""

    datasets: list = key(convert=list)  # dataset keys (vlpeft.data.datasets.DATASETS)
    per_gpu_batchsize: int = key(convert=int)
    image_size: int = key(convert=int)
    max_text_len: int = key(convert=int)
    train_transform_keys: list = key(convert=list)
    val_transform_keys: list = key(convert=list)
    data_root: str = key(default="", shared=True)
    data_splits: Any = key(default=None, shared=True)  # {dataset: {split: [arrow stems]}} overrides
    num_workers: int = key(convert=int, default=0, shared=True)
    draw_false_text: int = key(convert=_int_or(0), default=0, shared=True)
    seed: int = key(convert=int, default=0, shared=True)
    tokenizer: str = key(default="bert-base-uncased", shared=True)
    loss_names: Mapping[str, float] | None = key(default=None, shared=True)  # the MLM collate when mlm >= 1
    mlm_prob: float = key(convert=float, default=0.15, shared=True)
    whole_word_masking: bool = key(convert=bool, default=False, shared=True)
    # generative datamodule (VL-Adapter's data): multi-task schedule, .h5 features and their grid
    multitask_sampling: str = key(convert=str, default="roundrobin", shared=True)
    visual_features: Any = key(default="", shared=True)  # a folder / file, or {dataset: folder}; "" = images
    n_boxes: int = key(convert=_int_or(36), default=36, shared=True)

    @property
    def mlm(self) -> bool:
        """Whether the collate masks tokens (the pre-training loss ``mlm`` switched on)."""
        return float((self.loss_names or {}).get("mlm", 0) or 0) >= 1


__all__ = ["DataSection"]

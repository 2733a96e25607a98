"""MTDataModule: the datasets of the run's data section (``datasets``), their splits, loaders and answer vocabularies."""

from __future__ import annotations

import itertools
import json
import os
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytorch_lightning as pl
import torch
import torch.distributed as dist
from torch.utils.data import ConcatDataset, DataLoader, Dataset, DistributedSampler, RandomSampler

from vlpeft.data.arrow import (DATA_DOC_HINT, ArrowSchemaError, MissingArrowFilesError, arrow_path, check_files,
                               load_split)
from vlpeft.data.collate import Collator
from vlpeft.data.datasets import DATASETS, BaseDataset, CaptionDataset, VQADataset
from vlpeft.data.splits import SPLITS  # the table lives apart so the config can import it without torch
from vlpeft.data.tokenizer import load_tokenizer
from vlpeft.data.section import DataSection
from vlpeft.sections import is_settings, take
from vlpeft.tasks import TASKS, Task, TaskSettings, settings_from_config

UNKNOWN_ANSWER = "unknown"
STAGE_SPLITS = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",), "predict": ("test",)}


def vocab_files() -> dict[str, str]:
    """Label vocabularies (task → json file next to the arrow files, else derived from the train + val splits'
    answers / answer_labels): every task that declares ``answer_vocab_file``."""
    return {n: t.answer_vocab_file for n in TASKS.names() if (t := TASKS.build(n)).answer_vocab_file}


def dataset_of_task(task: str) -> str:
    """The dataset key whose items train ``task`` (its vocabulary's splits), e.g. the VQAv2 files for vqa."""
    keys = [k for k, cls in DATASETS.items() if cls.task == task]
    if not keys:
        raise ValueError(f"no dataset gives task {task!r} (datasets: {sorted(DATASETS)})")
    return keys[0]


class AnswerMap(dict):
    """id → answer; ids outside the vocabulary read as "unknown" (picklable, unlike a defaultdict(lambda))."""

    def __missing__(self, key: Any) -> str:
        return UNKNOWN_ANSWER


_SEED_STRIDE = 1_000_003


class EpochRandomSampler(RandomSampler):
    """A shuffled order that is a function of ``(seed, epoch)`` alone, never of the global RNG's position.

    Lightning calls ``set_epoch`` before every training epoch, so a run resumed at epoch e sees the same order
    (and, through the loader's ``generator`` reseeded here, the same worker seeds) as the uninterrupted run.
    Under DDP Lightning replaces it with a ``DistributedSampler``, whose order is also (seed, epoch)-determined.
    """

    def __init__(self, dataset: Dataset, seed: int, generator: torch.Generator):
        super().__init__(dataset)
        self.seed, self.epoch, self.loader_generator = int(seed), 0, generator
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        # the DataLoader draws its workers' base seed from this generator when an epoch's iterator is made
        self.loader_generator.manual_seed(self.seed * _SEED_STRIDE + 2 * self.epoch + 1)

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * _SEED_STRIDE + 2 * self.epoch)
        return iter(torch.randperm(len(self.data_source), generator=g).tolist())


class SearchSampler(DistributedSampler):
    """Shuffled, seeded order over the search split that changes every pass, and can start mid-pass.

    The model keeps one iterator for the whole run and calls ``set_epoch`` per pass; if nobody does, each new
    ``__iter__`` advances the epoch itself, so the reward batches never repeat one fixed batch.
    ``skip`` drops that many leading indices of the next pass only: a resumed search continues where the
    interrupted one stopped (the model derives the pass and offset from the number of reward batches seen).
    """

    def __init__(self, dataset: Dataset, seed: int):
        if dist.is_available() and dist.is_initialized():
            replicas, rank = dist.get_world_size(), dist.get_rank()
        else:
            replicas, rank = 1, 0
        super().__init__(dataset, num_replicas=replicas, rank=rank, shuffle=True, seed=seed)
        self._set_since_iter = False
        self._passes = 0
        self.skip = 0

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        self._set_since_iter = True

    def __iter__(self) -> Iterator[int]:
        if self._passes > 0 and not self._set_since_iter:
            self.epoch += 1
        self._passes += 1
        self._set_since_iter = False
        skip, self.skip = self.skip, 0
        return itertools.islice(super().__iter__(), skip, None)


class LabelVocabError(ValueError):
    """The answer vocabulary (hence the label size) cannot be read from the vocab json nor derived from the tables."""


def _answer_map_from_vocab(path: Path) -> AnswerMap:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise LabelVocabError(f"{path}: not a readable JSON answer vocabulary ({type(e).__name__}: {e})") from e
    if isinstance(data, dict) and "label2ans" in data:
        data = data["label2ans"]
    if isinstance(data, list):
        return AnswerMap(enumerate(str(a) for a in data))
    if isinstance(data, dict):
        if all(str(k).lstrip("-").isdigit() for k in data):  # {"0": "yes", ...}
            return AnswerMap((int(k), str(v)) for k, v in data.items())
        return AnswerMap((int(v), str(k)) for k, v in data.items())  # ans2label
    raise LabelVocabError(f"{path}: expected a list of answers or an answer↔id dict, got {type(data).__name__}")


def vocab_file_names(task: str, data_splits: Mapping[str, Any] | None = None) -> list[str]:
    """The arrow stems whose answers define ``task``'s vocabulary: its train + val files (``SPLITS``, with the
    config's ``data_splits`` overrides), as the original's datamodule used its train and val datasets."""
    key = dataset_of_task(task)
    splits = {s: list(v) for s, v in SPLITS[key].items()}
    for split, names in ((data_splits or {}).get(key) or {}).items():
        splits[split] = [names] if isinstance(names, str) else list(names)
    return list(dict.fromkeys(splits["train"] + splits["val"]))


def _check_data_root(data_root: str | os.PathLike | None) -> Path:
    if data_root is None or not str(data_root):
        raise LabelVocabError("data_root is empty; set data_root=<folder with the .arrow files>")
    root = Path(data_root)
    if not root.is_dir():
        raise LabelVocabError(f"data_root={str(data_root)!r} does not exist (or is not a folder); "
                              f"{DATA_DOC_HINT}")
    return root


def answer_map_from_tables(data_root: str | os.PathLike, names: Sequence[str]) -> AnswerMap:
    """id → answer derived from the ``answers`` / ``answer_labels`` columns of the given files, by the rule of the
    original ViLT ``VQAv2DataModule.setup``: flatten every (answer, label) pair of every question of every row, in
    file order (null rows skipped); ``answer2id = dict(zip(answers, labels))`` — the last label seen for an answer
    wins; the label size is ``max(answer2id.values()) + 1``; ``id2answer[label]`` is, among the answers whose final
    label is ``label``, the one first seen last (the original sorted ``answer2id`` by label, stably, and let later
    entries overwrite). Columns are flattened in Arrow, not converted row by row."""
    root = _check_data_root(data_root)
    names = list(dict.fromkeys(names))
    missing = [n for n in names if not arrow_path(root, n).is_file()]
    if not names or missing:
        listing = "\n".join(f"  {'MISSING ' if n in missing else 'ok      '}{arrow_path(root, n)}" for n in names)
        raise LabelVocabError(
            f"cannot derive the answer vocabulary under data_root={str(data_root)!r}: "
            + (f"{len(missing)} of {len(names)} arrow files are missing:\n{listing}" if names else "no files named")
            + f"\n{DATA_DOC_HINT}")
    try:
        st = load_split(root, names, ("answers", "answer_labels"), VQADataset.column_types)
    except ArrowSchemaError as e:
        raise LabelVocabError(f"cannot derive the answer vocabulary: {e}") from e
    answers = pc.list_flatten(pc.list_flatten(st.column("answers")))
    labels = pc.list_flatten(pc.list_flatten(st.column("answer_labels")))
    n = min(len(answers), len(labels))  # zip() semantics
    if n == 0:
        raise LabelVocabError(f"no answers in {[str(p) for p in st.paths]} (columns answers/answer_labels are "
                              f"empty): cannot derive the answer vocabulary")
    answers = answers.slice(0, n).combine_chunks() if isinstance(answers, pa.ChunkedArray) else answers.slice(0, n)
    labels = labels.slice(0, n)
    labels = (labels.combine_chunks() if isinstance(labels, pa.ChunkedArray) else labels)
    enc = pc.dictionary_encode(pc.cast(answers, pa.string()))  # codes in first-seen order = dict insertion order
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    labs = pc.fill_null(labels, -1).to_numpy(zero_copy_only=False).astype(np.int64)
    valid = ~np.asarray(pc.is_null(answers).to_numpy(zero_copy_only=False), dtype=bool)
    codes, labs = codes[valid], labs[valid]
    # last label per answer: first occurrence in the reversed sequence
    uniq, first_rev = np.unique(codes[::-1], return_index=True)
    last_label = labs[::-1][first_rev]  # aligned with uniq (ascending code = insertion order)
    order = np.lexsort((uniq, last_label))  # by label, then insertion order; the last of each label wins
    strings = enc.dictionary.to_pylist()
    amap = AnswerMap()
    for k in order:
        amap[int(last_label[k])] = str(strings[int(uniq[k])])
    return AnswerMap(sorted(amap.items()))


def answer_map(data_root: str | os.PathLike, names: Sequence[str] | None = None, task: str = "vqa") -> AnswerMap:
    """id → answer for ``task`` (vqa / gqa): ``<data_root>/<task vocab json>`` when present (written by
    ``python -m write_arrow``), else derived from the train + val tables (``answer_map_from_tables``); ``names``
    defaults to ``vocab_file_names(task)``."""
    files = vocab_files()
    if task not in files:
        raise ValueError(f"task {task!r} has no answer vocabulary (only {sorted(files)})")
    root = _check_data_root(data_root)
    vocab = root / files[task]
    if vocab.is_file():
        amap = _answer_map_from_vocab(vocab)
        if not amap:
            raise LabelVocabError(f"{vocab} is empty: no answers, hence no label size")
        return amap
    names = vocab_file_names(task) if names is None else list(names)
    try:
        return answer_map_from_tables(root, names)
    except LabelVocabError as e:
        raise LabelVocabError(f"{e}\nor provide {vocab} (python -m write_arrow writes it)") from None


def vqa_label_size(data_root: str | os.PathLike, names: Sequence[str] | None = None) -> int:
    """The VQA label size (``vqav2_label_size``): from ``vqav2_label_vocab.json`` next to the arrow files when it is
    there, else derived from the ``answers``/``answer_labels`` columns of the train + val files ``names`` as the
    original ViLT datamodule does (``num_class = max(answer2id.values()) + 1``, see ``answer_map_from_tables``) —
    which makes arrow files written by the original ViLT scripts usable without setting the size by hand.
    Raises ``LabelVocabError`` naming data_root and the files when neither works."""
    amap = answer_map(data_root, names, "vqa")
    return max(amap) + 1


class MTDataModule(pl.LightningDataModule):
    def __init__(self, config: DataSection | Mapping[str, Any], false_images: int = 0,
                 tasks: TaskSettings | None = None):
        """``config``: the run's data section (``RunConfig.data``; a flat dict is read into one, and gives the
        tasks' section too); ``tasks``: the run's task section (``RunConfig.tasks``: label sizes, generation
        lengths). ``false_images``: negative images per caption item (``vlpeft.build.false_images``:
        draw_false_image when a task reads them, else 0)."""
        super().__init__()
        self.false_images = int(false_images)
        if tasks is None:  # one section builder reads the flat dict; a data section alone gives the defaults
            tasks = TaskSettings() if is_settings(config) else settings_from_config(config)
        self.data = d = take(DataSection, config)
        self.dataset_keys: list[str] = list(d.datasets)
        unknown = [k for k in self.dataset_keys if k not in DATASETS]
        if not self.dataset_keys or unknown:
            raise ValueError(f"config datasets={self.dataset_keys}: unsupported {unknown or 'empty list'}; "
                             f"supported: {sorted(DATASETS)} (vg/sbu/gcc pre-training sets are not)")
        if not d.data_root:
            raise ValueError("config data_root is empty; set data_root=<folder with the .arrow files>")
        self.data_root = Path(d.data_root)
        self.splits = {k: {s: list(v) for s, v in SPLITS[k].items()} for k in self.dataset_keys}
        for key, over in (d.data_splits or {}).items():
            if key not in self.splits:
                continue
            for split, names in over.items():
                if split not in ("train", "val", "test"):
                    raise ValueError(f"data_splits[{key!r}] has split {split!r}; use train/val/test")
                self.splits[key][split] = [names] if isinstance(names, str) else list(names)
        self.batch_size = d.per_gpu_batchsize
        self.num_workers = d.num_workers
        self.image_size = d.image_size
        self.max_text_len = d.max_text_len
        self.train_transform_keys = list(d.train_transform_keys)
        self.val_transform_keys = list(d.val_transform_keys)
        self.draw_false_text = int(d.draw_false_text or 0)
        self.seed = d.seed
        self._answer_maps: dict[str, AnswerMap] = {}
        self.tokenizer = load_tokenizer(d.tokenizer)
        self.task_settings = tasks
        # the tasks its datasets' items train (their collate fields, label sizes, vocabularies)
        self.tasks: dict[str, Task] = {DATASETS[k].task: TASKS.build(DATASETS[k].task).configured(self.task_settings)
                                       for k in self.dataset_keys if DATASETS[k].task in TASKS}
        self.mlm = d.mlm
        self.collate = Collator(self.tokenizer, label_sizes=self._label_sizes(), mlm=self.mlm,
                                mlm_prob=d.mlm_prob, whole_word_masking=d.whole_word_masking)
        self.eval_collate = Collator(self.tokenizer, label_sizes=self._label_sizes()) if self.mlm else self.collate
        self.datasets: dict[str, dict[str, BaseDataset]] = {"train": {}, "val": {}, "test": {}}

    # ------------------------------------------------------------------ building
    def _label_sizes(self) -> dict[str, int]:
        """Label size per task with an answer vocabulary: its option (``vqav2_label_size``, ``gqa_label_size``),
        read from the vocabulary when 0 and the task's data is in the run."""
        sizes: dict[str, int] = {}
        for name in TASKS.names():
            task = self.tasks.get(name) or TASKS.build(name).configured(self.task_settings)
            size = task.label_size()
            if size is None:
                continue
            if size <= 0 and task.answer_vocab_file and name in self.tasks:
                size = self.num_answers(name)
            sizes[name] = size
        return sizes

    def files_for(self, splits: Sequence[str]) -> list[str]:
        return [n for k in self.dataset_keys for s in splits for n in self.splits[k][s]]

    def dataset_class(self, key: str) -> type[BaseDataset]:
        return DATASETS[key]

    def uses_features(self, key: str) -> bool:
        """Whether ``key``'s datasets read visual features instead of the image bytes (generative runs)."""
        return False

    def check_data(self, stage: str = "fit") -> None:
        """The runner's check before it builds the model (seconds to minutes of loading for a large backbone):
        every arrow file ``stage`` reads exists, opens (memory-mapped: milliseconds, nothing converted), passes
        ``open_arrow``'s structural checks (every offset included: once per run, a few ms per file) and has the
        columns its dataset reads, of the right types, and the files of one split agree on their types. ONE error
        lists every problem with its file and the fix."""
        splits = STAGE_SPLITS.get(stage, ("train", "val", "test"))
        check_files(self.data_root, self.files_for(splits), what=f"datasets {self.dataset_keys} splits {list(splits)}")
        problems, seen = [], set()
        for key in self.dataset_keys:
            cls = self.dataset_class(key)
            for split in splits:
                names = tuple(self.splits[key][split])
                if (key, names) in seen:
                    continue
                seen.add((key, names))
                try:  # what the dataset itself runs when it opens the split (it reopens in setup: milliseconds)
                    load_split(self.data_root, names, cls.needed_columns(self.uses_features(key)), cls.column_types,
                               all_offsets=True)
                except (ArrowSchemaError, MissingArrowFilesError) as e:
                    problems.append(f"{key} {split}: {e}")
        if problems:
            raise ArrowSchemaError(f"{len(problems)} split(s) under data_root={str(self.data_root)!r} cannot be "
                                   f"read:\n" + "\n".join(problems) + f"\n{DATA_DOC_HINT}")

    def build_dataset(self, key: str, split: str, **overrides: Any) -> BaseDataset:
        kwargs: dict[str, Any] = dict(
            transform_keys=self.train_transform_keys if split == "train" else self.val_transform_keys,
            image_size=self.image_size, tokenizer=self.tokenizer, max_text_len=self.max_text_len, split=split,
            draw_false_text=self.draw_false_text, seed=self.seed)
        if self.false_images and issubclass(DATASETS[key], CaptionDataset):
            kwargs["draw_false_image"] = self.false_images
        kwargs.update(overrides)
        return self.dataset_class(key)(self.data_root, self.splits[key][split], **kwargs)

    def setup(self, stage: str | None = None) -> None:
        splits = STAGE_SPLITS.get(stage or "fit", ("train", "val"))
        if stage is None:
            splits = ("train", "val", "test")
        todo = [s for s in splits if not self.datasets[s]]
        # every missing file of every dataset and split in ONE error
        check_files(self.data_root, self.files_for(todo), what=f"datasets {self.dataset_keys} splits {list(todo)}")
        for split in todo:
            for key in self.dataset_keys:
                self.datasets[split][key] = self.build_dataset(key, split)

    def _concat(self, split: str) -> Dataset:
        if not self.datasets[split]:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])
        parts = [self.datasets[split][k] for k in self.dataset_keys]
        return parts[0] if len(parts) == 1 else ConcatDataset(parts)

    def set_epoch(self, epoch: int) -> None:
        """Advance the seeded negative-caption draws; call from the LightningModule's on_train_epoch_start."""
        for split in self.datasets.values():
            for ds in split.values():
                ds.set_epoch(epoch)

    # ------------------------------------------------------------------ loaders
    def _loader(self, ds: Dataset, *, shuffle: bool, collate: Collator, batch_size: int | None = None,
                sampler=None, persistent: bool = False, generator: torch.Generator | None = None) -> DataLoader:
        gen = generator or torch.Generator().manual_seed(self.seed)  # order and worker seeds follow the config seed
        return DataLoader(ds, batch_size=batch_size or self.batch_size, shuffle=shuffle if sampler is None else None,
                          sampler=sampler, num_workers=self.num_workers, collate_fn=collate, generator=gen,
                          persistent_workers=persistent and self.num_workers > 0, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        # under DDP Lightning swaps the sampler for a DistributedSampler (use_distributed_sampler=True)
        ds = self._concat("train")
        gen = torch.Generator()
        return self._loader(ds, shuffle=False, collate=self.collate, sampler=EpochRandomSampler(ds, self.seed, gen),
                            generator=gen)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self._concat("val"), shuffle=False, collate=self.eval_collate)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self._concat("test"), shuffle=False, collate=self.eval_collate)

    def search_dataloader(self, batch_size: int | None = None) -> DataLoader:
        """Shuffled, seeded loader over the val split for search reward batches (rank-sharded under DDP)."""
        ds = self._concat("val")
        return self._loader(ds, shuffle=False, collate=self.eval_collate, batch_size=batch_size,
                            sampler=SearchSampler(ds, seed=self.seed), persistent=True)

    # ------------------------------------------------------------------ retrieval recall
    def _caption_key(self, dataset: str | None) -> str:
        keys = [k for k in self.dataset_keys if issubclass(DATASETS[k], CaptionDataset)]
        key = dataset or (keys[0] if keys else None)
        if key is None or key not in keys:
            raise ValueError(f"recall needs a caption dataset (f30k/coco) in config datasets={self.dataset_keys}")
        return key

    def recall_text_dataset(self, split: str = "val", dataset: str | None = None) -> CaptionDataset:
        """One item per (image, caption) of ``split``: text and ``iid`` only (no image decode, no negatives)."""
        return self.build_dataset(self._caption_key(dataset), split, draw_false_text=0, text_only=True)

    def recall_image_dataset(self, split: str = "val", dataset: str | None = None) -> CaptionDataset:
        """One item per image of ``split``: image, ``iid``, ``image_key``."""
        return self.build_dataset(self._caption_key(dataset), split, draw_false_text=0, image_only=True)

    def recall_loader(self, ds: Dataset, batch_size: int | None = None) -> DataLoader:
        return self._loader(ds, shuffle=False, collate=self.eval_collate, batch_size=batch_size)

    # ------------------------------------------------------------------ answer vocabularies
    def id2answer(self, task: str) -> AnswerMap:
        """Class id → answer string for VQA / GQA predictions ("unknown" for ids outside the vocabulary)."""
        if task in self._answer_maps:
            return self._answer_maps[task]
        files = vocab_files()
        if task not in files:
            raise ValueError(f"id2answer: task {task!r} has no answer vocabulary (only {sorted(files)})")
        key = dataset_of_task(task)
        splits = SPLITS[key] if key not in self.splits else self.splits[key]
        amap = answer_map(self.data_root, list(dict.fromkeys(splits["train"] + splits["val"])), task)
        self._answer_maps[task] = amap
        return amap

    def label2ans(self, task: str) -> list[str]:
        amap = self.id2answer(task)
        n = max(amap) + 1 if amap else 0
        return [amap[i] for i in range(n)]

    def num_answers(self, task: str) -> int:
        amap = self.id2answer(task)
        return (max(amap) + 1) if amap else 0

"""Data for generative tasks (VL-BART / VL-T5, ViT + GPT-2): datasets, collate and the multi-task datamodule.

What VL-Adapter's ``VL-T5/src/{vqa,gqa,nlvr,caption}_clip_data.py`` and ``multitask{,_data}.py`` do, on the arrow
files ``write_arrow`` writes:

- **Input text** = task prefix + text, tokenised with the datamodule's tokenizer (config ``tokenizer``),
  truncated to 20 tokens for VQA / GQA (hard-coded in the originals), to ``max_text_len`` otherwise. Prefixes (``--use_tasks_prompts``, ``multitask.py``): ``"vqa: "``, ``"gpa: "``
  (sic: the originals' GQA prefix has this typo; models trained with it expect it), ``"nlvr: "``, ``"caption: "``
  (the caption input is the prefix alone). ``use_tasks_prompts=False`` drops them, as the originals.
- **Targets** (``target_ids``, -100 padded, special tokens included as ``tokenizer.encode`` gives them):
  VQA / GQA — one answer drawn with probability proportional to its label score (``np.random.multinomial``
  in the originals; here a generator seeded by (seed, epoch, index), so reruns and workers agree); NLVR2 —
  ``"true"`` / ``"false"``; captions — the caption (train: one sample per caption; val / test: one sample per
  image carrying every reference, no target). Truncation as the originals: VQA answers to 10 tokens, captions
  to ``gen_max_length``, GQA / NLVR2 targets not at all.
- **Visual input**: with ``visual_features`` set (VL-Adapter's ``.h5`` features; ``vlpeft.data.features``)
  the batch carries ``vis_feats`` (B, V, F) + ``vis_pos`` (B, V, 4) and no pixels; else the image pixels
  (``image`` / ``image_0`` + ``image_1``, as the classification collate pads them) for the backbone's own
  extractor. NLVR2 with features: both images' tokens concatenated (B, 2V, F) with ``img_order_ids`` (B, 2V),
  0 on the first image and 1 on the second (the originals' image-order embedding ids).
- **Multi-task** (``GenerativeDataModule`` with several datasets): single-task batches, per-task batch sizes as
  ``multitask.py`` (vqa ×1, gqa ×100/60, nlvr2 ×20/60, caption ×50/60 of ``per_gpu_batchsize``) and
  ``MultitaskLoader``'s schedule: ``roundrobin`` = every batch of every task once per epoch, in a seeded
  shuffled order; ``balanced`` = ``sum(len) // n_tasks`` batches of each task (a task that runs out restarts its
  loader — the original's ``next()`` would end the epoch early).
- **Video-text** (TVQA, How2QA, TVC, YC2C; ``vlpeft.data.video``): the frames come from the converted
  ``<source>_videos.arrow`` (resized to ``n_boxes``, zero boxes), never ``visual_features``; the task prefix
  goes after the text (``Task.input_text``); every task takes ``per_gpu_batchsize`` (``multitask_video.py``).
"""

from __future__ import annotations

import random
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler

from vlpeft.backbones._generative import pad_targets
from vlpeft.data.arrow import check_files
from vlpeft.data.collate import IMAGE_KEYS, CollateError, batch_task, collate_images
from vlpeft.data.datamodule import EpochRandomSampler, MTDataModule
from vlpeft.data.datasets import (BoolQDataset, CaptionDataset, CSQADataset, GQADataset, GSM8KDataset, NLVR2Dataset,
                                  ScienceQADataset, VQADataset)
from vlpeft.data.features import FeatureError, FeatureReader, image_id_candidates
from vlpeft.data.section import DataSection
from vlpeft.data.video import VIDEO_DATASETS, VideoStore
from vlpeft.tasks import TASKS, Task, TaskSettings
from vlpeft.tasks import boolq as boolq_task
from vlpeft.tasks import csqa as csqa_task
from vlpeft.tasks import gsm8k as gsm8k_task
from vlpeft.tasks import scienceqa as scienceqa_task

SAMPLING = ("roundrobin", "balanced")
# per-sample fields the collate passes through as lists (a task adds its own: Task.list_fields)
GEN_LIST_KEYS = ("text", "table_name", "image_key", "image_0_key", "image_1_key", "qid", "identifier", "target_text")


def task_prompts() -> dict[str, str]:
    """The originals' task prefixes (``--use_tasks_prompts``): each task's ``prompt``."""
    return {n: t.prompt for n in TASKS.names() if (t := TASKS.build(n)).prompt}


TASK_PROMPTS: dict[str, str] = task_prompts()


def _task(name: str) -> Task:
    if name not in TASKS:
        raise CollateError(f"generative batch of task {name!r}, which is not a registered task ({TASKS.names()})")
    return TASKS.build(name)


def multitask_batch_size(task: str, batch_size: int) -> int:
    """A task's batch in a multi-task run: ``per_gpu_batchsize`` × its ``multitask_ratio`` (multitask.py)."""
    num, den = TASKS.build(task).multitask_ratio
    return max(1, int(batch_size * num / den))


# ---------------------------------------------------------------------------------------------- datasets
class GenerativeMixin:
    """Shared by the generative datasets: no tokenisation per item (the collate tokenises the batch), seeded
    answer draws, and ``vis_feats`` / ``vis_pos`` from a ``FeatureReader`` instead of decoding the images."""

    feature_columns: tuple[str, ...] = ("image_id",)  # what names a row's image in the feature files

    def __init__(self, *args: Any, features: FeatureReader | None = None, **kwargs: Any):
        self.features = features
        super().__init__(*args, **kwargs)

    @classmethod
    def needed_columns(cls, features: bool = False) -> tuple[str, ...]:
        base = super().needed_columns(features)
        return tuple(dict.fromkeys(base + cls.feature_columns)) if features else base

    def encode(self, text: str) -> dict[str, list[int]]:
        return {}  # the generative collate tokenises prefix + text for the whole batch

    def get_image(self, row: int, column: str = "image"):
        return None if self.features is not None else super().get_image(row, column)

    def base_item(self, row: int, cap: int) -> dict[str, Any]:
        item = super().base_item(row, cap)
        item.pop("text_encoding", None)
        if self.features is not None:
            for col in self.image_columns:
                item.pop("image" if col == "image" else col, None)
            self.add_features(item, row)
        return item

    def rng(self, i: int) -> np.random.Generator:
        return np.random.default_rng((self.seed, self.epoch, int(i)))

    def feature_ids(self, row: int) -> list[list[str]]:
        """Candidate feature ids of each image of ``row`` (one list per image)."""
        image_id = self.table.value("image_id", row)
        split = self.table.value("split", row) if "split" in self.table.table.column_names else None
        return [image_id_candidates(self.key, image_id, split)]

    def add_features(self, item: dict[str, Any], row: int) -> None:
        try:
            parts = [self.features.read(c) for c in self.feature_ids(row)]
        except FeatureError as e:
            _, local, path = self.table.locate(row)
            raise FeatureError(f"{path} row {local}: {e}") from e
        item["vis_feats"] = torch.cat([f for f, _ in parts])
        item["vis_pos"] = torch.cat([p for _, p in parts])
        if len(parts) > 1:
            item["img_order_ids"] = torch.cat([torch.full((f.shape[0],), k, dtype=torch.long)
                                               for k, (f, _) in enumerate(parts)])

    def draw_answer(self, i: int, answers: Sequence[str], scores: Sequence[float]) -> str:
        """One answer with probability ∝ its score (the originals' multinomial draw); "" when all scores are 0."""
        total = float(sum(scores))
        if not answers or total <= 0:
            return ""
        p = np.asarray(scores, dtype=np.float64) / total
        return str(answers[int(self.rng(i).choice(len(answers), p=p))])


class GenVQADataset(GenerativeMixin, VQADataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if item.get("vqa_answer"):  # test questions have no answers, hence no target
            item["target_text"] = self.draw_answer(i, item["vqa_answer"], item["vqa_scores"])
        return item


class GenGQADataset(GenerativeMixin, GQADataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        if item.get("gqa_answer"):
            item["target_text"] = self.draw_answer(i, item["gqa_answer"], item["gqa_scores"])
        return item


class GenNLVR2Dataset(GenerativeMixin, NLVR2Dataset):
    required_columns = NLVR2Dataset.required_columns + ("identifier",)
    feature_columns = ()  # the identifier names both images

    def feature_ids(self, row: int) -> list[list[str]]:
        ident = self.table.value("identifier", row)
        return [image_id_candidates(self.key, identifier=ident, image_index=k) for k in (0, 1)]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        row, _ = self.index(i)
        item["identifier"] = str(self.table.value("identifier", row))
        item["target_text"] = "true" if item["nlvr2_label"] == 1 else "false"
        return item


class GenCaptionDataset(GenerativeMixin, CaptionDataset):
    """COCO (or F30K) Karpathy captions: train = one item per caption (its target); val / test (built with
    ``image_only=True``) = one item per image with every reference caption and no target."""

    key = "coco"
    task = "caption"
    required_columns = ("image", "caption", "image_id")

    def __getitem__(self, i: int) -> dict[str, Any]:
        row, cap = self.index(i)
        item = self.base_item(row, cap)
        item["text"] = ""  # the input is the task prefix alone (caption_clip_data.py)
        item["image_id"] = self.table.value("image_id", row)
        if cap >= 0:
            item["target_text"] = self.text_at(row, cap)
        else:
            item["references"] = self.row_texts(row)
        return item


class GenF30KDataset(GenCaptionDataset):
    key = "f30k"


# --- LaVIN-DAS's benchmarks: the whole LaVIN prompt is the text, LaVIN's answer text the target, and the gold
# answer as its scorer compares it in <task>_gold (vlpeft.tasks._lavin). The test split reads the prompts of
# LaVIN-DAS's 0-shot test files where they differ from training (BoolQ's header, GSM8K's last newline).
class GenBoolQDataset(GenerativeMixin, BoolQDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        row, cap = self.index(i)
        question = str(self.table.list_item("questions", row, cap))
        item["text"] = boolq_task.lavin_prompt(str(self.table.value("passage", row)), question,
                                               test=self.split == "test")
        yes = bool(item["boolq_label"])
        item["target_text"], item["boolq_gold"] = boolq_task.lavin_target(yes), boolq_task.lavin_gold(yes)
        return item


class GenScienceQADataset(GenerativeMixin, ScienceQADataset):
    """QCM-ALE: needs the converter's ``lecture`` / ``solution`` columns (LaVIN's target text)."""

    required_columns = ScienceQADataset.required_columns + ("lecture", "solution")

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        row, cap = self.index(i)
        item["text"] = scienceqa_task.lavin_prompt(item["text"])
        item["target_text"] = scienceqa_task.lavin_target(item["scienceqa_label"],
                                                          str(self.table.value("lecture", row) or ""),
                                                          str(self.table.value("solution", row) or ""))
        item["scienceqa_gold"] = str(item["scienceqa_label"])
        item.setdefault("scienceqa_meta", self.meta(row, cap, item["scienceqa_num_choices"]))
        return item


class GenCSQADataset(GenerativeMixin, CSQADataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        row, cap = self.index(i)
        choices = [str(c) for c in self.table.list_item("choices", row, cap)]
        labels = [str(c) for c in self.table.list_item("choice_labels", row, cap)]
        key = str(self.table.list_item("answers", row, cap))
        if key not in labels:
            raise self._label_error(row, f"answer key {key!r} is not one of the option labels {labels}")
        item["text"] = csqa_task.lavin_prompt(str(self.table.value("question_concept", row)), item["text"], choices,
                                              labels)
        item["target_text"], item["csqa_gold"] = csqa_task.lavin_target(key, choices, labels), key
        return item


class GenGSM8KDataset(GenerativeMixin, GSM8KDataset):
    def __getitem__(self, i: int) -> dict[str, Any]:
        item = super().__getitem__(i)
        row, cap = self.index(i)
        answer = str(self.table.list_item("answers", row, cap))
        try:
            item["target_text"], item["gsm8k_gold"] = gsm8k_task.lavin_target(answer), gsm8k_task.gold_number(answer)
        except ValueError as e:
            raise self._label_error(row, str(e)) from e
        item["text"] = gsm8k_task.lavin_prompt(item["text"], test=self.split == "test")
        return item


GEN_DATASETS: dict[str, type] = {c.key: c for c in (GenVQADataset, GenGQADataset, GenNLVR2Dataset,
                                                      GenCaptionDataset, GenF30KDataset, GenBoolQDataset,
                                                      GenScienceQADataset, GenCSQADataset, GenGSM8KDataset)}
GEN_DATASETS.update(VIDEO_DATASETS)  # VALUE video-text: frames from their own arrow files (vlpeft.data.video)
# config datasets → the task its samples train
DATASET_TASK: dict[str, str] = {k: c.task for k, c in GEN_DATASETS.items()}


# ---------------------------------------------------------------------------------------------- collate
class GenerativeCollator:
    """Items of one task → the generative batch (keys: ``vlpeft.backbones._generative``)."""

    def __init__(self, tokenizer: Any, max_text_len: int = 40, gen_max_length: int = 20,
                 prompts: Mapping[str, str] | None = None):
        self.tokenizer = tokenizer
        self.max_text_len, self.gen_max_length = int(max_text_len), int(gen_max_length)
        self.prompts = dict(task_prompts() if prompts is None else prompts)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        task, first = batch_task(items), items[0]
        t = _task(task)
        batch: dict[str, Any] = {"task": task}
        prompt = self.prompts.get(task, "")
        has_target = [it.get("target_text") is not None for it in items]
        if t.joint_tokens:
            self.joint_tokens(items, batch, [t.input_text(str(it.get("text", "")), prompt) for it in items], has_target)
        else:
            enc = self.tokenizer([t.input_text(str(it.get("text", "")), prompt) for it in items], padding="longest",
                                 truncation=True, max_length=t.text_max_length or self.max_text_len,
                                 return_tensors="pt")
            batch["text_ids"], batch["text_masks"] = enc["input_ids"].long(), enc["attention_mask"].long()

        if any(has_target) and not t.joint_tokens:
            limit = self.gen_max_length if t.target_max_length == "gen" else t.target_max_length
            ids = self.tokenizer([str(it.get("target_text") or "") for it in items], truncation=limit is not None,
                                 max_length=limit)["input_ids"]
            batch["target_ids"] = pad_targets([s if keep else [] for s, keep in zip(ids, has_target)])

        if "vis_feats" in first:
            shapes = {tuple(it["vis_feats"].shape) for it in items}
            if len(shapes) > 1:
                raise CollateError(f"visual features of one batch differ in shape {sorted(shapes)}; "
                                   f"set n_boxes so every image gives the same number of tokens")
            batch["vis_feats"] = torch.stack([it["vis_feats"] for it in items]).float()
            batch["vis_pos"] = torch.stack([it["vis_pos"] for it in items]).float()
            if "img_order_ids" in first:
                batch["img_order_ids"] = torch.stack([it["img_order_ids"] for it in items])
        batch.update(collate_images(items, [k for k in IMAGE_KEYS if first.get(k) is not None]))

        for k in GEN_LIST_KEYS + t.list_fields:
            if k in first:
                batch[k] = [it.get(k) for it in items]
        t.generative_collate(items, batch)
        return batch


    def special_ids(self) -> tuple[int, int]:
        """BOS and EOS of the tokenizer (a BERT vocabulary, as the tiny test LMs use: [CLS] and [SEP])."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.cls_token_id
        eos = tok.eos_token_id if tok.eos_token_id is not None else tok.sep_token_id
        if bos is None or eos is None:
            raise CollateError(f"tokenizer {type(tok).__name__} has no BOS / EOS (nor CLS / SEP) token; a decoder-only "
                               f"generative task needs both (set tokenizer to the LM's own)")
        return int(bos), int(eos)

    def joint_tokens(self, items: Sequence[Mapping[str, Any]], batch: dict[str, Any], prompts: Sequence[str],
                     has_target: Sequence[bool]) -> None:
        """LaVIN's ``tokenize``: BOS + tokens(prompt + answer) + EOS, truncated to ``max_text_len``; the first
        ``1 + len(tokens(prompt))`` positions are the prompt (``text_ids``), the rest the target. Without an answer
        (test) the prompt alone."""
        bos, eos = self.special_ids()
        prompt_ids = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        full_ids = self.tokenizer([p + str(it.get("target_text") or "") if keep else p
                                   for p, it, keep in zip(prompts, items, has_target)],
                                  add_special_tokens=False)["input_ids"]
        texts, targets = [], []
        for p_ids, f_ids, keep in zip(prompt_ids, full_ids, has_target):
            seq = ([bos] + list(f_ids) + ([eos] if keep else []))[: self.max_text_len]
            n = min(1 + len(p_ids), len(seq))
            texts.append(seq[:n])
            targets.append(seq[n:])
        width = max(len(s) for s in texts)
        ids = torch.full((len(texts), width), self.pad_id, dtype=torch.long)
        masks = torch.zeros((len(texts), width), dtype=torch.long)
        for b, s in enumerate(texts):
            ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
            masks[b, :len(s)] = 1
        batch["text_ids"], batch["text_masks"] = ids, masks
        if any(has_target):
            batch["target_ids"] = pad_targets(targets)


# ---------------------------------------------------------------------------------------------- multi-task
class MultitaskLoader:
    """Single-task batches from several loaders, scheduled per epoch as VL-Adapter's ``MultitaskLoader``.

    ``set_epoch(e)`` fixes the epoch's task sequence (a function of (seed, e) only) and the loaders' sampler
    epochs; iterating yields ``len(self)`` batches, each from the loader its task names.
    """

    def __init__(self, loaders: Mapping[str, DataLoader], sampling: str = "roundrobin", seed: int = 0,
                 n_batches: int | None = None, shuffle: bool = True):
        if sampling not in SAMPLING:
            raise ValueError(f"multitask_sampling={sampling!r}: choose one of {list(SAMPLING)}")
        if not loaders:
            raise ValueError("MultitaskLoader needs at least one task loader")
        self.loaders, self.sampling, self.seed = dict(loaders), sampling, int(seed)
        self.n_batches, self.shuffle = n_batches, shuffle
        self.task_lengths = {t: len(dl) for t, dl in self.loaders.items()}
        empty = [t for t, n in self.task_lengths.items() if n == 0]
        if empty:
            raise ValueError(f"tasks {empty} have no training batch (empty split)")
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        for dl in self.loaders.values():
            if hasattr(dl.sampler, "set_epoch"):
                dl.sampler.set_epoch(self.epoch)
        if self.sampling == "roundrobin":
            order = [t for t, n in self.task_lengths.items() for _ in range(n)]
        else:
            n = self.n_batches or sum(self.task_lengths.values()) // len(self.loaders)
            order = [t for t in self.task_lengths for _ in range(n)]
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + self.epoch).shuffle(order)
        self.epoch_tasks = order

    def __len__(self) -> int:
        return len(self.epoch_tasks)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iters = {t: iter(dl) for t, dl in self.loaders.items()}
        for task in self.epoch_tasks:
            try:
                yield next(iters[task])
            except StopIteration:  # balanced sampling: restart a task that ran out
                iters[task] = iter(self.loaders[task])
                yield next(iters[task])


class EvalLoader:
    """Evaluation over several tasks: every batch of every task once, single-task batches, the tasks taken in
    turn (one batch each, exhausted tasks dropped) so that ``limit_val_batches`` still sees every task."""

    def __init__(self, loaders: Mapping[str, DataLoader]):
        self.loaders = dict(loaders)

    def __len__(self) -> int:
        return sum(len(dl) for dl in self.loaders.values())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        iters = [iter(dl) for dl in self.loaders.values()]
        while iters:
            alive = []
            for it in iters:
                try:
                    yield next(it)
                except StopIteration:
                    continue
                alive.append(it)
            iters = alive


class GenerativeDataModule(MTDataModule):
    """``MTDataModule`` for generative backbones: the generative datasets and collate, ``.h5`` features when
    ``visual_features`` is set, and the multi-task schedule when ``datasets`` names several tasks.

    Keys read (besides ``MTDataModule``'s), from the data section: ``visual_features`` (a folder / file for every
    dataset, or ``{dataset: folder}``), ``n_boxes``, ``multitask_sampling``; from the task section:
    ``use_tasks_prompts``, ``gen_max_length``.
    """

    def __init__(self, config: DataSection | Mapping[str, Any], tasks: TaskSettings | None = None):
        super().__init__(config, tasks=tasks)
        d = self.data
        bad = [k for k in self.dataset_keys if k not in GEN_DATASETS]
        if bad:
            raise ValueError(f"datasets {bad} have no generative task; generative backbones train on "
                             f"{sorted(GEN_DATASETS)} (captioning: coco)")
        tasks = [GEN_DATASETS[k].task for k in self.dataset_keys]
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"datasets {self.dataset_keys} give one task twice ({tasks}); keep one per task")
        self.sampling = d.multitask_sampling
        if self.sampling not in SAMPLING:
            raise ValueError(f"multitask_sampling={self.sampling!r}: choose one of {list(SAMPLING)}")
        ts = self.task_settings
        self.collate = self.eval_collate = GenerativeCollator(
            self.tokenizer, self.max_text_len, ts.gen_max_length, task_prompts() if ts.use_tasks_prompts else {})
        self.n_boxes = int(d.n_boxes or 36)
        video = [k for k in self.dataset_keys if k in VIDEO_DATASETS]
        if video and d.visual_features:
            raise FeatureError(f"datasets {video} read their frames from <source>_videos.arrow (write_arrow "
                               f"{video[0]}), not from visual_features; unset visual_features "
                               f"(visual_features='')")
        self.readers = self._feature_readers(d.visual_features or "", self.n_boxes)
        self._train_loader: MultitaskLoader | None = None

    def _feature_readers(self, spec: Any, n_boxes: int) -> dict[str, FeatureReader]:
        if not spec:
            return {}
        if isinstance(spec, Mapping):
            unknown = sorted(set(spec) - set(self.dataset_keys))
            if unknown:
                raise FeatureError(f"visual_features names datasets {unknown} that are not in datasets="
                                   f"{self.dataset_keys}")
            missing = [k for k in self.dataset_keys if k not in spec]
            if missing:
                raise FeatureError(f"visual_features gives no folder for datasets {missing}; give one per dataset "
                                   f"(features and images cannot be mixed in one run)")
            return {k: FeatureReader(spec[k], n_boxes) for k in self.dataset_keys}
        reader = FeatureReader(spec, n_boxes)
        return {k: reader for k in self.dataset_keys}

    def dataset_class(self, key: str) -> type:
        return GEN_DATASETS[key]

    def check_data(self, stage: str = "fit") -> None:
        """``MTDataModule.check_data``, plus the video tables (``<source>_videos.arrow``) the video sets read."""
        super().check_data(stage)
        sources = sorted({VIDEO_DATASETS[k].source for k in self.dataset_keys if k in VIDEO_DATASETS})
        check_files(self.data_root, [f"{s}_videos" for s in sources],
                    what=f"the frames of datasets {self.dataset_keys}")
        for s in sources:
            VideoStore(self.data_root, s).rows()  # opens it and checks its columns (milliseconds)

    def uses_features(self, key: str) -> bool:
        return key in self.readers

    def build_dataset(self, key: str, split: str, **overrides: Any):
        reader = self.readers.get(key)
        kwargs: dict[str, Any] = dict(
            transform_keys=self.train_transform_keys if split == "train" else self.val_transform_keys,
            image_size=self.image_size, tokenizer=self.tokenizer, max_text_len=self.max_text_len, split=split,
            draw_false_text=0, seed=self.seed, features=reader)
        if TASKS.build(GEN_DATASETS[key].task).eval_per_image and split != "train":
            kwargs["image_only"] = True  # one sample per image, all references
        if key in VIDEO_DATASETS:  # the frames, resized to n_boxes, come from <source>_videos.arrow
            kwargs.pop("features")
            kwargs["n_boxes"] = self.n_boxes
        kwargs.update(overrides)
        return self.dataset_class(key)(self.data_root, self.splits[key][split], **kwargs)

    def _task_loader(self, key: str, split: str, batch_size: int, train: bool) -> DataLoader:
        ds = self.datasets[split][key]
        gen = torch.Generator().manual_seed(self.seed)
        # Lightning shards DataLoaders, not these custom iterables: each rank takes its share here (evaluation
        # pads with repeats, which the caption metric and the dumps de-duplicate by id)
        if dist.is_available() and dist.is_initialized():
            sampler = DistributedSampler(ds, shuffle=train, seed=self.seed)
        elif train:
            sampler = EpochRandomSampler(ds, self.seed, gen)
        else:
            sampler = None
        return DataLoader(ds, batch_size=batch_size, sampler=sampler, shuffle=False, num_workers=self.num_workers,
                          collate_fn=self.collate, generator=gen, drop_last=False)

    def _ensure(self, split: str) -> None:
        if not self.datasets[split]:
            self.setup({"train": "fit", "val": "validate", "test": "test"}[split])

    def train_dataloader(self):
        if len(self.dataset_keys) == 1:
            return super().train_dataloader()
        self._ensure("train")
        loaders = {GEN_DATASETS[k].task: self._task_loader(k, "train", multitask_batch_size(GEN_DATASETS[k].task,
                                                                                             self.batch_size), True)
                   for k in self.dataset_keys}
        self._train_loader = MultitaskLoader(loaders, self.sampling, self.seed)
        return self._train_loader

    def _eval_loader(self, split: str):
        if len(self.dataset_keys) == 1:
            return self._loader(self._concat(split), shuffle=False, collate=self.eval_collate)
        self._ensure(split)
        return EvalLoader({GEN_DATASETS[k].task: self._task_loader(k, split, self.batch_size, False)
                           for k in self.dataset_keys})

    def val_dataloader(self):
        return self._eval_loader("val")

    def test_dataloader(self):
        return self._eval_loader("test")

    def search_dataloader(self, batch_size: int | None = None) -> DataLoader:
        if len(self.dataset_keys) > 1:
            raise NotImplementedError("a search over a multi-task generative run is not wired (which task's val "
                                      "batches would score the plans?); search on one task, or run stage=train")
        return super().search_dataloader(batch_size)

    def set_epoch(self, epoch: int) -> None:
        super().set_epoch(epoch)
        if self._train_loader is not None:
            self._train_loader.set_epoch(epoch)


def datamodule_for(config: DataSection | Mapping[str, Any], capabilities: frozenset[str], false_images: int = 0,
                   tasks: TaskSettings | None = None) -> MTDataModule:
    """The datamodule a backbone needs: ``GenerativeDataModule`` for one that generates and cannot classify.
    ``config``: the run's data section (a flat dict is read into one); ``tasks``: its task section.
    ``false_images``: negative images per caption item (METER's ITM; ``vlpeft.build.false_images``)."""
    caps = set(capabilities)
    if "generate" in caps and "classify" not in caps:
        return GenerativeDataModule(config, tasks=tasks)
    return MTDataModule(config, false_images=false_images, tasks=tasks)


__all__ = ["DATASET_TASK", "GEN_DATASETS", "GenBoolQDataset", "GenCSQADataset", "GenCaptionDataset", "GenGQADataset",
           "GenGSM8KDataset", "GenNLVR2Dataset", "GenScienceQADataset", "GenVQADataset",
           "GenerativeCollator", "GenerativeDataModule", "MultitaskLoader",
           "EvalLoader", "TASK_PROMPTS", "datamodule_for", "multitask_batch_size", "task_prompts"]

"""Task datasets over ViLT-format arrow files (schemas: seeds.md §2.2–2.6).

One item per (row, text) — or per row when ``image_only`` — with the image decoded lazily. Items are plain dicts;
``vlpeft.data.collate.Collator`` turns a list of them into the Batch described in /work/contracts.md.

Every column stays in the memory-mapped Arrow table and is read per item (a few µs per cell): opening a split
converts nothing to Python (the item → (row, text) index is one int64 array of per-row text offsets, computed from
the list offsets), so a VQAv2-sized split opens in milliseconds without turning any column into Python objects, and
pickling a dataset into a DataLoader worker carries no column data (the mapping is re-opened there).
``bench/data_loading.py`` measures this against the original ViLT reader.
"""

from __future__ import annotations

import io
import os
from typing import Any, Callable, Sequence

import numpy as np
import pyarrow as pa
import torch
from PIL import Image
from torch.utils.data import Dataset

from vlpeft.data.arrow import ArrowSchemaError, SplitTable, load_split
from vlpeft.data.splits import SPLITS
from vlpeft.data.transforms import keys_to_transforms


class ImageDecodeError(RuntimeError):
    """Image bytes in an arrow file that PIL cannot decode."""


class LabelError(ValueError):
    """A label value in an arrow file that the dataset does not know."""


def dedupe(items: Sequence[str]) -> list[str]:
    """Order-preserving de-duplication (the original's ``list(set(...))`` depended on the hash seed)."""
    return list(dict.fromkeys(items))


class BaseDataset(Dataset):
    """Rows of one split's arrow files; subclasses say which columns they read and what an item carries."""

    key: str = ""  # the dataset's name in config ``datasets`` (its DATASETS key)
    task: str = ""  # the task its items train (``batch["task"]``; a key of vlpeft.tasks.TASKS)
    image_columns: tuple[str, ...] = ("image",)
    text_column: str | None = "questions"
    required_columns: tuple[str, ...] = ("image", "questions")
    # the type each read column must have (``vlpeft.data.arrow.type_matches`` specs), checked when a file opens so
    # a wrong one is named with its file instead of failing (or converting silently) in a worker mid-epoch
    column_types: dict[str, str] = {"image": "binary", "image_0": "binary", "image_1": "binary",
                                    "questions": "list<str>", "caption": "list<str>", "image_id": "scalar",
                                    "identifier": "scalar"}
    remove_duplicate: bool = False

    def __init__(self, data_root: str | os.PathLike, names: Sequence[str], *, transform_keys: Sequence[str],
                 image_size: int, tokenizer: Any, max_text_len: int = 40, split: str = "train",
                 draw_false_text: int = 0, seed: int = 0, image_only: bool = False, text_only: bool = False,
                 draw_false_image: int = 0):
        if image_only and text_only:
            raise ValueError("a dataset cannot be image_only and text_only at once")
        self.data_root = str(data_root)
        self.names = list(names)
        self.split = split
        self.transform_keys = list(transform_keys)
        self.image_size = int(image_size)
        self.transforms: list[Callable] = keys_to_transforms(self.transform_keys, self.image_size)
        self.tokenizer = tokenizer
        self.max_text_len = int(max_text_len)
        self.draw_false_text = int(draw_false_text)
        self.draw_false_image = int(draw_false_image)  # caption datasets only (METER's ITM negatives)
        self.seed = int(seed)
        self.image_only = image_only
        self.text_only = text_only
        self._st: SplitTable | None = load_split(self.data_root, self.names, self.columns(), self.column_types)
        # shared memory: DataLoader workers (forked or spawned, persistent or not) see set_epoch() at once
        self._epoch = torch.zeros((), dtype=torch.long).share_memory_()
        # _text_start[r]: item index of row r's first text (rows without texts own no item); None: one item per row
        self._text_start: np.ndarray | None = None
        self._n_items = len(self.table)
        if self.text_column is not None and not image_only:
            counts = self._text_counts()
            self._text_start = np.zeros(len(counts) + 1, dtype=np.int64)
            np.cumsum(counts, out=self._text_start[1:])
            self._n_items = int(self._text_start[-1])

    # ------------------------------------------------------------------ plumbing
    @property
    def table(self) -> SplitTable:
        if self._st is None:  # re-opened after unpickling (spawned workers): the mapping is not pickled
            self._st = load_split(self.data_root, self.names, self.columns(), self.column_types)
        return self._st

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_st"] = None
        return state

    @classmethod
    def needed_columns(cls, features: bool = False) -> tuple[str, ...]:
        """The columns this dataset reads (``features``: visual features instead of the image bytes)."""
        return cls.required_columns

    def columns(self) -> tuple[str, ...]:
        return self.needed_columns(getattr(self, "features", None) is not None)

    def _row_texts(self, value: Any) -> list[str]:
        texts = [] if value is None else [str(t) for t in value]
        return dedupe(texts) if self.remove_duplicate else texts

    def _text_counts(self) -> np.ndarray:
        """Number of texts per row: the list lengths from the Arrow offsets; after de-duplication (captions) a scan
        of the column, one record batch at a time, that keeps nothing."""
        col = self.table.column(self.text_column)
        if not (pa.types.is_list(col.type) or pa.types.is_large_list(col.type)):
            _, _, path = self.table.locate(0)
            raise ArrowSchemaError(f"{path}: column {self.text_column!r} has type {col.type}, expected a list of "
                                   f"strings (one list per row); rewrite the file with write_arrow")
        if not self.remove_duplicate:
            return self.table.list_lengths(self.text_column)
        counts = np.zeros(len(col), dtype=np.int64)
        r = 0
        for chunk in col.chunks:
            for start in range(0, len(chunk), 4096):  # bounded transient memory, whatever the file's batch size
                for value in chunk.slice(start, 4096).to_pylist():
                    counts[r] = len(self._row_texts(value))
                    r += 1
        return counts

    @property
    def texts(self) -> "RowTexts":
        """``texts[row]``: the row's texts (de-duplicated where the dataset does), read from the table per call."""
        return RowTexts(self)

    def row_texts(self, row: int) -> list[str]:
        return self._row_texts(self.table.value(self.text_column, row))

    def text_at(self, row: int, cap: int) -> str:
        if self.remove_duplicate:
            return self.row_texts(row)[cap]
        return str(self.table.list_item(self.text_column, row, cap))

    def set_epoch(self, epoch: int) -> None:
        self._epoch.fill_(int(epoch))

    @property
    def epoch(self) -> int:
        return int(self._epoch)

    def __len__(self) -> int:
        return self._n_items

    def index(self, i: int) -> tuple[int, int]:
        """Item index → (global row, text index or -1)."""
        i = int(i)
        if not 0 <= i < self._n_items:
            raise IndexError(f"{type(self).__name__} index {i} out of range ({self._n_items} items)")
        if self._text_start is None:
            return i, -1
        row = int(np.searchsorted(self._text_start, i, side="right")) - 1
        return row, i - int(self._text_start[row])

    # ------------------------------------------------------------------ pieces
    def image_key(self, row: int) -> str:
        name, local, _ = self.table.locate(row)
        return f"{name}:{local}"

    def get_image(self, row: int, column: str = "image") -> torch.Tensor:
        data = self.table.binary(column, row)
        try:
            img = Image.open(io.BytesIO(data))
            if img.mode == "RGB":
                img.load()  # convert("RGB") of an RGB image is a copy of the same pixels
            else:
                img = img.convert("RGB")
        except Exception as e:  # any PIL failure: name the file and the row instead of substituting a sample
            name, local, path = self.table.locate(row)
            size = "None" if data is None else f"{len(data)} bytes"
            raise ImageDecodeError(f"cannot decode the image in {path} row {local} column {column!r} ({size}): "
                                   f"{type(e).__name__}: {e}") from e
        # several transform keys gave the original several views; every model read view 0 only
        return self.transforms[0](img)

    def encode(self, text: str) -> dict[str, list[int]]:
        enc = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.max_text_len,
                             return_special_tokens_mask=True,
                             return_offsets_mapping=bool(getattr(self.tokenizer, "is_fast", False)))
        return {k: list(v) for k, v in enc.items() if k in ("input_ids", "attention_mask", "special_tokens_mask",
                                                              "offset_mapping")}

    def base_item(self, row: int, cap: int) -> dict[str, Any]:
        name, _, _ = self.table.locate(row)
        item: dict[str, Any] = {"task": self.task, "table_name": name, "row": row}
        if not self.text_only:
            for col in self.image_columns:
                out_key = "image" if col == "image" else col
                item[out_key] = self.get_image(row, col)
        item["image_key"] = self.image_key(row)  # for NLVR2 the pair; image_0_key/image_1_key name each image
        if self.image_columns != ("image",):
            for col in self.image_columns:
                item[f"{col}_key"] = f"{item['image_key']}:{col}"
        if cap >= 0:
            text = self.text_at(row, cap)
            item["text"] = text
            item["text_encoding"] = self.encode(text)
        return item

    def __getitem__(self, i: int) -> dict[str, Any]:
        row, cap = self.index(i)
        item = self.base_item(row, cap)
        if cap >= 0:
            self.add_targets(item, row, cap)
        return item

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        """Task-specific fields for text ``cap`` of ``row``."""

    def _label_error(self, row: int, msg: str) -> LabelError:
        _, local, path = self.table.locate(row)
        return LabelError(f"{path} row {local}: {msg}")


class RowTexts:
    """``dataset.texts[row]`` → that row's texts, read from the Arrow table on each access (nothing cached)."""

    def __init__(self, dataset: BaseDataset):
        self._ds = dataset

    def __len__(self) -> int:
        return len(self._ds.table)

    def __getitem__(self, row: int) -> list[str]:
        if not -len(self) <= row < len(self):
            raise IndexError(f"row {row} out of range ({len(self)} rows)")
        return self._ds.row_texts(int(row) % len(self))


class VQADataset(BaseDataset):
    key = "vqa"
    task = "vqa"
    required_columns = ("image", "questions", "answers", "answer_labels", "answer_scores", "question_id")
    column_types = {**BaseDataset.column_types, "answers": "list<list<str>>", "answer_labels": "list<list<int>>",
                    "answer_scores": "list<list<num>>", "question_id": "list<scalar>"}

    def per_question(self, column: str, row: int, j: int) -> list:
        """Question ``j``'s list in a list-of-lists column; ``[]`` where test splits store ``[]`` per row."""
        values = self.table.list_item(column, row, j)
        return [] if values is None else list(values)

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        labels = [int(x) for x in self.per_question("answer_labels", row, cap)]
        scores = [float(x) for x in self.per_question("answer_scores", row, cap)]
        if len(labels) != len(scores):
            raise self._label_error(row, f"question {cap} has {len(labels)} answer_labels but {len(scores)} "
                                         f"answer_scores")
        item["vqa_labels"] = labels
        item["vqa_scores"] = scores
        item["vqa_answer"] = [str(a) for a in self.per_question("answers", row, cap)]
        item["qid"] = int(self.table.list_item("question_id", row, cap))


class GQADataset(VQADataset):
    key = "gqa"
    task = "gqa"

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        # test-dev has answers (the original emptied them for split "test"); keep whatever the file holds
        item["gqa_labels"] = [int(x) for x in self.per_question("answer_labels", row, cap)]
        item["gqa_scores"] = [float(x) for x in self.per_question("answer_scores", row, cap)]
        item["gqa_answer"] = [str(a) for a in self.per_question("answers", row, cap)]
        item["qid"] = str(self.table.list_item("question_id", row, cap))


SNLI_VE_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}


class SNLIVEDataset(BaseDataset):
    key = "snli_ve"
    task = "snli_ve"
    required_columns = ("image", "questions", "answers")
    column_types = {**BaseDataset.column_types, "answers": "list<str>"}

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        answers = self.table.value("answers", row) or []
        if cap >= len(answers):
            raise self._label_error(row, f"hypothesis {cap} has no answer ({len(answers)} answers)")
        label = str(answers[cap]).strip()
        if label not in SNLI_VE_LABELS:
            raise self._label_error(row, f"unknown SNLI-VE label {label!r}; expected one of {list(SNLI_VE_LABELS)}")
        item["snli_ve_label"] = SNLI_VE_LABELS[label]


class METERSNLIDataset(SNLIVEDataset):
    """METER's own SNLI-VE files (``snli_{train,dev,test}.arrow`` from METER's ``write_snli.py``, seeds.md §2.4):
    ``sentences`` holds [premise, hypothesis] pairs and ``labels`` the class ids; only the hypothesis is read
    (``pair[1].strip()``, as METER's dataset)."""

    key = "snli"
    text_column = "sentences"
    required_columns = ("image", "sentences", "labels")
    column_types = {**BaseDataset.column_types, "sentences": "list<list<str>>", "labels": "list<int>"}

    def _row_texts(self, value: Any) -> list[str]:
        return [self._hypothesis(p) for p in (value or [])]

    def text_at(self, row: int, cap: int) -> str:
        return self._hypothesis(self.table.list_item(self.text_column, row, cap))

    def _hypothesis(self, pair: Any) -> str:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise ArrowSchemaError(f"{type(self).__name__}: a 'sentences' entry must be a [premise, hypothesis] pair, "
                                   f"got {pair!r}; rewrite the file with METER's write_snli.py or write_arrow snli_ve")
        return str(pair[1]).strip()

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        labels = self.table.value("labels", row) or []
        if cap >= len(labels):
            raise self._label_error(row, f"pair {cap} has no label ({len(labels)} labels)")
        label = int(labels[cap])
        if label not in SNLI_VE_LABELS.values():
            raise self._label_error(row, f"SNLI label id {label} is not one of {sorted(SNLI_VE_LABELS.values())} "
                                         f"({SNLI_VE_LABELS})")
        item["snli_ve_label"] = label


class NLVR2Dataset(BaseDataset):
    key = "nlvr2"
    task = "nlvr2"
    image_columns = ("image_0", "image_1")
    required_columns = ("image_0", "image_1", "questions", "answers")
    column_types = {**BaseDataset.column_types, "answers": "list<label>"}

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        answers = self.table.value("answers", row) or []
        if cap >= len(answers):
            raise self._label_error(row, f"sentence {cap} has no answer ({len(answers)} answers)")
        value = answers[cap]
        if isinstance(value, bool):
            item["nlvr2_label"] = int(value)
        elif str(value) in ("True", "False"):
            item["nlvr2_label"] = int(str(value) == "True")
        else:
            raise self._label_error(row, f"NLVR2 answer {value!r} is neither 'True' nor 'False'")


class BoolQDataset(BaseDataset):
    """BoolQ (text only, ``write_arrow.boolq``): one row per question; the model reads
    ``"question: <q>? passage: <p>"`` (question first, so truncation to ``max_text_len`` cuts the passage);
    label ``boolq_label`` (1 = yes). Images are never read: the rows have none."""

    key = "boolq"
    task = "boolq"
    image_columns = ()
    required_columns = ("questions", "passage", "answers", "question_id")
    column_types = {**BaseDataset.column_types, "passage": "str", "answers": "list<bool>",
                    "question_id": "list<scalar>"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["text_only"] = True
        super().__init__(*args, **kwargs)

    def text_at(self, row: int, cap: int) -> str:
        question = str(self.table.list_item("questions", row, cap)).strip().rstrip("?")
        return f"question: {question}? passage: {self.table.value('passage', row)}"

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        answers = self.table.value("answers", row) or []
        if cap >= len(answers) or not isinstance(answers[cap], bool):
            raise self._label_error(row, f"question {cap} needs a boolean answer, got {answers!r}")
        item["boolq_label"] = int(answers[cap])
        item["qid"] = str(self.table.list_item("question_id", row, cap))


class ScienceQADataset(BaseDataset):
    """ScienceQA (``write_arrow.scienceqa``): one row per problem with its image (a blank one where the problem has
    none, ``has_image`` False); the text is the formatted question + context + lettered choices; labels
    ``scienceqa_label`` (the answer's index) and ``scienceqa_num_choices``."""

    key = "scienceqa"
    task = "scienceqa"
    required_columns = ("image", "questions", "answers", "choices", "question_id")
    column_types = {**BaseDataset.column_types, "answers": "list<int>", "choices": "list<list<str>>",
                    "question_id": "list<scalar>"}

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        answers = self.table.value("answers", row) or []
        choices = self.table.list_item("choices", row, cap) or []
        if cap >= len(answers) or not 0 <= int(answers[cap]) < len(choices):
            raise self._label_error(row, f"problem {cap}: answer {answers[cap] if cap < len(answers) else None!r} "
                                         f"is not an index into its {len(choices)} choices")
        item["scienceqa_label"] = int(answers[cap])
        item["scienceqa_num_choices"] = len(choices)
        item["qid"] = str(self.table.list_item("question_id", row, cap))
        if "subject" in self.table.table.column_names:  # files of this converter version: the table's metadata
            item["scienceqa_meta"] = self.meta(row, cap, len(choices))

    def meta(self, row: int, cap: int, num_choices: int) -> dict[str, Any]:
        """What the DAS README's per-category table reads of a problem (files without ``hint``, written before
        the converter kept it, count as having no text context)."""
        names = self.table.table.column_names

        def col(name: str, default: Any) -> Any:
            return self.table.value(name, row) if name in names else default

        return {"qid": str(self.table.list_item("question_id", row, cap)), "subject": str(col("subject", "")),
                "grade": str(col("grade", "")), "has_image": bool(col("has_image", True)),
                "has_hint": bool(str(col("hint", "") or "").strip()), "num_choices": int(num_choices)}


class CSQADataset(BaseDataset):
    """CommonsenseQA (``write_arrow.csqa``, text only): one row per question with its concept, option texts and
    labels, the answer key; read by the generate mode only (``vlpeft.data.generative.GenCSQADataset``)."""

    key = "csqa"
    task = "csqa"
    image_columns = ()
    required_columns = ("questions", "question_concept", "choices", "choice_labels", "answers", "question_id")
    column_types = {**BaseDataset.column_types, "question_concept": "str", "choices": "list<list<str>>",
                    "choice_labels": "list<list<str>>", "answers": "list<str>", "question_id": "list<scalar>"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["text_only"] = True
        super().__init__(*args, **kwargs)

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        item["qid"] = str(self.table.list_item("question_id", row, cap))


class GSM8KDataset(BaseDataset):
    """GSM8K (``write_arrow.gsm8k``, text only): one row per problem with the release's answer (reasoning and
    "#### <number>"); read by the generate mode only (``vlpeft.data.generative.GenGSM8KDataset``)."""

    key = "gsm8k"
    task = "gsm8k"
    image_columns = ()
    required_columns = ("questions", "answers", "question_id")
    column_types = {**BaseDataset.column_types, "answers": "list<str>", "question_id": "list<scalar>"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["text_only"] = True
        super().__init__(*args, **kwargs)

    def add_targets(self, item: dict[str, Any], row: int, cap: int) -> None:
        item["qid"] = str(self.table.list_item("question_id", row, cap))


class CaptionDataset(BaseDataset):
    """Flickr30K / COCO Karpathy: one item per (image, caption), ``draw_false_text`` seeded negative captions and
    ``draw_false_image`` seeded negative images (``false_image_{k}``: the image of a uniformly drawn item, as the
    originals' ``get_false_image``) with ``itm_draw``, the uniform number that places the item in ITM's true half."""

    task = "irtr"
    text_column = "caption"
    required_columns = ("image", "caption")
    remove_duplicate = True

    def __getitem__(self, i: int) -> dict[str, Any]:
        row, cap = self.index(i)
        item = self.base_item(row, cap)
        item["iid"] = row
        if cap >= 0 and self.draw_false_text > 0:
            # per-(seed, epoch, index) generator: the same negatives in every worker, rank and re-run
            rng = np.random.default_rng((self.seed, self.epoch, int(i)))
            picks = rng.integers(0, len(self), size=self.draw_false_text)
            for k, j in enumerate(picks):
                text = self.text_at(*self.index(int(j)))
                item[f"false_text_{k}"] = text
                item[f"false_text_{k}_encoding"] = self.encode(text)
        if cap >= 0 and self.draw_false_image > 0 and not self.text_only:
            # own stream (the caption draws above stay as they were): (seed, epoch, index, 1)
            rng = np.random.default_rng((self.seed, self.epoch, int(i), 1))
            for k, j in enumerate(rng.integers(0, len(self), size=self.draw_false_image)):
                item[f"false_image_{k}"] = self.get_image(self.index(int(j))[0])
            item["itm_draw"] = float(rng.random())
        return item


class F30KDataset(CaptionDataset):
    key = "f30k"


class CocoDataset(CaptionDataset):
    key = "coco"


DATASETS: dict[str, type[BaseDataset]] = {c.key: c for c in (
    VQADataset, GQADataset, SNLIVEDataset, METERSNLIDataset, NLVR2Dataset, F30KDataset, CocoDataset, BoolQDataset,
    ScienceQADataset, CSQADataset, GSM8KDataset)}


def register_dataset(cls: type[BaseDataset], splits: dict[str, list[str]]) -> type[BaseDataset]:
    """Add a dataset (``cls.key``) with its default arrow files per split (train / val / test), e.g. a plugin's or a
    test's own; the config's ``data_splits`` overrides them as for any dataset."""
    if not cls.key or cls.key in DATASETS:
        raise ValueError(f"dataset key {cls.key!r} is empty or registered twice")
    missing = {"train", "val", "test"} - set(splits)
    if missing:
        raise ValueError(f"register_dataset({cls.key!r}): splits lack {sorted(missing)}")
    DATASETS[cls.key] = cls
    SPLITS[cls.key] = {s: list(v) for s, v in splits.items()}
    return cls

"""The peer for bench/data_loading.py: a re-implementation of the original ViLT reader's strategy.

Written for this project from a reading of ViLT's ``vilt/datasets/base_dataset.py`` (``BaseDataset``),
``vqav2_dataset.py`` (``VQAv2Dataset``) and ``vilt/transforms`` (``pixelbert_transform``); no code is copied.
What it does, as the original does:

* open each file with ``RecordBatchFileReader(memory_map(path)).read_all()``, concatenate the tables
  (``promote`` → ``promote_options="default"`` in pyarrow ≥ 14);
* keep ``table_names`` (one string per row) and ``all_texts``: the whole ``questions`` column converted to Python
  once. The original uses ``to_pandas().tolist()`` (one numpy object array per row); pandas is not installed in
  this project's venv, so this uses ``to_pylist()`` (one Python list per row) — the same strings, a similar
  footprint;
* build ``index_mapper``: a dict item → (row, question), one entry per question;
* per item: ``table["image"][row].as_py()`` → PIL ``open(...).convert("RGB")`` → MinMaxResize (bicubic) →
  ``ToTensor`` → ``Normalize(0.5, 0.5)``; the tokenizer call of ``get_text``; then ``question_id``, ``answers``,
  ``answer_labels``, ``answer_scores`` read per item with ``table[col][row][question].as_py()``;
* the original's collate pads with ``torch.zeros`` + slice copies.

Differences, all outside the measured work: the tokenizer is the project's (transformers 5's fast BertTokenizer;
the original asked for ``BertTokenizer``), and the MinMaxResize floor of 32 px matches ours (the original gives a
0-sized image below 32 px; the bench images are far larger).
"""

from __future__ import annotations

import io
from typing import Any, Sequence

import pyarrow as pa
import torch
from PIL import Image
from torchvision import transforms as T

from vlpeft.data.transforms import MinMaxResize


def pixelbert_original(size: int = 800) -> T.Compose:
    """The original's order: MinMaxResize → ToTensor → Normalize(0.5, 0.5) (ViLT's ``inception_normalize``)."""
    longer = int((1333 / 800) * size)
    return T.Compose([MinMaxResize(shorter=size, longer=longer), T.ToTensor(),
                      T.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5])])


class ViltVQAReader(torch.utils.data.Dataset):
    """VQAv2 items the way the original ``VQAv2Dataset`` reads them (one item per question)."""

    def __init__(self, data_dir: str, names: Sequence[str], *, tokenizer: Any, image_size: int = 384,
                 max_text_len: int = 40, split: str = "train"):
        self.transforms = [pixelbert_original(image_size)]
        self.tokenizer = tokenizer
        self.max_text_len = max_text_len
        self.split = split
        self.names = list(names)
        tables = [pa.ipc.RecordBatchFileReader(pa.memory_map(f"{data_dir}/{name}.arrow", "r")).read_all()
                  for name in self.names]
        self.table_names: list[str] = []
        for name, table in zip(self.names, tables):
            self.table_names += [name] * len(table)
        self.table = tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="default")
        self.all_texts = self.table["questions"].to_pylist()  # original: .to_pandas().tolist()
        self.index_mapper: dict[int, tuple[int, int]] = {}
        j = 0
        for i, texts in enumerate(self.all_texts):
            for k in range(len(texts)):
                self.index_mapper[j] = (i, k)
                j += 1

    def __len__(self) -> int:
        return len(self.index_mapper)

    def get_raw_image(self, index: int, image_key: str = "image") -> Image.Image:
        row, _ = self.index_mapper[index]
        data = io.BytesIO(self.table[image_key][row].as_py())
        data.seek(0)
        return Image.open(data).convert("RGB")

    def get_image(self, index: int) -> dict[str, Any]:
        image = self.get_raw_image(index)
        row, cap = self.index_mapper[index]
        return {"image": [tr(image) for tr in self.transforms], "img_index": row, "cap_index": cap,
                "raw_index": index}

    def get_text(self, index: int) -> dict[str, Any]:
        row, cap = self.index_mapper[index]
        text = self.all_texts[row][cap]
        encoding = self.tokenizer(text, padding="max_length", truncation=True, max_length=self.max_text_len,
                                  return_special_tokens_mask=True)
        return {"text": (text, encoding), "img_index": row, "cap_index": cap, "raw_index": index}

    def __getitem__(self, index: int) -> dict[str, Any]:
        image = self.get_image(index)["image"]
        text = self.get_text(index)["text"]
        row, cap = self.index_mapper[index]
        qid = self.table["question_id"][row][cap].as_py()
        if self.split != "test":
            answers = self.table["answers"][row][cap].as_py()
            labels = self.table["answer_labels"][row][cap].as_py()
            scores = self.table["answer_scores"][row][cap].as_py()
        else:
            answers, labels, scores = [], [], []
        return {"image": image, "text": text, "vqa_answer": answers, "vqa_labels": labels, "vqa_scores": scores,
                "qid": qid}


def collate_original(items: list[dict[str, Any]], label_size: int = 3129) -> dict[str, Any]:
    """The original's padding (``torch.zeros`` + slice copy) and VQA soft targets, for the loader comparison."""
    imgs = [it["image"][0] for it in items]
    h = max(i.shape[1] for i in imgs)
    w = max(i.shape[2] for i in imgs)
    image = torch.zeros(len(imgs), 3, h, w)
    for b, i in enumerate(imgs):
        image[b, :, :i.shape[1], :i.shape[2]] = i
    ids = torch.tensor([it["text"][1]["input_ids"] for it in items])
    masks = torch.tensor([it["text"][1]["attention_mask"] for it in items])
    targets = torch.zeros(len(items), label_size)
    for b, it in enumerate(items):
        for lab, s in zip(it["vqa_labels"], it["vqa_scores"]):
            targets[b, lab] = s
    return {"image": [image], "text_ids": ids, "text_masks": masks, "vqa_targets": targets,
            "qid": [it["qid"] for it in items]}

"""List of dataset items → Batch (the only place that pads; keys in /work/contracts.md).

For each image key ``k`` of the batch (``image``, ``image_0``, ``image_1``) the Batch carries
``k``: float (B, 3, Hmax, Wmax), zero-padded at the bottom/right; ``k_mask``: bool (B, Hmax, Wmax), True on real
pixels; and ``k_sizes``: a plain Python list of B ``(h, w)`` int tuples, the real (unpadded) size of each image —
host data, never moved to a device, so a model can compute patch extents (``h // patch``, ``w // patch``) without
a host–device sync. Hmax/Wmax are common to every image key of the batch.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import torch

from vlpeft.tasks import TASKS, Task
from vlpeft.tasks._base import CollateError  # re-exported: defined beside the tasks' label checks

IMAGE_KEYS = ("image", "image_0", "image_1")
# per-sample fields passed through as lists when present (a task adds its own: Task.list_fields)
LIST_KEYS = ("text", "table_name", "image_key", "image_0_key", "image_1_key", "qid")


def task_of(name: str, cache: dict[str, Task | None]) -> Task | None:
    """The registered task a batch names (None for items of no task), built once per collate."""
    if name not in cache:
        cache[name] = TASKS.build(name) if name in TASKS else None
    return cache[name]


def pad_images(images: Sequence[torch.Tensor], height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each (3, h, w) image at the top-left of a zero (B, 3, height, width) tensor + bool mask of real pixels."""
    # numpy copies, not torch ops: with 2 intra-op threads on a busy 2-core machine, torch's zeros + slice copies
    # took ~0.9 s per batch of 32 at 384x608 (OpenMP contention) vs ~0.1 s here, and collate often runs in the
    # main process (num_workers=0)
    out = np.zeros((len(images), 3, height, width), dtype=np.float32)
    mask = np.zeros((len(images), height, width), dtype=bool)
    for b, img in enumerate(images):
        _, h, w = img.shape
        out[b, :, :h, :w] = img.detach().cpu().numpy()
        mask[b, :h, :w] = True
    return torch.from_numpy(out).to(images[0].dtype), torch.from_numpy(mask)


def image_sizes(images: Sequence[torch.Tensor]) -> list[tuple[int, int]]:
    """``[(h, w), ...]``: each (3, h, w) image's real (unpadded) pixel size, as plain Python ints."""
    return [(int(img.shape[-2]), int(img.shape[-1])) for img in images]


def batch_task(items: Sequence[Mapping[str, Any]]) -> str:
    """The one task of a batch's items (``"None"`` when they carry none); a mixed or empty batch is refused."""
    if not items:
        raise CollateError("cannot collate an empty batch")
    tasks = sorted({str(it.get("task")) for it in items})
    if len(tasks) > 1:
        raise CollateError(f"one batch mixes samples of tasks {tasks}; batches must come from one task")
    return tasks[0]


def collate_images(items: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> dict[str, Any]:
    """``<key>``, ``<key>_mask`` and ``<key>_sizes`` for every image key: one common (Hmax, Wmax) over every image
    of the batch, as the original; the sizes are host-side real extents (no read-back of the device mask)."""
    out: dict[str, Any] = {}
    if not keys:
        return out
    hmax = max(it[k].shape[1] for it in items for k in keys)
    wmax = max(it[k].shape[2] for it in items for k in keys)
    for k in keys:
        out[k], out[f"{k}_mask"] = pad_images([it[k] for it in items], hmax, wmax)
        out[f"{k}_sizes"] = image_sizes([it[k] for it in items])
    return out


def _encodings_to_tensors(encs: Sequence[Mapping[str, Sequence[int]]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad to the longest (the dataset already pads to max_text_len, so usually a plain stack)."""
    length = max(len(e["input_ids"]) for e in encs)
    ids = torch.full((len(encs), length), pad_id, dtype=torch.long)
    masks = torch.zeros((len(encs), length), dtype=torch.long)
    for b, e in enumerate(encs):
        n = len(e["input_ids"])
        ids[b, :n] = torch.as_tensor(e["input_ids"], dtype=torch.long)
        masks[b, :n] = torch.as_tensor(e["attention_mask"], dtype=torch.long)
    return ids, masks


class Collator:
    """Callable collate_fn. ``label_sizes``: task → its label size (the tasks with an answer vocabulary); the
    task of the batch (its items' ``task``) adds its own fields (``Task.collate``, ``Task.list_fields``)."""

    def __init__(self, tokenizer: Any, label_sizes: Mapping[str, int] | None = None, mlm: bool = False,
                 mlm_prob: float = 0.15, whole_word_masking: bool = False):
        self.tokenizer = tokenizer
        self.label_sizes = dict(label_sizes or {})
        self._tasks: dict[str, Task | None] = {}
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        self.mlm = bool(mlm)
        self.whole_word_masking = bool(whole_word_masking)
        self.mlm_collator = None
        if self.mlm:
            # transformers 5 folded DataCollatorForWholeWordMask into this class (whole_word_mask=...); it uses
            # torch's global RNG, which the DataLoader seeds per worker
            from transformers import DataCollatorForLanguageModeling

            # whole-word masking in transformers 5 only replaces by [MASK] (no 10 % random / 10 % kept)
            replace = dict(mask_replace_prob=1.0, random_replace_prob=0.0) if whole_word_masking else {}
            self.mlm_collator = DataCollatorForLanguageModeling(tokenizer=tokenizer, mlm=True, mlm_probability=mlm_prob,
                                                                whole_word_mask=whole_word_masking, **replace)

    def __call__(self, items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        task = batch_task(items)
        batch: dict[str, Any] = {}
        if task not in ("None", ""):
            batch["task"] = task  # the Lightning module runs the forward in pet_context(task=...)
        first = items[0]

        # false_image_k (METER's ITM negatives) share the batch's padded size, so a task can swap them in per row
        false_images = sorted((k for k in first if k.startswith("false_image_") and k[12:].isdigit()),
                              key=lambda k: int(k[12:]))
        batch.update(collate_images(items, [k for k in IMAGE_KEYS if k in first] + false_images))
        if "itm_draw" in first:
            batch["itm_draw"] = torch.tensor([float(it["itm_draw"]) for it in items], dtype=torch.float64)

        t = task_of(task, self._tasks)
        for k in LIST_KEYS + (t.list_fields if t is not None else ()):
            if k in first:
                batch[k] = [it[k] for it in items]

        if "text_encoding" in first:
            encs = [it["text_encoding"] for it in items]
            batch["text_ids"], batch["text_masks"] = _encodings_to_tensors(encs, self.pad_id)
            batch["text_labels"] = torch.full_like(batch["text_ids"], -100)
            if self.mlm_collator is not None:
                keep = ("input_ids", "special_tokens_mask") + (("offset_mapping",) if self.whole_word_masking else ())
                mlm = self.mlm_collator([{k: e[k] for k in keep if k in e} for e in encs])
                batch["text_ids_mlm"], batch["text_labels_mlm"] = mlm["input_ids"], mlm["labels"]

        n_false = sum(1 for k in first if k.startswith("false_text_") and k.endswith("_encoding"))
        for i in range(n_false):
            batch[f"false_text_{i}"] = [it[f"false_text_{i}"] for it in items]
            batch[f"false_text_{i}_ids"], batch[f"false_text_{i}_masks"] = _encodings_to_tensors(
                [it[f"false_text_{i}_encoding"] for it in items], self.pad_id)

        if t is not None:
            t.collate(items, batch, self.label_sizes.get(task))
        if "iid" in first:
            batch["iid"] = torch.tensor([int(it["iid"]) for it in items], dtype=torch.long)
        return batch

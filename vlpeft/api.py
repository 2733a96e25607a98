"""The Python API: load a trained run and answer questions about (or caption) raw images.

    import vlpeft
    model = vlpeft.load("result/demo_train_seed0_from_vilt_demo_pretrained/version_0")  # or a .ckpt file
    model.predict(image="cat.jpg", question="what colour is the shape?")      # -> "red"
    model.predict(image=[img_a, img_b], question=["how many?", "what shape?"])  # -> ["2", "circle"]
    model.generate(image="cat.jpg")                                            # captioning backbones

``vlpeft.load`` (in ``vlpeft.loading``) rebuilds the model of the checkpoint's own config
(``hyper_parameters["config"]``) on the placement it was trained with (``vlpeft_placement``: the searched skip set,
not the config's ``skip_module``), loads every tensor (PET modules, heads, backbone) and requires the checkpoint to
fill the whole model. The checkpoint is read
with ``torch.load(weights_only=True)``: only tensors and plain containers are unpickled.

Batch format (what ``predict`` builds from raw inputs, exactly as the run's test loader does):

- each image: a path or a ``PIL.Image`` → RGB → the run's first ``val_transform_keys`` transform at
  ``image_size`` → (3, H, W); a batch pads them to a common size (``image``, ``image_mask``, ``image_sizes``);
- each question: the run's ``tokenizer``, padded/truncated to ``max_text_len`` (``text_ids``, ``text_masks``);
  generative backbones tokenise ``<task prompt><question>`` per batch instead (``vlpeft.data.generative``);
- classifier answers: the argmax class id → the answer vocabulary the run trained on (stored in the checkpoint
  as ``vlpeft_answers``; checkpoints without it read the config's ``data_root`` vocabulary).

A single image / question gives a string; lists (or one image with several questions) give a list, computed in
batches of ``batch_size`` (default: the run's ``per_gpu_batchsize``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from vlpeft.checkpoint import CheckpointError
from vlpeft.config import RunConfig, sections
from vlpeft.data.collate import Collator
from vlpeft.data.datamodule import LabelVocabError, answer_map, vocab_file_names
from vlpeft.data.datasets import BaseDataset
from vlpeft.data.tokenizer import load_tokenizer
from vlpeft.data.transforms import keys_to_transforms
from vlpeft.data.generative import GenerativeCollator, task_prompts
from vlpeft.tasks import TASKS

ImageLike = Any  # str | os.PathLike | PIL.Image.Image


class ApiError(ValueError):
    """An input the API cannot use; the message names it and the fix."""


def check_checkpoint_plan(module, saved: Mapping[str, Any] | None) -> None:
    """Refuse to load a checkpoint into a model built on another plan than the one it was trained with (before
    checkpoints stored the placement as a constructor argument, load_from_checkpoint silently built skip_module's)."""
    if not saved or module.search is not None:
        return
    want = (sorted(saved.get("skip", ())), saved.get("insert_layer"))
    have = (sorted(module.base_plan.skip), module.base_plan.insert_layer)
    if want != have:
        raise CheckpointError(
            f"the checkpoint was trained on the plan skip {want[0]}, insert_layer {want[1]}, but this model was "
            f"built with skip {have[0]}, insert_layer {have[1]}; load it with vlpeft.load(path), or pass "
            f"placement=<the checkpoint's 'vlpeft_placement'> to VLPeftModule.load_from_checkpoint")


def answer_vocabularies(module, datamodule: Any) -> dict[str, list[str]]:
    """``{task: [answer of class 0, 1, ...]}`` for the module's classifier QA tasks, from the run's datamodule
    (what its test dumps use); what the module already carries where the datamodule cannot say."""
    out = dict(getattr(module, "answers", {}) or {})
    for t in module.tasks:
        if t.answer_vocab_file and not t.generative and hasattr(datamodule, "label2ans"):
            try:
                out[t.name] = list(datamodule.label2ans(t.name))
            except LabelVocabError:
                pass  # vocabulary not derivable from this run's data: predict() says so when asked
    return out


# ---------------------------------------------------------------------------------------------- inputs
def _open_image(image: ImageLike):
    from PIL import Image

    if isinstance(image, Image.Image):
        return image.convert("RGB") if image.mode != "RGB" else image
    if isinstance(image, (str, os.PathLike)):
        if not Path(image).is_file():
            raise ApiError(f"image {str(image)!r} does not exist; pass an image file path or a PIL.Image")
        with Image.open(image) as img:
            return img.convert("RGB")  # also loads the pixels before the file closes
    raise ApiError(f"image must be a file path or a PIL.Image (or a list of them), got {type(image).__name__}")


def _as_lists(image: Any, text: Any, what: str) -> tuple[list, list | None, bool]:
    """(images, texts, single): lists of equal length; one image or one text is repeated to the other's length."""
    single = not isinstance(image, (list, tuple)) and not isinstance(text, (list, tuple))
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    if text is None:
        return images, None, single
    texts = list(text) if isinstance(text, (list, tuple)) else [text]
    if len(images) == 1 and len(texts) > 1:
        images = images * len(texts)
    elif len(texts) == 1 and len(images) > 1:
        texts = texts * len(images)
    if len(images) != len(texts) or not images:
        raise ApiError(f"got {len(images)} images and {len(texts)} {what}s; pass one of each, lists of equal "
                       f"length, or one image with a list of {what}s")
    bad = [t for t in texts if not isinstance(t, str)]
    if bad:
        raise ApiError(f"each {what} must be a string, got {type(bad[0]).__name__}")
    return images, texts, single


class _Inputs:
    """The run's own transform, tokenizer and collate (from its config), built once per module."""

    def __init__(self, module):
        d = self.data = _sections(module).data
        self.transform = keys_to_transforms(d.val_transform_keys, d.image_size)[0]  # the test view
        self.tokenizer = load_tokenizer(d.tokenizer)
        self.max_text_len = d.max_text_len
        self.tasks = {t.name: t for t in module.tasks}
        self.settings = module.task_settings

    def image(self, image: ImageLike) -> torch.Tensor:
        return self.transform(_open_image(image))

    def encode(self, text: str) -> dict[str, list[int]]:
        # the dataset's own encoding (padding, truncation, special tokens) with this run's tokenizer and length
        return BaseDataset.encode(self, text)  # type: ignore[arg-type]

    def classifier_batch(self, task: str, images: Sequence, texts: Sequence[str]) -> dict[str, Any]:
        t = self.tasks[task]
        items = []
        for img, q in zip(images, texts):
            it: dict[str, Any] = {"task": task, "image": self.image(img), "text": q, "text_encoding": self.encode(q)}
            it.update(t.blank_targets())  # unannotated, as a test split's questions
            items.append(it)
        return Collator(self.tokenizer, label_sizes={task: int(t.label_size() or 0)})(items)

    def generative_batch(self, task: str, images: Sequence, texts: Sequence[str] | None) -> dict[str, Any]:
        if self.data.visual_features:
            raise ApiError("this run read pre-extracted visual features (visual_features=…), not pixels: its model "
                           "cannot take raw images; use a run trained on images")
        ts = self.settings
        collate = GenerativeCollator(self.tokenizer, self.max_text_len, ts.gen_max_length,
                                     task_prompts() if ts.use_tasks_prompts else {})
        texts = [""] * len(images) if texts is None else texts  # captions: the prompt alone (caption_clip_data.py)
        return collate([{"task": task, "image": self.image(img), "text": t} for img, t in zip(images, texts)])


def _sections(module) -> RunConfig:
    """The module's typed sections: built from the checkpoint's saved config by the run's own builder
    (``vlpeft.config.sections``, as ``VLPeftModule`` does when it loads)."""
    rc = getattr(module, "rc", None)
    return sections(rc if isinstance(rc, RunConfig) else module.config)


def _inputs(module) -> _Inputs:
    inp = module.__dict__.get("_api_inputs")
    if inp is None:
        inp = _Inputs(module)
        module.__dict__["_api_inputs"] = inp  # plain attribute: not a submodule, not in the state dict
    return inp


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _task(module, role: str, what: str, other: str):
    """The module's first task in ``role`` (``Task.api_role``: "answer" or "caption")."""
    for t in module.tasks:
        if t.api_role == role:
            return t
    names = [n for n in TASKS.names() if TASKS.build(n).api_role == role]
    raise ApiError(f"{what} needs a model trained on {' or '.join(names)}; this one's tasks are "
                   f"{[t.name for t in module.tasks]} ({other})")


def _run(module, batch: dict[str, Any]) -> dict[str, Any]:
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            return module(_to_device(batch, module.device), generate=True)
    finally:
        module.train(was_training)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, start + size)


# ---------------------------------------------------------------------------------------------- predict / generate
def predict(module, image: ImageLike | Sequence[ImageLike], question: str | Sequence[str], *,
            batch_size: int | None = None) -> str | list[str]:
    """Answer ``question`` about ``image`` (a path or PIL image; lists for a batch) with the model's VQA (or
    GQA) task: a classifier's top answer from the run's vocabulary, or a generative backbone's decoded answer."""
    task = _task(module, "answer", "predict()", "use generate() to caption with a captioning backbone")
    images, texts, single = _as_lists(image, question, "question")
    inp = _inputs(module)
    size = int(batch_size or _sections(module).data.per_gpu_batchsize or 8)
    vocab = None if task.generative else _vocabulary(module, task.name)
    answers: list[str] = []
    for sl in _chunks(len(images), size):
        if task.generative:
            out = _run(module, inp.generative_batch(task.name, images[sl], texts[sl]))
            answers += [str(a) for a in out[f"{task.name}_generated"]]
        else:
            out = _run(module, inp.classifier_batch(task.name, images[sl], texts[sl]))
            ids = out[f"{task.name}_logits"].argmax(-1).tolist()
            answers += [vocab[i] if 0 <= i < len(vocab) else "unknown" for i in ids]  # as the test dumps
    return answers[0] if single else answers


def generate(module, image: ImageLike | Sequence[ImageLike], *, batch_size: int | None = None) -> str | list[str]:
    """Caption ``image`` (a path or PIL image; a list for a batch) with the model's generative caption task."""
    task = _task(module, "caption", "generate()", "use predict(image=…, question=…) to answer questions")
    images, _, single = _as_lists(image, None, "image")
    inp = _inputs(module)
    size = int(batch_size or _sections(module).data.per_gpu_batchsize or 8)
    captions: list[str] = []
    for sl in _chunks(len(images), size):
        out = _run(module, inp.generative_batch(task.name, images[sl], None))
        captions += [str(c) for c in out[f"{task.name}_generated"]]
    return captions[0] if single else captions


def _vocabulary(module, task: str) -> list[str]:
    """The answer of every class id: the checkpoint's stored vocabulary, else the config's data_root one."""
    stored = (getattr(module, "answers", None) or {}).get(task)
    if stored:
        return list(stored)

    try:
        data = _sections(module).data
        amap = answer_map(data.data_root, vocab_file_names(task, data.data_splits), task)
    except LabelVocabError as e:
        raise ApiError(f"this checkpoint stores no {task} answer vocabulary and its data_root cannot give one "
                       f"({e}); set model.answers[{task!r}] = [answer of class 0, 1, ...]") from None
    vocab = [amap[i] for i in range(max(amap) + 1)]
    module.answers = {**(getattr(module, "answers", None) or {}), task: vocab}
    return vocab


__all__ = ["ApiError", "answer_vocabularies", "check_checkpoint_plan", "generate", "predict"]

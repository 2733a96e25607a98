"""Flickr30K and COCO with Karpathy splits (dataset_*.json) → *_caption_karpathy_*.arrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ._common import (
    CAPTION_SCHEMA,
    Written,
    expect_type,
    load_json,
    missing_error,
    read_bytes,
    require_dir,
    require_keys,
    seeded_order,
    write_rows,
)

F30K_SPLITS = ("train", "val", "test")
COCO_SPLITS = ("train", "val", "restval", "test")


def _load_karpathy(path: Path, need_filepath: bool) -> list[dict[str, Any]]:
    what = ("Karpathy's split file: an object whose 'images' list holds {filename, " +
            ("filepath, " if need_filepath else "") + "split, sentences: [{raw}, …]}")
    data = load_json(path, what)
    require_keys(data, ["images"], path, "the top level")
    images = expect_type(data["images"], list, path, "'images'", "a list")
    keys = ["filename", "split", "sentences"] + (["filepath"] if need_filepath else [])
    for i, r in enumerate(images):
        require_keys(r, keys, path, f"images[{i}]")
        sentences = expect_type(r["sentences"], list, path, f"images[{i}].sentences", "a list of {raw}")
        for j, s in enumerate(sentences):
            require_keys(s, ["raw"], path, f"images[{i}].sentences[{j}]")
    return images


def _write(prefix: str, images: list[dict[str, Any]], folder_of, splits: tuple[str, ...], dst: Path, seed: int,
           json_path: Path, progress: bool) -> dict[str, Written]:
    by_split: dict[str, dict[str, tuple[Path, list[str]]]] = {s: {} for s in splits}
    for r in images:
        if r["split"] in by_split:
            path = folder_of(r) / r["filename"]
            by_split[r["split"]][r["filename"]] = (path, [s["raw"] for s in r["sentences"]])
    absent = [str(p) for rows in by_split.values() for p, _ in rows.values() if not p.is_file()]
    if absent:
        raise missing_error(absent, json_path, "images it references")
    written = {}
    for split, rows in by_split.items():
        def make(filename: str, rows=rows, split=split) -> dict[str, Any]:
            path, captions = rows[filename]
            return {"image": read_bytes(path), "caption": captions, "image_id": filename, "split": split}

        name = f"{prefix}_caption_karpathy_{split}"
        written[name] = write_rows(dst / f"{name}.arrow", CAPTION_SCHEMA, seeded_order(rows, seed, name), make,
                                   progress=progress)
    return written


def write_f30k(src: str | Path, dst: str | Path, *, seed: int = 0, progress: bool = True) -> dict[str, Written]:
    """``src/karpathy/dataset_flickr30k.json`` + ``src/flickr30k-images/`` → f30k_caption_karpathy_{train,val,test}."""
    src, dst = Path(src), Path(dst)
    json_path = src / "karpathy" / "dataset_flickr30k.json"
    images = _load_karpathy(json_path, need_filepath=False)
    folder = require_dir(src / "flickr30k-images", "the Flickr30K image folder flickr30k-images/")
    return _write("f30k", images, lambda r: folder, F30K_SPLITS, dst, seed, json_path, progress)


def write_coco(src: str | Path, dst: str | Path, *, seed: int = 0, progress: bool = True) -> dict[str, Written]:
    """``src/karpathy/dataset_coco.json`` + ``src/{train2014,val2014}/`` →
    coco_caption_karpathy_{train,val,restval,test}."""
    src, dst = Path(src), Path(dst)
    json_path = src / "karpathy" / "dataset_coco.json"
    images = _load_karpathy(json_path, need_filepath=True)
    for folder in sorted({str(r["filepath"]) for r in images}):
        require_dir(src / folder, f"the COCO image folder {folder}/ named by {json_path.name}")
    return _write("coco", images, lambda r: src / str(r["filepath"]), COCO_SPLITS, dst, seed, json_path, progress)

"""GQA balanced questions + OpenVQA dicts.json → gqa_{train,test-dev,val}.arrow."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vlpeft.data.normalize import prep_ans

from ._common import (
    GQA_SCHEMA,
    WriteArrowError,
    Written,
    expect_type,
    list_images,
    load_json,
    missing_error,
    read_bytes,
    require_keys,
    seeded_order,
    write_rows,
)

# split as stored in the `split` column → question file prefix
SPLITS: dict[str, str] = {"train": "train", "test-dev": "testdev", "val": "val"}
GQA_LABEL_SIZE = 1843


def questions_path(src: Path, split: str) -> Path:
    return src / f"{SPLITS[split]}_balanced_questions.json"


def load_dicts(path: Path) -> tuple[dict[str, int], dict[str, str]]:
    """``dicts.json`` = ``[ans_to_ix, ix_to_ans, token_to_ix, max_token]``; only the first two are used."""
    what = "OpenVQA's GQA dicts.json: a JSON list [ans_to_ix, ix_to_ans, token_to_ix, max_token]"
    data = load_json(path, what)
    if not isinstance(data, list) or len(data) < 2 or not all(isinstance(d, dict) for d in data[:2]):
        raise WriteArrowError(f"{path}: unexpected content; expected {what}")
    ans_to_ix, ix_to_ans = data[0], data[1]
    for ans, ix in ans_to_ix.items():
        if not isinstance(ix, int) or ix_to_ans.get(str(ix)) is None:
            raise WriteArrowError(f"{path}: ans_to_ix[{ans!r}] = {ix!r} has no ix_to_ans entry; expected {what}")
    return ans_to_ix, ix_to_ans


def _load_questions(path: Path) -> dict[str, Any]:
    what = "a GQA balanced questions JSON: an object question id → {question, imageId, answer, …}"
    data = expect_type(load_json(path, what), dict, path, "the top level", what)
    for qid, r in data.items():
        require_keys(r, ["question", "imageId", "answer"], path, f"question {qid!r}")
    return data


def write_gqa(src: str | Path, dst: str | Path, *, dicts: str | Path | None = None, seed: int = 0,
              progress: bool = True) -> dict[str, Written]:
    """Convert GQA under ``src`` (``images/``, ``{train,testdev,val}_balanced_questions.json``) to arrow files.

    ``dicts`` is OpenVQA's answer dictionary (shipped by DVP as ``dvp/utils/dicts.json``; default
    ``src/dicts.json``). Questions whose normalised answer is not in it are dropped, as are images left empty.
    """
    src, dst = Path(src), Path(dst)
    dicts_path = Path(dicts) if dicts is not None else src / "dicts.json"
    ans_to_ix, ix_to_ans = load_dicts(dicts_path)
    questions = {s: _load_questions(questions_path(src, s)) for s in SPLITS}
    images = {Path(name).stem: p for name, p in list_images(src / "images", "the GQA images/ folder").items()}

    written = {}
    for split in SPLITS:
        by_image: dict[str, list[tuple[str, str, int]]] = {}
        for qid, r in questions[split].items():
            label = ans_to_ix.get(prep_ans(str(r["answer"])))
            if label is None:
                continue
            by_image.setdefault(str(r["imageId"]), []).append((str(qid), r["question"], label))
        absent = sorted(set(by_image) - set(images))
        if absent:
            raise missing_error([f"{i}.jpg" for i in absent], src / "images",
                                f"images referenced by {questions_path(src, split).name}")

        def make(image_id: str, by_image=by_image, split=split) -> dict[str, Any]:
            qs = by_image[image_id]
            return {
                "image": read_bytes(images[image_id]),
                "questions": [q for _, q, _ in qs],
                "answers": [[ix_to_ans[str(lab)]] for _, _, lab in qs],
                "answer_labels": [[lab] for _, _, lab in qs],
                "answer_scores": [[1.0] for _ in qs],
                "image_id": image_id,
                "question_id": [qid for qid, _, _ in qs],
                "split": split,
            }

        name = f"gqa_{split}"
        written[name] = write_rows(dst / f"{name}.arrow", GQA_SCHEMA, seeded_order(by_image, seed, name), make,
                                   progress=progress)
    return written

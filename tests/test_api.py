"""The Python API (issue 20 item 3): ``vlpeft.load`` + ``predict`` on a search → train → test_only run through
run.py give the answers of the run's own test dump; ``VLPeftModule.load_from_checkpoint`` restores the searched
skip set; bad inputs are refused with one clear message."""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SYNTHETIC = dict(images=48)  # this module's arrows (tests/conftest.py)


@pytest.fixture(scope="module")
def runs(sacred, arrows, tmp_path_factory) -> dict:
    """A tiny DAS search, adapters trained on its placement (placement.json), test_only on the best checkpoint."""
    tmp = tmp_path_factory.mktemp("api")

    def _go(**updates):
        return sacred("demo", **updates).result

    base = dict(data_root=str(arrows), log_dir=str(tmp / "result"), per_gpu_batchsize=16, batch_size=16,
                num_workers=0, das_epoch=2, das_turn=1)
    search = _go(**base, stage="search", max_epoch=2)
    placement = json.loads(Path(search["placement_path"]).read_text())
    # every weight trains (from scratch, 10 short epochs): enough for answers that vary with the question (after 6
    # the best checkpoint could still be an early epoch that answers one constant)
    train = _go(**base, stage="train", placement=search["placement_path"], max_epoch=10, full_finetune=True,
                warmup_steps=0)
    train_dir = Path(train["run_dir"])
    best = next(train_dir.glob("checkpoints/best-*.ckpt"))
    test = _go(**base, stage="train", test_only=True, load_path=str(best))
    return dict(tmp=tmp, arrows=arrows, placement=placement, train_dir=train_dir, best=best,
                dump=json.loads(Path(test["submission"]).read_text()))


def _test_questions(arrows: Path) -> list[tuple[int, bytes, str]]:
    """(question_id, image bytes, question) of every question of the test split, in file order."""
    table = pa.ipc.open_file(pa.memory_map(str(arrows / "vqav2_test.arrow"))).read_all()
    return [(int(qid), row["image"], q) for row in table.to_pylist()
            for qid, q in zip(row["question_id"], row["questions"])]


def test_load_and_predict_match_the_test_dump(runs, tmp_path):
    from PIL import Image

    import vlpeft

    questions = _test_questions(runs["arrows"])
    # the answer vocabulary travels with the checkpoint: the data folder is not needed to answer
    moved = runs["tmp"] / "arrows_moved"
    shutil.move(str(runs["arrows"]), moved)
    try:
        model = vlpeft.load(runs["train_dir"])
        assert sorted(model.base_plan.skip) == runs["placement"]["skip"] != model.config["skip_module"]
        assert not model.training
        images = [Image.open(io.BytesIO(b)) for _, b, _ in questions]
        answers = model.predict(image=images, question=[q for _, _, q in questions], batch_size=5)
    finally:
        shutil.move(str(moved), runs["arrows"])
    dump = {r["question_id"]: r["answer"] for r in runs["dump"]}
    assert len(answers) == len(questions) == len(dump)
    assert [dump[qid] for qid, _, _ in questions] == answers
    assert len(set(answers)) > 1  # a trained model, not one constant answer

    # one question at a time, the image as a file path: a string, the same answer
    for k in (0, len(questions) - 1):
        qid, data, q = questions[k]
        path = tmp_path / f"img{k}.jpg"
        path.write_bytes(data)
        assert model.predict(image=str(path), question=q) == dump[qid]
        # one image with several questions
        assert model.predict(image=path, question=[q, q]) == [dump[qid]] * 2


def test_load_from_checkpoint_restores_the_searched_skip_set(runs):
    from vlpeft.lightning import VLPeftModule

    module = VLPeftModule.load_from_checkpoint(str(runs["best"]), map_location="cpu", weights_only=True)
    assert sorted(module.base_plan.skip) == runs["placement"]["skip"]
    assert module.config["skip_module"] == [0, 1, 2, 3]  # the config default it used to build instead
    saved = torch.load(runs["best"], map_location="cpu", weights_only=True)["state_dict"]
    assert module.state_dict().keys() == saved.keys()
    assert all(torch.equal(v, saved[k]) for k, v in module.state_dict().items())
    assert module.answers["vqa"] == json.loads((runs["arrows"] / "vqav2_label_vocab.json").read_text())


def test_pruned_export_loads_and_answers_the_same(runs, tmp_path):
    """``python -m vlpeft.export``'s checkpoint (without the skipped blocks' tensors) loads and answers as the
    full one (its vocabulary read from the config's data_root: the export stores none)."""
    from PIL import Image

    import vlpeft
    from vlpeft.export import export_checkpoint

    pruned = export_checkpoint(runs["train_dir"], tmp_path / "pruned.ckpt")
    model = vlpeft.load(pruned)
    # built without the dropped units: it holds exactly the file's tensors, fewer parameters than the full model
    from vlpeft.export import PrunedUnit

    full = vlpeft.load(runs["train_dir"])
    assert set(model.state_dict()) == set(torch.load(pruned, weights_only=True)["state_dict"])
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in full.parameters())
    assert any(isinstance(model.backbone.candidate_module(i), PrunedUnit) for i in model.plan().skip)
    questions = _test_questions(runs["arrows"])[:6]
    dump = {r["question_id"]: r["answer"] for r in runs["dump"]}
    answers = model.predict(image=[Image.open(io.BytesIO(b)) for _, b, _ in questions],
                            question=[q for _, _, q in questions])
    assert answers == [dump[qid] for qid, _, _ in questions]


def test_checkpoint_without_placement_argument_is_refused(runs, tmp_path):
    """A checkpoint saved before the placement was a constructor argument: loading it on skip_module's plan
    raises, naming both plans and the fix, instead of silently evaluating another model."""
    from vlpeft.checkpoint import CheckpointError
    from vlpeft.lightning import VLPeftModule

    ckpt = torch.load(runs["best"], map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"].pop("placement")
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    skip = runs["placement"]["skip"]
    words = re.escape(f"trained on the plan skip {skip}, ") + r".*skip \[0, 1, 2, 3\].*vlpeft.load"
    with pytest.raises(CheckpointError, match=words):
        VLPeftModule.load_from_checkpoint(str(old), map_location="cpu", weights_only=True)
    import vlpeft

    assert sorted(vlpeft.load(old).base_plan.skip) == skip  # the checkpoint's vlpeft_placement


def test_bad_inputs_name_the_fix(runs, tmp_path):
    import vlpeft
    from vlpeft.api import ApiError

    with pytest.raises(ApiError, match="nowhere does not exist; pass a run folder"):
        vlpeft.load(tmp_path / "nowhere")
    with pytest.raises(ApiError, match="has no checkpoints/best"):
        vlpeft.load(tmp_path)
    model = vlpeft.load(runs["best"])
    img = tmp_path / "x.jpg"
    img.write_bytes(_test_questions(runs["arrows"])[0][1])
    with pytest.raises(ApiError, match="2 images and 3 questions"):
        model.predict(image=[img, img], question=["a", "b", "c"])
    with pytest.raises(ApiError, match="does not exist"):
        model.predict(image=tmp_path / "missing.jpg", question="what?")
    with pytest.raises(ApiError, match="generate\\(\\) needs a model trained on caption"):
        model.generate(image=img)


def test_generative_backbone_predict_and_generate_match_the_test_dumps(sacred, make_arrows, tmp_path):
    """A tiny VL-BART trained on VQA + COCO captions (single-task batches, skip_module=[1]): predict() decodes the
    answers and generate() the captions of the run's own test dumps (prompts, collate and decoding options of the
    run's config)."""
    from PIL import Image

    import vlpeft
    from vlpeft.tasks.generative import coco_image_id

    data = make_arrows("gen_data", images=16, image_px=32, variants=("vqa", "coco_captions"))
    upd = dict(backbone="test_vl_bart", pet="vl_pet_large", vl_pet_down_dim=8, vl_pet_gate_dim=8, vl_pet_vpa_dim=8,
               data_root=str(data), log_dir=str(tmp_path / "result"), exp_name="gen", datasets=["vqa", "coco"],
               loss_names={"vqa": 1, "caption": 1, "itm": 0, "mlm": 0}, per_gpu_batchsize=4, batch_size=4,
               image_size=32, num_beams=2, gen_max_length=6, max_text_len=20, max_epoch=2, max_steps=None,
               vqav2_label_size=0, skip_module=[1], num_gpus=0, num_workers=0, learning_rate=3e-3, warmup_steps=0,
               train_transform_keys=["clip"], val_transform_keys=["clip"], seed=0)
    train = sacred(**upd).result
    best = next(Path(train["run_dir"]).glob("checkpoints/best-*.ckpt"))
    test = sacred(**dict(upd, test_only=True, load_path=str(best), exp_name="gen_test")).result
    test_dir = Path(test["run_dir"])
    vqa_dump = {r["question_id"]: r["answer"] for r in json.loads(next(test_dir.glob("vqa_submit_*")).read_text())}
    cap_dump = {r["image_id"]: r["caption"] for r in json.loads(next(test_dir.glob("caption_result_*")).read_text())}

    model = vlpeft.load(best)
    assert sorted(model.base_plan.skip) == [1]
    questions = _test_questions(data)
    answers = model.predict(image=[Image.open(io.BytesIO(b)) for _, b, _ in questions],
                            question=[q for _, _, q in questions])
    assert answers == [vqa_dump[qid] for qid, _, _ in questions] and len(answers) == len(vqa_dump)
    rows = pa.ipc.open_file(pa.memory_map(str(data / "coco_caption_karpathy_test.arrow"))).read_all().to_pylist()
    captions = model.generate(image=[Image.open(io.BytesIO(r["image"])) for r in rows], batch_size=3)
    assert captions == [cap_dump[coco_image_id(r["image_id"])] for r in rows] and len(captions) == len(cap_dump)
    assert model.generate(image=Image.open(io.BytesIO(rows[0]["image"]))) == captions[0]


def test_import_vlpeft_stays_light():
    code = "import sys, vlpeft; assert 'torch' not in sys.modules; assert callable(vlpeft.load)"
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)

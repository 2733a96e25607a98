"""Video-text on VL-BART (issue 19 items 3, parity): the named configs of the 8 released video scripts, and our video
forward against the originals' ``VLBartVideo`` (VL-Adapter's, and VL-PET's for its four variants) on identical,
non-init weights in fp64.

Parity: ``fixtures/video_reference.json`` holds what the originals computed (their parameter names and shapes, then
per config the first 16 logits of every position, each position's log-sum-exp over the vocabulary, the train-step
loss and greedy / 3-beam ids) on a tiny BART (d = 32, 2 + 2 layers, vocabulary 300) with the video projector
(f = 512) and 64 frames with zero boxes, their flags those of the scripts (``--feature ViT --n_boxes 64 --downsample
--use_tasks_prompts`` and each method's; for the tiny width LoRA r = 4, prompt mid 16, VL-PET R = r_g = RD = 8 with
4 heads). Every weight there is
``0.1·N(0, 1)`` drawn from a generator seeded with the CRC-32 of the original's parameter name (norm weights
``1 + 0.1·N``): the test draws the same numbers, loads them through our released-checkpoint importer (backbone, visual
projector and PET modules), and runs our model on the same inputs.
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import pytest
import torch

import vlpeft.pet.presets_zoo  # noqa: F401  (registers the zoo presets)
from vlpeft.backbones import BACKBONES, LayerPlan
from vlpeft.build import _inject
from vlpeft.config import DEFAULTS, NAMED_CONFIGS
from vlpeft.named_configs.video import VIDEO_CONFIGS
from vlpeft.pet.import_released import import_released

REF = json.loads((Path(__file__).parent / "fixtures" / "video_reference.json").read_text())
TINY = dict(vocab_size=300, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
            decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
            activation_function="gelu", scale_embedding=False, pad_token_id=1, bos_token_id=0, eos_token_id=2,
            decoder_start_token_id=2, forced_bos_token_id=None, forced_eos_token_id=2, dropout=0.0,
            attention_dropout=0.0, activation_dropout=0.0)
# the scripts' LoRA r = 128, prompt mid 800 and VL-PET R = r_g = RD = 96 are for d = 768
TINY_WIDTHS = dict(lora_r=4, prompt_mid=16, vl_pet_down_dim=8, vl_pet_vpa_dim=8)
PAD, EOS = 1, 2


def _script(name: str) -> dict:
    return {**DEFAULTS, **NAMED_CONFIGS[name]}


# --- the named configs ----------------------------------------------------------------------------------------------
def test_video_configs_carry_the_scripts_settings():
    assert len(VIDEO_CONFIGS) == 8
    # (pet, lr, epochs, seed, train_base) per VL-Adapter scripts/video/*.sh and VL-PET scripts/video-text/*.sh
    want = {"vladapter_video_full_finetuning": ("none", 3e-5, 7, 9595, "all"),
            "vladapter_video_single_adapter": ("vl_adapter", 3e-4, 7, 9595, "nn_layernorm"),
            "vladapter_video_single_lora": ("lora", 3e-4, 7, 9595, None),
            "vladapter_video_single_prompt": ("prompt", 3e-4, 7, 9595, None),
            "vlpet_small_video": ("vl_pet_small", 7e-4, 20, 42, None),
            "vlpet_middle_x_video": ("vl_pet_middle_x", 7e-4, 20, 42, None),
            "vlpet_middle_y_video": ("vl_pet_middle_y", 7e-4, 20, 42, None),
            "vlpet_large_video": ("vl_pet_large", 7e-4, 20, 42, None)}
    assert set(want) == set(VIDEO_CONFIGS)
    for name, (pet, lr, epochs, seed, base) in want.items():
        c = NAMED_CONFIGS[name]
        assert (c["pet"], c["learning_rate"], c["max_epoch"], c["seed"], c.get("train_base")) == (
            pet, lr, epochs, seed, base), name
        assert (c["backbone"], c["batch_size"], c["n_boxes"], c["vis_feat_dim"], c["num_beams"], c["warmup_steps"],
                c["gradient_clip_val"], c["use_tasks_prompts"], c["vl_loss_reduction"]) == (
            "vl_bart", 50, 64, 512, 5, 0.1, 5.0, True, "sample"), name
        assert c["datasets"] == ["tvqa", "how2qa", "tvc", "yc2c"]
        assert {k for k, v in c["loss_names"].items() if v} == {"tvqa", "how2qa", "tvc", "yc2c"}
    large = NAMED_CONFIGS["vlpet_large_video"]
    assert (large["vl_pet_down_dim"], large["vl_pet_heads"], large["vl_pet_gate_dim"], large["vl_pet_vpa_dim"]) == (
        96, 4, 96, 96)
    assert NAMED_CONFIGS["vladapter_video_single_lora"]["lora_r"] == 128
    assert (NAMED_CONFIGS["vladapter_video_single_prompt"]["prompt_len"],
            NAMED_CONFIGS["vladapter_video_single_prompt"]["prompt_mid"]) == (40, 800)


# --- parity with VL-Adapter's video forward -------------------------------------------------------------------------
def _value(name: str, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    v = 0.1 * torch.randn(tuple(shape), generator=g, dtype=torch.float64)
    norm = ("layer_norm.weight" in name or "layernorm_embedding.weight" in name
            or name.endswith((".feat_embedding.1.weight", ".absolute_vis_pos_embedding.1.weight")))
    return 1.0 + v if norm else v


def _inputs():
    g = torch.Generator().manual_seed(19)
    ids = torch.randint(4, 300, (2, 7), generator=g)
    ids[1, -2:] = PAD
    feats = torch.randn(2, 64, 512, generator=g, dtype=torch.float64)
    labels = torch.randint(4, 300, (2, 5), generator=g)
    labels[1, -1] = -100
    return dict(text_ids=ids, text_masks=(ids != PAD).long(), vis_feats=feats,
                vis_pos=torch.zeros(2, 64, 4, dtype=torch.float64), target_ids=labels)


@pytest.fixture(scope="module")
def video_models():
    """Our VL-BART per video config, carrying the original's weights (built once for the module)."""
    out = {}
    for name, case in REF["cases"].items():
        cfg = {**_script(name), **TINY_WIDTHS}
        if cfg["vl_pet_gate_dim"]:  # VL-PET-large's low-rank gate
            cfg["vl_pet_gate_dim"] = 8
        torch.manual_seed(0)
        bb = BACKBONES.build("vl_bart", dict(cfg, vl_config=TINY, vl_model="", tokenizer=None, vl_vocab_size=None))
        report, _ = _inject(bb, cfg, None)
        bb = bb.double().eval()
        sd = {n: _value(n, s) for n, s in REF["backbone_params"] + case["pet_params"]}
        rep = import_released(bb, sd, report, with_backbone=True)
        assert rep.missing == [] and rep.unexpected == [], (name, rep.missing, rep.unexpected)
        own = dict(bb.named_parameters())
        assert all(p.dtype == torch.float64 for p in own.values())
        out[name] = bb
    return out


@pytest.mark.parametrize("name", sorted(REF["cases"]))
def test_forward_equals_the_originals_video_forward(video_models, name):
    case, bb = REF["cases"][name], video_models[name]
    batch, plan = _inputs(), LayerPlan.of((), None)
    with torch.no_grad():
        feats = bb(batch, plan)
    logits = feats["lm_logits"]
    assert logits.dtype == torch.float64 and logits.shape == (2, 5, 300)
    torch.testing.assert_close(logits[:, :, :16], torch.tensor(case["logits_head"], dtype=torch.float64),
                               rtol=0, atol=1e-10)
    torch.testing.assert_close(torch.logsumexp(logits, -1), torch.tensor(case["logsumexp"], dtype=torch.float64),
                               rtol=0, atol=1e-10)
    # the original's train_step loss: each sample's token mean, then the batch mean (not the token mean)
    assert abs(float(feats["lm_loss"]) - case["loss"]) < 1e-10
    keep = batch["target_ids"] != -100
    token_mean = torch.nn.functional.cross_entropy(logits[keep], batch["target_ids"][keep])
    assert abs(float(token_mean) - case["loss"]) > 1e-4  # the two reductions differ on this batch


@pytest.mark.parametrize("name", ["vladapter_video_single_adapter", "vladapter_video_single_prompt",
                                  "vlpet_large_video"])
def test_generate_equals_the_originals(video_models, name):
    """3-beam ids (the scripts decode with 5 beams) equal the original's, forced EOS at the length limit included.
    Greedy: transformers 4.2.1's greedy search did not force BART's EOS at the last position, today's does: the
    ids agree up to that position."""
    case, bb = REF["cases"][name], video_models[name]
    batch, plan = _inputs(), LayerPlan.of((), None)
    assert bb.generate_ids(batch, plan, num_beams=3, max_new_tokens=7).tolist() == case["generate"]["3"]
    greedy, ref = bb.generate_ids(batch, plan, num_beams=1, max_new_tokens=7).tolist(), case["generate"]["1"]
    assert [row[:-1] for row in greedy] == [row[:-1] for row in ref] and all(row[-1] == EOS for row in greedy)


def test_sample_reduction_is_an_option_checked_before_a_model_is_built(tmp_path):
    from vlpeft.backbones.vl_seq2seq import VLSeqConfig
    from vlpeft.config import ConfigError, validate_config

    with pytest.raises(ValueError, match="vl_loss_reduction='mean' is not one of"):
        VLSeqConfig.from_config(dict(vl_config="test_vl_bart_tiny", vl_loss_reduction="mean"))
    cfg = {**_script("vladapter_video_single_adapter"), "backbone": "test_vl_bart_video", "data_root": str(tmp_path)}
    validate_config(cfg)
    with pytest.raises(ConfigError, match=r"vl_loss_reduction='mean' is not one of \('token', 'sample'\)"):
        validate_config({**cfg, "vl_loss_reduction": "mean"})
    assert DEFAULTS["vl_loss_reduction"] == "token"  # the image-text configs keep the token mean


def test_video_backbone_takes_frames_not_pixels():
    """The tiny video entry: 512-wide frame features in the batch, 600 text positions (the video inputs' length)."""
    bb = BACKBONES.build("test_vl_bart_video").eval()
    assert bb.extractor is None and bb.cfg.vis_feat_dim == 512
    ids = torch.randint(5, 90, (1, 600), generator=torch.Generator().manual_seed(0))
    batch = dict(text_ids=ids, text_masks=torch.ones_like(ids), vis_feats=torch.randn(1, 64, 512),
                 vis_pos=torch.zeros(1, 64, 4))
    h, mask = bb.encode(batch, LayerPlan.of((), None))
    assert h.shape == (1, 664, 32) and mask.shape == (1, 664)
    with pytest.raises(ValueError, match=r"vis_feats must be \(B, V, 512\)"):
        bb.encode(dict(batch, vis_feats=torch.randn(1, 64, 2048)), LayerPlan.of((), None))
    with pytest.raises(ValueError, match="has no feature extractor"):
        bb.encode(dict(text_ids=ids, text_masks=torch.ones_like(ids), image=torch.randn(1, 3, 32, 32)),
                  LayerPlan.of((), None))


# --- end to end: the four video tasks jointly through run.py --------------------------------------------------------
def test_video_single_adapter_trains_then_test_only_writes_the_dumps(sacred, tmp_path_factory, tmp_path,
                                                                     monkeypatch):
    """``vladapter_video_single_adapter`` on the tiny video VL-BART and the synthetic video set: one train run on
    TVQA + How2QA + TVC + YC2C (single-task batches, prefixes after the text, 64 frames), then ``test_only`` from
    its checkpoint writes the four test dumps in the originals' formats. (Caption scores without Java here: METEOR's
    JVM costs ~50 s on a loaded CI machine; the scores have their own tests.)"""
    from vlpeft.tasks import caption_eval
    from write_arrow.synthetic_video import write_synthetic_video

    monkeypatch.setattr(caption_eval, "java_available", lambda: False)
    data = tmp_path_factory.mktemp("video_e2e")
    write_synthetic_video(data, seed=0, n_train=4, progress=False)
    upd = dict(backbone="test_vl_bart_video", tokenizer="bert-base-uncased", adapter_reduction=4,
               data_root=str(data), log_dir=str(tmp_path / "result"), per_gpu_batchsize=4, batch_size=4,
               max_epoch=1, warmup_steps=0, learning_rate=3e-3, num_beams=2, gen_max_length=3, num_gpus=0,
               num_workers=0)
    train = sacred("vladapter_video_single_adapter", **upd).result
    run_dir = Path(train["run_dir"])
    val = json.loads((run_dir / "metrics.json").read_text())["val"]
    assert {"tvqa_accuracy", "how2qa_accuracy", "tvc_cider", "yc2c_cider"} <= set(val), sorted(val)
    test = sacred("vladapter_video_single_adapter",
                  **dict(upd, test_only=True, load_path=str(run_dir / "checkpoints" / "last.ckpt"))).result
    out = Path(test["run_dir"])
    for stem in ("tvqa_test_predictions", "how2qa_test_public_predictions"):
        qa = json.loads(next(out.glob(f"{stem}*.json")).read_text())
        assert qa and all(isinstance(k, str) and v in range(10) for k, v in qa.items()), stem  # int(answer[1])
    for stem in ("tvc_test_predictions", "yc2c_test_predictions"):
        rows = [json.loads(line) for line in next(out.glob(f"{stem}*.jsonl")).read_text().splitlines()]
        assert rows and all({"vid_name", "clip_id", "descs"} <= set(r) and isinstance(r["descs"][0]["desc"], str)
                            for r in rows), stem
        assert all(("ts" in r) == (stem == "tvc_test_predictions") for r in rows)


@pytest.fixture(scope="module")
def video_data(tmp_path_factory):
    from write_arrow.synthetic_video import write_synthetic_video

    data = tmp_path_factory.mktemp("video_das")
    write_synthetic_video(data, seed=1, n_train=4, progress=False)
    return data


VIDEO_DUMPS = {"tvqa": "tvqa_test_predictions", "how2qa": "how2qa_test_public_predictions",
               "tvc": "tvc_test_predictions", "yc2c": "yc2c_test_predictions"}


@pytest.mark.parametrize("task", sorted(VIDEO_DUMPS))
def test_video_task_das_search_then_train_then_test_only_through_run_py(task, video_data, sacred, tmp_path,
                                                                        monkeypatch):
    """Each video task through both stages: a DAS search over the tiny video VL-BART's layers (reward: minus the LM
    loss on its video batches) writes placement.json; a train run reads it back (placement=latest); test_only from
    that checkpoint writes the task's dump in the original's format."""
    from vlpeft.tasks import caption_eval

    monkeypatch.setattr(caption_eval, "java_available", lambda: False)
    upd = dict(backbone="test_vl_bart_video", tokenizer="bert-base-uncased", pet="das", das_adapter_dim=4,
               das_skip_adapter_dim=8, skip_num=1, das_turn=1, das_warmup_epoch=0, das_epoch=1, search="das",
               datasets=[task], loss_names={**{k: 0 for k in DEFAULTS["loss_names"]}, task: 1}, data_root=str(video_data),
               log_dir=str(tmp_path / "result"), per_gpu_batchsize=4, batch_size=4, max_epoch=1, warmup_steps=0,
               learning_rate=3e-3, num_beams=1, gen_max_length=3, num_gpus=0, num_workers=0)
    search = sacred("vladapter_video_single_adapter", **dict(upd, stage="search")).result
    skip = json.loads(Path(search["placement_path"]).read_text())["skip"]
    assert len(skip) == 1 and 0 <= skip[0] < 4  # 2 encoder + 2 decoder layers
    train = sacred("vladapter_video_single_adapter", **dict(upd, stage="train", placement="latest")).result
    run_dir = Path(train["run_dir"])
    assert json.loads((run_dir / "run.json").read_text())["placement_source"] == search["placement_path"]
    test = sacred("vladapter_video_single_adapter", **dict(upd, stage="train", test_only=True, placement="latest",
                                                           load_path=str(run_dir / "checkpoints" / "last.ckpt"))).result
    out = Path(test["run_dir"])
    assert next(out.glob(f"{VIDEO_DUMPS[task]}_*"), None) is not None, sorted(p.name for p in out.iterdir())


def test_a_search_over_several_generative_tasks_is_refused_before_the_build(video_data, sacred, tmp_path):
    """A DAS search scores its plans on one task's val batches: the four-task video config with stage=search is one
    clear error naming the fix, before a model is built or a run folder reserved."""
    from vlpeft.config import ConfigError

    log = tmp_path / "result"
    upd = dict(backbone="test_vl_bart_video", tokenizer="bert-base-uncased", pet="das", search="das",
               stage="search", das_epoch=2, das_warmup_epoch=0, data_root=str(video_data), log_dir=str(log),
               per_gpu_batchsize=4, batch_size=4, max_epoch=2, num_gpus=0, num_workers=0)
    with pytest.raises(ConfigError, match=r"stage=search on backbone=test_vl_bart_video \(generative\) scores its "
                                          r"plans on one task's val batches, but datasets=\['tvqa', 'how2qa', 'tvc', "
                                          r"'yc2c'\]; search on one task \(e.g. datasets=\['tvqa'\]"):
        sacred("vladapter_video_single_adapter", **upd)
    assert not list(log.rglob("version_*"))


def test_per_task_modules_are_keyed_by_the_video_tasks():
    """A per-task recipe under a video config (``--use_tasks_prompts`` runs carry ``batch["task"]``) builds one module
    copy per video task name, the names the video batches carry."""
    from vlpeft.pet import PRESETS, inject

    cfg = {**_script("vladapter_video_single_adapter"), "pet": "vl_adapter_multiple", "adapter_reduction": 8}
    report = inject(BACKBONES.build("test_vl_bart_video"), PRESETS.build(cfg["pet"], cfg))
    keys = {n.split(".tasks.")[1].split(".")[0] for n in report.param_names() if ".tasks." in n}
    assert keys == {"tvqa", "how2qa", "tvc", "yc2c"}

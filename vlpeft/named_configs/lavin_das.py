"""LaVIN-DAS's released experiments (DoubtedSteam/DAS ``LaVIN-DAS/scripts/{search,finetuning,evaluate}_
{boolq,csqa,gsm8k,sqa}_7b.sh``; seeds.md §1.8, §4.2) and DVP on ScienceQA (hsb1357173526/Dynamic_Visual_Prompting
``Dynamic_Visual_Prompting_For_SQA/scripts/{search,finetuning}_sqa_7b.sh``) as named configs on the ``lavin``
backbone: LLaMA-7B learning LaVIN's answer text (the generate mode of the tasks ``boolq``, ``csqa``, ``gsm8k``,
``scienceqa``), CLIP ViT-L/14 image tokens for ScienceQA only (the language scripts pass ``--language_only``).

How the scripts' flags become keys:

- 2 GPUs × ``--batch_size 4`` × ``--accum_iter 4`` = 32 samples per step: ``batch_size=32 per_gpu_batchsize=4``
  (``num_gpus=2`` on the command line, as ``scripts/das_lavin.sh`` passes it); lr = ``--blr`` · 32 / 256 (the MAE
  rule of ``train_llama.py``); half-cycle cosine after a linear warm-up of ``--warmup_epochs`` (``lr_sched.py``,
  per iteration): ``decay_power="cosine"``, ``warmup_steps`` = warm-up epochs / epochs; AdamW with
  ``--weight_decay 0.02``; ``--seed`` default 0.
- ``--max_seq_len`` → ``max_text_len`` (prompt + answer tokens, cut together as LaVIN's ``tokenize``);
  ``--adapter_dim 8`` → ``das_llama_adapter_dim=8`` (skip adapters 4 × 8 = 32); ``--temperature 10`` →
  ``das_llama_temperature``; the text form of the adapters for the language tasks (``pl_adapter``), the router form
  for ScienceQA (``mm_adapter``: ``das_llama_router=True``).
- search: ``--skipped_num`` → ``skip_num``, ``--nas_epoch`` → ``das_epoch`` and ``max_epoch`` (search mode trains
  ``nas_epoch`` epochs), ``--nas_warmup_epoch`` → ``das_warmup_epoch`` (ScienceQA passes neither: the parser's 10
  and 5); gate step 0.05, 3 candidate sets per round, a round every len(loader) // 150 iterations on 4 × the per-GPU
  batch (``das_lr``, ``das_step``, ``das_rounds_per_epoch``, ``das_reward_batch_mult``).
- fine-tuning: ``--skip_list '[…]'`` → ``skip_module`` (the scripts ship ``[]``: give the searched layers, or
  ``placement=latest``), ``--nas_epoch 0``.
- evaluation (``eval_mmlu.py`` / ``eval_scienceqa.py``, 1 GPU): ``test_only=True``, ``load_path`` = the fine-tuned
  checkpoint (the scripts' ``--adapter_path``; give it on the command line), ``skip_module`` = the script's
  ``--skip_list``, ``per_gpu_batchsize`` = ``--max_batch_size``, ``gen_max_length`` = the scripts' generation length
  (``max_gen_len``: 10 BoolQ / CSQA, 256 GSM8K, 64 ScienceQA), ``max_text_len`` = ``--max_seq_len``.

Deliberate differences: decoding is greedy (the originals sample with temperature 0.1, top-p 0.75); BoolQ and
CSQA are tested on their validation sets and GSM8K on its test set through the same converter files (the originals
read pre-built 0-shot JSON files holding the same prompts; their BoolQ / GSM8K prompt variants are kept on the test
split); search rewards are scored on the val split, which for CSQA and GSM8K reads their training file (as LaVIN-DAS
scores its language tasks' rounds on training data) and for BoolQ its dev set.
"""

from __future__ import annotations

from typing import Any, Callable

LAVIN_BENCHMARKS = ("boolq", "csqa", "gsm8k", "sqa")
LAVIN_CONFIGS = tuple(f"das_{stage}_lavin_{b}" for b in LAVIN_BENCHMARKS for stage in ("search", "train", "evaluate"))
DVP_SQA_CONFIGS = ("dvp_search_llama_sqa", "dvp_adaption_llama_sqa")

_EFF_BATCH = 32  # 2 GPUs × 4 × accumulation 4 (DVP SQA: 2 × 8 × 2)

# shared by every LaVIN-DAS run: LLaMA-7B (the LLaMA folder as tokenizer=…), LaVIN's adapters, AdamW, cosine
_LAVIN = dict(backbone="lavin", pet="das_llama", das_llama_adapter_dim=8, das_llama_scale=1.0,
              das_llama_temperature=10.0, tokenizer="./llama_7b_weights_hf", batch_size=_EFF_BATCH,
              per_gpu_batchsize=4, weight_decay=0.02, decay_power="cosine", end_lr=0, max_steps=None, precision=32,
              draw_false_image=0, num_beams=1, seed=0, skip_module=[], das_lr=0.05, das_step=3,
              das_rounds_per_epoch=150, das_reward_batch_mult=4)
# per benchmark: (dataset = task, blr, text-only, multimodal router, evaluation generation length)
_BENCH = {
    "boolq": ("boolq", 1e-4, True, 10),
    "csqa": ("csqa", 1e-4, True, 10),
    "gsm8k": ("gsm8k", 1e-4, True, 256),
    "sqa": ("scienceqa", 9e-3, False, 64),
}
# the scripts' values: search (max_seq_len, epochs = nas_epoch, warm-up epochs, skipped_num, nas_warmup_epoch),
# fine-tuning (max_seq_len, epochs, warm-up epochs), evaluation (max_seq_len, max_batch_size, skip_list)
_SEARCH = {"boolq": (1024, 10, 1, 6, 3), "csqa": (1024, 5, 1, 6, 2), "gsm8k": (1024, 10, 1, 4, 5),
           "sqa": (512, 10, 4, 6, 5)}
_TRAIN = {"boolq": (1024, 5, 1), "csqa": (512, 5, 1), "gsm8k": (512, 20, 1), "sqa": (512, 20, 2)}
_EVAL = {"boolq": (4096, 1, []), "csqa": (4096, 8, [18, 26, 22, 19, 29, 27]), "gsm8k": (4096, 1, []),
         "sqa": (512, 64, [24, 27, 25, 22])}


def register(named: Callable[..., None], loss_names: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Register every config of this module through ``named(name, **cfg)`` (``vlpeft.config`` calls this)."""
    for bench, (task, blr, text_only, gen_len) in _BENCH.items():
        base = dict(_LAVIN, exp_name=f"das_lavin_{bench}", datasets=[task], loss_names=loss_names({task: 1}),
                    learning_rate=blr * _EFF_BATCH / 256, gen_max_length=gen_len, das_llama_router=not text_only)
        if text_only:  # --language_only: LaVIN-DAS's PL_Transformer, no CLIP
            base.update(lavin_clip_model="")
        else:  # LaVIN: CLIP ViT-L/14 on 224 × 224 (squashed, bicubic, ImageNet mean / std), 6 image tokens
            base.update(lavin_clip_model="ViT-L/14", lavin_clip_every=4, lavin_hidden_proj=128,
                        lavin_visual_adapter="router", lavin_visual_adapter_dim=8, image_size=224,
                        train_transform_keys=["lavin"], val_transform_keys=["lavin"])
        seq, epochs, warm, skipped, nas_warm = _SEARCH[bench]
        named(f"das_search_lavin_{bench}", **dict(
            base, stage="search", search="das", max_text_len=seq, max_epoch=epochs, das_epoch=epochs,
            warmup_steps=warm / epochs, skip_num=skipped, das_warmup_epoch=nas_warm))
        seq, epochs, warm = _TRAIN[bench]
        train = dict(base, stage="train", search="", max_text_len=seq, max_epoch=epochs, warmup_steps=warm / epochs)
        named(f"das_train_lavin_{bench}", **train)
        seq, per_gpu, skip = _EVAL[bench]
        named(f"das_evaluate_lavin_{bench}", **dict(train, test_only=True, max_text_len=seq, per_gpu_batchsize=per_gpu,
                                                    batch_size=per_gpu, num_gpus=1, skip_module=list(skip)))

    # DVP on ScienceQA (LLaMA-DVP_adp): LaVIN's model and prompt with the visual prompt inserted at layer K of
    # LLaMA (KAB-APP search, then --insert_layer K: the script ships 4); blr 1e-2, 2 GPUs × 8 × accumulation 2
    dvp = dict(_LAVIN, exp_name="dvp_lavin_sqa", datasets=["scienceqa"], loss_names=loss_names({"scienceqa": 1}),
               method="dvp", pet="das_llama", das_llama_router=True, per_gpu_batchsize=8, max_text_len=512,
               learning_rate=1e-2 * _EFF_BATCH / 256, gen_max_length=64, lavin_clip_model="ViT-L/14",
               lavin_clip_every=4, lavin_hidden_proj=128, lavin_visual_adapter="router", lavin_visual_adapter_dim=8,
               image_size=224, train_transform_keys=["lavin"], val_transform_keys=["lavin"],
               dvp_llama_xattn_dim=512, num_heads=16, drop_rate=0.1)  # Cross_Attention(mid 512, 16 heads, 0.1)
    named("dvp_search_llama_sqa", **dict(dvp, stage="search", search="kab", search_stage=True, max_epoch=2,
                                         warmup_steps=1 / 2, weight_decay=0.04))
    named("dvp_adaption_llama_sqa", **dict(dvp, stage="train", search="", search_stage=False, max_epoch=20,
                                           warmup_steps=2 / 20, weight_decay=0.05, insert_layer=4))


__all__ = ["DVP_SQA_CONFIGS", "LAVIN_BENCHMARKS", "LAVIN_CONFIGS", "register"]

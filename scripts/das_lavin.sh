#!/usr/bin/env bash
# LaVIN-DAS (the DAS repository's LaVIN-DAS/scripts/{search,finetuning,evaluate}_<benchmark>_7b.sh) on one benchmark:
# search → fine-tune on the searched placement → evaluate the last checkpoint (generated answers, LaVIN's scoring).
# usage: scripts/das_lavin.sh boolq|csqa|gsm8k|sqa [ARROWS LLAMA_FOLDER [CLIP]] [extra key=value ...]
#   without ARROWS: a tiny CPU run on the benchmark's synthetic stand-in (written into demo_out/lavin/<benchmark>/) on
#   the tiny test_lavin backbone — the same three stages in about a minute;
#   with them: ARROWS holds the converted benchmark (python -m write_arrow boolq|csqa|gsm8k|scienceqa, DATA.md),
#   LLAMA_FOLDER is LLaMA-7B in Hugging Face format, CLIP (sqa only) OpenAI's ViT-L-14.pt or a CLIPVisionModel
#   folder. The scripts' settings (2 GPUs × 4 per GPU × accumulation 4, blr, epochs, warm-up, skipped_num,
#   nas_warmup_epoch, nas_epoch, max_seq_len, generation length) come from the das_{search,train,evaluate}_lavin_*
#   named configs; set skip_num=2|4|6 for the DAS2/4/6 rows of the DAS README's ScienceQA table.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
bench=${1:?usage: scripts/das_lavin.sh boolq|csqa|gsm8k|sqa [ARROWS LLAMA_FOLDER [CLIP]] [key=value ...]}; shift
case "$bench" in
  boolq|csqa|gsm8k) dataset=$bench;;
  sqa) dataset=scienceqa;;
  *) echo "unknown benchmark $bench (boolq | csqa | gsm8k | sqa)" >&2; exit 2;;
esac
if [ $# -ge 2 ] && [[ "$1" != *=* ]]; then  # real data and weights
  data_root=$1; llama=$2; shift 2
  common=(data_root="$data_root" tokenizer="$llama")
  if [ "$bench" = sqa ]; then clip=${1:?sqa needs CLIP (ViT-L-14.pt or a CLIPVisionModel folder)}; shift
    common+=(lavin_clip_model="$clip"); fi
  train_gpus=(num_gpus=2 per_gpu_batchsize=4)
else  # the tiny synthetic run
  out=demo_out/lavin/$bench
  python -m write_arrow "${dataset}_synthetic" --dst "$out/arrows" --images 16 --no-progress
  common=(data_root="$out/arrows" log_dir="$out/result" backbone=test_lavin tokenizer=bert-base-uncased num_gpus=0
          num_workers=0 per_gpu_batchsize=8 batch_size=8 max_text_len=96 max_epoch=2 das_epoch=2 das_warmup_epoch=1
          skip_num=1 das_llama_adapter_dim=4 das_rounds_per_epoch=1 gen_max_length=16)
  [ "$bench" = sqa ] && common+=(lavin_clip_model=test_clip_tiny lavin_clip_every=1 lavin_hidden_proj=16
                                 lavin_visual_adapter_dim=4 image_size=32)
  train_gpus=()
fi
# 1. search: writes placement.json (the layers to skip) into its run folder
python run.py with "das_search_lavin_$bench" "${common[@]}" "${train_gpus[@]}" "$@"
# 2. fine-tune on the newest placement of this experiment
python run.py with "das_train_lavin_$bench" "${common[@]}" "${train_gpus[@]}" placement=latest "$@"
# 3. evaluate its last checkpoint on one GPU (the placement comes from the checkpoint, not the script's skip list)
last=$(ls -t "$(vlpeft_log_dir "${common[@]}" "$@")"/das_lavin_"$bench"_seed*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[das_lavin.sh] evaluating $last"
python run.py with "das_evaluate_lavin_$bench" "${common[@]}" skip_module=[] load_path="$last" "$@"

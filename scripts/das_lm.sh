#!/usr/bin/env bash
# DAS on language models (LaVIN-DAS, the DAS repository's LaVIN-DAS/): search → train on the searched placement → test.
# usage: scripts/das_lm.sh llama-boolq|bert-boolq|t5-boolq|llama-sqa DATA_ROOT LM_FOLDER [CLIP] [extra key=value ...]
#   LM_FOLDER: the language model's local folder (HF format, or one .gguf file for LLaMA); CLIP (llama-sqa only):
#   an HF CLIPVisionModel folder or OpenAI ViT-B-16.pt. The LaVIN-DAS scripts' settings (2 GPUs × 4 per GPU × 4
#   accumulation, skip 6 of 32, warm-up 3 of 10 search epochs, gate step 0.05) come from the das_*_{boolq,sqa}
#   named configs; set skip_num=2|4|6 for the DAS2/4/6 rows of the DAS README.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
setting=$1; data_root=$2; lm=$3; shift 3
case "$setting" in
  llama-boolq|bert-boolq|t5-boolq) lmname=${setting%-boolq}; search=das_search_${lmname}_boolq;
                                   train=das_train_${lmname}_boolq; exp=das_boolq; extra=();;
  llama-sqa) clip=$1; shift; search=das_search_llama_sqa; train=das_train_llama_sqa; exp=das_sqa;
             extra=(clip_model="$clip");;
  *) echo "unknown setting $setting (llama-boolq | bert-boolq | t5-boolq | llama-sqa)" >&2; exit 2;;
esac
common=(data_root="$data_root" tokenizer="$lm" num_gpus=2 per_gpu_batchsize=4 "${extra[@]}")
# 1. search: writes placement.json (+ placement.png) into its run folder
python run.py with "$search" "${common[@]}" "$@"
# 2. train on the newest placement of this experiment
python run.py with "$train" "${common[@]}" placement=latest "$@"
# 3. test the last checkpoint of that run (BoolQ: the dev split; ScienceQA: test)
last=$(ls -t "$(vlpeft_log_dir "$@")"/"$exp"_seed*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[das_lm.sh] testing $last"
python run.py with "$train" "${common[@]}" num_gpus=1 test_only=True load_path="$last" "$@"

#!/usr/bin/env bash
# VL-Adapter (CVPR'22) and VL-PET (ICCV'23) experiments: VL-BART / VL-T5 trained on VQAv2 + GQA + NLVR2 + COCO
# captioning jointly (image-text) or VL-BART on TVQA + How2QA + TVC + YC2C (video-text), every task by generation;
# one command per released script (train, then test the last checkpoint: the test dumps in the test run's folder).
# usage: scripts/vl_adapter.sh EXPERIMENT DATA_ROOT MODEL_FOLDER FEATURES [extra key=value ...]
#   EXPERIMENT: vladapter_{single_adapter,multiple_adapters,hyperformer,single_compacter,multiple_compacters,
#                          single_lora,multiple_lora,single_prompt,multiple_prompts,full_finetuning}
#               | vlpet_{small,middle_x,middle_y,large}_{bart,t5}
#               | vladapter_video_{full_finetuning,single_adapter,single_lora,single_prompt}
#               | vlpet_{small,middle_x,middle_y,large}_video   (video-text: TVQA + How2QA + TVC + YC2C on VL-BART)
#     (vladapter_* run on BART as the scripts do; add "vladapter_t5" to the extra arguments for their T5 branch)
#   MODEL_FOLDER: a local facebook/bart-base or t5-base (model + tokenizer)
#   FEATURES: VL-Adapter's pre-extracted CLIP features, as {dataset: folder} in sacred's syntax, e.g.
#     '{"vqa": "VL-T5/datasets/COCO/clip_features/data_clip_RN101_att", "coco": "…/COCO/…", "gqa": "…/VG/…", "nlvr2": "…/nlvr/…"}'
#     or "" to extract grid features from the arrow images with vl_clip_model=<local CLIP folder> (an extra argument);
#     "" for the video experiments (their frame features are in the video arrow files)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
exp=$1; data_root=$2; model=$3; feats=$4; shift 4
case "$exp" in
  vladapter_*|vlpet_*) ;;
  *) echo "unknown experiment $exp (vladapter_<method> | vlpet_<variant>_<bart|t5>)" >&2; exit 2;;
esac
common=(data_root="$data_root" num_gpus=1 num_nodes=1 "$exp" vl_model="$model" tokenizer="$model"
        "visual_features=$feats")
python run.py with "${common[@]}" "$@"
last=$(ls -t "$(vlpeft_log_dir "$@")"/"$exp"_seed*_from_*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[vl_adapter.sh] testing $last"
python run.py with "${common[@]}" test_only=True load_path="$last" "$@"

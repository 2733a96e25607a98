#!/usr/bin/env bash
# Routing-VLPEFT (ECCV'24) experiments: frozen ViT-B/16-in21k + GPT-2 (COCO captioning) or + RoBERTa (VQAv2), one
# command per released script; each trains, then tests its last checkpoint.
# usage: scripts/routing.sh EXPERIMENT DATA_ROOT VIT_FOLDER LM_FOLDER [extra key=value ...]
#   EXPERIMENT: gpt2_lora | gpt2_adapter | roberta_lora | roberta_adapter
#               | roberta_lora_as_released | roberta_adapter_as_released
#   (the *_as_released RoBERTa runs reproduce what the released scripts actually ran: routing off, because their
#    routing flag --use_vllora is stale; the other two RoBERTa runs switch routing on, as the paper describes)
#   VIT_FOLDER: a local google/vit-base-patch16-224-in21k; LM_FOLDER: a local gpt2 / roberta-base (model + tokenizer)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
exp=$1; data_root=$2; vit=$3; lm=$4; shift 4
case "$exp" in
  gpt2_lora|gpt2_adapter) bs=40;;
  roberta_lora|roberta_adapter|roberta_lora_as_released|roberta_adapter_as_released) bs=512;;
  *) echo "unknown experiment $exp (gpt2_lora | gpt2_adapter | roberta_lora | roberta_adapter |" \
          "roberta_lora_as_released | roberta_adapter_as_released)" >&2; exit 2;;
esac
cfg="routing_vit_$exp"
common=(data_root="$data_root" num_gpus=1 num_nodes=1 "$cfg" per_gpu_batchsize=$bs vit_model="$vit" tokenizer="$lm")
python run.py with "${common[@]}" "$@"
last=$(ls -t "$(vlpeft_log_dir "$@")"/"$cfg"_seed*_from_*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[routing.sh] testing $last"
python run.py with "${common[@]}" test_only=True load_path="$last" "$@"

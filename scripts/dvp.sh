#!/usr/bin/env bash
# DVP with KAB-APP: search the insertion layer → train with the prompt there (adapters) → test.
# usage: scripts/dvp.sh bert|t5|llama vqa|gqa|snli_ve DATA_ROOT PLM_FOLDER CLIP [extra key=value ...]
# CLIP: a local Hugging Face CLIPVisionModel folder or OpenAI's ViT-B-16.pt
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
lm=$1; task=$2; data_root=$3; plm=$4; clip=$5; shift 5
case "$lm" in
  bert) bs=256; lr=1e-3; [ "$task" = vqa ] || lr=5e-4;;
  t5) bs=256; lr=3e-4;;
  llama) bs=128; lr=5e-4; [ "$task" = snli_ve ] && bs=64;;
  *) echo "unknown language model $lm (bert | t5 | llama)" >&2; exit 2;;
esac
common=(data_root="$data_root" num_gpus=1 num_nodes=1 tokenizer="$plm" clip_model="$clip")
python run.py with "${common[@]}" "dvp_search_${lm}_${task}" per_gpu_batchsize=$bs "$@"
python run.py with "${common[@]}" "dvp_adaption_${lm}_${task}" per_gpu_batchsize=$bs placement=latest \
  use_adapter=True learning_rate=$lr "$@"
# the newest train run of this experiment (named configs set exp_name=DVP); the dump lands in the test run's folder
last=$(ls -t "$(vlpeft_log_dir "$@")"/DVP_seed*_from_*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[dvp.sh] testing $last"
python run.py with "${common[@]}" "dvp_adaption_${lm}_${task}" per_gpu_batchsize=$bs use_adapter=True \
  test_only=True precision=32 load_path="$last" "$@"

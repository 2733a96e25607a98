#!/usr/bin/env bash
# DAS on METER (CLIP-ViT-B/16 + RoBERTa), the DAS-METER scripts' settings (DAS/METER/script/*.sh):
# search → train on the searched placement → test.
# usage: scripts/das_meter.sh vqa|nlvr2|f30k DATA_ROOT PRETRAINED_CKPT [extra key=value ...]
#   (also reached as scripts/das.sh meter-vqa|meter-nlvr2|meter-f30k …)
# PRETRAINED_CKPT: METER's meter_clip16_288_roberta_pretrain.ckpt. text_roberta reads roberta-base (tokenizer and
# weights) from the local Hugging Face cache, and clip16 the OpenAI ViT-B/16 from ~/.cache/clip/ViT-B-16.pt;
# nothing is downloaded (or pass tokenizer=<folder> text_encoder=<folder> vit=<file>).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
task=$1; data_root=$2; ckpt=$3; shift 3
case "$task" in
  # named config                         exp name            per-GPU batch  image  eval batch  eval extra
  vqa)   cfg=task_finetune_vqa_clip_bert;       exp=finetune_vqa;       bs=32; img=384; ebs=1;  extra=();  eextra=();;
  nlvr2) cfg=task_finetune_nlvr2_clip_bert;     exp=finetune_nlvr2;     bs=32; img=288; ebs=64; extra=();  eextra=();;
  f30k)  cfg=task_finetune_irtr_f30k_clip_bert; exp=finetune_irtr_f30k; bs=2;  img=384; ebs=32;
         extra=(get_recall_metric=False); eextra=(get_recall_metric=True);;
  *) echo "unknown task $task (vqa | nlvr2 | f30k)" >&2; exit 2;;
esac
common=(data_root="$data_root" num_gpus=1 num_nodes=1 "$cfg" clip16 text_roberta image_size=$img)
# 1. search (3 epochs, 4 of the 12 fusion layers skipped): writes placement.json into its run folder
python run.py with "${common[@]}" clip_randaug per_gpu_batchsize=$bs load_path="$ckpt" das_search max_epoch=3 \
  skip_num=4 "${extra[@]}" "$@"
# 2. train on the newest placement of this experiment, again from the pretrained checkpoint
python run.py with "${common[@]}" clip_randaug per_gpu_batchsize=$bs load_path="$ckpt" placement=latest \
  "${extra[@]}" "$@"
# 3. test the last checkpoint of that run (VQA: writes the vqa_submit_….json in the test run's folder)
last=$(ls -t "$(vlpeft_log_dir "$@")"/"$exp"_seed*_from_*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[das_meter.sh] testing $last"
python run.py with "${common[@]}" per_gpu_batchsize=$ebs test_only=True precision=32 load_path="$last" \
  "${eextra[@]}" "$@"

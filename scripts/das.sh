#!/usr/bin/env bash
# DAS on ViLT, the paper's three-step experiment: search → train on the searched placement → test.
# usage: scripts/das.sh vqa|nlvr2|f30k DATA_ROOT PRETRAINED_CKPT [extra key=value ...]
#        scripts/das.sh meter-vqa|meter-nlvr2|meter-f30k …   (DAS on METER: scripts/das_meter.sh)
# (the original scripts' settings: 1 GPU, search 3 epochs with skip_num=1)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_env.sh"  # the project's .venv (installs it on first use)
case "${1:-}" in meter-*) t=${1#meter-}; shift; exec "$(dirname "$0")/das_meter.sh" "$t" "$@";; esac
task=$1; data_root=$2; ckpt=$3; shift 3
case "$task" in
  vqa)   cfg=task_finetune_vqa_randaug;        exp=finetune_vqa_randaug;        bs=64;;
  nlvr2) cfg=task_finetune_nlvr2_randaug;      exp=finetune_nlvr2_randaug;      bs=64;;
  f30k)  cfg=task_finetune_irtr_f30k_randaug;  exp=finetune_irtr_f30k_randaug;  bs=4;;
  *) echo "unknown task $task (vqa | nlvr2 | f30k | meter-vqa | meter-nlvr2 | meter-f30k)" >&2; exit 2;;
esac
common=(data_root="$data_root" num_gpus=1 num_nodes=1 "$cfg" per_gpu_batchsize=$bs load_path="$ckpt")
# 1. search: writes placement.json (+ placement.png) into its run folder. A search stopped before it finished
#    (SIGTERM, preemption) exits 143 and prints its resume_from=… command: set -e stops here, so step 2 never
#    trains on an older placement.
python run.py with "${common[@]}" das_search max_epoch=3 skip_num=1 "$@"
# 2. train on the newest placement of this experiment (no hand copying; the run prints which file it took)
python run.py with "${common[@]}" placement=latest "$@"
# 3. test the last checkpoint of that run (the newest of this experiment). VQA: writes
#    result/${exp}_seed0_test_last/version_<M>/vqa_submit_<train run>_v<N>_last.json (in the test run's own folder)
last=$(ls -t "$(vlpeft_log_dir "$@")"/"$exp"_seed*_from_*/version_*/checkpoints/last.ckpt | head -n 1)
echo "[das.sh] testing $last"
python run.py with "${common[@]}" test_only=True precision=32 load_path="$last" "$@"

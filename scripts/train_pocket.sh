#!/usr/bin/env bash
# Train the `pocket` preset's router and interaction layers on a CPU and ship them: the checkpoint the quickstart and
# an editor's daemon load (mot_engine/presets/checkpoints/pocket/). A laptop-class machine (2 cores) takes about
# two hours: pair verification ~40 min, training ~1 h (2-3 s a pair), evaluation a few minutes.
#
#   bash scripts/train_pocket.sh            # OUT=runs/pocket PAIRS=1600 STEPS: one epoch
#
# Training data (never exec_dev, the evaluation set): pairs generated from our own templates and differentially
# verified on the CPU backend (python -m train.synth --verify), and BabelTower's validation pairs that are not in
# exec_dev (python -m train.pocket_data). The prompt format is `kernel-head-v1` (short prompts: the trained
# interaction layers stand in for the few-shot exemplars), and the checkpoint records it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/pocket}
PAIRS=${PAIRS:-1600}
DATA=${DATA:-../shared/data/babeltower}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

# 1. Pairs: generated and verified (C function vs kernel on generated inputs, CPU backend), then the training set.
if [ ! -s "$OUT/synth.jsonl" ]; then
  $PY -m train.synth --n "$PAIRS" --seed 0 --verify --workers 2 --out "$OUT/synth.jsonl"
fi
$PY -m train.pocket_data --synth "$OUT/synth.jsonl" --babeltower "$DATA" --out "$OUT/train.jsonl"

# 2. Train (mot-train; --resume continues an interrupted run exactly).
RESUME=()
if [ -d "$OUT/run" ] && ls -d "$OUT"/run/checkpoint-* >/dev/null 2>&1; then RESUME=(--resume); fi
mot-train --data_path "$OUT/train.jsonl" --preset pocket --prompt_format kernel-head-v1 --shared_dim 256 \
  --output_dir "$OUT/run" \
  --train_ratio 0.96 --test_ratio 0.02 --max_length 384 --batch_size 1 --gradient_accumulation_steps 8 \
  --num_epochs 1 --learning_rate 3e-4 --warmup_steps 20 --lr_scheduler cosine --eval_steps 0 \
  --eval_max_samples 16 --test_max_samples 16 --max_new_tokens 160 --save_steps 50 --save_total_limit 2 \
  --no_compile_check --no_progress "${RESUME[@]}"

# 3. Ship: the trainable layers in bf16 (what the pocket preset loads by default).
$PY -m train.export_checkpoint "$OUT/run/best_model" mot_engine/presets/checkpoints/pocket --dtype bfloat16
echo "shipped: mot_engine/presets/checkpoints/pocket ($(du -sh mot_engine/presets/checkpoints/pocket | cut -f1))"

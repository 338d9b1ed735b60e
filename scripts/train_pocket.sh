#!/usr/bin/env bash
# Train the `pocket` preset's router and interaction layers on a CPU and ship them: the checkpoint the quickstart and
# an editor's daemon load (mot_engine/presets/checkpoints/pocket/). On a 2-core machine (2026-12-06): pair
# generation and verification 41 min, stage 1 17 min, stage 2 34 min; fast mode's alone head (2026-12-08): the
# experts' solo translations of 107 training functions, verified, 72 min beside other work, the fit 1 min.
#
#   bash scripts/train_pocket.sh            # OUT=runs/pocket PAIRS=1200
#
# Training data (never exec_dev, the evaluation set): pairs generated from our own templates and differentially
# verified on the CPU backend (python -m train.synth --verify: 1,163 of 1,200 verified), and BabelTower's
# validation pairs that are not in exec_dev (python -m train.pocket_data). The experts' own verified kernels
# (python -m train.self_made, then pocket_data --self) are not in this recipe yet: the shipped checkpoint predates them.
#
# Two stages, because CPU time goes with sequence length:
#   1. `kernel-head-v1` (short prompts, max_length 320): 740 generated pairs + 58 BabelTower pairs, one epoch.
#   2. warm-started from stage 1, `fewshot-head-v1` (the format the pocket experts translate best with; prompts of
#      ~700 tokens, max_length 1024): 280 other generated pairs + the 58, one epoch. The checkpoint records this
#      format, and inference uses it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
OUT=${OUT:-runs/pocket}
PAIRS=${PAIRS:-1200}
DATA=${DATA:-../shared/data/babeltower}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT"

# Pairs: generated and verified (C function vs kernel on generated inputs, CPU backend).
if [ ! -s "$OUT/synth.jsonl" ]; then
  $PY -m train.synth --n "$PAIRS" --seed 0 --verify --workers 2 --out "$OUT/synth.jsonl"
fi
sed -n '1,740p' "$OUT/synth.jsonl" > "$OUT/synth_stage1.jsonl"
sed -n '741,1020p' "$OUT/synth.jsonl" > "$OUT/synth_stage2.jsonl"

COMMON=(--preset pocket --shared_dim 256 --train_ratio 0.97 --batch_size 1 --gradient_accumulation_steps 4
        --num_epochs 1 --lr_scheduler cosine --eval_steps 0 --eval_max_samples 4 --max_new_tokens 128
        --save_steps 20 --save_total_limit 2 --logging_steps 5 --no_compile_check --no_progress)
resume() { if ls -d "$1"/checkpoint-* >/dev/null 2>&1; then echo --resume; fi; }

# Stage 1: kernel-head-v1, short sequences.
$PY -m train.pocket_data --synth "$OUT/synth_stage1.jsonl" --babeltower "$DATA" --out "$OUT/train1.jsonl"
[ -d "$OUT/run1/best_model" ] || mot-train --data_path "$OUT/train1.jsonl" --output_dir "$OUT/run1" "${COMMON[@]}" \
  --prompt_format kernel-head-v1 --max_length 320 --test_ratio 0.01 --test_max_samples 4 --learning_rate 5e-4 \
  --warmup_steps 10 $(resume "$OUT/run1")

# Stage 2: fewshot-head-v1, warm-started from stage 1.
$PY -m train.pocket_data --synth "$OUT/synth_stage2.jsonl" --babeltower "$DATA" --out "$OUT/train2.jsonl"
[ -d "$OUT/run2/best_model" ] || mot-train --data_path "$OUT/train2.jsonl" --output_dir "$OUT/run2" "${COMMON[@]}" \
  --prompt_format fewshot-head-v1 --checkpoint_path "$OUT/run1/best_model" --max_length 1024 --test_ratio 0.01 \
  --test_max_samples 2 --learning_rate 8e-4 --warmup_steps 5 $(resume "$OUT/run2")

# Ship: the trainable layers in bf16 (what the pocket preset loads by default).
SHIP=mot_engine/presets/checkpoints/pocket
$PY -m train.export_checkpoint "$OUT/run2/best_model" "$SHIP" --dtype bfloat16

# Fast mode's expert: each expert translates training functions alone (BabelTower's validation pairs outside
# exec_dev, 48 generated functions of another seed), each kernel is verified against its C function, and the
# router's alone head is fit to which expert verified (ARCHITECTURE.md, "Routing"; 2-core CPU: about an hour).
[ -s "$OUT/solo_synth_pairs.jsonl" ] || $PY -m train.synth --n 200 --seed 7 --out "$OUT/solo_synth_pairs.jsonl"
[ -s "$OUT/solo_bt.jsonl" ] || $PY -m train.solo_outcomes --checkpoint "$SHIP" --babeltower "$DATA" --out "$OUT/solo_bt.jsonl"
[ -s "$OUT/solo_synth.jsonl" ] || $PY -m train.solo_outcomes --checkpoint "$SHIP" --synth "$OUT/solo_synth_pairs.jsonl" \
  --limit 48 --out "$OUT/solo_synth.jsonl"
$PY -m train.fast_primary --checkpoint "$SHIP" --outcomes "$OUT/solo_bt.jsonl" "$OUT/solo_synth.jsonl" --out "$SHIP"
echo "shipped: $SHIP ($(du -sh "$SHIP" | cut -f1))"

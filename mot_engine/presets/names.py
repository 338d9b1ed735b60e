"""The presets' names and the hub ids of the seed experts: torch-free, so the CLIs can offer `--preset` choices
without loading the engine."""

from __future__ import annotations

PRESETS = ("seed", "seed-7b", "pocket", "tiny", "seed-random")
SEED_EXPERTS = ["Qwen/Qwen2.5-Coder-1.5B", "hpcgroup/hpc-coder-v2-1.3b", "bigcode/starcoder2-3b"]
SEED_7B_EXPERTS = ["Qwen/Qwen2.5-Coder-7B", "hpcgroup/hpc-coder-v2-6.7b", "bigcode/starcoder2-7b"]
SEED_ENCODER = "microsoft/deberta-v3-large"
# The prompt format a preset uses without a checkpoint (a checkpoint's own format always wins): chosen by measurement
# (BENCHMARKS.md, bench_quality). The others use the seed's template, which their checkpoints were trained with.
PRESET_PROMPT_FORMATS = {"pocket": "fewshot-head-v1"}
# Checkpoints that ship with the package (mot_engine/presets/checkpoints/<name>/): a preset named without a checkpoint
# loads its own, so the quickstart and an editor's autostarted daemon get trained layers with no hub.
SHIPPED_CHECKPOINTS = {"pocket": "pocket"}

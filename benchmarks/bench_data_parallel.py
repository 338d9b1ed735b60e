"""Training on two GPUs: two-process data parallel (accelerate + NCCL) and one process with experts on both GPUs.

    MOT_SEED_CONFIGS=.../seed_expert_configs.json python benchmarks/bench_data_parallel.py \
        --data ../shared/data/babeltower/cpp.para.valid.tok

Runs the real training CLI (`accelerate launch -m train train`, preset seed-random, bf16) three times on the same
data and steps, and reads each run's metrics.jsonl:
  1. one process, every expert on cuda:0 (the baseline);
  2. one process, the experts spread over cuda:0 and cuda:1 (expert i on GPU i mod 2; the interaction layers
     move the secondaries' states across devices);
  3. two processes, one GPU each, data parallel (one all-reduce of the trainable gradients per optimizer step).
Prints tokens/s (all processes together, first logging window dropped: it holds start-up and warm-up), peak
memory and the last loss; ratio to the baseline measured in the same run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run(name: str, launch: list[str], train_args: list[str], out: Path, env: dict) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", *launch, "-m", "train", "train",
           *train_args, "--output_dir", str(out)]
    print(f"\n== {name}: {' '.join(cmd)}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-6000:], sep="\n")
        raise SystemExit(f"{name}: the training run failed with exit status {proc.returncode}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    train = [r for r in rows if r.get("type") == "train"]
    if len(train) < 3:
        raise SystemExit(f"{name}: only {len(train)} logging windows; raise --steps")
    steady = train[1:]
    return {
        "tokens_per_s": statistics.median(r["tokens_per_s"] for r in steady),
        "peak_gib": max(r.get("peak_memory_gib") or 0.0 for r in train),
        "last_loss": train[-1]["loss"],
        "first_loss": train[0]["loss"],
        "steps": train[-1]["step"],
        "wall_s": wall,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="training pairs (a BabelTower cpp.*.tok file or JSONL); enough "
                    "that no epoch ends within --steps (an epoch end evaluates, which needs the metrics packages)")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch_size", type=int, default=4, help="per process")
    ap.add_argument("--logging_steps", type=int, default=5)
    ap.add_argument("--preset", default="seed-random")
    ap.add_argument("--out", default="bench_data_parallel.json")
    ap.add_argument("--train_args", nargs=argparse.REMAINDER, default=[],
                    help="more arguments for the training CLI (e.g. --detokenize for space-tokenized JSONL)")
    args = ap.parse_args(argv)

    import torch

    if torch.cuda.device_count() < 2:
        print(f"needs 2 GPUs, found {torch.cuda.device_count()}")
        return 2
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    common = ["--data_path", args.data, "--preset", args.preset, "--batch_size", str(args.batch_size),
              "--stop_after_steps", str(args.steps), "--logging_steps", str(args.logging_steps), "--no_progress",
              "--eval_steps", "1000000", "--save_steps", "1000000", "--max_length", "512", "--learning_rate", "1e-4",
              "--gradient_accumulation_steps", "1", "--warmup_steps", "0", "--num_epochs", "1000"] + args.train_args
    work = Path(tempfile.mkdtemp(prefix="bench-dp-"))
    results = {"card": torch.cuda.get_device_name(0), "torch": torch.__version__, "steps": args.steps,
               "batch_size_per_process": args.batch_size}
    results["one GPU"] = run("one process, one GPU", ["--num_processes", "1"], common + ["--single_gpu"],
                             work / "one", env)
    results["one process, experts on 2 GPUs"] = run(
        "one process, experts on two GPUs", ["--num_processes", "1"], common, work / "split", env)
    results["two processes (data parallel)"] = run(
        "two processes, data parallel", ["--multi_gpu", "--num_processes", "2"], common, work / "dp", env)
    Path(args.out).write_text(json.dumps(results, indent=2))

    base = results["one GPU"]["tokens_per_s"]
    print(f"\n{results['card']} x2, torch {results['torch']}, {args.preset}, bf16, {args.steps} optimizer steps, "
          f"batch {args.batch_size} per process")
    print("| run | target tok/s (all processes) | x one GPU | peak GiB (rank 0) | loss first -> last window |")
    print("|---|---:|---:|---:|---|")
    for name in ("one GPU", "one process, experts on 2 GPUs", "two processes (data parallel)"):
        r = results[name]
        print(f"| {name} | {r['tokens_per_s']:.0f} | {r['tokens_per_s'] / base:.2f} | {r['peak_gib']:.1f} | "
              f"{r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

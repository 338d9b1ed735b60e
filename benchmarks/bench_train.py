"""GPU benchmark of a MoT training step: tokens/s and peak memory at batch 1 and a batched size.

    MOT_SEED_CONFIGS=../shared/data/seed_expert_configs.json \
        python benchmarks/bench_train.py --out bench_train.json [--batch_sizes 1,8] [--quantization none,4bit]

Preset `seed-random` (default): the seed experts' shapes (Qwen2.5-Coder-1.5B, hpc-coder-v2-1.3b, starcoder2-3b) with
random weights in bf16, the tiny tokenizers and encoder. One step is what train/trainer.py does per micro-batch +
optimizer step on one GPU: per-sample routing, the forward of each primary group with its secondaries' prompt memory
under bf16 autocast, backward, gradient clipping, AdamW over the trainable parameters in the trainer's
learning-rate groups. A batch of B samples is split over several primary experts (the "groups" column): batching
shares an expert's forward only within a group.

Routing (--routing): `round_robin` (default) forces sample i of the run onto primary i mod E (secondaries next in
turn), through the router's force_active path (the gradient still reaches the router), so every configuration does
the same work and batch 1 cycles through the experts (--steps a multiple of E); `router` lets the random router
and its Gumbel noise choose, as in training (then batch-1 timings depend on which experts happened to be drawn).

`--quantization 4bit` (bitsandbytes, NF4) needs real checkpoints to quantize: random experts are written once to
--work_dir (about 12 GB for seed-random) and loaded back through the engine's from_pretrained path.

Prints a table (ratios last: tokens/s and peak memory against batch 1 of the same quantization, and 4-bit against
bf16 at the same batch) and writes every number to --out. CPU smoke test: --preset tiny --device cpu --steps 2.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import build_mot  # noqa: E402
from mot_engine.model.config import ExpertConfig  # noqa: E402
from mot_engine.presets.resolve import resolve_preset  # noqa: E402
from train.optim import build_optimizer  # noqa: E402

OPS = ["+", "-", "*", "/"]
TYPES = ["float", "double", "int", "long"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="seed-random", help="expert preset (default: seed-random)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="(default: cuda if any)")
    p.add_argument("--batch_sizes", default="1,8", help="comma-separated batch sizes; the first is the baseline "
                   "of the ratios (default: 1,8)")
    p.add_argument("--quantization", default="none", help="comma-separated: none, 4bit, 8bit (default: none)")
    p.add_argument("--prompt_tokens", type=int, default=256, help="about this many source tokens (default: 256)")
    p.add_argument("--target_tokens", type=int, default=256, help="about this many target tokens (default: 256)")
    p.add_argument("--steps", type=int, default=24, help="timed steps per configuration (default: 24)")
    p.add_argument("--routing", choices=("round_robin", "router"), default="round_robin", help="(default: round_robin)")
    p.add_argument("--warmup_steps", type=int, default=6, help="untimed steps before each configuration; each "
                   "model also runs them once at the largest batch before anything is timed (default: 6)")
    p.add_argument("--top_k", type=int, default=2, help="(default: 2)")
    p.add_argument("--num_stacks", type=int, default=4, help="(default: 4)")
    p.add_argument("--learning_rate", type=float, default=1e-5, help="(default: 1e-5)")
    p.add_argument("--gradient_clip", type=float, default=0.3, help="(default: 0.3)")
    p.add_argument("--work_dir", default=None, help="where random experts are written for --quantization "
                   "(default: a temporary folder, removed at the end)")
    p.add_argument("--seed", type=int, default=0, help="(default: 0)")
    p.add_argument("--out", default="bench_train.json", help="JSON results (default: bench_train.json)")
    return p.parse_args(argv)


def synthetic_pair(i: int, tokenizer, prompt_tokens: int, target_tokens: int) -> tuple[str, str]:
    """A distinct C function and its CUDA kernel, each grown to about the asked number of tokens."""
    op, t = OPS[i % len(OPS)], TYPES[(i // len(OPS)) % len(TYPES)]
    name = f"kernel_{i}_{t}"

    def grow(head: str, stmt, tail: str, n: int) -> str:
        body, k = [], 0
        while len(tokenizer(head + " ".join(body) + tail, add_special_tokens=False)["input_ids"]) < n:
            body.append(stmt(k))
            k += 1
        return head + " ".join(body) + tail

    src = grow(f"void {name}({t}* a, const {t}* b, int n) {{ for (int i = 0; i < n; i++) {{ ",
               lambda k: f"a[i] = a[i] {op} b[i] * {k + 1};", " } }", prompt_tokens)
    tgt = grow(f"__global__ void {name}({t}* a, const {t}* b, int n) {{ int i = blockIdx.x * blockDim.x + threadIdx.x; "
               "if (i < n) { ", lambda k: f"a[i] = a[i] {op} b[i] * {k + 1};", " } }", target_tokens)
    return src, tgt


def materialize(experts: list[ExpertConfig], device, work_dir: Path) -> list[ExpertConfig]:
    """Random-weight experts written to folders, so that quantization (which needs from_pretrained) applies."""
    from mot_engine.model.experts import ExpertLoader

    out = []
    for e in experts:
        folder = work_dir / e.name
        if e.config_dict is not None and not (folder / "config.json").exists():
            model, tok = ExpertLoader.load_expert(ExpertConfig(name=e.name, config_dict=e.config_dict,
                                                               tokenizer_path=e.tokenizer_path, dtype="bfloat16"), device)
            model.save_pretrained(folder)
            tok.save_pretrained(folder)
            del model
            gc.collect()
            torch.cuda.empty_cache()
        out.append(ExpertConfig(name=e.name, path=str(folder) if e.config_dict is not None else e.path,
                                revision=e.revision, tokenizer_path=e.tokenizer_path))
    return out


def build(args, quant: str | None, work_dir: Path):
    if quant is not None:
        import importlib.util

        if importlib.util.find_spec("bitsandbytes") is None:
            raise RuntimeError(f"{quant} needs bitsandbytes (pip install '.[quant]')")
    experts, encoder = resolve_preset(args.preset)
    if quant is not None and any(e.config_dict is not None for e in experts):
        # The engine builds config_dict experts with from_config, which takes no quantization_config.
        experts = materialize(experts, args.device, work_dir)
    dtype = "bfloat16" if args.device == "cuda" else "float32"
    return build_mot(args.preset, experts=experts, encoder=encoder, device=args.device, dtype=dtype,
                     quantization=quant, top_k=args.top_k, num_stacks=args.num_stacks)


def baseline_name(args) -> str:
    return "bf16" if args.device == "cuda" else "fp32"


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def bench_config(mot, args, batch: int, pairs: list[tuple[str, str]], *, timed: bool = True) -> dict:
    device = args.device
    opt = build_optimizer(mot, args.learning_rate, weight_decay=0.01)
    params = [p for p in mot.trainable_parameters()]
    autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if device == "cuda"
                else torch.autocast("cpu", enabled=False))
    mot.train()
    step_times, tgt_tokens, all_tokens, groups = [], [], [], []
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for step in range(args.warmup_steps + (args.steps if timed else 0)):
        chunk = [pairs[(step * batch + b) % len(pairs)] for b in range(batch)]
        srcs, tgts = [s for s, _ in chunk], [t for _, t in chunk]
        force = None
        if args.routing == "round_robin":
            E = mot.num_experts
            force = [[(step * batch + b + j) % E for j in range(mot.config.top_k)] for b in range(batch)]
        sync(device)
        t0 = time.perf_counter()
        with autocast:
            out = mot(srcs, tgts, force_active=force)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in params if p.grad is not None], args.gradient_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync(device)
        dt = time.perf_counter() - t0
        if step >= args.warmup_steps:
            prim = out.routing.primary.tolist()
            prompts = sum(len(mot.prompt_ids(p, s)) for p, s in zip(prim, srcs))
            step_times.append(dt)
            tgt_tokens.append(out.num_target_tokens)
            all_tokens.append(out.num_target_tokens + prompts)
            groups.append(len(set(prim)))
    if not timed:
        return {}
    total = sum(step_times)
    return {
        "step_s": step_times,
        "batch": batch,
        "step_s_median": statistics.median(step_times),
        "step_s_mean": total / len(step_times),
        "target_tokens_per_s": sum(tgt_tokens) / total,
        "tokens_per_s": sum(all_tokens) / total,  # primary prompt + target tokens
        "samples_per_s": batch * len(step_times) / total,
        "mean_groups": statistics.mean(groups),
        "peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if device == "cuda" else None,
    }


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: use --device cpu (and a small preset) for a smoke test", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    batches = [int(b) for b in args.batch_sizes.split(",")]
    quants = [None if q in ("none", "bf16") else q for q in args.quantization.split(",")]
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-train-"))
    results: dict = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "device": torch.cuda.get_device_name() if args.device == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "args": vars(args), "configs": [],
    }
    try:
        for quant in quants:
            name = quant or baseline_name(args)
            t = time.perf_counter()
            try:
                mot = build(args, quant, work)
            except Exception as e:  # e.g. bitsandbytes missing: say so in the table, measure the rest
                print(f"{name}: cannot build: {e}", file=sys.stderr)
                results["configs"].append({"quantization": name, "error": f"{type(e).__name__}: {e}"})
                continue
            load_s = time.perf_counter() - t
            weights = torch.cuda.memory_allocated() / 2**30 if args.device == "cuda" else None
            tok = mot.tokenizers[0]
            pairs = [synthetic_pair(i, tok, args.prompt_tokens, args.target_tokens) for i in range(max(batches) * 2)]
            n_train = sum(p.numel() for p in mot.trainable_parameters())
            print(f"{name}: built in {load_s:.0f} s, {weights or 0:.1f} GiB allocated, {n_train / 1e6:.1f} M "
                  f"trainable parameters", file=sys.stderr)
            # First use of each kernel, cuBLAS handle and allocator block is slow: pay it before timing anything.
            bench_config(mot, args, max(batches), pairs, timed=False)
            for b in batches:
                row = {"quantization": name, "load_s": load_s, "weights_gib": weights, "trainable_params": n_train}
                try:
                    row.update(bench_config(mot, args, b, pairs))
                except torch.cuda.OutOfMemoryError as e:
                    row.update({"batch": b, "error": f"out of memory: {str(e).splitlines()[0]}"})
                results["configs"].append(row)
                print(f"  batch {b}: {row}", file=sys.stderr)
                gc.collect()
                if args.device == "cuda":
                    torch.cuda.empty_cache()
            del mot
            gc.collect()
            if args.device == "cuda":
                torch.cuda.empty_cache()
    finally:
        if not args.work_dir:
            import shutil

            shutil.rmtree(work, ignore_errors=True)
    add_ratios(results["configs"], batches[0])
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(table(results))
    print(f"\nresults: {args.out}")
    return 0


def add_ratios(rows: list[dict], base_batch: int) -> None:
    ok = [r for r in rows if "error" not in r]
    for r in ok:
        base = next((x for x in ok if x["quantization"] == r["quantization"] and x["batch"] == base_batch), None)
        bf16 = next((x for x in ok if x["quantization"] in ("bf16", "fp32") and x["batch"] == r["batch"]), None)
        r["tokens_per_s_vs_batch1"] = r["tokens_per_s"] / base["tokens_per_s"] if base else None
        r["memory_vs_batch1"] = (r["peak_memory_gib"] / base["peak_memory_gib"]
                                 if base and base["peak_memory_gib"] else None)
        r["tokens_per_s_vs_bf16"] = r["tokens_per_s"] / bf16["tokens_per_s"] if bf16 else None
        r["memory_vs_bf16"] = r["peak_memory_gib"] / bf16["peak_memory_gib"] if bf16 and bf16["peak_memory_gib"] else None


def table(results: dict) -> str:
    a = results["args"]
    head = (f"MoT training step, preset {a['preset']} on {results['device']}: ~{a['prompt_tokens']} prompt + "
            f"~{a['target_tokens']} target tokens per sample, top_k {a['top_k']}, {a['steps']} timed steps, "
            f"routing {a['routing']}")
    cols = ["quant", "batch", "step s", "tok/s", "tgt tok/s", "samples/s", "groups", "peak GiB",
            "tok/s vs b1", "mem vs b1", "tok/s vs bf16", "mem vs bf16"]
    lines = [head, " | ".join(f"{c:>11}" for c in cols)]

    def f(v, fmt):
        return f"{v:{fmt}}" if isinstance(v, (int, float)) else "-"

    for r in results["configs"]:
        if "error" in r:
            lines.append(f"{r['quantization']:>11} | {r.get('batch', '-'):>11} | {r['error'][:80]}")
            continue
        vals = [r["quantization"], r["batch"], f(r["step_s_median"], ".3f"), f(r["tokens_per_s"], ".0f"),
                f(r["target_tokens_per_s"], ".0f"), f(r["samples_per_s"], ".2f"), f(r["mean_groups"], ".1f"),
                f(r["peak_memory_gib"], ".1f"), f(r["tokens_per_s_vs_batch1"], ".2f"), f(r["memory_vs_batch1"], ".2f"),
                f(r["tokens_per_s_vs_bf16"], ".2f"), f(r["memory_vs_bf16"], ".2f")]
        lines.append(" | ".join(f"{str(v):>11}" for v in vals))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

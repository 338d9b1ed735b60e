"""Where a batch-1 decode step's time goes (GPU): graph replay alone vs the engine's whole step, kernel counts.

    python benchmarks/profile_decode.py   (MOT_SEED_CONFIGS must point at the seed configs)
"""

from __future__ import annotations

import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import GenerationRequest, Generator, RuntimeConfig, build_mot  # noqa: E402
from mot_engine.envs import SUBSTITUTIONS  # noqa: E402

SRC = "void saxpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i]; }\n" * 8


def replay_ms(gen: Generator, mode: str, n: int = 100, batch: int = 1) -> tuple[float, float]:
    for b in range(batch):
        gen.add_request(f"p{b}", GenerationRequest(SRC, mode=mode, max_new_tokens=n + 8, stop_at_eos=False,
                                                   force_active=[0, 1]))
    for _ in range(4):  # prefill, eager decode, capture, one replay
        gen.step()
    (slab,) = gen.slabs.values()
    # The graph holds the whole step, column and positions included: replayed alone, it moves them on the device and
    # not on the host, so the slab's device state is put back before the engine steps again.
    device_state = (slab.write_column, slab.position_ids, slab.input_ids, slab.step_mask, slab.key_valid)
    saved = [t.clone() for t in device_state]
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        slab.graph.replay()
    torch.cuda.synchronize()
    replay = (time.perf_counter() - t) / 20 * 1e3
    for live, copy in zip(device_state, saved):
        live.copy_(copy)
    t = time.perf_counter()
    for _ in range(20):
        gen.step()
    torch.cuda.synchronize()
    step = (time.perf_counter() - t) / 20 * 1e3
    for b in range(batch):
        gen.abort(f"p{b}")
    while gen.has_unfinished():
        gen.step()
    gen.results.clear()
    return replay, step


def kernels_per_step(mot, mode: str, runtime: RuntimeConfig, top: int = 0, batch: int = 1) -> int:
    """Kernels of one decode step of the static-cache path, run eagerly (what a graph captures)."""
    gen = Generator(mot, cuda_graphs=False, static_cache=True, max_batch_size=max(16, batch), runtime=runtime)
    for b in range(batch):
        gen.add_request(f"k{b}", GenerationRequest(SRC, mode=mode, max_new_tokens=20, stop_at_eos=False,
                                                   force_active=[0, 1]))
    gen.step()  # prefill
    gen.step()  # first decode step (lazy buffers, kernel selection)
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gen.step()  # an eager decode step
        torch.cuda.synchronize()
    kernels = [e for e in prof.key_averages() if e.device_type.name == "CUDA"]
    n = sum(e.count for e in kernels)
    if top:
        total = sum(e.device_time_total for e in kernels)
        print(f"  {mode}: the {top} most time-consuming of {n} kernels in an eager decode step "
              f"(GPU time {total / 1e3:.2f} ms; count, µs in all, µs each):")
        for e in sorted(kernels, key=lambda e: -e.device_time_total)[:top]:
            print(f"    {e.count:5d} {e.device_time_total:8.1f} {e.device_time_total / e.count:7.2f}  {e.key[:100]}")
    for b in range(batch):
        gen.abort(f"k{b}")
    while gen.has_unfinished():
        gen.step()
    return n


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--compile", action="store_true", help="also profile MOT_COMPILE=1 (minutes of compilation)")
    ap.add_argument("--batch", type=int, default=1, help="requests decoding together (one slab)")
    ap.add_argument("--default-only", action="store_true", help="only the default engine (every substitution)")
    ap.add_argument("--last", type=int, default=0, metavar="K",
                    help="only the ladder's last K substitutions, added one by one to all the others")
    args = ap.parse_args()
    mot = build_mot("seed-random", device="cuda", dtype="bfloat16")
    base = RuntimeConfig.from_env()  # read once; each row changes it by `replace`
    n = len(SUBSTITUTIONS)  # the substitutions turned on one by one, then (--compile) compiled layers with all of them
    configs = [(False, i) for i in range(n + 1)] + ([(True, n)] if args.compile else [])
    if args.default_only:
        configs = [(False, n)]
    elif args.last:
        configs = configs[n - args.last:n + 1]
    rows = []
    for compiled, count in configs:
        on = SUBSTITUTIONS[:count]  # each row adds one substitution
        runtime = replace(base, compile_layers=compiled, **{f: f in on for f in SUBSTITUTIONS})
        name = "compiled, all" if compiled else ("+ " + on[-1] if on else "plain (graphs only)")
        gen = Generator(mot, max_batch_size=max(16, args.batch), runtime=runtime)
        for mode in ("fast", "full"):
            t0 = time.perf_counter()
            replay_ms(gen, mode, 40, args.batch)  # warm-up (compilation)
            warm = time.perf_counter() - t0
            r, s = replay_ms(gen, mode, batch=args.batch)
            k = kernels_per_step(mot, mode, runtime, top=14 if (compiled, count) == (False, n) else 0, batch=args.batch)
            rows.append((f"{name} {mode}", warm, r, s, k))
            print(f"{rows[-1][0]}: warm-up {warm:.1f} s, graph replay {r:.2f} ms, engine step {s:.2f} ms "
                  f"({1e3 / s:.0f} tok/s), host {s - r:.2f} ms, kernels per eager decode step {k}", flush=True)
    print(f"\n{torch.cuda.get_device_name(0)}, torch {torch.__version__}, batch {args.batch}")
    print("| path | warm-up s | graph replay ms | engine step ms | tok/s | host ms | kernels/token |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, warm, r, s, k in rows:
        print(f"| {name} | {warm:.1f} | {r:.2f} | {s:.2f} | {1e3 / s:.0f} | {s - r:.2f} | {k} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

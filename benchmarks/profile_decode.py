"""Where a batch-1 decode step's time goes (GPU): graph replay alone vs the engine's whole step, kernel counts.

    python benchmarks/profile_decode.py   (MOT_SEED_CONFIGS must point at the seed configs)
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import GenerationRequest, Generator, build_mot  # noqa: E402

SRC = "void saxpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i]; }\n" * 8


def replay_ms(gen: Generator, mode: str, n: int = 100) -> tuple[float, float]:
    gen.add_request("p", GenerationRequest(SRC, mode=mode, max_new_tokens=n + 8, stop_at_eos=False, force_active=[0, 1]))
    for _ in range(4):  # prefill, eager decode, capture, one replay
        gen.step()
    cohort = gen.cohorts[0]
    static = cohort.static
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        static.graph.replay()
    torch.cuda.synchronize()
    replay = (time.perf_counter() - t) / 20 * 1e3
    t = time.perf_counter()
    for _ in range(20):
        gen.step()
    torch.cuda.synchronize()
    step = (time.perf_counter() - t) / 20 * 1e3
    gen.abort("p")
    while gen.has_unfinished():
        gen.step()
    gen.results.clear()
    return replay, step


def kernels_per_step(gen: Generator, mode: str) -> int:
    from torch.profiler import ProfilerActivity, profile

    gen.add_request("k", GenerationRequest(SRC, mode=mode, max_new_tokens=20, stop_at_eos=False, force_active=[0, 1]))
    gen.step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        gen.step()  # the eager decode step (first after prefill)
        torch.cuda.synchronize()
    n = sum(e.count for e in prof.key_averages() if e.device_type.name == "CUDA")
    gen.abort("k")
    while gen.has_unfinished():
        gen.step()
    return n


def main() -> int:
    mot = build_mot("seed-random", device="cuda", dtype="bfloat16")
    for compile_flag in ("0", "1"):
        os.environ["MOT_COMPILE"] = compile_flag
        gen = Generator(mot)
        for mode in ("fast", "full"):
            t0 = time.perf_counter()
            replay_ms(gen, mode, 40)  # warm-up (compilation)
            print(f"compile={compile_flag} {mode}: warm-up {time.perf_counter() - t0:.1f} s", flush=True)
            r, s = replay_ms(gen, mode)
            k = kernels_per_step(gen, mode)
            print(f"compile={compile_flag} {mode}: graph replay {r:.2f} ms, engine step {s:.2f} ms "
                  f"({1e3 / s:.0f} tok/s), host overhead {s - r:.2f} ms, CUDA kernels in an eager decode step {k}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU memory of the decoding engine beyond the weights: slabs (static KV caches), their graphs and the slab pool.

    MOT_SEED_CONFIGS=.../seed_expert_configs.json python benchmarks/bench_memory_engine.py

seed-random bf16 on one GPU. For the default path (slabs + CUDA graphs) and the eager dynamic-cache path, in that
order, each in a fresh Generator: one request; 16 at once; 16 arriving one per step (each 211 + 256 tokens, full
MoT, top-2). Prints peak and still-allocated memory above the weights after each, and what the slab pool holds.
"""

from __future__ import annotations

import gc
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import GenerationRequest, Generator, build_mot  # noqa: E402

UNIT = "void saxpy(int n, float a, const float* x, float* y) {\n    for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i];\n}\n"


def gib(x: int) -> float:
    return x / 2**30


def main() -> int:
    mot = build_mot("seed-random", device="cuda", dtype="bfloat16")
    src = UNIT * 7
    weights = torch.cuda.memory_allocated()
    print(f"{torch.cuda.get_device_name(0)}: weights + encoder {gib(weights):.2f} GiB; prompt {len(mot.prompt_ids(0, src))} tokens")
    req = lambda: GenerationRequest(src, mode="full", max_new_tokens=256, stop_at_eos=False, force_active=[0, 1])  # noqa: E731
    rows = []
    for path, kw in (("slabs + graphs (default)", {}), ("eager, dynamic cache", {"static_cache": False, "cuda_graphs": False})):
        gen = Generator(mot, **kw)
        for case in ("1 request", "16 at once", "16 staggered"):
            torch.cuda.reset_peak_memory_stats()
            if case == "1 request":
                gen.generate([req()])
            elif case == "16 at once":
                gen.generate([req() for _ in range(16)])
            else:
                for i in range(16):
                    gen.add_request(f"s{i}", req())
                    gen.step()
                while gen.has_unfinished():
                    gen.step()
                gen.results.clear()
            torch.cuda.synchronize()
            peak, now = torch.cuda.max_memory_allocated() - weights, torch.cuda.memory_allocated() - weights
            pool = [s.shape for s in getattr(gen, "_slab_pool", [])]
            rows.append((path, case, peak, now, len(pool)))
            print(f"{path}, {case}: peak +{gib(peak):.2f} GiB, still allocated +{gib(now):.2f} GiB, pooled slabs {pool}", flush=True)
        del gen
        gc.collect()
        torch.cuda.empty_cache()
    print("\n| path | requests | peak above weights GiB | held after GiB | pooled slabs |")
    print("|---|---|---:|---:|---:|")
    for path, case, peak, now, n in rows:
        print(f"| {path} | {case} | {gib(peak):.2f} | {gib(now):.2f} | {n} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Matrix-vector products of a batch-1 decode step: cuBLAS (F.linear) against mot_engine/gemv.py's Triton kernel.

    python benchmarks/bench_gemv.py            (a CUDA GPU with Triton)

The linear shapes of the Qwen2.5-Coder-1.5B expert (and its lm_head), bf16, one row. Each product is timed inside a
CUDA graph of 50 calls (as decode steps run), reported in µs and as a share of bytes moved per second. Correctness
first: every configuration's output must be allclose to F.linear's.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine.gemv import default_blocks, gemv  # noqa: E402

SHAPES = {"q/o_proj": (1536, 1536), "k/v_proj": (256, 1536), "gate/up_proj": (8960, 1536), "down_proj": (1536, 8960),
          "lm_head": (151936, 1536)}
COUNT_PER_STEP = {"q/o_proj": 2 * 28, "k/v_proj": 2 * 28, "gate/up_proj": 2 * 28, "down_proj": 28, "lm_head": 1}
CONFIGS = [(bn, bk, w) for bn in (2, 4, 8, 16, 32) for bk in (128, 256, 512) for w in (4, 8) if bn * bk <= 8192]


def graph_us(fn, reps: int = 50) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(reps):
            fn()
    g.replay()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(5):
        g.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) * 1e3 / (5 * reps)


def main() -> int:
    torch.manual_seed(0)
    dev = "cuda"
    print(torch.cuda.get_device_name(0), torch.__version__)
    print("| layer | N x K | MB | cuBLAS µs | cuBLAS TB/s | Triton default µs | best Triton (BN, BK, warps) µs | best TB/s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    totals = {"cublas": 0.0, "default": 0.0, "best": 0.0}
    for name, (n, k) in SHAPES.items():
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device=dev, dtype=torch.bfloat16) if name != "lm_head" else None
        x = torch.randn(1, 1, k, device=dev, dtype=torch.bfloat16)
        ref = F.linear(x, w, b)
        mb = (n * k * 2) / 1e6
        t_cublas = graph_us(lambda: F.linear(x, w, b))
        results = {}
        for cfg in CONFIGS:
            out = gemv(x, w, b, cfg)
            if not torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-2):
                raise SystemExit(f"{name} {cfg}: Triton GEMV differs from F.linear by {(out.float() - ref.float()).abs().max():.3g}")
            results[cfg] = graph_us(lambda: gemv(x, w, b, cfg))
        dflt = default_blocks(n, k)
        t_default = results.get(dflt) or graph_us(lambda: gemv(x, w, b, dflt))
        best = min(results, key=results.get)
        count = COUNT_PER_STEP[name]
        totals["cublas"] += t_cublas * count
        totals["default"] += t_default * count
        totals["best"] += results[best] * count
        print(f"| {name} | {n} x {k} | {mb:.1f} | {t_cublas:.1f} | {mb / t_cublas:.2f} | {t_default:.1f} | "
              f"{results[best]:.1f} {best} | {mb / results[best]:.2f} |", flush=True)
    print(f"\nper decode step (28 layers: q,o,k,v,gate,up,down + lm_head): cuBLAS {totals['cublas'] / 1e3:.2f} ms, "
          f"Triton default {totals['default'] / 1e3:.2f} ms, best per shape {totals['best'] / 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

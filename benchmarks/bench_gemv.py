"""Matrix-vector products of a batch-1 decode step: cuBLAS (F.linear) against mot_engine/gemv.py's Triton kernel.

    python benchmarks/bench_gemv.py            (a CUDA GPU with Triton)

The linear shapes of the Qwen2.5-Coder-1.5B expert (and its lm_head), bf16, one row. Each product is timed inside a
CUDA graph of 48 calls (as decode steps run) that cycle over copies of the weight too large together for the L2
cache, reported in µs and as bytes moved per second; then the gated MLP's gate/up pair, unfused against the fused
kernel. Correctness first: every configuration's output must be allclose to the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine.gemv import GLU_BLOCKS, default_blocks, gemv, gemv_glu, gemv_glu_reference  # noqa: E402

SHAPES = {"q/o_proj": (1536, 1536), "k/v_proj": (256, 1536), "gate/up_proj": (8960, 1536), "down_proj": (1536, 8960),
          "lm_head": (151936, 1536)}
COUNT_PER_STEP = {"q/o_proj": 2 * 28, "k/v_proj": 2 * 28, "gate/up_proj": 2 * 28, "down_proj": 28, "lm_head": 1}
CONFIGS = [(bn, bk, w) for bn in (1, 2, 4, 8, 16, 32) for bk in (128, 256, 512, 1024) for w in (1, 2, 4, 8)
           if 512 <= bn * bk <= 8192 and bn * bk >= 128 * w]


L2_BYTES = 64 << 20  # at least the H100/H200 L2 (50 MB): products cycle over copies that do not fit in it


def copies(t: torch.Tensor) -> list[torch.Tensor]:
    """Enough copies of a weight that cycling through them streams from memory, as a decode step does (a repeated
    product of one 27 MB weight would read it from L2 and report more than the memory bandwidth)."""
    n = max(1, -(-3 * L2_BYTES // (t.numel() * t.element_size())))
    return [t] + [t.clone() for _ in range(n - 1)]


def graph_us(fn, reps: int = 48, weights: int = 1) -> float:
    """µs per call of fn(i) inside a CUDA graph; call i uses weight copy i % weights."""
    fn(0)
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(reps):
            fn(i % weights)
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
        ws = copies(w)
        t_cublas = graph_us(lambda i: F.linear(x, ws[i], b), weights=len(ws))
        results = {}
        for cfg in CONFIGS:
            out = gemv(x, w, b, cfg)
            if not torch.allclose(out.float(), ref.float(), rtol=2e-2, atol=2e-2):
                raise SystemExit(f"{name} {cfg}: Triton GEMV differs from F.linear by {(out.float() - ref.float()).abs().max():.3g}")
            results[cfg] = graph_us(lambda i: gemv(x, ws[i], b, cfg), weights=len(ws))
        dflt = default_blocks(n, k)
        t_default = results.get(dflt) or graph_us(lambda i: gemv(x, ws[i], b, dflt), weights=len(ws))
        best = min(results, key=results.get)
        top = sorted(results, key=results.get)[:4]
        print(f"  {name}: fastest {', '.join(f'{c} {results[c]:.1f}' for c in top)}; default {dflt} {t_default:.1f}",
              flush=True)
        count = COUNT_PER_STEP[name]
        totals["cublas"] += t_cublas * count
        totals["default"] += t_default * count
        totals["best"] += results[best] * count
        print(f"| {name} | {n} x {k} | {mb:.1f} | {t_cublas:.1f} | {mb / t_cublas:.2f} | {t_default:.1f} | "
              f"{results[best]:.1f} {best} | {mb / results[best]:.2f} |", flush=True)
    print(f"\nper decode step (28 layers: q,o,k,v,gate,up,down + lm_head): cuBLAS {totals['cublas'] / 1e3:.2f} ms, "
          f"Triton default {totals['default'] / 1e3:.2f} ms, best per shape {totals['best'] / 1e3:.2f} ms")
    bench_glu(dev)
    return 0


def bench_glu(dev: str) -> None:
    """A gated MLP's first half, silu(x gate^T) * (x up^T): two GEMVs + SiLU + multiply vs one fused kernel."""
    n, k = SHAPES["gate/up_proj"]
    g, u = (torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5 for _ in range(2))
    x = torch.randn(1, 1, k, device=dev, dtype=torch.bfloat16)
    ref = gemv_glu_reference(x, g, u).float()
    mb = 2 * n * k * 2 / 1e6
    gs, us = copies(g), copies(u)
    t_cublas = graph_us(lambda i: F.silu(F.linear(x, gs[i])) * F.linear(x, us[i]), weights=len(gs))
    t_gemv = graph_us(lambda i: F.silu(gemv(x, gs[i])) * gemv(x, us[i]), weights=len(gs))
    results = {}
    for cfg in [(bn, bk, w) for bn in (1, 2, 4, 8) for bk in (128, 256, 512) for w in (1, 2, 4) if bn * bk <= 4096]:
        out = gemv_glu(x, g, u, cfg).float()
        if not torch.allclose(out, ref, rtol=2e-2, atol=2e-2):
            raise SystemExit(f"glu {cfg}: differs from the reference by {(out - ref).abs().max():.3g}")
        results[cfg] = graph_us(lambda i: gemv_glu(x, gs[i], us[i], cfg), weights=len(gs))
    best = sorted(results, key=results.get)[:5]
    dflt = GLU_BLOCKS
    print(f"\ngate+up ({n} x {k} twice, {mb:.1f} MB): cuBLAS + SiLU + mul {t_cublas:.1f} µs, Triton GEMV x2 + SiLU + mul "
          f"{t_gemv:.1f} µs, fused default {dflt} {results.get(dflt, float('nan')):.1f} µs; fastest fused: "
          + ", ".join(f"{c} {results[c]:.1f} µs ({mb / results[c]:.2f} TB/s)" for c in best))


if __name__ == "__main__":
    raise SystemExit(main())

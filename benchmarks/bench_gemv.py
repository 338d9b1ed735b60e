"""Matrix-vector products of a batch-1 decode step: cuBLAS (F.linear) against mot_engine/gemv.py's Triton kernel.

    python benchmarks/bench_gemv.py [--slab-only]     (a CUDA GPU with Triton)

The linear shapes of the Qwen2.5-Coder-1.5B expert (and its lm_head), bf16, one row. Each product is timed inside a
CUDA graph of 48 calls (as decode steps run) that cycle over copies of the weight too large together for the L2
cache, reported in µs and as bytes moved per second; then the gated MLP's gate/up pair, unfused against the fused
kernel; then a slab's 16 rows (the rows kernels against cuBLAS) and the interaction's memory attention at batch 1
and 16. Correctness first: every configuration's output must be allclose to the reference.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine.kernels.gemv import GLU_BLOCKS, default_blocks, gemv, gemv_glu, gemv_glu_reference  # noqa: E402

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
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--slab-only", action="store_true", help="only a slab's rows kernels and the memory attention")
    ap.add_argument("--stages", action="store_true", help="only the one-row kernels' software-pipelining depth "
                    "(Triton's num_stages) and wider K blocks")
    args = ap.parse_args()
    torch.manual_seed(0)
    dev = "cuda"
    print(torch.cuda.get_device_name(0), torch.__version__)
    if args.slab_only:
        bench_rows(dev)
        bench_memory_attention(dev)
        return 0
    if args.stages:
        bench_stages(dev)
        return 0
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
    bench_rows(dev)
    bench_memory_attention(dev)
    return 0


def bench_stages(dev: str) -> None:
    """The one-row GEMV and gate/up kernels launched with Triton's num_stages 1-4 (how far loads run ahead of the
    loop's arithmetic) and wider K blocks, at the batch-1 shapes that dominate a decode step."""
    from mot_engine.kernels import gemv as G
    triton, gemv_kernel = G._kernel()
    _, glu_kernel = G._glu_kernel()
    x = {k: torch.randn(1, k, device=dev, dtype=torch.bfloat16) for k in (1536, 8960)}

    def run_gemv(w, y, cfg):
        bn, bk, warps, stages = cfg
        n, k = w.shape
        gemv_kernel[(triton.cdiv(n, bn), 1)](x[k], w, w, y, y, n, k, k, k, 0, n, HAS_BIAS=False, HAS_RESIDUAL=False,
                                             BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages)

    def run_glu(g, u, y, cfg):
        bn, bk, warps, stages = cfg
        n, k = g.shape
        glu_kernel[(triton.cdiv(n, bn), 1)](x[k], g, u, y, n, k, k, k, n, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
                                            num_stages=stages)

    print("\none row, num_stages and K blocks (µs; the engine's defaults launch with Triton's default num_stages):")
    for name in ("down_proj", "q/o_proj"):
        n, k = SHAPES[name]
        w = torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5
        ws, y = copies(w), torch.empty(1, n, device=dev, dtype=torch.bfloat16)
        ref = F.linear(x[k], w)
        results = {}
        for bn, bk, warps in ((1, 512, 1), (1, 1024, 2), (1, 1024, 4), (1, 2048, 4), (2, 1024, 4), (1, 256, 1)):
            for stages in (1, 2, 3, 4):
                cfg = (bn, bk, warps, stages)
                run_gemv(w, y, cfg)
                if not torch.allclose(y.float(), ref.float(), rtol=2e-2, atol=2e-2):
                    raise SystemExit(f"gemv {cfg} differs from the reference")
                results[cfg] = graph_us(lambda i, c=cfg: run_gemv(ws[i], y, c), weights=len(ws))
        best = sorted(results, key=results.get)[:4]
        print(f"  {name} {n} x {k}: default {default_blocks(n, k)} at num_stages 3 {results.get((*default_blocks(n, k), 3), float('nan')):.1f}; "
              "fastest " + ", ".join(f"{c} {results[c]:.1f}" for c in best))
    n, k = SHAPES["gate/up_proj"]
    g, u = (torch.randn(n, k, device=dev, dtype=torch.bfloat16) / k**0.5 for _ in range(2))
    gs, us, y = copies(g), copies(u), torch.empty(1, n, device=dev, dtype=torch.bfloat16)
    ref = gemv_glu_reference(x[k], g, u).float()
    results = {}
    for bn, bk, warps in ((2, 512, 1), (2, 1024, 1), (2, 1024, 2), (2, 2048, 2), (4, 512, 2), (1, 1024, 1), (1, 2048, 1)):
        for stages in (1, 2, 3, 4):
            cfg = (bn, bk, warps, stages)
            run_glu(g, u, y, cfg)
            if not torch.allclose(y.float(), ref, rtol=2e-2, atol=2e-2):
                raise SystemExit(f"glu {cfg} differs from the reference")
            results[cfg] = graph_us(lambda i, c=cfg: run_glu(gs[i], us[i], y, c), weights=len(gs))
    best = sorted(results, key=results.get)[:4]
    print(f"  gate/up {n} x {k} x 2: default {GLU_BLOCKS} at num_stages 3 {results.get((*GLU_BLOCKS, 3), float('nan')):.1f}; "
          "fastest " + ", ".join(f"{c} {results[c]:.1f}" for c in best))


def bench_rows(dev: str, rows: int = 16) -> None:
    """A slab's `rows` rows: cuBLAS (three q/k/v products; gate, up, SiLU, multiply) against the rows kernels, over a
    sweep of their blocks."""
    from mot_engine.kernels.gemv import ROWS_BLOCKS, ROWS_GLU_BLOCKS, gemv_qkv, gemv_qkv_reference

    k = 1536
    x = torch.randn(rows, 1, k, device=dev, dtype=torch.bfloat16)
    configs = [(bn, bk, w) for bn in (16, 32, 64) for bk in (64, 128, 256) for w in (2, 4, 8)]
    cases = {}
    ws = [torch.randn(n, k, device=dev, dtype=torch.bfloat16) / 40 for n in (1536, 256, 256)]
    bs = [torch.randn(n, device=dev, dtype=torch.bfloat16) for n in (1536, 256, 256)]
    sets = copies(torch.cat(ws))  # q, k, v of one layer: consecutive rows of one copy
    split = [[c[:1536], c[1536:1792], c[1792:]] for c in sets]
    want = gemv_qkv_reference(x, ws, bs)
    cases["q/k/v"] = (lambda i, cfg: gemv_qkv(x, split[i], bs, cfg), lambda i: [F.linear(x, w, b) for w, b in zip(split[i], bs)],
                      len(split), (2048 * k * 2) / 1e6, lambda cfg: gemv_qkv(x, ws, bs, cfg), want, ROWS_BLOCKS)
    g, u = (torch.randn(8960, k, device=dev, dtype=torch.bfloat16) / 40 for _ in range(2))
    gs, us = copies(g), copies(u)
    cases["gate/up"] = (lambda i, cfg: gemv_glu(x, gs[i], us[i], cfg), lambda i: F.silu(F.linear(x, gs[i])) * F.linear(x, us[i]),
                        len(gs), 2 * 8960 * k * 2 / 1e6, lambda cfg: gemv_glu(x, g, u, cfg), gemv_glu_reference(x, g, u),
                        ROWS_GLU_BLOCKS)
    print(f"\n{rows} rows (a slab's decode step):")
    for name, (ours, cublas, n, mb, once, ref, default) in cases.items():
        results = {}
        for cfg in configs:
            got = once(cfg)
            got, ref_ = (got, ref) if isinstance(got, torch.Tensor) else (torch.cat(got, -1), torch.cat(ref, -1))
            if not torch.allclose(got.float(), ref_.float(), rtol=2e-2, atol=2e-2):
                raise SystemExit(f"rows {name} {cfg}: differs from the reference by {(got.float() - ref_.float()).abs().max():.3g}")
            results[cfg] = graph_us(lambda i, cfg=cfg: ours(i, cfg), weights=n)
        t_cublas = graph_us(cublas, weights=n)
        best = sorted(results, key=results.get)[:3]
        print(f"  {name} ({mb:.1f} MB): cuBLAS {t_cublas:.1f} µs; rows kernel default {default} "
              f"{results.get(default, float('nan')):.1f} µs; fastest " + ", ".join(f"{c} {results[c]:.1f} µs" for c in best))


def bench_memory_attention(dev: str) -> None:
    """The interaction's attention to a slot's memory at a decode step (8 heads of 192, 256 keys, float32), one request
    and a slab of 16: keys per program (chunk) and per iteration (block_s)."""
    from types import SimpleNamespace

    from mot_engine.kernels.interaction_kernels import memory_attention, memory_attention_reference, memory_chunk

    H, S, D = 8, 256, 192
    for B in (1, 16):
        q = torch.randn(B, H, 1, D, device=dev)
        slot_sets = []
        for _ in range(max(1, -(-3 * L2_BYTES // (2 * B * H * S * D * 4)))):
            mask = torch.ones(B, 1, 1, S, dtype=torch.bool, device=dev)
            mask[..., 220:] = False
            slot_sets.append([SimpleNamespace(key=torch.randn(B, H, S, D, device=dev), value=torch.randn(B, H, S, D, device=dev),
                                              mask=mask, weight=torch.ones(B, device=dev))])
        want = memory_attention_reference(q, slot_sets[0])
        results = {}
        for chunk in (16, 32, 64, 128):
            for block_s in (16, 32, 64):
                if block_s > chunk:
                    continue
                got = memory_attention(q, slot_sets[0], chunk, block_s)
                if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                    raise SystemExit(f"memory attention chunk {chunk} block_s {block_s}: wrong")
                results[(chunk, block_s)] = graph_us(lambda i, c=chunk, b=block_s: memory_attention(q, slot_sets[i], c, b),
                                                     weights=len(slot_sets))
        mb = 2 * B * H * S * D * 4 / 1e6
        default = (memory_chunk(B * H, S), 16)
        best = sorted(results, key=results.get)[:4]
        print(f"memory attention B={B} ({mb:.1f} MB): default {default} {results.get(default, float('nan')):.1f} µs; "
              "fastest " + ", ".join(f"{c} {results[c]:.1f} µs ({mb / results[c]:.2f} TB/s)" for c in best))


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

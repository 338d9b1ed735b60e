"""int4 experts (mot_engine/model/int4.py) against bf16 on the seed experts' shapes (random weights), one process.

    MOT_SEED_CONFIGS=../shared/data/seed_expert_configs.json python benchmarks/bench_int4.py --out int4.json
    python benchmarks/bench_int4.py --preset tiny --device cpu --new-tokens 16   # a smoke run without a GPU

Rows: decode tokens/s of the default engine (slabs, CUDA graphs, the Triton substitutions where they apply) in fast
and full mode at batch 1, and fast mode at 16 requests, for bf16 and int4 experts (`--unfused`: and int4 without its
q/k/v and gated-MLP fusions); the ratios int4 / bf16 and full / fast; GPU memory held once the three experts are
loaded, its peak while loading (random int4 experts are built on the GPU in bf16 one at a time; checkpoints load
through host memory) and while decoding. `--tune` first sweeps the int4 kernels' blocks (GPU time from CUDA-graph
replay; codes made floats by bits, and the shipped blocks with codes converted). Parity (int4): the greedy tokens of
the graph path against the same int4 model's eager path (dynamic cache, no graphs, the experts' own modules): how many
of the generated tokens agree before the first difference, and the share of graph-path tokens that the eager, cache-
free teacher-forced forward (`target_logits`) also ranks first (bf16 activations, so near-ties may differ).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import GenerationRequest, Generator, RuntimeConfig, build_mot  # noqa: E402
from mot_engine.kernels import int4_gemv  # noqa: E402
from mot_engine.kernels.gemv import gemv, gemv_glu  # noqa: E402
from mot_engine.model.int4 import Int4Linear  # noqa: E402

# The int4 products a decoder layer of the seed primary (Qwen2.5-Coder-1.5B) decodes with, as (product kind of
# int4_gemv.PRODUCT_KINDS, output features N, K, GLU): q/k/v merged (1536 + 256 + 256 rows), o, gate and up in one
# GLU launch (2 x 8960 rows), down.
LAYER_PRODUCTS = (("linear", 2048, 1536, False), ("linear", 1536, 1536, False), ("glu", 8960, 1536, True),
                  ("long_k", 1536, 8960, False))
# (BLOCK_N, groups a step, warps, programs sharing K): unsplit, and split for a few shapes of programs
ONE_ROW_CONFIGS = ([(n, g, w, 1) for n in (1, 2, 4) for g in (2, 4, 8) for w in (1, 2, 4)]
                   + [(n, g, w, s) for n, g, w in ((1, 4, 2), (2, 4, 2), (2, 2, 4)) for s in (2, 4)])
ROWS_CONFIGS = [(n, w) for n in (32, 64, 128) for w in (2, 4)]

UNIT = "void saxpy(int n, float a, const float* x, float* y) {\n  for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i];\n}\n"


def gib(n: int) -> float:
    return n / 2**30


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def peak_bytes() -> int:
    return torch.cuda.max_memory_allocated() if torch.cuda.is_available() else 0


def decode_rate(mot, runtime, mode: str, batch: int, new_tokens: int, source: str, active) -> float:
    gen = Generator(mot, max_batch_size=batch, runtime=runtime)
    reqs = [GenerationRequest(source, mode=mode, max_new_tokens=new_tokens, stop_at_eos=False, force_active=active)
            for _ in range(batch)]
    gen.generate([GenerationRequest(source, mode=mode, max_new_tokens=8, stop_at_eos=False, force_active=active)
                  for _ in range(batch)])  # warm-up: captures the slab's graph
    gen.generate(reqs)
    sync()
    t0 = time.perf_counter()
    out = gen.generate(reqs)
    sync()
    first = max(r.timings["first_token_s"] for r in out)
    return batch * (new_tokens - 1) / (time.perf_counter() - t0 - first)


def parity(mot, runtime, source: str, active, new_tokens: int) -> dict:
    req = GenerationRequest(source, mode="full", max_new_tokens=new_tokens, stop_at_eos=False, force_active=active)
    graph = Generator(mot, runtime=runtime).generate([req])[0].token_ids
    eager = Generator(mot, runtime=runtime, static_cache=False, cuda_graphs=False).generate([req])[0].token_ids
    agree = next((i for i, (a, b) in enumerate(zip(graph, eager)) if a != b), len(graph))
    with torch.no_grad():
        logits = mot.target_logits(source, graph, active_experts=active)
    ranked_first = sum(int(a == b) for a, b in zip(logits.argmax(-1).tolist(), graph)) / len(graph)
    return {"tokens": len(graph), "graph_equals_eager_until": agree, "teacher_forced_argmax_agreement": ranked_first}


def measure(quantization: str | None, args, runtime, label: str | None = None) -> dict:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    mot = build_mot(args.preset, device=args.device, dtype=dtype, quantization=quantization, untrained=True)
    load_peak = peak_bytes()  # random experts are built on the GPU: the bf16 expert being quantized counts here
    loaded = torch.cuda.memory_allocated() if torch.cuda.is_available() else 0
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()  # from here: the inference peak
    source = UNIT
    while len(mot.prompt_ids(0, source + UNIT)) < 200:
        source += UNIT
    active = [0] + list(range(1, mot.config.top_k))
    row = {"quantization": label or quantization or dtype, "loaded_gib": gib(loaded), "load_peak_gib": gib(load_peak)}
    row["fast_b1"] = decode_rate(mot, runtime, "fast", 1, args.new_tokens, source, active)
    row["full_b1"] = decode_rate(mot, runtime, "full", 1, args.new_tokens, source, active)
    row["fast_b16"] = decode_rate(mot, runtime, "fast", 16, args.new_tokens, source, active)
    row["peak_gib"] = gib(peak_bytes())
    if quantization is not None:
        row["parity"] = parity(mot, runtime, source, active, 64)
    row["engine"] = Generator(mot, runtime=runtime).decoding
    del mot
    gc.collect()
    return row


def _time_us(fn, calls: int) -> float:
    """GPU microseconds per call of fn(i), i = 0..calls-1, replayed from one CUDA graph (launched one by one from
    Python, every kernel here is bound by its host launch: ~33 µs on an H100 for any shape)."""
    for i in range(calls):  # warm-up: compiles outside the capture
        fn(i)
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for i in range(calls):
            fn(i)
    graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    graph.replay()
    end.record()
    torch.cuda.synchronize()
    return 1000 * start.elapsed_time(end) / calls


def sweep_kernels(rows: int) -> tuple[dict, dict]:
    """Per decoded product (LAYER_PRODUCTS), microseconds of the bf16 kernel it replaces (`rows` = 1: the GEMV, or
    the GLU GEMV) and of the int4 kernel under each block config, the weights rotated through copies larger than L2
    (a decode step streams them from memory). Returns the times and, per product kind, the config with the least
    time summed over the kind's products."""
    configs, name = (ONE_ROW_CONFIGS, "ONE_ROW_BLOCKS") if rows == 1 else (ROWS_CONFIGS, "ROWS_BLOCKS")
    saved, times = dict(getattr(int4_gemv, name)), {}
    total = {kind: {c: 0.0 for c in configs} for kind in int4_gemv.PRODUCT_KINDS}
    for kind, n, k, glu in LAYER_PRODUCTS:
        assert int4_gemv.product_kind(k, glu) == kind, (kind, n, k, glu)
        stored = 2 * n if glu else n  # weight rows: a GLU's gate, then its up
        copies = max(2, -(-160 * 2**20 // (stored * k // 2)))
        layers = [Int4Linear(torch.nn.Linear(k, stored, bias=False, device="cuda"), torch.bfloat16)
                  for _ in range(copies)]
        x = torch.randn(rows, k, device="cuda", dtype=torch.bfloat16)
        row = {}
        if rows == 1:
            bf16 = [torch.randn(stored, k, device="cuda", dtype=torch.bfloat16) for _ in range(max(2, copies // 4))]
            row["bf16"] = _time_us((lambda i, x=x, ws=bf16, n=n: gemv_glu(x, ws[i % len(ws)][:n], ws[i % len(ws)][n:]))
                                   if glu else (lambda i, x=x, ws=bf16: gemv(x, ws[i % len(ws)])), 100)
            del bf16

        def product(i, x=x, ls=layers, glu=glu):
            layer = ls[i % len(ls)]
            if glu:
                return int4_gemv.int4_glu(x, layer.packed, layer.scales, layer.offsets, layer.group)
            return int4_gemv.int4_linear(x, layer.packed, layer.scales, layer.offsets, layer.group)

        for c in configs:
            getattr(int4_gemv, name)[kind] = c
            row[c] = _time_us(product, 100)
            total[kind][c] += row[c]
        getattr(int4_gemv, name)[kind] = saved[kind]  # the shipped blocks with codes converted, not built from bits
        int4_gemv.DEQUANT_BY_BITS = False
        row["converted"] = _time_us(product, 100)
        int4_gemv.DEQUANT_BY_BITS = True
        times[f"{kind} {n}x{k}"] = row
        layers.clear()
        torch.cuda.empty_cache()
    return times, {kind: min(t, key=t.get) for kind, t in total.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--new-tokens", type=int, default=256)
    p.add_argument("--preset", default="seed-random", help="seed-random (the seed shapes; tiny: a CPU smoke run)")
    p.add_argument("--device", default="cuda")
    p.add_argument("--out", default=None)
    p.add_argument("--unfused", action="store_true", help="also int4 with its q/k/v and gated-MLP fusions off "
                   "(MOT_FUSED_QKV=0 MOT_FUSED_MLP=0): the six products and the activation apart")
    p.add_argument("--tune", action="store_true", help="first sweep the int4 kernels' blocks on the seed primary's "
                   "layer shapes and decode with the fastest (the chosen blocks are printed: put them in "
                   "kernels/int4_gemv.py)")
    args = p.parse_args(argv)
    runtime = RuntimeConfig.from_env()
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"{where}, preset {args.preset}, {datetime.date.today()}", flush=True)
    rows, tuning = [], {}
    if args.tune:
        for m, name in ((1, "ONE_ROW_BLOCKS"), (16, "ROWS_BLOCKS")):
            times, best = sweep_kernels(m)
            tuning[name] = {"best": best, "us": {p: {str(c): t for c, t in r.items()} for p, r in times.items()}}
            for product, r in times.items():
                ranked = sorted(((c, t) for c, t in r.items() if isinstance(c, tuple)), key=lambda kv: kv[1])
                line = ", ".join(f"{c}: {t:.1f}" for c, t in ranked[:4])
                shipped = getattr(int4_gemv, name)[product.split()[0]]
                print(f"{name} rows={m} {product} µs (fastest first): {line}; was {r[shipped]:.1f}, "
                      f"codes converted {r['converted']:.1f}" + (f"; bf16 {r['bf16']:.1f}" if "bf16" in r else ""),
                      flush=True)
            print(f"{name}: {getattr(int4_gemv, name)} -> {best}", flush=True)
            setattr(int4_gemv, name, best)
    for quantization in (None, "int4"):
        rows.append(measure(quantization, args, runtime))
        print(json.dumps(rows[-1]), flush=True)
    if args.unfused:
        unfused = dataclasses.replace(runtime, fused_qkv=False, fused_mlp=False)
        rows.append(measure("int4", args, unfused, label="int4, q/k/v and MLP unfused"))
        print(json.dumps(rows[-1]), flush=True)
    bf16, int4 = rows[:2]
    print("| experts | fast b=1 tok/s | full b=1 tok/s (x fast) | 16 requests tok/s (x one) | loaded GiB | "
          "inference peak GiB | load peak GiB |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['quantization']} | {r['fast_b1']:.0f} | {r['full_b1']:.0f} ({r['full_b1'] / r['fast_b1']:.2f}x) | "
              f"{r['fast_b16']:.0f} ({r['fast_b16'] / r['fast_b1']:.1f}x) | {r['loaded_gib']:.2f} | {r['peak_gib']:.2f} | "
              f"{r['load_peak_gib']:.2f} |")
    print(f"int4 / bf16: fast {int4['fast_b1'] / bf16['fast_b1']:.2f}x, full {int4['full_b1'] / bf16['full_b1']:.2f}x, "
          f"16 requests {int4['fast_b16'] / bf16['fast_b16']:.2f}x; parity {int4['parity']}")
    if args.out:
        Path(args.out).write_text(json.dumps({"device": where, "date": str(datetime.date.today()), "rows": rows,
                                              "tuning": tuning}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

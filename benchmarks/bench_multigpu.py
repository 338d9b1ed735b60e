"""Experts on different GPUs in one process, the interaction across devices (needs 2 GPUs).

    MOT_SEED_CONFIGS=.../seed_expert_configs.json python benchmarks/bench_multigpu.py

One MoT (seed-random) is built on cuda:0; the two-GPU placement moves the two secondaries (hpc-coder-v2-1.3b and
starcoder2-3b shapes) to cuda:1 — the same weights, so the two placements must give the same tokens. The primary
(Qwen2.5-Coder-1.5B shape), router and interaction layers stay on cuda:0; the secondaries' prompt states cross to
cuda:0 once per request (prefill), and the primary's decode steps stay captured in CUDA graphs.
Checks first (fp32, TF32 off): full-MoT greedy tokens equal on one and two GPUs, for the default path and the
eager path. Then times full-MoT decoding (bf16) on each placement, default (graphs) and eager, and the peak
memory on each GPU; one-GPU placement measured before and after the two-GPU one.
"""

from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import GenerationRequest, Generator, build_mot  # noqa: E402

SRC = "void saxpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i]; }\n" * 8


def place(mot, devices: list[str]) -> None:
    for model, dev in zip(mot.experts, devices):
        model.to(dev)
    torch.cuda.empty_cache()


def decode(mot, n: int, graphs: bool) -> tuple[list[int], float]:
    gen = Generator(mot) if graphs else Generator(mot, static_cache=False, cuda_graphs=False)
    req = GenerationRequest(SRC, mode="full", max_new_tokens=n, stop_at_eos=False, force_active=[0, 1])
    gen.generate([GenerationRequest(SRC, mode="full", max_new_tokens=n, stop_at_eos=False, force_active=[0, 1])])
    torch.cuda.synchronize()
    t = time.perf_counter()
    res = gen.generate([req])[0]
    torch.cuda.synchronize()
    return res.token_ids, n / (time.perf_counter() - t)


def main() -> int:
    if torch.cuda.device_count() < 2:
        print(f"needs 2 GPUs, found {torch.cuda.device_count()}")
        return 2
    one, two = ["cuda:0"] * 3, ["cuda:0", "cuda:1", "cuda:1"]
    torch.backends.cuda.matmul.allow_tf32 = False
    mot = build_mot("seed-random", device="cuda:0", dtype="float32")
    same = {}
    for graphs in (True, False):
        place(mot, one)
        a, _ = decode(mot, 32, graphs)
        place(mot, two)
        b, _ = decode(mot, 32, graphs)
        same["graphs" if graphs else "eager"] = a == b
        print(f"fp32 full-MoT greedy tokens, {'graphs' if graphs else 'eager'}: one GPU == two GPUs: {a == b}", flush=True)
    del mot
    gc.collect()  # the MoT's stack hooks refer back to it: free the fp32 copy before measuring memory
    torch.cuda.empty_cache()
    torch.backends.cuda.matmul.allow_tf32 = True

    mot = build_mot("seed-random", device="cuda:0", dtype="bfloat16")
    rows = []
    for name, devices in (("one GPU", one), ("two GPUs", two), ("one GPU (again)", one)):
        place(mot, devices)
        for graphs in (True, False):
            for d in range(2):
                torch.cuda.reset_peak_memory_stats(d)
            _, tok_s = decode(mot, 128, graphs)
            peaks = [torch.cuda.max_memory_allocated(d) / 2**30 for d in range(2)]
            rows.append((name, "graphs (default)" if graphs else "eager", tok_s, peaks))
            print(f"{name}: experts on {devices}, {rows[-1][1]}: full-MoT {tok_s:.1f} tok/s, peak GiB {peaks[0]:.1f} / {peaks[1]:.1f}", flush=True)
    base = {path: tok for name, path, tok, _ in rows if name == "one GPU"}
    print(f"\n{torch.cuda.get_device_name(0)} x2, torch {torch.__version__}; full MoT (primary + hpc-coder secondary), "
          f"prompt {len(mot.prompt_ids(0, SRC))} tokens, 128 new tokens, bf16")
    print(f"fp32 tokens identical on one and two GPUs: {same}")
    print("| placement | path | full-MoT tok/s | x one GPU (same path) | peak GiB cuda:0 | peak GiB cuda:1 |")
    print("|---|---|---:|---:|---:|---:|")
    for name, path, tok, peaks in rows:
        print(f"| {name} | {path} | {tok:.1f} | {tok / base[path]:.2f} | {peaks[0]:.1f} | {peaks[1]:.1f} |")
    return 0 if all(same.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())

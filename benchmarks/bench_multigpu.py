"""Experts on different GPUs in one process, the interaction across devices (needs 2 GPUs).

    MOT_SEED_CONFIGS=.../seed_expert_configs.json python benchmarks/bench_multigpu.py

Places the primary (Qwen2.5-Coder-1.5B shape) and the router/interaction on cuda:0 and the two other seed experts
on cuda:1, checks that full-MoT greedy tokens equal the same MoT on one GPU (fp32), then times full-MoT decoding
(eager, dynamic cache: graphs are per device) on two GPUs against one GPU, both measured here.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import ExpertConfig, GenerationRequest, Generator, build_mot  # noqa: E402
from mot_engine.presets import resolve_preset  # noqa: E402

SRC = "void saxpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i]; }\n" * 8


def build(devices: list[str], dtype: str):
    experts, encoder = resolve_preset("seed-random")
    placed = [ExpertConfig(**{**e.to_dict(), "device": d}) for e, d in zip(experts, devices)]
    return build_mot(experts=placed, encoder=encoder, device="cuda:0", dtype=dtype)


def decode(mot, n: int) -> tuple[list[int], float]:
    gen = Generator(mot, static_cache=False, cuda_graphs=False)
    req = GenerationRequest(SRC, mode="full", max_new_tokens=n, stop_at_eos=False, force_active=[0, 1])
    gen.generate([GenerationRequest(SRC, mode="full", max_new_tokens=8, stop_at_eos=False, force_active=[0, 1])])
    torch.cuda.synchronize()
    t = time.perf_counter()
    res = gen.generate([req])[0]
    torch.cuda.synchronize()
    return res.token_ids, n / (time.perf_counter() - t)


def main() -> int:
    if torch.cuda.device_count() < 2:
        print(f"needs 2 GPUs, found {torch.cuda.device_count()}")
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    rows = {}
    tokens = {}
    for name, devices in (("one GPU", ["cuda:0"] * 3), ("two GPUs", ["cuda:0", "cuda:1", "cuda:1"])):
        mot = build(devices, "float32")
        tokens[name], _ = decode(mot, 32)
        del mot
        torch.cuda.empty_cache()
        mot = build(devices, "bfloat16")
        _, rows[name] = decode(mot, 128)
        print(f"{name}: experts on {devices}, full-MoT eager decode {rows[name]:.1f} tok/s", flush=True)
        del mot
        torch.cuda.empty_cache()
    same = tokens["one GPU"] == tokens["two GPUs"]
    print(f"\n{torch.cuda.get_device_name(0)} x2; fp32 greedy tokens identical on one and two GPUs: {same}")
    print("| placement | full-MoT tok/s (eager) | ratio |")
    print("|---|---:|---:|")
    for k, v in rows.items():
        print(f"| {k} | {v:.1f} | {v / rows['one GPU']:.2f} |")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())

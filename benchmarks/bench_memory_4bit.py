"""Peak GPU memory of the three seed experts in 4-bit (bitsandbytes NF4) with the MoT: inference and a training step.

    MOT_SEED_CONFIGS=.../seed_expert_configs.json python benchmarks/bench_memory_4bit.py --out mem.json

Random weights cannot be quantised by `from_config`, so each seed shape is built in bf16 with random weights,
saved as a normal folder, and loaded back through the users' path (`ExpertConfig(quantization="4bit")` ->
`from_pretrained(..., quantization_config=BitsAndBytesConfig(...))`). Targets: inference peak < 12 GB, a training
step at max_length 512 < 16 GB. The bf16 numbers of the same run are printed beside them.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import ExpertConfig, GenerationRequest, Generator, RuntimeConfig, build_mot  # noqa: E402
from mot_engine.model.experts import ExpertLoader  # noqa: E402
from mot_engine.presets.names import SEED_EXPERTS  # noqa: E402
from mot_engine.presets.resolve import resolve_preset  # noqa: E402
from mot_engine.presets.tiny import TINY_ENCODER, ensure_tiny  # noqa: E402

SRC = "void saxpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i]; }\n" * 8


def save_random_seed_experts(root: Path) -> list[ExpertConfig]:
    experts, _ = resolve_preset("seed-random")
    out = []
    for cfg in experts:
        folder = root / cfg.name
        model, tok = ExpertLoader.load_expert(ExpertConfig(**{**cfg.to_dict(), "dtype": "bfloat16"}), "cuda")
        model.save_pretrained(folder)
        tok.save_pretrained(folder)
        del model
        gc.collect()
        torch.cuda.empty_cache()
        out.append(ExpertConfig(name=cfg.name, path=str(folder)))
    return out


def measure(experts: list[ExpertConfig], quantization: str | None, active: list[int]) -> dict:
    """Memory of the engine's own path; graphs but no torch.compile (its warm-up would count in tok/s)."""
    gib = 2**30
    torch.cuda.reset_peak_memory_stats()
    mot = build_mot(
        experts=[ExpertConfig(name=e.name, path=e.path, quantization=quantization, dtype="bfloat16") for e in experts],
        encoder=str(ensure_tiny() / TINY_ENCODER / "st"), device="cuda",
    )
    r = {"quantization": quantization or "bf16", "weights_gib": torch.cuda.memory_allocated() / gib}
    runtime = replace(RuntimeConfig.from_env(), compile_layers=False)  # its warm-up would count in tok/s
    gen = Generator(mot, static_cache=True, cuda_graphs=quantization is None, runtime=runtime)
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    gen.generate([GenerationRequest(SRC, mode="full", max_new_tokens=16, stop_at_eos=False, force_active=active)])
    r["first_request_s"] = time.perf_counter() - t  # cold: kernel compiles, graph captures
    request = GenerationRequest(SRC, mode="full", max_new_tokens=256, stop_at_eos=False, force_active=active)
    gen.generate([request])  # warm-up at the timed shapes
    torch.cuda.synchronize()
    t = time.perf_counter()
    res = gen.generate([request])[0]
    torch.cuda.synchronize()
    r["inference_tok_s"] = res.num_generated_tokens / (time.perf_counter() - t)
    r["inference_peak_gib"] = torch.cuda.max_memory_allocated() / gib
    mot.train()
    p = active[0]
    n_prompt = len(mot.prompt_ids(p, SRC))
    target = mot.target_ids(p, SRC * 3)[: 512 - n_prompt - 1]
    torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    out = mot([SRC], [target], force_active=[active])
    out.loss.backward()
    torch.cuda.synchronize()
    r["train_step_s"] = time.perf_counter() - t
    r["train_peak_gib"] = torch.cuda.max_memory_allocated() / gib
    r["train_tokens"] = n_prompt + len(target) + 1
    del mot, gen, out
    gc.collect()
    torch.cuda.empty_cache()
    return r


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_memory_4bit.json")
    ap.add_argument("--active", default="0,1")
    args = ap.parse_args(argv)
    active = [int(x) for x in args.active.split(",")]
    root = Path(tempfile.mkdtemp(prefix="seed-random-"))
    experts = save_random_seed_experts(root)
    rows = [measure(experts, "4bit", active), measure(experts, None, active)]
    Path(args.out).write_text(json.dumps({"card": torch.cuda.get_device_name(0), "rows": rows}, indent=2))
    print(f"\n{torch.cuda.get_device_name(0)}: three seed experts ({', '.join(SEED_EXPERTS)}), MoT top-2 {active}")
    print("| experts | weights GiB | inference peak GiB | full-MoT tok/s, warm (4-bit: eager, bf16: CUDA graphs) "
          "| first request s (16 tokens, cold) | train step peak GiB (512 tok) | step s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['quantization']} | {r['weights_gib']:.1f} | {r['inference_peak_gib']:.1f} | {r['inference_tok_s']:.0f} | "
              f"{r['first_request_s']:.2f} | {r['train_peak_gib']:.1f} | {r['train_step_s']:.2f} |")
    q, b = rows
    print(f"4-bit / bf16: inference peak {q['inference_peak_gib'] / b['inference_peak_gib']:.2f}x, train peak {q['train_peak_gib'] / b['train_peak_gib']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

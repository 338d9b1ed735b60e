"""Prompt-lookup speculation on real weights: the pocket preset (its shipped checkpoint) translating exec_dev sources.

    python benchmarks/bench_speculation.py --limit 24 --out runs/speculation.json
    python benchmarks/bench_speculation.py --limit 12 --sweep   # draft lengths and n-gram sizes, batch 1
    MOT_SEED_CONFIGS=../shared/data/seed_expert_configs.json \
        python benchmarks/bench_speculation.py --verify-cost --preset seed-random --device cuda   # GPU

With random weights acceptance means nothing, so this runs the pocket experts. Each row decodes the same functions
twice in one process, without and with prompt lookup (`RuntimeConfig.prompt_lookup`), alternating which goes first
so drift in the machine's speed hits both: fast and full mode at batch 1 (one function at a time) and at batch 16
(16 functions admitted together). Greedy, the default stop rules, the engine's default path for the device (the
dynamic cache on a CPU; `MOT_SLABS=1` runs the slabs, a GPU's default path, eagerly on the CPU).

Columns: tokens/s without and with speculation (generated tokens / wall seconds over all functions) and their ratio;
outputs identical token for token (of n); drafted tokens per generated token; acceptance (kept / drafted draft
tokens); tokens per forward of the primary (generated / forwards: a forward emits the kept draft plus one).

`--verify-cost` measures what a speculative step costs on the seed experts' shapes (random weights: only the time
means something): one forward of the primary over W tokens per row after a ~1,000-token prompt (the few-shot
prompts' length), on the dynamic-cache path and as a slab's verify step (`DecodeSlab.decode_wide`), against W = 1
(a plain decode step), fast and full mode, batch 1 and 16; and the default engine's (slabs, CUDA graphs) time per
token beside it. With the pocket rows' tokens per forward, it bounds what speculation gives on that GPU: speed-up =
tokens per forward x cost(1) / cost(W).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gc
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kernelcheck.cases import load_exec_cases  # noqa: E402
from mot_engine import GenerationRequest, Generator, RuntimeConfig, build_mot  # noqa: E402
from mot_engine.decoding.speculation import LookupSettings  # noqa: E402
from train.detokenize import detokenize  # noqa: E402

# (max_draft, min_ngram, adaptive) settings of --sweep: around the defaults, one change at a time
SWEEP = ((8, 2, False), (4, 2, False), (8, 3, False), (8, 1, False), (12, 2, False), (16, 2, False), (8, 2, True),
         (12, 2, True), (16, 2, True), (8, 1, True))
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "babeltower" / "exec_dev.jsonl"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DATA))
    p.add_argument("--limit", type=int, default=24, help="the first N functions")
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--device", default="cpu")
    p.add_argument("--modes", nargs="+", default=["fast", "full"])
    p.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    p.add_argument("--sweep", action="store_true",
                   help="batch 1, fast mode: the draft settings of SWEEP (max_draft, min_ngram, adaptive length)")
    p.add_argument("--verify-cost", action="store_true",
                   help="time one forward over W tokens against one token (any preset; random weights do)")
    p.add_argument("--preset", default="pocket")
    p.add_argument("--widths", type=int, nargs="+", default=[1, 2, 4, 6, 9])
    p.add_argument("--settings", nargs="+", default=None, metavar="K/N[a]",
                   help="with --sweep: only these settings (max_draft/min_ngram, 'a' for an adaptive length)")
    p.add_argument("--out", default=None, help="write every number here (JSON)")
    return p.parse_args(argv)


def parse_setting(text: str) -> tuple[int, int, bool]:
    """"12/2" -> (12, 2, False); "8/2a" -> (8, 2, True)."""
    draft, _, ngram = text.partition("/")
    return int(draft), int(ngram.rstrip("a")), ngram.endswith("a")


def run(gen: Generator, sources: list[str], mode: str, batch: int, max_new_tokens: int):
    """Results and wall seconds of decoding `sources`, `batch` at a time."""
    results, seconds = [], 0.0
    for start in range(0, len(sources), batch):
        reqs = [GenerationRequest(src, mode=mode, max_new_tokens=max_new_tokens)
                for src in sources[start:start + batch]]
        t0 = time.perf_counter()
        results += gen.generate(reqs)
        if gen.mot.device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
    return results, seconds


def compare(mot, runtime, sources, mode, batch, max_new_tokens, settings=None) -> dict:
    """One row: the same functions without and with prompt lookup, in alternating order."""
    plain = Generator(mot, max_batch_size=max(batch, 1), runtime=dataclasses.replace(runtime, prompt_lookup=False))
    spec = Generator(mot, max_batch_size=max(batch, 1), runtime=dataclasses.replace(runtime, prompt_lookup=True,
                                                                                     prompt_lookup_cuda=True))
    if settings is not None:
        spec.lookup_settings = settings
    run(plain, sources[:1], mode, 1, 8)  # warm-up: first-call allocations
    res = {"plain": ([], 0.0), "spec": ([], 0.0)}
    chunks = [sources[i:i + batch] for i in range(0, len(sources), batch)]
    for i, chunk in enumerate(chunks):
        order = [("plain", plain), ("spec", spec)] if i % 2 == 0 else [("spec", spec), ("plain", plain)]
        for name, gen in order:
            r, s = run(gen, chunk, mode, batch, max_new_tokens)
            res[name] = (res[name][0] + r, res[name][1] + s)
    (a, ta), (b, tb) = res["plain"], res["spec"]
    tokens = sum(r.num_generated_tokens for r in a)
    spec_tokens = sum(r.num_generated_tokens for r in b)
    drafted = sum(r.draft_tokens for r in b)
    kept = sum(r.accepted_tokens for r in b)
    return {
        "mode": mode, "batch": batch, "functions": len(sources), "tokens": tokens,
        "plain_tok_s": tokens / ta, "spec_tok_s": spec_tokens / tb, "speedup": (spec_tokens / tb) / (tokens / ta),
        "identical": sum(x.token_ids == y.token_ids for x, y in zip(a, b)),
        "drafted_per_token": drafted / max(spec_tokens, 1), "acceptance": kept / max(drafted, 1),
        "tokens_per_forward": spec_tokens / max(spec_tokens - kept, 1),
        "settings": dataclasses.asdict(settings or LookupSettings()),
    }


def table(rows: list[dict]) -> str:
    lines = ["| mode | batch | draft (a: adaptive)/ngram | plain tok/s | speculative tok/s | speed-up | identical | drafted/token | "
             "acceptance | tokens/forward |", "|---" * 10 + "|"]
    for r in rows:
        s = r["settings"]
        lines.append(f"| {r['mode']} | {r['batch']} | {s['max_draft']}{'a' if s.get('adaptive') else ''}/"
                     f"{s['min_ngram']}-{s['max_ngram']} | "
                     f"{r['plain_tok_s']:.1f} | {r['spec_tok_s']:.1f} | {r['speedup']:.2f}x | "
                     f"{r['identical']}/{r['functions']} | {r['drafted_per_token']:.2f} | {100 * r['acceptance']:.0f}% | "
                     f"{r['tokens_per_forward']:.2f} |")
    return "\n".join(lines)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _memory(stage: str) -> None:
    """A CUDA run's allocated memory after each stage (a run that ran out of memory says where)."""
    if torch.cuda.is_available():
        print(f"[memory] {stage}: {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated, "
              f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB", flush=True)


def forward_ms(gen: Generator, cohort, width: int, repeats: int) -> float:
    """Milliseconds of one forward of the cohort's primary over `width` tokens per row (the cache rolled back
    after each, so every repeat sees the same prompt)."""
    dev = cohort.attention_mask.device
    B, before = cohort.attention_mask.shape[0], cohort.attention_mask
    vocab = gen.mot.experts[cohort.primary].get_input_embeddings().num_embeddings
    ids = torch.randint(0, min(vocab, 1000), (B, width), device=dev)  # (B, W)
    positions = cohort.positions + torch.arange(width, device=dev)

    def once():
        cohort.attention_mask = torch.cat([before, before.new_ones(B, width)], 1)
        gen._forward(cohort, ids, positions, logits_to_keep=width)
        cohort.cache.crop(-width)
        cohort.attention_mask = before

    for _ in range(3):
        once()
    _sync(dev)
    t0 = time.perf_counter()
    for _ in range(repeats):
        once()
    _sync(dev)
    return 1000 * (time.perf_counter() - t0) / repeats


def verify_cost(args, runtime: RuntimeConfig) -> list[dict]:
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    mot = build_mot(args.preset, device=args.device, dtype=dtype, untrained=True)
    unit = "void saxpy(int n, float a, const float* x, float* y) {\n  for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i];\n}\n"
    source = unit
    while len(mot.prompt_ids(0, source + unit)) < 1000:  # ~1,000 prompt tokens, as the few-shot prompts have
        source += unit
    active = [0] + list(range(1, mot.config.top_k))
    rows = []
    for mode in args.modes:
        for batch in args.batches:
            try:
                rows.append(cost_row(mot, runtime, source, mode, batch, active, args.widths))
            except torch.cuda.OutOfMemoryError as e:  # say which row and stage, keep the rows that fit
                rows.append({"mode": mode, "batch": batch, "error": f"out of memory: {str(e).splitlines()[0]}"})
                print(f"{mode} b={batch}: {rows[-1]['error']}", flush=True)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


def cost_row(mot, runtime: RuntimeConfig, source: str, mode: str, batch: int, active, widths) -> dict:
    """One row of `verify_cost`: a forward per width on the dynamic cache and on a slab, and the default engine."""
    eager = Generator(mot, max_batch_size=batch, runtime=runtime, static_cache=False)
    for b in range(batch):
        eager.add_request(f"r{b}", GenerationRequest(source, mode=mode, max_new_tokens=64, stop_at_eos=False,
                                                     force_active=active))
    eager.step()  # admission and prefill: one cohort of `batch` rows
    (cohort,) = eager.cohorts
    _memory(f"{mode} b={batch}: prefilled, prompt {cohort.attention_mask.shape[1]} tokens")
    costs = {}
    for w in widths:
        costs[w] = forward_ms(eager, cohort, w, 20)
        print(f"[cost] {mode} b={batch}: eager forward W={w}: {costs[w]:.2f} ms", flush=True)
    _memory(f"{mode} b={batch}: eager forwards timed")
    plain = dataclasses.replace(runtime, prompt_lookup=False)  # the engine's step without drafts
    default = Generator(mot, max_batch_size=batch, runtime=plain)
    slab_costs = slab_step_ms(default, source, mode, batch, active, widths) if default.static_cache else {}
    _memory(f"{mode} b={batch}: slab steps timed")
    reqs = [GenerationRequest(source, mode=mode, max_new_tokens=128, stop_at_eos=False, force_active=active)
            for _ in range(batch)]
    default.generate(reqs)  # warm-up: captures
    _sync(mot.device)
    t0 = time.perf_counter()
    out = default.generate(reqs)
    _sync(mot.device)
    step_ms = 1000 * (time.perf_counter() - t0) / max(r.num_generated_tokens for r in out)
    row = {"mode": mode, "batch": batch, "forward_ms": costs, "slab_step_ms": slab_costs,
           "default_engine_ms_per_step": step_ms,
           "default_engine": default.decoding, "prompt_tokens": len(cohort.attention_mask[0])}
    print("\n".join(cost_table([row]).splitlines()[2:]), flush=True)
    return row


def slab_step_ms(gen: Generator, source: str, mode: str, batch: int, active, widths, repeats: int = 20) -> dict:
    """Milliseconds of one step of a slab of `batch` rows — W = 1: the decode step; W > 1: a verify step
    (`DecodeSlab.decode_wide`), each replaying its graph on a GPU — synchronised after each, as a speculating slab
    is. The write column is put back after each step, so every repeat writes the same columns."""
    for b in range(batch):
        gen.add_request(f"w{b}", GenerationRequest(source, mode=mode, max_new_tokens=1024, stop_at_eos=False,
                                                   force_active=active))
    while gen.waiting or gen.cohorts or sum(len(s.live) for s in gen.slabs.values()) < batch:
        gen.step()
    (slab,) = gen.slabs.values()
    gen._flush(slab)
    c0, dev = slab.column, slab.device

    def once(width: int) -> None:
        slab.decode() if width == 1 else slab.decode_wide([[1] * width] * slab.shape.rows)
        _sync(dev)
        slab.set_column(c0)

    out = {}
    for w in widths:
        for _ in range(3):  # eager run, capture, replay
            once(w)
        t0 = time.perf_counter()
        for _ in range(repeats):
            once(w)
        out[w] = 1000 * (time.perf_counter() - t0) / repeats
    for b in range(batch):
        gen.abort(f"w{b}")
    while gen.has_unfinished():
        gen.step()
    return out


def cost_table(rows: list[dict]) -> str:
    """Eager forward (dynamic cache) and slab step costs per width, each with its ratio to W = 1."""
    rows = [r for r in rows if "error" not in r]  # a row that ran out of memory is printed as it happened
    if not rows:
        return "(no row fitted in memory)"
    widths = list(rows[0]["forward_ms"])
    lines = ["| mode | batch | path | " + " | ".join(f"W={w} ms (x W=1)" for w in widths) + " | engine ms/step |",
             "|---" * (len(widths) + 4) + "|"]
    for r in rows:
        for path, costs in (("eager forward", r["forward_ms"]), ("slab step", r.get("slab_step_ms") or {})):
            if not costs:
                continue
            base = costs[widths[0]]
            cells = [f"{ms:.2f} ({ms / base:.2f}x)" for ms in costs.values()]
            lines.append(f"| {r['mode']} | {r['batch']} | {path} | " + " | ".join(cells) +
                         f" | {r['default_engine_ms_per_step']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.verify_cost:
        runtime = RuntimeConfig.from_env()
        where = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
        print(f"verify cost, preset {args.preset} (random weights), {where}, {datetime.date.today()}", flush=True)
        rows = verify_cost(args, runtime)
        print(cost_table(rows))
        if args.out:
            Path(args.out).write_text(json.dumps({"device": where, "date": str(datetime.date.today()), "rows": rows},
                                                 indent=2))
        return 0
    sources = [detokenize(c.cpp_code) for c in load_exec_cases(args.data)][: args.limit]
    runtime = RuntimeConfig.from_env()
    mot = build_mot("pocket", device=args.device)
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    print(f"pocket preset on {where}; {len(sources)} exec_dev functions; {datetime.date.today()}", flush=True)
    rows = []
    if args.sweep:
        grid = SWEEP if args.settings is None else [parse_setting(x) for x in args.settings]
        for max_draft, min_ngram, adaptive in grid:
            settings = LookupSettings(max_draft=max_draft, max_ngram=max(3, min_ngram), min_ngram=min_ngram,
                                      adaptive=adaptive)
            rows.append(compare(mot, runtime, sources, "fast", 1, args.max_new_tokens, settings))
            print(table(rows[-1:]).splitlines()[-1], flush=True)
    else:
        for batch in args.batches:
            for mode in args.modes:
                rows.append(compare(mot, runtime, sources, mode, batch, args.max_new_tokens))
                print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    if args.out:
        Path(args.out).write_text(json.dumps({"device": where, "date": str(datetime.date.today()), "rows": rows},
                                             indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""GPU benchmark of the engine: the seed experts' shapes (random weights), checked against the eager path first.

    MOT_SEED_CONFIGS=../shared/data/seed_expert_configs.json python benchmarks/bench_engine.py --out engine.json

What it does, in one process:
  1. parity (fp32, TF32 off): greedy tokens of the static-cache + CUDA-graph paths (fast and full MoT) equal the
     argmax of the eager, cache-free teacher-forced forward (`target_logits`) on those tokens, and the plain eager
     path's tokens (dynamic cache, the experts' own norms);
  2. timings (bf16, batch 1, ~200-token prompt, 256 new tokens, EOS ignored) of: transformers' default
     `generate()` of the primary alone (baseline), the original no-cache full-MoT approach (extrapolated from a few
     steps at the start and end lengths), our eager dynamic-cache loop, our fast mode, our full-MoT mode, batching
     (16 requests at once), routing latency (tiny encoder, and a deberta-v3-large-shaped random encoder), a MoT
     forward+backward at max_length 512 and peak memory;
  3. a table with ratios last; all numbers to --out (JSON).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import statistics
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mot_engine import GenerationRequest, Generator, RuntimeConfig, build_mot  # noqa: E402
from mot_engine.envs import SUBSTITUTIONS as DECODE_SUBSTITUTIONS  # noqa: E402

# The decode-step substitutions in the order they were added, then the prefill graphs (a request's first token):
# the ladder turns them on one by one; its last row is the default engine.
SUBSTITUTIONS = DECODE_SUBSTITUTIONS + ("prefill_graphs",)
# The runtime every row starts from: as the environment sets it (read once, here); rows change it by `replace`.
BASE = RuntimeConfig.from_env()

SOURCE_UNIT = (
    "void saxpy(int n, float alpha, const float* x, float* y) {\n"
    "    for (int i = 0; i < n; ++i) {\n        y[i] = alpha * x[i] + y[i];\n    }\n}\n"
)


DEVICE = "cuda"
PRESET = "seed-random"


def sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def reset_peak():
    if DEVICE == "cuda":
        torch.cuda.reset_peak_memory_stats()


def peak_gib() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if DEVICE == "cuda" else float("nan")


def timed(fn, *a, **kw):
    sync()
    t = time.perf_counter()
    out = fn(*a, **kw)
    sync()
    return out, time.perf_counter() - t


def make_source(mot, p: int, target_tokens: int = 200) -> str:
    src = SOURCE_UNIT
    while len(mot.prompt_ids(p, src)) < target_tokens:
        src += SOURCE_UNIT
    return src


def free(*objs):
    for o in objs:
        del o
    gc.collect()
    if DEVICE == "cuda":
        torch.cuda.empty_cache()


def parity(results: dict, active: list[int], n_tokens: int) -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    mot = build_mot(PRESET, device=DEVICE, dtype="float32")
    src = make_source(mot, active[0], 64)
    out = {}
    for mode in ("fast", "full"):
        req = GenerationRequest(src, mode=mode, max_new_tokens=n_tokens, stop_at_eos=False, force_active=active)
        graphs = Generator(mot, runtime=BASE).generate([req])[0].token_ids  # the default: slabs, graphs, all kernels
        plain = replace(BASE, fused_norms=False, triton_gemv=False, fused_rotary=False, fused_mlp=False,
                        decode_attention=False)  # the plain eager path: the experts' own forward
        eager = Generator(mot, runtime=plain, static_cache=False, cuda_graphs=False).generate([req])[0].token_ids
        with torch.no_grad():
            if mode == "full":
                tf = mot.target_logits(src, graphs, active_experts=active)
            else:  # fast mode = primary alone; compare with the expert's own cache-free forward
                p = active[0]
                ids = torch.tensor([mot.prompt_ids(p, src) + graphs], device=DEVICE)
                tf = mot.experts[p](input_ids=ids).logits[0, -len(graphs) - 1 : -1]
        agree = sum(int(a == b) for a, b in zip(tf.argmax(-1).tolist(), graphs)) / len(graphs)
        out[mode] = {"graph_vs_eager_tokens_equal": graphs == eager, "graph_vs_teacher_forced_argmax": agree}
        print(f"parity fp32 {mode}: graph==eager tokens {graphs == eager}, argmax agreement {agree:.3f}", flush=True)
    results["parity_fp32"] = out
    free(mot)
    torch.backends.cuda.matmul.allow_tf32 = True


def bench_generation(results: dict, active: list[int], new_tokens: int, batch: int, seed_router=None,
                     compiled: bool = True) -> None:
    mot = build_mot(PRESET, device=DEVICE, dtype="bfloat16" if DEVICE == "cuda" else "float32")
    print("loaded seed-random bf16", flush=True)
    reset_peak()
    p = active[0]
    src = make_source(mot, p, 200)
    n_prompt = len(mot.prompt_ids(p, src))
    results["prompt_tokens"] = n_prompt
    rows = {}

    # Baseline 1: transformers' default generate() of the primary alone (64 tokens: it is slow).
    model = mot.experts[p]
    ids = torch.tensor([mot.prompt_ids(p, src)], device=DEVICE)
    base_n = 64
    model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    _, t = timed(model.generate, ids, max_new_tokens=base_n, min_new_tokens=base_n, do_sample=False)
    rows["hf_generate_default"] = base_n / t

    # Baseline 2: the original full-MoT approach: per token, encoder + router + every active expert's full forward
    # over the whole sequence, no cache. Measure steps at the start and end lengths; integrate linearly.
    experts = [mot.experts[e] for e in active]
    def orig_step(length):
        with torch.no_grad():
            if seed_router is not None:  # the seed preset's encoder shape (deberta-v3-large) + router, per token
                seed_router(src)
            else:
                mot.route([src], noise=False)
            for e, m in zip(active, experts):
                x = torch.randint(0, min(300, m.config.vocab_size), (1, length), device=DEVICE)
                mot._capture = {e: [None] * mot.config.num_stacks} if e != p else None
                m(input_ids=x, use_cache=False)
            mot._capture = None
    orig_step(n_prompt)
    per = {}
    for length in (n_prompt, n_prompt + new_tokens):
        _, t = timed(lambda: [orig_step(length) for _ in range(8)])
        per[length] = t / 8
    orig_total = new_tokens * (per[n_prompt] + per[n_prompt + new_tokens]) / 2
    rows["original_no_cache_full_mot"] = new_tokens / orig_total
    results["original_step_s"] = {str(k): v for k, v in per.items()}

    # Baseline 2b: baseline 2 plus the rest of what the published implementation does per token
    # (../shared/notes/mot-design.md, "What goes wrong"): the growing text is decoded and re-tokenized by every
    # active expert, the encoder reads the growing text (not only the source), and the primary's full forward runs
    # the interaction at every stack against the secondaries' states over the whole text. Baseline 2 leaves these
    # out (a lower bound on the original's cost); both are reported.
    from mot_engine.model.interaction import MemorySlot
    from mot_engine.model.memory import MemoryContext

    tok_p = mot.tokenizers[p]
    prompt_p = mot.prompt_ids(p, src)
    continuation = mot.target_ids(p, SOURCE_UNIT * (new_tokens // 8 + 4))
    one = torch.ones(1, device=mot.device)

    def faithful_step(length):
        with torch.no_grad():
            ids_p = prompt_p + continuation[: length - len(prompt_p)]  # the primary's text so far
            text = tok_p.decode(ids_p)
            if seed_router is not None:
                seed_router(text)
            else:
                mot.route([text], noise=False)
            slots = [[] for _ in range(mot.config.num_stacks)]
            for e, m in zip(active[1:], experts[1:]):
                ids_e = mot.tokenizers[e](text)["input_ids"][:length]  # re-tokenized by each secondary
                mot._capture = {e: [None] * mot.config.num_stacks}
                m(input_ids=torch.tensor([ids_e], device=DEVICE), use_cache=False)
                for s_, h in enumerate(mot._capture[e]):  # its states over the whole text, every stack
                    key, value = mot.interaction[s_].memory(e, h.to(mot.device))  # (1, H, L_e, hd)
                    mask = torch.ones(1, 1, 1, key.shape[2], dtype=torch.bool, device=mot.device)
                    slots[s_].append(MemorySlot(key=key, value=value, mask=mask, weight=one))
                mot._capture = None
            with mot.interacting(MemoryContext(primary=p, primary_weight=one, slots=slots)):
                experts[0](input_ids=torch.tensor([ids_p], device=DEVICE), use_cache=False)

    faithful_step(n_prompt)
    per = {}
    for length in (n_prompt, n_prompt + new_tokens):
        _, t = timed(lambda: [faithful_step(length) for _ in range(8)])
        per[length] = t / 8
    rows["original_no_cache_faithful"] = new_tokens / (new_tokens * (per[n_prompt] + per[n_prompt + new_tokens]) / 2)
    results["original_faithful_step_s"] = {str(k): v for k, v in per.items()}

    def run(mode, runtime: RuntimeConfig, **gen_kw):
        gen = Generator(mot, runtime=runtime, **gen_kw)
        req = GenerationRequest(src, mode=mode, max_new_tokens=new_tokens, stop_at_eos=False, force_active=active)
        _, warm = timed(gen.generate, [req])  # warm-up at the timed shapes (compilation, kernel selection)
        res, t = timed(gen.generate, [req])
        r = res[0]
        return {"tok_s_decode": r.timings["decode_tokens_per_s"], "tok_s_end_to_end": new_tokens / t,
                "first_token_s": r.timings["first_token_s"], "warm_up_s": warm}

    # The substitutions in the order they were added: each row turns one more on (the last row is the default).
    runtime = replace(BASE, **dict.fromkeys(SUBSTITUTIONS, False))  # the plain paths: the experts' own forward
    eager = run("fast", runtime, static_cache=False, cuda_graphs=False)
    full_eager = run("full", runtime, static_cache=False, cuda_graphs=False)
    rows["ours_eager_dynamic_cache_fast"] = eager["tok_s_end_to_end"]
    rows["ours_full_mot_eager"] = full_eager["tok_s_end_to_end"]
    ladder = {}
    for i, name in enumerate(("graphs_plain",) + tuple("graphs_+" + v for v in SUBSTITUTIONS)):
        if i:
            runtime = replace(runtime, **{SUBSTITUTIONS[i - 1]: True})
        ladder[name] = {mode: run(mode, runtime) for mode in ("fast", "full")}
        rows[f"ours_fast_{name}"] = ladder[name]["fast"]["tok_s_end_to_end"]
        rows[f"ours_full_mot_{name}"] = ladder[name]["full"]["tok_s_end_to_end"]
    fast, full = ladder[name]["fast"], ladder[name]["full"]  # every substitution on: the default
    rows["ours_fast"], rows["ours_full_mot"] = fast["tok_s_end_to_end"], full["tok_s_end_to_end"]
    fast_c = full_c = None
    if compiled:
        compiled_runtime = replace(BASE, compile_layers=True)  # opt-in: compiled layers (the GEMV a custom op)
        fast_c, full_c = run("fast", compiled_runtime), run("full", compiled_runtime)
        rows["ours_fast_compiled"] = fast_c["tok_s_end_to_end"]
        rows["ours_full_mot_compiled"] = full_c["tok_s_end_to_end"]
    results["detail"] = {"eager": eager, "fast": fast, "full": full, "full_eager": full_eager, "fast_compiled": fast_c,
                         "full_compiled": full_c, "ladder": ladder}

    # 32-token full-MoT generation (the engine issue's check) and peak inference memory.
    _, t32 = timed(Generator(mot, runtime=BASE).generate, [GenerationRequest(src, mode="full", max_new_tokens=32, stop_at_eos=False, force_active=active)])
    results["full_mot_32_tokens_s"] = t32

    # Batching: `batch` requests admitted together (one cohort per (primary, mode)).
    for mode in ("fast", "full"):
        gen = Generator(mot, max_batch_size=batch, runtime=BASE)
        reqs = [GenerationRequest(src, mode=mode, max_new_tokens=new_tokens, stop_at_eos=False, force_active=active) for _ in range(batch)]
        gen.generate(reqs)  # warm-up at the timed shapes, as for batch 1 (`run`): the slab's graph, its cache width
        _, t = timed(gen.generate, reqs)
        rows[f"ours_{mode}_batch{batch}_total"] = batch * new_tokens / t
    results["peak_inference_gib"] = peak_gib()

    # Routing latency (encoder + router + host sync), the hover path.
    lat = []
    for _ in range(50):
        _, t = timed(mot.get_routing_info, src)
        lat.append(t)
    lat.sort()
    results["routing_tiny_encoder_ms"] = {"p50": 1e3 * lat[25], "p95": 1e3 * lat[47]}

    # A MoT forward + backward at max_length 512 (prompt ~200 + target ~300), bf16, per-sample routing.
    mot.train()
    reset_peak()
    tgt = src * 2
    tgt_ids = mot.target_ids(p, tgt)[: 512 - n_prompt - 1]
    out = mot([src], [tgt_ids], force_active=[active])
    out.loss.backward()
    mot.zero_grad(set_to_none=True)
    _, t = timed(lambda: mot([src], [tgt_ids], force_active=[active]).loss.backward())
    results["train_step_s"] = t
    results["train_step_tokens"] = n_prompt + len(tgt_ids)
    results["train_peak_gib"] = peak_gib()
    mot.eval()
    results["rows"] = rows
    free(mot)


def bench_deberta_routing(results: dict):
    """Routing with a deberta-v3-large-shaped encoder (random weights, the seed preset's encoder shape)."""
    import tempfile

    from sentence_transformers import SentenceTransformer, models as st_models
    from transformers import AutoTokenizer, DebertaV2Config, DebertaV2Model

    from mot_engine.model.router import Router, SentenceEncoder
    from mot_engine.presets.tiny import TINY_ENCODER, ensure_tiny

    folder = Path(tempfile.mkdtemp())
    DebertaV2Model(DebertaV2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096, vocab_size=128100)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(ensure_tiny() / TINY_ENCODER / "st")).save_pretrained(folder)
    tr = st_models.Transformer(str(folder), max_seq_length=512)
    st = SentenceTransformer(modules=[tr, st_models.Pooling(1024, pooling_mode="mean")], device=DEVICE)
    enc = SentenceEncoder(st)  # the default: CUDA-graph replay per (rows, columns) bucket
    eager = SentenceEncoder(st)
    eager.captured = None  # the same encoder, launched from Python
    router = Router(enc.dim, 3, 512, 2, 1.0).to(DEVICE).eval()
    t0 = time.perf_counter()
    graphs = enc.warm_up([SOURCE_UNIT])
    results["routing_graphs"] = {"captured": graphs, "warm_up_s": time.perf_counter() - t0,
                                 "broken": enc.captured.broken if enc.captured is not None else "off"}
    # Parity first: graph replay vs eager, sources of several lengths (bf16: allclose, and the same experts chosen).
    worst, same = 0.0, True
    for n in (1, 3, 6, 20, 60):
        text = SOURCE_UNIT * n
        a, b = enc([text]), eager([text])
        worst = max(worst, float(((a - b).norm() / b.norm()).item()))
        same &= router(a, noise=False).info(0)["active_experts"] == router(b, noise=False).info(0)["active_experts"]
    results["routing_graphs"].update(relative_difference=worst, same_experts=same)
    print(f"routing parity: graphs vs eager relative difference {worst:.2e}, same experts {same}", flush=True)
    src = SOURCE_UNIT * 6
    for key, e in (("routing_deberta_large_ms", enc), ("routing_deberta_large_eager_ms", eager)):
        lat = []
        for i in range(60):
            sync()
            t = time.perf_counter()
            router(e([src]), noise=False).info(0)
            sync()
            if i >= 10:
                lat.append(time.perf_counter() - t)
        lat.sort()
        results[key] = {"p50": 1e3 * statistics.median(lat), "p95": 1e3 * lat[int(0.95 * len(lat)) - 1]}
    return lambda text: router(eager([text]), noise=False).info(0)  # the original ran its encoder eagerly


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="bench_engine.json")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--active", default="0,1", help="forced active experts, primary first (0=Qwen 1.5B, 1=hpc-coder 1.3B, 2=starcoder2 3B)")
    ap.add_argument("--skip-parity", action="store_true")
    ap.add_argument("--preset", default="seed-random", help="seed-random on the GPU; tiny for a CPU smoke run")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--skip-deberta", action="store_true")
    ap.add_argument("--skip-compile", action="store_true", help="leave out MOT_COMPILE=1 (minutes of compilation)")
    args = ap.parse_args(argv)
    global DEVICE, PRESET
    DEVICE, PRESET = args.device, args.preset
    active = [int(x) for x in args.active.split(",")]
    import transformers

    results = {
        "card": torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", "date": datetime.date.today().isoformat(), "torch": torch.__version__,
        "transformers": transformers.__version__, "active": active, "new_tokens": args.new_tokens,
    }
    if not args.skip_parity:
        parity(results, active, 32)
    seed_router = None
    if args.skip_deberta:
        results["routing_deberta_large_ms"] = None
    else:
        with torch.no_grad():
            seed_router = bench_deberta_routing(results)
    bench_generation(results, active, args.new_tokens, args.batch, seed_router, compiled=not args.skip_compile)
    Path(args.out).write_text(json.dumps(results, indent=2))

    rows = results["rows"]
    base, fast = rows["hf_generate_default"], rows["ours_fast"]
    print(f"\n{results['card']}, torch {results['torch']}, transformers {results['transformers']}, {results['date']}")
    print(f"prompt {results['prompt_tokens']} tokens, {args.new_tokens} new tokens, bf16, active experts {active}\n")
    print("| path | tok/s | x HF generate() | x our fast mode |")
    print("|---|---:|---:|---:|")
    for name, v in rows.items():
        print(f"| {name} | {v:.1f} | {v / base:.2f} | {v / fast:.2f} |")
    compiled = "ours_full_mot_compiled" in rows
    for key, what in (("original_no_cache_full_mot", "lean"), ("original_no_cache_faithful", "faithful")):
        orig = rows[key]
        print(f"\nfull MoT vs the original no-cache approach ({what}: {orig:.1f} tok/s): {rows['ours_full_mot'] / orig:.1f}x"
              + (f" (compiled: {rows['ours_full_mot_compiled'] / orig:.1f}x)" if compiled else ""))
    print(f"every substitution vs none (graphs): fast {fast / rows['ours_fast_graphs_plain']:.2f}x, "
          f"full {rows['ours_full_mot'] / rows['ours_full_mot_graphs_plain']:.2f}x")
    if compiled:
        print(f"compile warm-up (first generation) fast {results['detail']['fast_compiled']['warm_up_s']:.0f} s, "
              f"full {results['detail']['full_compiled']['warm_up_s']:.0f} s")
    print(f"full MoT vs our fast mode: {rows['ours_full_mot'] / fast:.2f}x")
    ladder = results["detail"]["ladder"]
    print("first token (routing + prefill) ms, fast / full: " + ", ".join(
        f"{name} {1e3 * r['fast']['first_token_s']:.1f} / {1e3 * r['full']['first_token_s']:.1f}" for name, r in ladder.items()))
    print(f"batch {args.batch} (fast) vs batch 1: {rows[f'ours_fast_batch{args.batch}_total'] / fast:.1f}x; "
          f"(full) {rows[f'ours_full_batch{args.batch}_total'] / rows['ours_full_mot']:.1f}x")
    print(f"routing p50/p95 ms: tiny encoder {results['routing_tiny_encoder_ms']}, deberta-v3-large shape "
          f"{results['routing_deberta_large_ms']} (eager: {results.get('routing_deberta_large_eager_ms')}; "
          f"graphs: {results.get('routing_graphs')})")
    print(f"peak inference {results['peak_inference_gib']:.1f} GiB; train step {results['train_step_s']*1e3:.0f} ms for {results['train_step_tokens']} tokens "
          f"({results['train_step_tokens']/results['train_step_s']:.0f} tok/s), peak {results['train_peak_gib']:.1f} GiB; 32-token full-MoT generation {results['full_mot_32_tokens_s']:.2f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

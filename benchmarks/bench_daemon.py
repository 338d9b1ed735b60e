"""Daemon benchmark: tokens/s and p50/p95 latency at 1, 4 and 16 concurrent clients, through the real socket.

    python benchmarks/bench_daemon.py                                   # tiny preset on CPU
    python benchmarks/bench_daemon.py --preset seed-random --device cuda --out bench.json

It starts a real daemon subprocess (`python -m daemon serve`, its own runtime dir), waits until it is ready,
warms it up, then for each concurrency level runs that many clients in a closed loop (each its own DaemonClient
and connection; a client sends its next request when the previous one ends) for --duration-s seconds, after one
unmeasured round at that concurrency (--warmup-rounds). Every
request generates exactly --max-new-tokens tokens (ignore_eos) so that levels are comparable, and streams its
partials like the language server does. Reported per level: generated tokens/s over the level's wall time,
request latency p50/p95, time to first streamed token p50, mean tokens per decoding step (how well requests were
batched), and which experts were primary. The table ends with each level's tokens/s relative to 1 client.

Pass --endpoint to measure an already running daemon instead of starting one.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from daemon.client import DaemonClient  # noqa: E402
from daemon.protocol import to_builtins  # noqa: E402

# Varied C/C++ functions: routing is per source, so a mix exercises several primaries (cohorts) as real use does.
SOURCES = [
    "void vector_add(const float* a, const float* b, float* c, int n) { for (int i = 0; i < n; ++i) c[i] = a[i] + b[i]; }",
    "double dot(const double* x, const double* y, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i] * y[i]; return s; }",
    "void relu(float* x, int n) { for (int i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0; }",
    "void saxpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + y[i]; }",
    "void matmul(const float* A, const float* B, float* C, int n) { for (int i = 0; i < n; i++) for (int j = 0; j < n; j++) { float s = 0; for (int k = 0; k < n; k++) s += A[i*n+k] * B[k*n+j]; C[i*n+j] = s; } }",
    "void transpose(const float* a, float* t, int r, int c) { for (int i = 0; i < r; ++i) for (int j = 0; j < c; ++j) t[j*r+i] = a[i*c+j]; }",
    "int count_if_positive(const int* v, int n) { int c = 0; for (int i = 0; i < n; ++i) if (v[i] > 0) ++c; return c; }",
    "void stencil3(const float* in, float* out, int n) { for (int i = 1; i < n - 1; i++) out[i] = (in[i-1] + in[i] + in[i+1]) / 3.0f; }",
    "void histogram(const unsigned char* img, int* bins, int n) { for (int i = 0; i < n; ++i) bins[img[i]]++; }",
    "float max_reduce(const float* x, int n) { float m = x[0]; for (int i = 1; i < n; i++) m = x[i] > m ? x[i] : m; return m; }",
    "void scale(float* x, float a, int n) { for (int i = 0; i < n; i++) x[i] *= a; }",
    "void softmax(float* x, int n) { float m = x[0]; for (int i = 1; i < n; i++) if (x[i] > m) m = x[i]; float s = 0; for (int i = 0; i < n; i++) { x[i] = expf(x[i] - m); s += x[i]; } for (int i = 0; i < n; i++) x[i] /= s; }",
    "void prefix_sum(const int* in, int* out, int n) { int s = 0; for (int i = 0; i < n; ++i) { s += in[i]; out[i] = s; } }",
    "void gray(const unsigned char* rgb, unsigned char* g, int n) { for (int i = 0; i < n; i++) g[i] = (unsigned char)(0.299f*rgb[3*i] + 0.587f*rgb[3*i+1] + 0.114f*rgb[3*i+2]); }",
    "void axpby(int n, double a, const double* x, double b, double* y) { for (int i = 0; i < n; ++i) y[i] = a * x[i] + b * y[i]; }",
    "void clamp(float* x, float lo, float hi, int n) { for (int i = 0; i < n; ++i) x[i] = x[i] < lo ? lo : (x[i] > hi ? hi : x[i]); }",
]


def percentile(values: list[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in [0, 100]) of a non-empty list; None for an empty one."""
    if not values:
        return None
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def run_level(endpoint: str, concurrency: int, args) -> dict:
    records: list[dict] = []
    errors: list[str] = []
    lock = threading.Lock()
    start = threading.Barrier(concurrency + 1)
    stop_at = [0.0]

    def client_loop(worker: int) -> None:
        with DaemonClient(endpoint, timeout_s=args.client_timeout_s) as client:
            client.status()  # connected before the clock starts
            for w in range(args.warmup_rounds):  # this level's batch shapes run once before the clock starts
                client.translate(SOURCES[(worker * 7 + w) % len(SOURCES)], max_new_tokens=args.max_new_tokens,
                                 ignore_eos=True, mode=args.mode)
            start.wait()
            i = 0
            while time.monotonic() < stop_at[0]:
                source = SOURCES[(worker * 7 + i) % len(SOURCES)]
                i += 1
                first = [None]
                t0 = time.monotonic()

                def on_partial(part, first=first):
                    if first[0] is None:
                        first[0] = time.monotonic()

                try:
                    r = client.translate(source, max_new_tokens=args.max_new_tokens, ignore_eos=True, mode=args.mode,
                                         on_partial=on_partial)
                except Exception as e:  # noqa: BLE001 - counted and reported; a benchmark must not hide failures
                    with lock:
                        errors.append(f"{type(e).__name__}: {e}")
                    continue
                t1 = time.monotonic()
                with lock:
                    records.append({
                        "latency_s": t1 - t0, "ttft_s": (first[0] - t0) if first[0] else None,
                        "tokens": r.num_generated_tokens, "primary": r.primary_expert_name, "t_end": t1,
                    })

    with DaemonClient(endpoint, timeout_s=args.client_timeout_s) as probe:
        steps_before = probe.status().steps
        threads = [threading.Thread(target=client_loop, args=(w,), daemon=True) for w in range(concurrency)]
        for t in threads:
            t.start()
        stop_at[0] = time.monotonic() + 3600  # set properly once everybody is connected
        start.wait()
        t_start = time.monotonic()
        stop_at[0] = t_start + args.duration_s
        for t in threads:
            t.join()
        wall = time.monotonic() - t_start
        steps = probe.status().steps - steps_before
    tokens = sum(r["tokens"] for r in records)
    latencies = [r["latency_s"] for r in records]
    ttfts = [r["ttft_s"] for r in records if r["ttft_s"] is not None]
    primaries: dict[str, int] = {}
    for r in records:
        primaries[r["primary"]] = primaries.get(r["primary"], 0) + 1
    return {
        "concurrency": concurrency, "requests": len(records), "errors": len(errors), "error_samples": errors[:5],
        "tokens": tokens, "wall_s": wall, "tokens_per_s": tokens / wall if wall > 0 else 0.0,
        "latency_p50_s": percentile(latencies, 50), "latency_p95_s": percentile(latencies, 95),
        "latency_mean_s": sum(latencies) / len(latencies) if latencies else None,
        "ttft_p50_s": percentile(ttfts, 50), "ttft_p95_s": percentile(ttfts, 95),
        "engine_steps": steps, "mean_tokens_per_step": tokens / steps if steps else None,
        "primary_counts": primaries, "latencies_s": latencies,
    }


def environment(status) -> dict:
    info = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu_count": os.cpu_count()}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    info["daemon_device"] = status.device
    info["daemon_dtype"] = status.dtype
    return info


def print_table(levels: list[dict], header: str) -> None:
    base = next((lv["tokens_per_s"] for lv in levels if lv["concurrency"] == 1), None)
    print(header)
    cols = f"{'clients':>7} {'requests':>8} {'errors':>6} {'tokens':>7} {'wall s':>7} {'tok/s':>9} {'p50 s':>8} {'p95 s':>8} {'ttft p50':>9} {'tok/step':>8} {'vs 1 client':>11}"
    print(cols)
    print("-" * len(cols))
    for lv in levels:
        ratio = f"{lv['tokens_per_s'] / base:10.2f}x" if base else f"{'-':>11}"
        fmt = lambda v, w, p=3: f"{v:{w}.{p}f}" if v is not None else f"{'-':>{w}}"  # noqa: E731
        print(f"{lv['concurrency']:>7} {lv['requests']:>8} {lv['errors']:>6} {lv['tokens']:>7} {lv['wall_s']:7.1f} "
              f"{lv['tokens_per_s']:9.1f} {fmt(lv['latency_p50_s'], 8)} {fmt(lv['latency_p95_s'], 8)} "
              f"{fmt(lv['ttft_p50_s'], 9)} {fmt(lv['mean_tokens_per_step'], 8, 2)} {ratio}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default=None)
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--endpoint", default=None, help="benchmark a running daemon instead of starting one")
    p.add_argument("--concurrency", default="1,4,16", help="comma-separated client counts (default 1,4,16)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--mode", choices=("fast", "full"), default="fast")
    p.add_argument("--duration-s", type=float, default=20.0, help="closed-loop time per level (requests started "
                   "before it ends are finished and counted)")
    p.add_argument("--warmup-requests", type=int, default=2, help="sequential requests after the daemon is ready")
    p.add_argument("--warmup-rounds", type=int, default=1, help="unmeasured requests per client at the start of each "
                   "level (first use of a batch shape can cost seconds on a GPU: allocator growth, kernel selection, "
                   "compilation)")
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--client-timeout-s", type=float, default=300.0)
    p.add_argument("--ready-timeout-s", type=float, default=1200.0)
    p.add_argument("--out", default=None, help="write all numbers (per-request latencies included) to this JSON file")
    p.add_argument("--daemon-log", default=None, help="copy the started daemon's log here at the end")
    args = p.parse_args(argv)
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if not levels or min(levels) < 1:
        p.error(f"--concurrency needs positive integers, got {args.concurrency!r}")

    proc = None
    tmp = None
    endpoint = args.endpoint
    if endpoint is None:
        from daemon.testing import spawn_daemon

        tmp = tempfile.TemporaryDirectory(prefix="motb-")
        extra = ["--max-batch-size", str(args.max_batch_size), "--max-queue", str(max(64, 2 * max(levels)))]
        if args.dtype:
            extra += ["--dtype", args.dtype]
        if args.checkpoint:
            extra += ["--checkpoint", args.checkpoint]
        proc = spawn_daemon(Path(tmp.name), preset=args.preset, device=args.device, args=extra)
        endpoint = proc.endpoint
        print(f"starting a daemon (preset {args.preset}, device {args.device}); its log: {proc.log_path}", file=sys.stderr)
    try:
        t0 = time.monotonic()
        status = proc.wait_ready(args.ready_timeout_s) if proc else DaemonClient(endpoint).wait_until_ready(args.ready_timeout_s)
        load_s = time.monotonic() - t0
        print(f"daemon ready in {load_s:.1f} s: preset {status.preset}, experts {', '.join(status.expert_names)}, "
              f"device {status.device} ({status.dtype}), batch {status.max_batch_size}", file=sys.stderr)
        with DaemonClient(endpoint, timeout_s=args.client_timeout_s) as c:  # warm-up: kernels, allocator, caches
            for i in range(args.warmup_requests):
                c.translate(SOURCES[i % len(SOURCES)], max_new_tokens=args.max_new_tokens, ignore_eos=True, mode=args.mode)
        results = []
        for n in levels:
            print(f"running {n} concurrent client(s) for {args.duration_s:g} s...", file=sys.stderr)
            results.append(run_level(endpoint, n, args))
        with DaemonClient(endpoint) as c:
            final_status = c.status()
    except BaseException:
        if proc is not None:
            print(f"the benchmark failed; the daemon's log ends with:\n{proc.log_tail(60)}", file=sys.stderr)
        raise
    finally:
        if proc is not None:
            proc.terminate()
            if args.daemon_log:
                import shutil

                shutil.copyfile(proc.log_path, args.daemon_log)
        if tmp is not None:
            tmp.cleanup()
    base = next((lv["tokens_per_s"] for lv in results if lv["concurrency"] == 1), None)
    report = {
        "benchmark": "daemon", "preset": status.preset, "device": status.device, "dtype": status.dtype,
        "checkpoint": status.checkpoint, "mode": args.mode, "max_new_tokens": args.max_new_tokens,
        "duration_s": args.duration_s, "max_batch_size": status.max_batch_size, "model_load_s": load_s,
        "environment": environment(status), "daemon_status_after": to_builtins(final_status), "levels": results,
        "ratio_vs_1_client": {str(lv["concurrency"]): (lv["tokens_per_s"] / base if base else None) for lv in results},
    }
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
        print(f"wrote {args.out}", file=sys.stderr)
    print_table(results, f"daemon benchmark: preset {status.preset} on {status.device} ({status.dtype}), mode {args.mode}, "
                         f"{args.max_new_tokens} new tokens per request (EOS ignored), {args.duration_s:g} s per level")
    failed = sum(lv["errors"] for lv in results)
    if failed:
        print(f"{failed} requests failed; samples: {[lv['error_samples'] for lv in results if lv['errors']]}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

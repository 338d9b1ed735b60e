#!/usr/bin/env python3
"""GPU check of the functional-correctness harness (kernelcheck.functional) on BabelTower exec_dev.jsonl.

Run on a machine with an NVIDIA GPU and nvcc (standard library + this repository only: the harness modules of
``kernelcheck`` import nothing else)::

    python benchmarks/functional_gpu.py ../shared/data/babeltower/exec_dev.jsonl [--output_dir DIR]
        [--workers N] [--timeout S] [--broken_timeout S] [--limit N] [--skip_broken] [--min_pass_rate 0.95]

1. Reference kernels: ``--candidates reference`` over every case (the data set's own ``cuda_code``); prints
   the pass rate and every case that does not pass with its reason (message + the start of the diff).  The
   harness is meant to pass >= 95% of them.  The C++ references are checked with g++ in the same run.
2. Broken-candidate suite: deliberately broken versions of a few reference kernels (the C code given as
   CUDA, a syntax error, an empty body, an off-by-one thread index, a missing bounds check on a launch that
   overshoots, an infinite loop); each must get its expected category (compile_error / wrong_output / timeout).

Writes DIR/reference/functional_results.json, DIR/reference/functional_cases.jsonl and DIR/broken_suite.json.
Exit status: 0 when the pass rate reaches --min_pass_rate and every broken candidate got its category, 1
otherwise, 2 when there is no GPU or no nvcc (nothing could be run).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from anywhere: the repository's packages come first

from kernelcheck.cases import load_exec_cases  # noqa: E402  (after the sys.path line above)
from kernelcheck.cli import write_outputs  # noqa: E402
from kernelcheck.functional import BROKEN_VARIANTS, evaluate_functional, make_broken_candidate  # noqa: E402
from kernelcheck.toolchain import RUN_STAGE_RAN, detect_toolchain  # noqa: E402

# (case id, broken variant) pairs; the expected outcome of each variant is BROKEN_VARIANTS[variant].
# 150 (histogram, 16x16 blocks over a 1x5 image) is the case whose launch overshoots: without the bounds check
# the extra threads read past the image and add to the histogram.
BROKEN_SUITE = [
    ("109", "c_code_as_cuda"), ("110", "c_code_as_cuda"), ("150", "c_code_as_cuda"),
    ("109", "syntax_error"), ("110", "syntax_error"),
    ("109", "empty_body"), ("110", "empty_body"), ("150", "empty_body"),
    ("109", "off_by_one"), ("110", "off_by_one"), ("150", "off_by_one"),
    ("150", "missing_bounds_check"),
    ("109", "infinite_loop"), ("110", "infinite_loop"),
]


def first_lines(text: str, n: int = 8) -> str:
    lines = text.splitlines()
    more = f"\n      ... ({len(lines) - n} more lines)" if len(lines) > n else ""
    return "\n".join("      " + ln for ln in lines[:n]) + more


def run_reference(cases, args) -> tuple[float, dict]:
    print(f"== reference kernels: {len(cases)} cases ==", flush=True)
    started = time.monotonic()
    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if done == total or now - last[0] > 10:
            last[0] = now
            print(f"  [{done}/{total}] {now - started:.0f} s", file=sys.stderr, flush=True)

    report = evaluate_functional(cases, {c.id: [c.cuda_code] for c in cases}, timeout_s=args.timeout,
                                   workers=args.workers, progress=progress)
    out_dir = Path(args.output_dir) / "reference"
    write_outputs(report, out_dir)
    print(report.format_table())
    summary = report.summary()
    passes = summary["counts"]["pass"]
    rate = passes / max(1, len(report.results))
    print(f"\nreference kernels passing on the GPU: {passes}/{len(report.results)} = {rate:.1%} "
          f"(required >= {args.min_pass_rate:.0%})")
    with_error = summary["passes_with_cuda_error"]
    if with_error:
        strict = passes - len(with_error)
        print(f"  of which {len(with_error)} pass although their wrapper hit a CUDA error ({', '.join(with_error)}): "
              f"the data's own launch fails and consistent_outputs are the untouched arguments; counting those as "
              f"failures (--strict_cuda_errors): {strict}/{len(report.results)} = {strict / max(1, len(report.results)):.1%}")
    refs = {r.case_id: r for r in report.references}
    failing = [r for r in report.results if r.outcome != "pass"]
    if failing:
        print(f"\ncases that do not pass ({len(failing)}):")
    for r in failing:
        ref = refs.get(r.case_id)
        ref_note = f"; C++ reference: {ref.outcome}" if ref is not None else ""
        print(f"  - case {r.case_id}: {r.outcome} (test {r.failed_test}){ref_note}")
        if r.message:
            print(first_lines(r.message, 6))
        if r.diff:
            print(first_lines(r.diff, 8))
    no_launch = summary["cases_without_kernel_launch"]
    if no_launch:
        print(f"\nnote: the wrappers of cases {', '.join(no_launch)} launch no kernel (they compute on the CPU); "
              "their candidates are only compiled.")
    ref_summary = summary["cpp_reference"]
    if ref_summary.get("status") == "ran":
        print(f"C++ references reproducing consistent_outputs (g++): {ref_summary['reproduced']}/{ref_summary['checked']}"
              + (f"; not: {[d['id'] for d in ref_summary['not_reproduced']]}" if ref_summary["not_reproduced"] else ""))
    print(f"reference run: {time.monotonic() - started:.1f} s wall, wrote {out_dir}", flush=True)
    return rate, summary


def run_broken_suite(cases_by_id, args) -> tuple[bool, list[dict]]:
    print("\n== broken-candidate suite ==", flush=True)
    started = time.monotonic()
    batch, predictions, expected = [], {}, {}
    for cid, variant in BROKEN_SUITE:
        if cid not in cases_by_id:
            print(f"  (case {cid} not in the data: {variant} skipped)")
            continue
        code = make_broken_candidate(cases_by_id[cid], variant)
        if code is None:
            print(f"  (variant {variant} does not apply to case {cid})")
            continue
        key = f"{cid}:{variant}"
        batch.append(dataclasses.replace(cases_by_id[cid], id=key))
        predictions[key] = [code]
        expected[key] = BROKEN_VARIANTS[variant]
    report = evaluate_functional(batch, predictions, timeout_s=args.broken_timeout, workers=args.workers,
                                   check_reference=False)
    rows, all_ok = [], True
    print(f"  {'case:variant':<28}{'expected':<16}{'got':<16}")
    for r in report.results:
        ok = r.outcome == expected[r.case_id]
        all_ok &= ok
        rows.append({"case": r.case_id, "expected": expected[r.case_id], "outcome": r.outcome, "ok": ok,
                     "message": r.message[:500], "diff": r.diff[:1000]})
        print(f"  {r.case_id:<28}{expected[r.case_id]:<16}{r.outcome:<16}{'ok' if ok else 'MISMATCH'}")
        if not ok and r.message:
            print(first_lines(r.message, 4))
    print(f"broken suite: {sum(x['ok'] for x in rows)}/{len(rows)} as expected, {time.monotonic() - started:.1f} s",
          flush=True)
    return all_ok, rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("data", help="exec_dev.jsonl (BabelTower executable cases)")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", default="functional_gpu_out")
    p.add_argument("--workers", type=int, default=None, help="parallel builds (default: CPU count)")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per test run of a reference kernel")
    p.add_argument("--broken_timeout", "--broken-timeout", dest="broken_timeout", type=float, default=5.0,
                   help="seconds per test run in the broken suite (the infinite loops wait this long)")
    p.add_argument("--limit", type=int, default=None, help="only the first N cases (reference run)")
    p.add_argument("--skip_broken", "--skip-broken", dest="skip_broken", action="store_true")
    p.add_argument("--min_pass_rate", "--min-pass-rate", dest="min_pass_rate", type=float, default=0.95)
    args = p.parse_args(argv)

    tc = detect_toolchain()
    print(f"toolchain: nvcc={tc.nvcc} g++={tc.gxx} gpu={tc.gpu} ({tc.gpu_info}) arch={tc.arch}")
    if tc.run_stage != RUN_STAGE_RAN:
        print(f"error: run stage {tc.run_stage}: this benchmark needs nvcc and a GPU", file=sys.stderr)
        return 2
    cases = load_exec_cases(args.data)
    cases_by_id = {c.id: c for c in cases}
    if args.limit is not None:
        cases = cases[: args.limit]
    Path(args.output_dir).mkdir(parents=True, exist_ok=True)

    rate, summary = run_reference(cases, args)
    broken_ok, rows = True, []
    if not args.skip_broken:
        broken_ok, rows = run_broken_suite(cases_by_id, args)
        (Path(args.output_dir) / "broken_suite.json").write_text(json.dumps(rows, indent=2) + "\n")

    ok = rate >= args.min_pass_rate and broken_ok
    print(f"\nRESULT: reference pass rate {rate:.1%} ({'>=' if rate >= args.min_pass_rate else '<'} "
          f"{args.min_pass_rate:.0%}); broken suite {'all as expected' if broken_ok else 'has mismatches'} "
          f"-> {'OK' if ok else 'FAIL'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

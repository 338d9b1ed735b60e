"""The ``functional`` command: check predictions (or the data's own kernels) on BabelTower executable data.

``python -m kernelcheck functional``; also ``mot-eval functional`` and ``python -m train functional``::

    python -m kernelcheck functional --data ../shared/data/babeltower/exec_dev.jsonl \\
        (--predictions preds.jsonl | --candidates reference) --output_dir out/ \\
        [--limit N] [--samples K] [--timeout S] [--workers N] [--compile_timeout S] \\
        [--max_output_bytes B] [--skip_cpp_reference] [--strict_cuda_errors] [--nvcc PATH] [--quiet] \\
        [--verify-backend auto|gpu|cpu|off] [--verify-seeds N]

``--predictions`` is JSONL, one ``{"id": ..., "prediction": "<cuda code>"}`` per line (the code field may
also be ``cuda`` or ``generated_cuda``; several lines with one id are several samples; markdown fences are
stripped).  ``--candidates reference`` evaluates the data set's own ``cuda_code``.  Writes
``out/functional_results.json`` (summary) and ``out/functional_cases.jsonl`` (one line per case/sample) and
prints a summary table.  Exit status 0 unless the arguments or the data are unusable.

Besides the data's own tests, every sample is checked on generated inputs against the case's ``cpp_code``
(`kernelcheck.generated`, backend ``--verify-backend``, default auto: the GPU where one runs, else the CPU), and
pass@k is reported side by side: ``data``, ``generated`` and ``data+generated``, with the vacuous cases (left out
of every column) and the not-verifiable counts (`kernelcheck.side_by_side`).  Without nvcc the data's tests cannot
run (their columns are n/a, and say why) while the generated checks still run on the CPU.  ``--verify-backend off``
is the harness alone, as before.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .cases import REQUIRED_FIELDS, has_test_cases, load_exec_cases, load_predictions
from .generated import DEFAULT_VERIFY_BACKEND, VERIFY_BACKENDS
from .reports import FunctionalReport
from .sandbox import DEFAULT_COMPILE_TIMEOUT_S, DEFAULT_MAX_OUTPUT_BYTES, DEFAULT_TIMEOUT_S
from .side_by_side import SideBySideReport, run_side_by_side
from .toolchain import detect_toolchain, nvcc_missing_message

__all__ = ["COMMANDS", "build_parser", "write_outputs", "functional_main", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The flags of the ``functional`` command."""
    p = argparse.ArgumentParser(
        prog="python -m kernelcheck functional",
        description="Functional correctness of C->CUDA translations: build with nvcc, run on the GPU, compare "
                    "with the C++ reference outputs (BabelTower executable format); and check every sample against "
                    "the case's C code on generated inputs (pass@k side by side: data, generated, data+generated).")
    p.add_argument("--data", required=True, help="BabelTower executable JSONL (e.g. exec_dev.jsonl)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--predictions", help="JSONL of {id, prediction|cuda|generated_cuda}; repeated ids = samples")
    src.add_argument("--candidates", choices=["reference"], help="'reference': evaluate the data's own cuda_code")
    p.add_argument("--output_dir", "--output-dir", dest="output_dir", required=True)
    p.add_argument("--limit", type=int, default=None, help="only the first N cases")
    p.add_argument("--samples", type=int, default=None, help="at most K samples per case (default: all)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="seconds per test run (default 10)")
    p.add_argument("--compile_timeout", "--compile-timeout", dest="compile_timeout", type=float,
                   default=DEFAULT_COMPILE_TIMEOUT_S, help="seconds per build (default 180)")
    p.add_argument("--workers", type=int, default=None, help="parallel builds (default: CPU count)")
    p.add_argument("--max_output_bytes", "--max-output-bytes", dest="max_output_bytes", type=int,
                   default=DEFAULT_MAX_OUTPUT_BYTES, help="stdout bytes read per test run (default 1 MiB)")
    p.add_argument("--skip_cpp_reference", "--skip-cpp-reference", dest="skip_cpp_reference", action="store_true",
                   help="do not check the C++ references with g++")
    p.add_argument("--strict_cuda_errors", "--strict-cuda-errors", dest="strict_cuda_errors", action="store_true",
                   help="a CUDA error after a call is a runtime_error even when the printed output matches")
    p.add_argument("--nvcc", default=None, help="nvcc to use (default: detected)")
    p.add_argument("--verify_backend", "--verify-backend", dest="verify_backend", choices=VERIFY_BACKENDS,
                   default=DEFAULT_VERIFY_BACKEND,
                   help="where the generated-input checks run: auto (the GPU where one runs, else the CPU: g++ "
                        "only), gpu, cpu, or off (the data's tests alone); default " + DEFAULT_VERIFY_BACKEND)
    p.add_argument("--verify_seeds", "--verify-seeds", dest="verify_seeds", type=int, default=None,
                   help="random seeds per size combination of the generated inputs (default: kernelcheck.verify's)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def write_outputs(report: FunctionalReport | SideBySideReport, output_dir: Path) -> tuple[Path, Path]:
    """Write ``functional_results.json`` (the summary) and ``functional_cases.jsonl`` (one line per sample; with
    a `SideBySideReport`, each line also has its generated check and its pass per column)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = output_dir / "functional_results.json"
    cases_path = output_dir / "functional_cases.jsonl"
    summary_path.write_text(json.dumps(report.summary(), indent=2) + "\n", encoding="utf-8")
    functional = report.functional if isinstance(report, SideBySideReport) else report
    lines = report.case_lines() if isinstance(report, SideBySideReport) else [r.to_dict() for r in report.results]
    refs = {r.case_id: r for r in functional.references}
    with open(cases_path, "w", encoding="utf-8") as fh:
        for line in lines:
            ref = refs.get(line["case_id"])
            if ref is not None and ref.outcome != "pass":
                line["cpp_reference_detail"] = {"message": ref.message, "diff": ref.diff}
            fh.write(json.dumps(line) + "\n")
    return summary_path, cases_path


def functional_main(argv: list[str] | None = None) -> int:
    """The ``functional`` command; 2 when the data is unusable (a bad flag exits through argparse)."""
    args = build_parser().parse_args(argv)
    data = Path(args.data)
    if not data.is_file():
        print(f"error: data file {data} not found", file=sys.stderr)
        return 2
    if not has_test_cases(data):
        print(f"error: {data} has no executable test fields {list(REQUIRED_FIELDS)}", file=sys.stderr)
        return 2
    all_cases = load_exec_cases(data)
    cases = all_cases[: max(0, args.limit)] if args.limit is not None else all_cases
    if args.candidates == "reference":
        predictions = {c.id: [c.cuda_code] for c in cases}
    else:
        predictions = load_predictions(args.predictions)
        known = {c.id for c in all_cases}
        unknown = sorted(set(predictions) - known)
        if unknown:
            print(f"warning: {len(unknown)} prediction ids are not in {data.name}: {unknown[:10]}", file=sys.stderr)
    tc = detect_toolchain(nvcc=args.nvcc)
    if not tc.nvcc:
        why = f"nvcc {args.nvcc!r} is not an executable file" if args.nvcc else nvcc_missing_message()
        print(f"note: {why}: CUDA candidates are 'unavailable' for the data's tests", file=sys.stderr)
    elif not tc.gpu:
        print(f"note: no GPU ({tc.gpu_info}): candidates are built but not run on the data's tests ('skipped', "
              "never 'pass')", file=sys.stderr)
    if args.verify_backend != "off" and not tc.gpu:
        print(f"note: generated-input checks: --verify-backend {args.verify_backend} (the CPU backend where there "
              "is no GPU)", file=sys.stderr)

    last = [0.0]

    def progress_of(what: str):
        def progress(done: int, total: int) -> None:
            now = time.monotonic()
            if not args.quiet and (done == total or now - last[0] > 5):
                last[0] = now
                print(f"  [{done}/{total}] {what} done", file=sys.stderr, flush=True)
        return progress

    report = run_side_by_side(cases, predictions, verify_backend=args.verify_backend, toolchain=tc,
                              workers=args.workers, samples=args.samples, verify_seeds=args.verify_seeds,
                              progress=progress_of("builds/checks"),
                              verify_progress=progress_of("cases checked on generated inputs"),
                              timeout_s=args.timeout, compile_timeout_s=args.compile_timeout,
                              max_output_bytes=args.max_output_bytes, check_reference=not args.skip_cpp_reference,
                              strict_cuda_errors=args.strict_cuda_errors)
    summary_path, cases_path = write_outputs(report, Path(args.output_dir))
    print(report.format_table())
    print(f"wrote {summary_path} and {cases_path}")
    return 0


COMMANDS = {"functional": functional_main}


def main(argv: list[str] | None = None) -> int:
    """``python -m kernelcheck COMMAND ...``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        usage = ("usage: python -m kernelcheck functional [flags]   (--help for the flags)\n"
                 "  functional  functional correctness of predictions on executable BabelTower data")
        asked = bool(argv) and argv[0] in ("-h", "--help")
        print(usage, file=sys.stdout if asked else sys.stderr)
        if argv and not asked:
            print(f"error: unknown command {argv[0]!r}; known: {sorted(COMMANDS)}", file=sys.stderr)
        return 0 if asked else 2
    return COMMANDS[argv[0]](argv[1:])

"""Functional correctness of C/C++ -> CUDA translations: build, run and compare (BabelTower executable format).

Every case (`kernelcheck.cases.ExecCase`) is checked in two independent halves:

* **C++ reference** (g++, runs on any CPU, `check_cpp_reference`): ``cpp_code`` + the test statements of
  ``consistent_cpp_inputs``.  This checks the data/harness itself: the reference must reproduce
  ``consistent_outputs``.
* **CUDA candidate** (nvcc, needs a GPU to run, `evaluate_candidate`): the candidate kernel + the case's
  ``cuda_wrapper`` + the test statements of ``consistent_cuda_inputs`` (`kernelcheck.programs`).

One binary is built per case and every test runs in its own process (`run_tests`); stdout is compared with
``consistent_outputs`` whitespace-insensitively (`normalize_output`: ``" ".join(text.split())``).  Outcomes,
run stages and pass@k: `kernelcheck.reports`.  nvcc, g++ and the GPU: `kernelcheck.toolchain` (without a GPU the
run stage is ``skipped (no GPU)``, without nvcc ``unavailable (no nvcc)``).  Untrusted code: every build and run
happens in a fresh temporary directory through `kernelcheck.sandbox` (time, memory and output limits, a
scrubbed environment, the process group killed at the time limit).

nvcc flags (`nvcc_command`): ``-std=c++17 --expt-relaxed-constexpr -fmad=false`` (+ ``-arch=sm_XY`` of the
detected GPU when nvcc supports it).  ``-fmad=false`` stops nvcc from contracting ``a*b+c`` into FMAs, whose
different rounding can make exact comparisons with the CPU-generated ``consistent_outputs`` fail for correct
kernels.  g++ flags (`GXX_FLAGS`): ``-std=c++17 -O0`` with the prelude precompiled once per process
(`PreludePCH`).

Measured on an H200 (nvcc 13.0, sm_90): 121/122 reference kernels pass (about 93 s wall with 16 workers); 4 of
them (115, 126, 159, 186) pass with a CUDA error after the call, because the data's own wrapper launch fails and
the expected outputs are the untouched arguments (117/122 under ``--strict_cuda_errors``).  The wrappers of
cases 132 and 224 launch no kernel at all: there a candidate is only compiled (listed in
``cases_without_kernel_launch``).  Identical samples of a case are built once.

Library::

    from kernelcheck.cases import load_exec_cases, has_test_cases
    from kernelcheck.functional import evaluate_functional
    cases = load_exec_cases("../shared/data/babeltower/exec_dev.jsonl")
    report = evaluate_functional(cases, {c.id: [c.cuda_code] for c in cases}, timeout_s=10, workers=4)
    report.summary()        # dict: counts, compile_rate, pass@k, run_stage, C++ reference check
    report.results          # list[SampleResult], one per (case, sample)

Command line: `kernelcheck.cli` (``python -m kernelcheck functional``, ``mot-eval functional``).
"""

from __future__ import annotations

import atexit
import dataclasses
import difflib
import hashlib
import os
import re
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping, Sequence

from .cases import ExecCase
from .programs import PRELUDE, build_cpp_program, build_cuda_program
from .sourcetext import kernel_span, match_close, strip_code_fences
from .reports import FunctionalReport, ReferenceCheck, SampleResult, TestRun
from .sandbox import (
    DEFAULT_COMPILE_TIMEOUT_S,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_S,
    clip_text,
    compile_program,
    compiler_rlimits,
    decode_output,
    describe_exit,
    run_rlimits,
    run_sandboxed,
    scrubbed_env,
)
from .toolchain import Toolchain, detect_toolchain, nvcc_missing_message

__all__ = [
    "BROKEN_VARIANTS",
    "GXX_FLAGS",
    "normalize_output",
    "output_diff",
    "run_tests",
    "summarize_runs",
    "PreludePCH",
    "check_cpp_reference",
    "check_cpp_references",
    "nvcc_command",
    "evaluate_candidate",
    "evaluate_functional",
    "sample_jobs",
    "make_broken_candidate",
]

GXX_FLAGS = ("-std=c++17", "-O0", "-w")


# --------------------------------------------------------------------------------------------------------------
# Comparing outputs
# --------------------------------------------------------------------------------------------------------------
def normalize_output(text: str) -> str:
    """Whitespace-insensitive form used for comparisons."""
    return " ".join(text.split())


def output_diff(expected: str, actual: str) -> str:
    """A unified diff (expected -> actual) of the non-blank lines, whitespace-normalized, clipped."""
    exp_lines = [normalize_output(line) for line in expected.splitlines() if line.strip()]
    act_lines = [normalize_output(line) for line in actual.splitlines() if line.strip()]
    diff = difflib.unified_diff(exp_lines, act_lines, "expected", "actual", lineterm="")
    return clip_text("\n".join(diff))


# --------------------------------------------------------------------------------------------------------------
# Running tests
# --------------------------------------------------------------------------------------------------------------
_CUDA_ERROR_RE = re.compile(r"MOT_CUDA_ERROR: ([^\n]*)")


def run_tests(binary_dir: str, inputs_count: int, expected: Sequence[str], *, timeout_s: float,
              max_output_bytes: int, cuda: bool, gate: threading.Semaphore | None,
              strict_cuda_errors: bool = False) -> list[TestRun]:
    """Run test 0..n-1 of ./prog, one process each, stopping at the first failing test.

    CUDA programs check ``cudaDeviceSynchronize``/``cudaGetLastError`` after the call.  A pending CUDA error
    makes the test a ``runtime_error`` when its output is wrong (or always, with ``strict_cuda_errors``); when
    the printed output still matches, the test passes and the error is kept in ``cuda_error``: a few data-set
    wrappers fail their own launch (0 blocks, 16x16x16 threads, host pointers given to the kernel) and their
    ``consistent_outputs`` are exactly the untouched arguments.
    """
    runs: list[TestRun] = []
    env = scrubbed_env(binary_dir, cuda=cuda)
    for i in range(inputs_count):
        if gate is not None:
            gate.acquire()
        try:
            proc = run_sandboxed(["./prog", str(i)], cwd=binary_dir, env=env, timeout_s=timeout_s,
                                 rlimits=run_rlimits(timeout_s, cuda=cuda), max_output_bytes=max_output_bytes,
                                 kill_on_overflow=True)
        finally:
            if gate is not None:
                gate.release()
        out, err = decode_output(proc.stdout), decode_output(proc.stderr)
        run = TestRun(index=i, status="pass", seconds=proc.seconds, stdout=clip_text(out), stderr=clip_text(err))
        cuda_error = _CUDA_ERROR_RE.search(err) if (cuda and proc.returncode == 3) else None
        if cuda_error:
            run.cuda_error = cuda_error.group(1).strip()
        if proc.timed_out:
            run.status, run.message = "timeout", f"test {i} ran past the {timeout_s:g} s limit"
        elif cuda_error and not proc.output_overflow:
            matches = i < len(expected) and normalize_output(out) == normalize_output(expected[i])
            if strict_cuda_errors or not matches:
                run.status = "runtime_error"
                run.message = f"test {i}: CUDA error after the call: {run.cuda_error}" + (
                    "" if matches else "; output differs from consistent_outputs")
                run.diff = "" if matches or i >= len(expected) else output_diff(expected[i], out)
        elif proc.returncode != 0 or proc.output_overflow:
            run.status = "runtime_error"
            detail = f": {clip_text(err.strip(), 600)}" if err.strip() else ""
            run.message = f"test {i}: {describe_exit(proc)}{detail}"
        elif i >= len(expected):
            run.status, run.message = "wrong_output", f"test {i} has no expected output"
        elif normalize_output(out) != normalize_output(expected[i]):
            run.status = "wrong_output"
            run.message = f"test {i}: output differs from consistent_outputs"
            run.diff = output_diff(expected[i], out)
        runs.append(run)
        if run.status != "pass":
            break
    return runs


def summarize_runs(runs: list[TestRun], total: int) -> tuple[str, str, str, int | None, int, float]:
    """(outcome, message, diff, failed test index or None, tests passed, run seconds) of `run_tests`' runs."""
    passed = sum(r.status == "pass" for r in runs)
    seconds = sum(r.seconds for r in runs)
    failed = next((r for r in runs if r.status != "pass"), None)
    if failed is None:
        errors = sorted({r.cuda_error for r in runs if r.cuda_error})
        note = f" (with a CUDA error after the call: {'; '.join(errors)})" if errors else ""
        return "pass", f"{passed}/{total} tests passed{note}", "", None, passed, seconds
    return failed.status, failed.message, failed.diff, failed.index, passed, seconds


# --------------------------------------------------------------------------------------------------------------
# Building and checking
# --------------------------------------------------------------------------------------------------------------
class PreludePCH:
    """The prelude precompiled once per process for g++ (saves ~1.5 s of header parsing per C++ build).

    Lives in a private temporary directory (made read-only) removed at exit; ``flags()`` is empty when the
    compiler cannot build it, and the prelude is then compiled inline.
    """

    _lock = threading.Lock()
    _built: dict[tuple, tuple[str, ...]] = {}
    _dirs: list[tempfile.TemporaryDirectory] = []

    @classmethod
    def flags(cls, gxx: str, compile_timeout_s: float, *, header_text: str = PRELUDE,
              compile_flags: Sequence[str] = GXX_FLAGS) -> tuple[str, ...]:
        """``-include HEADER`` of ``header_text`` precompiled with ``compile_flags`` (the flags the program is
        built with must be the same), or () when it could not be built."""
        key = (gxx, tuple(compile_flags), header_text)
        with cls._lock:
            if key in cls._built:
                return cls._built[key]
            result: tuple[str, ...] = ()
            holder = tempfile.TemporaryDirectory(prefix="mot-func-pch-")
            header = Path(holder.name) / "mot_prelude.hpp"
            header.write_text(header_text, encoding="utf-8")
            proc = run_sandboxed([gxx, *compile_flags, "-x", "c++-header", "-o", str(header) + ".gch", str(header)],
                                 cwd=holder.name, env=scrubbed_env(holder.name), timeout_s=compile_timeout_s,
                                 rlimits=compiler_rlimits(compile_timeout_s))
            if proc.returncode == 0 and Path(str(header) + ".gch").is_file():
                for entry in (header, Path(str(header) + ".gch")):
                    entry.chmod(0o444)
                Path(holder.name).chmod(0o555)
                result = ("-include", str(header))
                cls._dirs.append(holder)
                atexit.register(cls._cleanup, holder)
            else:
                holder.cleanup()
            cls._built[key] = result
            return result

    @staticmethod
    def _cleanup(holder: tempfile.TemporaryDirectory) -> None:
        try:
            Path(holder.name).chmod(0o755)
        except OSError:
            pass  # already gone or not ours to change: cleanup() below still removes what it can
        holder.cleanup()


def check_cpp_reference(case: ExecCase, *, toolchain: Toolchain | None = None, timeout_s: float = DEFAULT_TIMEOUT_S,
                        compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, cpp_code: str | None = None,
                        keep_tests: bool = False, use_pch: bool = True) -> ReferenceCheck:
    """Build ``case.cpp_code`` (or ``cpp_code``) with g++ and check it reproduces ``consistent_outputs``."""
    tc = toolchain or detect_toolchain()
    total = len(case.cpp_inputs)
    if not tc.gxx:
        return ReferenceCheck(case.id, "unavailable", "no C++ compiler (g++) found", tests_total=total)
    with tempfile.TemporaryDirectory(prefix="mot-func-cpp-") as tmp:
        pch = PreludePCH.flags(tc.gxx, compile_timeout_s) if use_pch else ()
        source = build_cpp_program(case, cpp_code, include_prelude=not pch)
        (Path(tmp) / "reference.cpp").write_text(source, encoding="utf-8")
        ok, msg, csec = compile_program([tc.gxx, *GXX_FLAGS, *pch, "-o", "prog", "reference.cpp", "-lm"], tmp,
                                        compile_timeout_s)
        if not ok:
            return ReferenceCheck(case.id, "compile_error", msg, tests_total=total, compile_seconds=csec)
        runs = run_tests(tmp, total, case.outputs, timeout_s=timeout_s, max_output_bytes=max_output_bytes,
                         cuda=False, gate=None)
    outcome, message, diff, failed, passed, rsec = summarize_runs(runs, total)
    return ReferenceCheck(case.id, outcome, message, diff, failed, passed, total, csec, rsec,
                          tests=runs if keep_tests else [])


def nvcc_command(tc: Toolchain, extra_flags: Sequence[str] = ()) -> list[str]:
    """The nvcc command that builds ``candidate_program.cu`` into ``prog`` (flags: see the module docstring)."""
    cmd = [tc.nvcc or "nvcc", "-std=c++17", "--expt-relaxed-constexpr", "-fmad=false", "-w",
           "-Wno-deprecated-gpu-targets"]
    if tc.arch:
        cmd.append(f"-arch={tc.arch}")
    cmd.extend(extra_flags)
    return cmd + ["-o", "prog", "candidate_program.cu"]


def evaluate_candidate(case: ExecCase, candidate: str, *, tc: Toolchain, timeout_s: float,
                       compile_timeout_s: float, max_output_bytes: int, gate: threading.Semaphore | None,
                       nvcc_flags: Sequence[str], strict_cuda_errors: bool = False) -> SampleResult:
    """Build one candidate of ``case`` with nvcc and, on a GPU, run its tests (``sample`` is set by the caller)."""
    total = len(case.cuda_inputs)
    result = SampleResult(case_id=case.id, sample=0, outcome="unavailable", tests_total=total,
                          kernel_launched=case.launches_kernel,
                          candidate_sha1=hashlib.sha1(candidate.encode("utf-8", "replace")).hexdigest())
    if not case.launches_kernel:
        result.note = "the case's cuda_wrapper launches no kernel: the candidate is only compiled"
    code = strip_code_fences(candidate)
    if not code.strip():
        result.outcome, result.message = "compile_error", "empty prediction"
        return result
    if not tc.nvcc:
        result.message = nvcc_missing_message()
        return result
    source, note = build_cuda_program(case, code)
    if note:
        result.note = (result.note + "; " if result.note else "") + note
    with tempfile.TemporaryDirectory(prefix="mot-func-cuda-") as tmp:
        (Path(tmp) / "candidate_program.cu").write_text(source, encoding="utf-8")
        ok, msg, csec = compile_program(nvcc_command(tc, nvcc_flags), tmp, compile_timeout_s, nvcc=tc.nvcc)
        result.compile_seconds = csec
        if not ok:
            result.outcome, result.message = "compile_error", msg
            return result
        if not tc.gpu:
            result.outcome = "skipped"
            result.message = f"built; not run: no GPU ({tc.gpu_info})" if tc.gpu_info else "built; not run: no GPU"
            return result
        runs = run_tests(tmp, total, case.outputs, timeout_s=timeout_s, max_output_bytes=max_output_bytes,
                         cuda=True, gate=gate, strict_cuda_errors=strict_cuda_errors)
    outcome, message, diff, failed, passed, rsec = summarize_runs(runs, total)
    result.outcome, result.message, result.diff = outcome, message, diff
    result.cuda_error = "; ".join(sorted({r.cuda_error for r in runs if r.cuda_error}))
    result.failed_test, result.tests_passed, result.run_seconds = failed, passed, rsec
    return result


def _default_workers() -> int:
    return max(1, os.cpu_count() or 1)


def check_cpp_references(cases: Sequence[ExecCase], *, timeout_s: float = DEFAULT_TIMEOUT_S,
                         workers: int | None = None, toolchain: Toolchain | None = None,
                         compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                         max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> list[ReferenceCheck]:
    """C++ side only (runs on any CPU): does each case's C++ reference reproduce ``consistent_outputs``?"""
    tc = toolchain or detect_toolchain()
    with ThreadPoolExecutor(max_workers=workers or _default_workers()) as pool:
        return list(pool.map(lambda c: check_cpp_reference(c, toolchain=tc, timeout_s=timeout_s,
                                                           compile_timeout_s=compile_timeout_s,
                                                           max_output_bytes=max_output_bytes), cases))


def sample_jobs(cases: Sequence[ExecCase], predictions: Mapping[str, Sequence[str]],
                samples: int | None) -> tuple[list[tuple[ExecCase, int, str]], list[str]]:
    """(case, sample index, code) of every sample to evaluate, and the ids of cases without a prediction (they
    get one empty sample)."""
    preds = {str(k): list(v) for k, v in predictions.items()}
    missing: list[str] = []
    jobs: list[tuple[ExecCase, int, str]] = []
    for case in cases:
        samples_of_case = preds.get(case.id)
        if not samples_of_case:
            missing.append(case.id)
            samples_of_case = [""]
        if samples:
            samples_of_case = samples_of_case[:samples]
        for i, code in enumerate(samples_of_case):
            jobs.append((case, i, code))
    return jobs, missing


def evaluate_functional(cases: Sequence[ExecCase], predictions: Mapping[str, Sequence[str]], *,
                        timeout_s: float = DEFAULT_TIMEOUT_S, workers: int | None = None,
                        compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                        max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, check_reference: bool = True,
                        toolchain: Toolchain | None = None, samples: int | None = None,
                        nvcc_flags: Sequence[str] = (), gpu_concurrency: int | None = None,
                        strict_cuda_errors: bool = False,
                        progress: Callable[[int, int], None] | None = None) -> FunctionalReport:
    """Build and run every prediction of every case (ids are compared as strings).

    A case without predictions counts as one empty sample (``compile_error``) and is listed in
    ``missing_predictions``.  ``samples`` keeps the first K predictions of each id.  Identical samples of a case
    are built and run once.  ``workers`` threads build in parallel (default: CPU count); at most
    ``gpu_concurrency`` CUDA binaries run at a time (default: min(workers, 8)).  A CUDA error after a call
    fails the sample only when the output is wrong, unless ``strict_cuda_errors`` (see `run_tests`); such
    passes are listed in the summary's ``passes_with_cuda_error``.
    """
    start = time.monotonic()
    tc = toolchain or detect_toolchain()
    workers = workers or _default_workers()
    gate = threading.Semaphore(gpu_concurrency or min(workers, 8))
    jobs, missing = sample_jobs(cases, predictions, samples)
    unique: dict[tuple[str, str], tuple[ExecCase, str]] = {}
    for case, _, code in jobs:
        unique.setdefault((case.id, code), (case, code))

    done = [0]
    lock = threading.Lock()
    n_tasks = len(unique) + (len(cases) if check_reference else 0)

    def tick() -> None:
        if progress is not None:
            with lock:
                done[0] += 1
                progress(done[0], n_tasks)

    def run_candidate(item: tuple[ExecCase, str]) -> SampleResult:
        case, code = item
        try:
            return evaluate_candidate(case, code, tc=tc, timeout_s=timeout_s, compile_timeout_s=compile_timeout_s,
                                      max_output_bytes=max_output_bytes, gate=gate, nvcc_flags=nvcc_flags,
                                      strict_cuda_errors=strict_cuda_errors)
        finally:
            tick()

    def run_reference(case: ExecCase) -> ReferenceCheck:
        try:
            return check_cpp_reference(case, toolchain=tc, timeout_s=timeout_s, compile_timeout_s=compile_timeout_s,
                                       max_output_bytes=max_output_bytes)
        finally:
            tick()

    with ThreadPoolExecutor(max_workers=workers) as pool:
        cand_futures = {key: pool.submit(run_candidate, item) for key, item in unique.items()}
        ref_futures = [pool.submit(run_reference, c) for c in cases] if check_reference else []
        references = [f.result() for f in ref_futures]
        built = {key: f.result() for key, f in cand_futures.items()}

    ref_by_id = {r.case_id: r.outcome for r in references}
    results = []
    for case, i, code in jobs:
        r = dataclasses.replace(built[(case.id, code)], sample=i, cpp_reference=ref_by_id.get(case.id))
        results.append(r)
    return FunctionalReport(
        results=results, references=references, toolchain=tc, case_ids=[c.id for c in cases],
        missing_predictions=missing, cases_without_kernel_launch=[c.id for c in cases if not c.launches_kernel],
        wall_seconds=time.monotonic() - start, reference_checked=check_reference)


# --------------------------------------------------------------------------------------------------------------
# Broken candidates (negative controls for the harness)
# --------------------------------------------------------------------------------------------------------------
# variant -> outcome it must get when run on a GPU (on a CPU-only machine everything that builds is "skipped").
BROKEN_VARIANTS: dict[str, str] = {
    "c_code_as_cuda": "compile_error",   # the C function: the wrapper's <<<>>> launch has no kernel to call
    "syntax_error": "compile_error",     # the reference kernel without its closing brace
    "empty_body": "wrong_output",        # the reference kernel with an empty body
    "off_by_one": "wrong_output",        # threadIdx.x -> (threadIdx.x + 1)
    "missing_bounds_check": "wrong_output",  # the kernel's first `if (...)` guard removed (needs an overshooting launch)
    "infinite_loop": "timeout",          # `while (true) { __nanosleep(1000); }` at the start of the kernel
}


def make_broken_candidate(case: ExecCase, variant: str) -> str | None:
    """A deliberately broken version of ``case``'s reference kernel (None when the variant does not apply)."""
    code = case.cuda_code
    if variant == "c_code_as_cuda":
        return case.cpp_code or None
    if variant == "syntax_error":
        end = code.rstrip().rfind("}")
        return code[:end] + code[end + 1:] if end >= 0 else None
    name = case.launched_kernels[0] if case.launched_kernels else None
    span = kernel_span(code, name) or kernel_span(code)
    if span is None:
        return None
    brace, end = span
    if variant == "empty_body":
        return code[: brace + 1] + " " + code[end:]
    if variant == "infinite_loop":
        return code[: brace + 1] + " while ( true ) { __nanosleep ( 1000 ) ; } " + code[brace + 1:]
    if variant == "off_by_one":
        body = code[brace:end]
        m = re.search(r"threadIdx\s*\.\s*x", body)
        if not m:
            return None
        return code[:brace] + body[: m.start()] + "( threadIdx . x + 1 )" + body[m.end():] + code[end:]
    if variant == "missing_bounds_check":
        body = code[brace:end]
        m = re.search(r"\bif\s*\(", body)
        if not m:
            return None
        close = match_close(body, m.end() - 1, "(", ")")
        if close < 0:
            return None
        rest = body[close + 1:]
        ret = re.match(r"\s*return\s*;", rest)
        if ret:  # `if ( i >= n ) return ;` -> removed
            new_body = body[: m.start()] + rest[ret.end():]
        else:  # `if ( i < n ) {...}` -> `if ( true ) {...}`
            new_body = body[: m.start()] + "if ( true )" + rest
        return code[:brace] + new_body + code[end:]
    raise ValueError(f"unknown broken variant {variant!r}; known: {sorted(BROKEN_VARIANTS)}")

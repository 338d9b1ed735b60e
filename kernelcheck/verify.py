"""Differential testing of a CUDA kernel against the user's C/C++ function: `verify` -> `kernelcheck.verdict.Verdict`.

Steps (each can end the check with its status; see `kernelcheck.verdict`):

1. **Syntax** of the kernel with tree-sitter-cuda; problems are confirmed by nvcc when it is at hand
   (``syntax_error``).
2. **Signatures, mapping, launch rule** and 3. **inputs** with their launches (`kernelcheck.pairing`): what
   cannot be mapped or launched is ``not_verifiable`` with the reason.
4. **Builds**, in parallel: the reference (g++ with sanitizers, cached per function: `kernelcheck.reference_cache`;
   one that does not build is ``not_verifiable``) and the kernel program (nvcc, or g++ with the CPU emulation;
   ``compile_error``).
5. **Runs** (`kernelcheck.runner`): the reference discards the inputs on which it is undefined (a reference that
   reads uninitialised variables makes the pair ``not_verifiable``); the kernel program runs the rest.
6. **Judgement** (`kernelcheck.judge`): the first mismatch or failure in input order, else ``verified`` when at
   least one non-trivial input ran the kernel.

The backend: ``gpu`` (nvcc and a GPU), ``cpu`` (g++ and the emulation of `kernelcheck.cpu_backend`), ``auto`` =
gpu where it can run, else cpu.  `verify_many` checks several kernels (a translator's samples, mutants) against
one function with one reference and one kernel build.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Sequence

from .builds import build_kernel
from .compile_check import nvcc_compile_check
from .harness import CpuUnsupported, KernelUnderTest, kernels_program
from .judge import judge
from .pairing import Pair, prepare_pair
from .parsing import check_cuda_syntax
from .programs import PRELUDE
from .reference_cache import reference_run
from .runner import ReferenceRun, run_kernel
from .sandbox import DEFAULT_COMPILE_TIMEOUT_S, clip_text
from .toolchain import Toolchain, detect_toolchain, nvcc_missing_message
from .verdict import Verdict

__all__ = ["verify", "verify_many", "choose_backend", "BACKENDS"]

BACKENDS = ("auto", "gpu", "cpu")


def choose_backend(requested: str, tc: Toolchain) -> tuple[str | None, str]:
    """(backend, "") or (None, why it is unavailable) for ``requested`` in `BACKENDS`."""
    if requested not in BACKENDS:
        raise ValueError(f"unknown backend {requested!r}; expected one of {BACKENDS}")
    if not tc.gxx:
        return None, "no C++ compiler (g++) found: the C/C++ reference cannot be built"
    if requested == "gpu" or (requested == "auto" and tc.nvcc and tc.gpu):
        if not tc.nvcc:
            return None, nvcc_missing_message()
        if not tc.gpu:
            return None, f"no GPU to run the kernel on ({tc.gpu_info or 'none found'})"
        return "gpu", ""
    return "cpu", ""  # the CPU backend needs only g++ (its headers ship with kernelcheck)


def _nvcc_says(kernel_source: str, tc: Toolchain):
    return nvcc_compile_check(PRELUDE + '\n#line 1 "kernel.cu"\n' + kernel_source, nvcc=tc.nvcc)


def _syntax_verdict(kernel_source: str, tc: Toolchain) -> Verdict | None:
    """Step 1: ``syntax_error`` when tree-sitter-cuda finds problems nvcc (where there is one) confirms."""
    if not kernel_source.strip():
        return Verdict("syntax_error", "the kernel source is empty")
    problems = check_cuda_syntax(kernel_source)
    if not problems:
        return None
    listed = "; ".join(p.message for p in problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3
                                                             else "")
    if tc.nvcc:
        check = _nvcc_says(kernel_source, tc)
        if check.status == "ok":
            return None  # a tree-sitter-cuda false alarm: the compiler accepts the code
        if check.status == "error":
            return Verdict("syntax_error", f"{listed}; nvcc: {clip_text(check.message, 1500)}")
    return Verdict("syntax_error", listed)


def _build(kernels: Sequence[KernelUnderTest], pair: Pair, backend: str, tc: Toolchain, workdir: str,
           timeout_s: float) -> tuple[bool, str, str]:
    """Build the program of ``kernels`` -> (built, status if not, message)."""
    try:
        program = kernels_program(kernels, pair.c, backend)
    except CpuUnsupported as exc:
        return False, "not_verifiable", str(exc)
    ok, message, _ = build_kernel(program, backend, tc, workdir, timeout_s)
    if ok:
        return True, "", ""
    if len(kernels) > 1:
        return False, "compile_error", message
    if backend == "cpu" and tc.nvcc:
        check = _nvcc_says(kernels[0].source, tc)
        if check.status == "ok":
            return False, "not_verifiable", ("not verifiable on CPU: nvcc compiles the kernel but the CPU backend "
                                             f"cannot build it: {clip_text(message, 1500)}")
        if check.status == "error":
            message = check.message
    note = "" if backend == "gpu" or tc.nvcc else " (g++ with the CPU emulation header; no nvcc to confirm)"
    return False, "compile_error", f"the kernel does not compile{note}: {clip_text(message, 2000)}"


def _reference_problem(ref: ReferenceRun | None, ref_error: str, common: dict) -> Verdict | None:
    """The ``not_verifiable`` verdict when the reference cannot serve (does not build, reads uninitialised
    variables, discards every input), else None."""
    if ref is None:
        return Verdict("not_verifiable", f"the C/C++ reference does not build: {clip_text(ref_error, 2000)}",
                       **common)
    reasons = Counter(ref.discarded.values())
    counts = dict(discarded=len(ref.discarded), discard_reasons=dict(reasons))
    uninitialised = sum(n for r, n in reasons.items() if "uninitialised" in r)
    if uninitialised:
        return Verdict("not_verifiable", f"the C reference reads an uninitialised variable (on {uninitialised} "
                       "inputs): its results are undefined", **counts, **common)
    if not ref.inputs:
        listed = "; ".join(f"{n} x {r}" for r, n in reasons.most_common(3))
        return Verdict("not_verifiable", f"every input was discarded by the C reference ({listed})", **counts,
                       **common)
    return None


def _run_and_judge(pair: Pair, ref: ReferenceRun, backend: str, workdir: str, per_input_s: int, timings: dict,
                   which: int = 0) -> Verdict:
    start = time.monotonic()
    cases = [case for case in ref.inputs if case.index in pair.launches]
    kernel_run = run_kernel(workdir, cases, pair.c, pair.launches, cuda=backend == "gpu",
                            per_input_s=2 * per_input_s, which=which)
    timings = dict(timings, run_kernel=time.monotonic() - start)
    verdict = judge(pair, ref, kernel_run, backend, timings)
    verdict.records = kernel_run.records
    return verdict


def _check_pairs(cpp_source: str, pairs: list[Pair], sources: list[str], backend: str, tc: Toolchain,
                 compile_timeout_s: float, per_input_s: int, timings: dict) -> list[Verdict]:
    """Steps 4-6 for kernels of one function: one reference, one kernel build (each kernel alone when the shared
    build fails), one run per kernel."""
    commons = [dict(backend=backend, launch=p.rule.describe(), mapping=p.mapping.describe(), **p.names)
               for p in pairs]
    kernels = [KernelUnderTest(src, p.k, p.mapping) for src, p in zip(sources, pairs)]
    with tempfile.TemporaryDirectory(prefix="mot-verify-kernel-") as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        start = time.monotonic()
        ref_future = pool.submit(reference_run, cpp_source, pairs[0], tc, compile_timeout_s, per_input_s)
        built, status, message = _build(kernels, pairs[0], backend, tc, tmp, compile_timeout_s)
        build_seconds = time.monotonic() - start
        ref, ref_error, ref_seconds = ref_future.result()
        if len(pairs) > 1 and not built:
            return [_check_pairs(cpp_source, [p], [s], backend, tc, compile_timeout_s, per_input_s, timings)[0]
                    for p, s in zip(pairs, sources)]
        times = dict(timings, build_kernel=build_seconds, reference=ref_seconds + (ref.seconds if ref else 0))
        if not built:
            return [Verdict(status, message, timings=times, **commons[0])]
        problem = _reference_problem(ref, ref_error, commons[0])
        if problem is not None:
            return [Verdict(problem.status, problem.reason, discarded=problem.discarded,
                            discard_reasons=problem.discard_reasons, timings=times, **common) for common in commons]
        return [_run_and_judge(pair, ref, backend, tmp, per_input_s, times, which=j) for j, pair in enumerate(pairs)]


def verify_many(cpp_source: str, kernel_sources: Sequence[str], *, function: str | None = None,
                backend: str = "auto", seeds: int = 3, toolchain: Toolchain | None = None, max_inputs: int = 48,
                compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S, per_input_s: int = 10) -> list[Verdict]:
    """`verify` each kernel source (its only ``__global__`` function) against one C/C++ function: the same
    inputs, one reference, one kernel build for all (each kernel alone if that build fails)."""
    start = time.monotonic()
    tc = toolchain or detect_toolchain()
    timings = {"toolchain": time.monotonic() - start}
    verdicts: list[Verdict | None] = [None] * len(kernel_sources)
    ready: list[tuple[int, Pair, str]] = []
    for j, source in enumerate(kernel_sources):
        verdicts[j] = _syntax_verdict(source, tc)
        if verdicts[j] is None:
            pair = prepare_pair(cpp_source, source, function, None, seeds, max_inputs)
            if isinstance(pair, Verdict):
                verdicts[j] = pair
            else:
                ready.append((j, pair, source))
    timings["analysis"] = time.monotonic() - start - timings["toolchain"]
    chosen, why = choose_backend(backend, tc)
    if ready and chosen is None:
        for j, pair, _ in ready:
            verdicts[j] = Verdict("unavailable", why, backend=None if backend == "auto" else backend, **pair.names)
    elif ready:
        results = _check_pairs(cpp_source, [p for _, p, _ in ready], [s for _, _, s in ready], chosen, tc,
                               compile_timeout_s, per_input_s, timings)
        for (j, _, _), verdict in zip(ready, results):
            verdicts[j] = verdict
    for verdict in verdicts:
        verdict.timings = dict(timings, **verdict.timings, total=time.monotonic() - start)
    return verdicts


def verify(cpp_source: str, kernel_source: str, *, function: str | None = None, kernel: str | None = None,
           backend: str = "auto", seeds: int = 3, toolchain: Toolchain | None = None, max_inputs: int = 48,
           compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S, per_input_s: int = 10) -> Verdict:
    """Check ``kernel_source`` (its ``__global__`` function, or ``kernel``) against the C/C++ function
    ``function`` (or the only/root one) of ``cpp_source``; see the module docstring.

    ``seeds``: seeds per size combination; ``max_inputs``: at most this many inputs; ``per_input_s``: seconds an
    input may take in the reference (twice that in the kernel program: the CPU backend runs each launch twice).
    """
    start = time.monotonic()
    tc = toolchain or detect_toolchain()
    timings = {"toolchain": time.monotonic() - start}
    verdict = _syntax_verdict(kernel_source, tc)
    if verdict is None:
        pair = prepare_pair(cpp_source, kernel_source, function, kernel, seeds, max_inputs)
        timings["analysis"] = time.monotonic() - start - timings["toolchain"]
        if isinstance(pair, Verdict):
            verdict = pair
        else:
            chosen, why = choose_backend(backend, tc)
            if chosen is None:
                verdict = Verdict("unavailable", why, backend=None if backend == "auto" else backend, **pair.names)
            else:
                verdict = _check_pairs(cpp_source, [pair], [kernel_source], chosen, tc, compile_timeout_s,
                                       per_input_s, timings)[0]
    verdict.timings = dict(timings, **verdict.timings, total=time.monotonic() - start)
    return verdict

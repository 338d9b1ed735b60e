"""Differential testing of a CUDA kernel against the user's C/C++ function: `verify` -> `kernelcheck.verdict.Verdict`.

Steps (each can end the check with its status; see `kernelcheck.verdict`):

1. **Syntax** of the kernel with tree-sitter-cuda; problems are confirmed by the compiler when one is at hand
   (``syntax_error``).
2. **Signatures and mapping** (`kernelcheck.signatures`, `kernelcheck.mapping`) and the **launch rule**
   (`kernelcheck.launch`): what cannot be mapped or launched is ``not_verifiable`` with the reason.
3. **Inputs** (`kernelcheck.inputs`) and each input's launch.
4. **Builds**, in parallel: the reference (g++ with sanitizers; a reference that does not build is
   ``not_verifiable``) and the kernel program (nvcc, or g++ with the CPU emulation; ``compile_error``).
5. **Runs** (`kernelcheck.runner`): the reference discards the inputs on which it is undefined; the kernel
   program runs the rest and stops at its first failure.
6. **Comparison** (`kernelcheck.compare`) in input order: the first mismatch or failure is the verdict's
   ``mismatch``; ``verified`` needs at least one compared input that is non-trivial (some size is non-zero) and
   launched the kernel.

The backend: ``gpu`` (nvcc and a GPU), ``cpu`` (g++ and the emulation of `kernelcheck.cpu_backend`), ``auto`` =
gpu where it can run, else cpu.  A reference run is cached per (source, function, inputs) in the process, so checking many
kernels against one function (a translator's samples, a mutant suite) builds and runs the reference once.
"""

from __future__ import annotations

import hashlib
import math
import tempfile
import threading
import time
from collections import Counter, OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .compare import Mismatch, first_mismatch
from .harness import CpuUnsupported, kernel_program, plan_text, reference_program
from .inputs import InputCase, make_inputs
from .launch import Launch, LaunchError, LaunchRule, concrete_launch, launch_rule
from .loopnest import CShape, shape_of
from .mapping import NotVerifiable, ParamMapping, map_params
from .compile_check import nvcc_compile_check
from .intervals import Iv
from .parsing import check_cuda_syntax
from .programs import PRELUDE
from .runner import ReferenceRun, build_kernel, build_reference, run_kernel, run_reference
from .sandbox import DEFAULT_COMPILE_TIMEOUT_S, clip_text
from .signatures import FunctionInfo, SignatureError, read_c_function, read_kernel
from .toolchain import Toolchain, detect_toolchain, nvcc_missing_message
from .verdict import Verdict

__all__ = ["verify", "choose_backend", "BACKENDS"]

BACKENDS = ("auto", "gpu", "cpu")


@dataclass
class _Pair:
    """What steps 1-3 produce for the later steps."""

    c: FunctionInfo
    k: FunctionInfo
    shape: CShape
    mapping: ParamMapping
    rule: LaunchRule
    inputs: list[InputCase]
    launches: dict[int, Launch]
    skipped: Counter


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


def _kernel_values(pair_mapping: ParamMapping, case: InputCase) -> dict[str, Iv]:
    values: dict[str, Iv] = {}
    for b in pair_mapping.bindings:
        if b.source == "vector_size":
            values[b.kernel.name] = Iv.point(case.extents[b.c_param.name])
        elif b.source == "param" and b.c_param.name in case.values:
            value = case.values[b.c_param.name]
            values[b.kernel.name] = Iv.point(value, isinstance(value, float))
    return values


def _prepare(cpp_source: str, kernel_source: str, function: str | None, kernel: str | None,
             seeds: int, max_inputs: int) -> _Pair | Verdict:
    """Steps 2-3 (signatures, mapping, launch rule, inputs and launches), or the verdict that ends the check."""
    try:
        c = read_c_function(cpp_source, function)
        k = read_kernel(kernel_source, kernel)
    except SignatureError as exc:
        return Verdict("not_verifiable", str(exc))
    names = dict(function=c.name, kernel=k.name)
    shape = shape_of(c)
    try:
        mapping = map_params(c, k, set(shape.size_params))
        rule = launch_rule(k)
    except (NotVerifiable, LaunchError) as exc:
        return Verdict("not_verifiable", str(exc), **names)
    inputs, too_large = make_inputs(c, shape, seeds=seeds, max_inputs=max_inputs)
    skipped: Counter = Counter()
    if too_large:
        skipped["too large (loop work or array sizes over the harness's caps)"] += too_large
    launches, kept = {}, []
    for case in inputs:
        try:
            launches[case.index] = concrete_launch(rule, _kernel_values(mapping, case), case.loops)
            kept.append(case)
        except LaunchError as exc:
            skipped[f"no launch: {exc}"] += 1
    if not kept:
        why = "; ".join(f"{n} x {r}" for r, n in skipped.items()) or "the C function gives no input to try"
        return Verdict("not_verifiable", f"no input could be run ({why})", skipped=sum(skipped.values()),
                       launch=rule.describe(), mapping=mapping.describe(), **names)
    return _Pair(c, k, shape, mapping, rule, kept, launches, skipped)


class _ReferenceCache:
    """Reference runs by (source, function, plan, compiler); a few dozen kept (checks of many kernels against one
    function build and run the reference once)."""

    def __init__(self, size: int = 64):
        self.size = size
        self.runs: OrderedDict[str, tuple[ReferenceRun, str, float]] = OrderedDict()
        self.lock = threading.Lock()

    @staticmethod
    def key(source: str, pair: _Pair, tc: Toolchain) -> str:
        text = "\0".join([source, pair.c.name, plan_text(pair.inputs, pair.c), tc.gxx or ""])
        return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()

    def get(self, key: str) -> tuple[ReferenceRun, str, float] | None:
        with self.lock:
            if key in self.runs:
                self.runs.move_to_end(key)
                return self.runs[key]
            return None

    def put(self, key: str, value: tuple[ReferenceRun, str, float]) -> None:
        with self.lock:
            self.runs[key] = value
            while len(self.runs) > self.size:
                self.runs.popitem(last=False)


_REFERENCES = _ReferenceCache()


def _reference(cpp_source: str, pair: _Pair, tc: Toolchain, timeout_s: float,
               per_input_s: int) -> tuple[ReferenceRun | None, str, float]:
    """(reference run, build error or "", build seconds), cached."""
    key = _ReferenceCache.key(cpp_source, pair, tc) + f":{per_input_s}"
    cached = _REFERENCES.get(key)
    if cached is not None:
        return cached
    with tempfile.TemporaryDirectory(prefix="mot-verify-ref-") as tmp:
        program = reference_program(cpp_source, pair.c)
        ok, message, seconds, sanitised = build_reference(program, tc, tmp, timeout_s)
        if not ok:
            return None, message, seconds
        fresh = [InputCase(**{**case.__dict__, "extents": dict(case.extents)}) for case in pair.inputs]
        run = run_reference(tmp, fresh, pair.c, per_input_s=per_input_s, sanitised=sanitised)
    _REFERENCES.put(key, (run, "", seconds))
    return run, "", seconds


def _syntax_verdict(kernel_source: str, tc: Toolchain) -> Verdict | None:
    """Step 1: ``syntax_error`` when tree-sitter-cuda finds problems the compiler (where there is one) confirms."""
    if not kernel_source.strip():
        return Verdict("syntax_error", "the kernel source is empty")
    problems = check_cuda_syntax(kernel_source)
    if not problems:
        return None
    listed = "; ".join(p.message for p in problems[:3]) + (f" (and {len(problems) - 3} more)" if len(problems) > 3
                                                             else "")
    if tc.nvcc:
        check = nvcc_compile_check(PRELUDE + '\n#line 1 "kernel.cu"\n' + kernel_source, nvcc=tc.nvcc)
        if check.status == "ok":
            return None  # a tree-sitter-cuda false alarm: the compiler accepts the code
        if check.status == "error":
            return Verdict("syntax_error", f"{listed}; nvcc: {clip_text(check.message, 1500)}")
    return Verdict("syntax_error", listed)


def _kernel_build(pair: _Pair, kernel_source: str, backend: str, tc: Toolchain, workdir: str,
                  timeout_s: float) -> tuple[bool, str, str, float]:
    """Step 4 (kernel side) -> (built, status if not, message, seconds)."""
    start = time.monotonic()
    try:
        program = kernel_program(kernel_source, pair.k, pair.c, pair.mapping, backend)
    except CpuUnsupported as exc:
        return False, "not_verifiable", str(exc), time.monotonic() - start
    ok, message, _ = build_kernel(program, backend, tc, workdir, timeout_s)
    if ok:
        return True, "", "", time.monotonic() - start
    if backend == "cpu" and tc.nvcc:
        check = nvcc_compile_check(PRELUDE + '\n#line 1 "kernel.cu"\n' + kernel_source, nvcc=tc.nvcc)
        if check.status == "ok":
            return False, "not_verifiable", ("not verifiable on CPU: nvcc compiles the kernel but the CPU backend "
                                             f"cannot build it: {clip_text(message, 1500)}"), time.monotonic() - start
        if check.status == "error":
            message = check.message
    note = "" if backend == "gpu" or tc.nvcc else " (g++ with the CPU emulation header; no nvcc to confirm)"
    return False, "compile_error", f"the kernel does not compile{note}: {clip_text(message, 2000)}", \
        time.monotonic() - start


def _launch_text(pair: _Pair, cases: list[InputCase]) -> str:
    """The launch rule and a few of the launches it gave (a small, a middle and the largest input)."""
    sized = sorted((c for c in cases if not pair.launches[c.index].empty),
                   key=lambda c: math.prod(pair.launches[c.index].grid) * math.prod(pair.launches[c.index].block))
    picks = [sized[i] for i in sorted({0, len(sized) // 2, len(sized) - 1})] if sized else []
    examples = [f"{', '.join(f'{k}={v}' for k, v in c.sizes.items()) or 'input'}: {pair.launches[c.index].describe()}"
                for c in picks]
    return pair.rule.describe() + (f"; e.g. {'; '.join(dict.fromkeys(examples))}" if examples else "")


def _compare(pair: _Pair, ref: ReferenceRun, cases: list[InputCase], kernel_run) -> tuple[Mismatch | None, int]:
    """Step 6: the first mismatch (or failure) in input order, and how many inputs compared equal."""
    compared = 0
    for case in cases:
        failure = kernel_run.failure
        if failure is not None and failure.input == case.index:
            found = Mismatch(case.to_json(), failure.argument, None, None, None, failure.reason)
        elif case.index not in kernel_run.records:
            break  # after a failure the program stopped: nothing more to compare
        else:
            found = first_mismatch(case, pair.c, ref.records[case.index], kernel_run.records[case.index])
        if found is not None:
            found.input["launch"] = pair.launches[case.index].describe()
            return found, compared
        compared += 1
    return None, compared


def _finish(pair: _Pair, ref: ReferenceRun, kernel_run, backend: str, names: dict, timings: dict) -> Verdict:
    cases = ref.inputs
    mismatch, compared = _compare(pair, ref, cases, kernel_run)
    reasons = Counter(ref.discarded.values())
    common = dict(backend=backend, launch=_launch_text(pair, cases), mapping=pair.mapping.describe(),
                  discarded=len(ref.discarded), discard_reasons=dict(reasons), skipped=sum(pair.skipped.values()),
                  notes=list(pair.mapping.notes) + ([f"{ref.regrown} array(s) regrown where the C reference read "
                                                     "past the extent the analysis gave"] if ref.regrown else []) +
                  ([] if ref.sanitised else
                                                    ["the reference ran without sanitizers (reads out of bounds and "
                                                     "undefined behaviour in it are not detected)"]),
                  timings=timings, **names)
    common["notes"] += [f"CPU backend: {note}" for note in list(dict.fromkeys(kernel_run.notes))[:3]]
    launched = sum(1 for case in cases[:compared] if not pair.launches[case.index].empty)
    common["launched"] = launched
    if mismatch is not None:
        return Verdict("mismatch", f"{mismatch.describe()} on {mismatch.input['describe']}, launched "
                       f"{mismatch.input['launch']}", inputs=compared, mismatch=mismatch, **common)
    nontrivial = [case for case in cases[:compared] if not pair.launches[case.index].empty
                  and (not case.sizes or any(v > 0 for v in case.sizes.values()))]
    if not nontrivial:
        return Verdict("not_verifiable", f"no non-trivial input ran the kernel ({compared} compared, "
                       f"{len(ref.discarded)} discarded by the reference)", inputs=compared, **common)
    discards = f"; {len(ref.discarded)} discarded where the C reference is undefined" if ref.discarded else ""
    return Verdict("verified", f"the kernel matched the C function on {compared} inputs ({len(nontrivial)} "
                   f"non-trivial){discards}; evidence on these inputs, not a proof", inputs=compared, **common)


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
    timings: dict[str, float] = {"toolchain": time.monotonic() - start}
    verdict = _syntax_verdict(kernel_source, tc)
    timings["syntax"] = time.monotonic() - start - timings["toolchain"]
    if verdict is not None:
        verdict.timings = timings | {"total": time.monotonic() - start}
        return verdict
    pair = _prepare(cpp_source, kernel_source, function, kernel, seeds, max_inputs)
    timings["analysis"] = time.monotonic() - start - timings["syntax"] - timings["toolchain"]
    if isinstance(pair, Verdict):
        pair.timings = timings | {"total": time.monotonic() - start}
        return pair
    names = dict(function=pair.c.name, kernel=pair.k.name)
    chosen, why = choose_backend(backend, tc)
    if chosen is None:
        return Verdict("unavailable", why, backend=None if backend == "auto" else backend,
                       timings=timings | {"total": time.monotonic() - start}, **names)
    verdict = _build_and_run(cpp_source, kernel_source, pair, chosen, tc, compile_timeout_s, per_input_s, names,
                             timings)
    verdict.timings["total"] = time.monotonic() - start
    return verdict


def _build_and_run(cpp_source: str, kernel_source: str, pair: _Pair, backend: str, tc: Toolchain,
                   compile_timeout_s: float, per_input_s: int, names: dict, timings: dict) -> Verdict:
    """Steps 4-6 in a temporary directory for the kernel (the reference has its own, and a cache)."""
    common = dict(backend=backend, launch=pair.rule.describe(), mapping=pair.mapping.describe(), **names)
    with tempfile.TemporaryDirectory(prefix="mot-verify-kernel-") as tmp, ThreadPoolExecutor(max_workers=2) as pool:
        ref_future = pool.submit(_reference, cpp_source, pair, tc, compile_timeout_s, per_input_s)
        built, status, message, kernel_seconds = _kernel_build(pair, kernel_source, backend, tc, tmp,
                                                               compile_timeout_s)
        ref, ref_error, ref_seconds = ref_future.result()
        timings["build_kernel"], timings["reference"] = kernel_seconds, ref_seconds + (ref.seconds if ref else 0)
        if not built:
            return Verdict(status, message, timings=timings, **common)
        if ref is None:
            return Verdict("not_verifiable", f"the C/C++ reference does not build: {clip_text(ref_error, 2000)}",
                           timings=timings, **common)
        uninitialised = [r for r in ref.discarded.values() if "uninitialised" in r]
        if uninitialised:
            return Verdict("not_verifiable", f"the C reference reads an uninitialised variable (on "
                           f"{len(uninitialised)} inputs): its results are undefined", discarded=len(ref.discarded),
                           discard_reasons=dict(Counter(ref.discarded.values())), timings=timings, **common)
        if not ref.inputs:
            reasons = "; ".join(f"{n} x {r}" for r, n in Counter(ref.discarded.values()).most_common(3))
            return Verdict("not_verifiable", f"every input was discarded by the C reference ({reasons})",
                           discarded=len(ref.discarded), discard_reasons=dict(Counter(ref.discarded.values())),
                           timings=timings, **common)
        run_start = time.monotonic()
        kernel_run = run_kernel(tmp, ref.inputs, pair.c, pair.launches, cuda=backend == "gpu",
                                per_input_s=2 * per_input_s)
        timings["run_kernel"] = time.monotonic() - run_start
    compare_start = time.monotonic()
    verdict = _finish(pair, ref, kernel_run, backend, names, timings)
    verdict.records = kernel_run.records
    timings["compare"] = time.monotonic() - compare_start
    return verdict

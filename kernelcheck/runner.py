"""Building and running the programs of a differential check — every build and run through `kernelcheck.sandbox`.

**Reference** (`build_reference`, `run_reference`): g++ with AddressSanitizer and UndefinedBehaviorSanitizer
(``-fno-sanitize-recover``: the first report ends the run), falling back to plain g++ (canaries only) where the
sanitizers cannot build.  All inputs run in one process, each under a per-input ``alarm``; records are flushed
per input, so when the reference dies on an input the runner knows which one it was:

* it overran an array by a few elements (``MOT_REF_OOB`` past the end): the array is regrown to what the reference
  touched and the input re-run (up to `MAX_REGROWTHS` times, never past `MAX_ELEMENTS`) — the static extents of
  `kernelcheck.loopnest` are a first guess, the reference's own accesses are the truth;
* anything else — an access before the array, undefined behaviour (NaN to int, signed overflow, division by
  zero, misaligned access...), a crash, a timeout, a canary overwritten, a ``std::vector`` resized — discards
  the input with the reason; the run then resumes at the next input (appending to the same ``out.bin``);
* the kept inputs run again in a twin build whose uninitialised locals are zeroed instead of patterned
  (``-ftrivial-auto-var-init``): an input whose results change read an uninitialised variable, and is
  discarded.

**Kernel** (`build_kernel`, `run_kernel`): nvcc for the GPU, g++ with the emulation header for the CPU.  Its
inputs are the reference's surviving inputs; the first failure (crash, CUDA error, timeout, guard zone written,
a race / out-of-bounds / fault / barrier report of the CPU backend's emulation) is attributed to the input it
happened on — that input is a mismatch, never discarded.
"""

from __future__ import annotations

import atexit
import re
import struct
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .cpu_backend import GXX_CPU_FLAGS, HEADER_DIR
from .functional import PreludePCH, nvcc_command
from .harness import Program, plan_text
from .harness_runtime import RECORD_MAGIC, RUNTIME_HEADER, RUNTIME_SOURCE
from .inputs import MAX_ELEMENTS, InputCase
from .launch import Launch
from .sandbox import (
    clip_text,
    compile_program,
    compiler_rlimits,
    decode_output,
    describe_exit,
    run_rlimits,
    run_sandboxed,
    scrubbed_env,
)
from .signatures import FunctionInfo
from .toolchain import Toolchain

__all__ = ["Item", "ReferenceRun", "KernelRun", "Failure", "parse_records", "sanitizer_flags", "build_reference",
           "build_kernel", "run_reference", "run_kernel", "BASE_FLAGS", "SANITIZER_FLAGS", "MAX_REGROWTHS",
           "CPU_KERNEL_FLAGS", "EMULATION_FAILURES", "RuntimeObject"]

BASE_FLAGS = ("-std=c++17", "-O0", "-w")
SANITIZER_FLAGS = ("-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
                   "-fno-omit-frame-pointer")
CPU_KERNEL_FLAGS = GXX_CPU_FLAGS
MAX_REGROWTHS = 6
_SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:exitcode=86:allocator_may_return_null=1:"
                    "hard_rss_limit_mb=2048:handle_abort=1:print_summary=1",
    "UBSAN_OPTIONS": "halt_on_error=1:exitcode=87:print_stacktrace=0",
}
_OUTPUT_FILE_LIMIT = 256 << 20


@dataclass(frozen=True)
class Item:
    """One recorded value: the return value (``param`` -1) or an array, as raw bytes."""

    kind: int
    elem_kind: str
    elem_size: int
    param: int
    data: bytes


def parse_records(data: bytes) -> dict[int, list[Item]]:
    """The complete records of ``out.bin`` by input index (a record cut short by a crash is dropped)."""
    records: dict[int, list[Item]] = {}
    pos = 0
    while pos + 12 <= len(data) and data[pos:pos + 4] == RECORD_MAGIC:
        index, count = struct.unpack_from("<II", data, pos + 4)
        pos += 12
        items = []
        for _ in range(count):
            if pos + 15 > len(data):
                return records
            kind, elem_kind, elem_size = data[pos], chr(data[pos + 1]), data[pos + 2]
            param, nbytes = struct.unpack_from("<iQ", data, pos + 3)
            pos += 15
            if pos + nbytes > len(data):
                return records
            items.append(Item(kind, elem_kind, elem_size, param, data[pos:pos + nbytes]))
            pos += nbytes
        records[index] = items
    return records


# --------------------------------------------------------------------------------------------------------------
# Builds
# --------------------------------------------------------------------------------------------------------------
_SANITIZERS_OK: dict[str, bool] = {}
_SANITIZERS_LOCK = threading.Lock()


def sanitizer_flags(gxx: str, timeout_s: float = 120.0) -> tuple[str, ...]:
    """`SANITIZER_FLAGS` when this g++ builds and runs a sanitised program, else () (probed once per g++)."""
    with _SANITIZERS_LOCK:
        if gxx not in _SANITIZERS_OK:
            with tempfile.TemporaryDirectory(prefix="mot-verify-probe-") as tmp:
                (Path(tmp) / "probe.cpp").write_text("#include <cstdio>\nint main() { std::puts(\"ok\"); }\n")
                built = compile_program([gxx, *BASE_FLAGS, *SANITIZER_FLAGS, "-o", "prog", "probe.cpp"], tmp,
                                        timeout_s)
                ran = built.ok and run_sandboxed(["./prog"], cwd=tmp, env=_reference_env(tmp), timeout_s=30,
                                                 rlimits=_reference_rlimits(30)).returncode == 0
                _SANITIZERS_OK[gxx] = bool(ran)
        return SANITIZER_FLAGS if _SANITIZERS_OK[gxx] else ()


def _reference_env(tmp: str) -> dict[str, str]:
    return scrubbed_env(tmp) | _SANITIZER_ENV


def _reference_rlimits(timeout_s: float) -> dict[str, int]:
    """Run limits without an address-space cap (AddressSanitizer reserves terabytes of shadow memory; its own
    ``hard_rss_limit_mb`` bounds the memory instead) and with room for the records file."""
    limits = run_rlimits(timeout_s, cuda=True)
    limits["RLIMIT_FSIZE"] = _OUTPUT_FILE_LIMIT
    return limits


class RuntimeObject:
    """`RUNTIME_SOURCE` compiled once per (g++, flags) into ``runtime.o`` in a private temporary directory (removed
    at exit); every g++ program of a check links it instead of compiling the runtime again."""

    _lock = threading.Lock()
    _built: dict[tuple, str | None] = {}
    _dirs: list[tempfile.TemporaryDirectory] = []

    @classmethod
    def path(cls, gxx: str, flags: Sequence[str], timeout_s: float, include_dirs: Sequence[str] = ()) -> str | None:
        key = (gxx, tuple(flags), tuple(include_dirs), RUNTIME_SOURCE)
        with cls._lock:
            if key not in cls._built:
                holder = tempfile.TemporaryDirectory(prefix="mot-verify-runtime-")
                Path(holder.name, "runtime.cpp").write_text(RUNTIME_HEADER + RUNTIME_SOURCE, encoding="utf-8")
                built = compile_program([gxx, *flags, "-c", "-o", "runtime.o", "runtime.cpp"], holder.name, timeout_s,
                                        binary="runtime.o")
                if built.ok:
                    cls._dirs.append(holder)
                    atexit.register(holder.cleanup)
                    cls._built[key] = str(Path(holder.name, "runtime.o"))
                else:
                    holder.cleanup()
                    cls._built[key] = None
            return cls._built[key]


def _build_gxx(program: Program, tc: Toolchain, workdir: str, timeout_s: float, flags: Sequence[str],
               filename: str, include_dirs: Sequence[str] = (), binary: str = "prog") -> tuple[bool, str, float]:
    """g++ build of a program: its head precompiled, the runtime linked from its object (inline as fallback)."""
    includes = tuple(f"-I{d}" for d in include_dirs)
    runtime = RuntimeObject.path(tc.gxx, (*flags, *includes), timeout_s)
    pch = PreludePCH.flags(tc.gxx, timeout_s, header_text=program.head, compile_flags=(*flags, *includes))
    text = program.text(inline_runtime=runtime is None)
    if pch:
        text = text.replace(program.head, "", 1)
    (Path(workdir) / filename).write_text(text, encoding="utf-8")
    built = compile_program([tc.gxx, *flags, *includes, *pch, "-o", binary, filename,
                             *([runtime] if runtime else []), "-lm"], workdir, timeout_s, binary=binary)
    return built.ok, built.message, built.seconds


_INIT_FLAGS: dict[str, bool] = {}


def _init_flags_supported(gxx: str, timeout_s: float) -> bool:
    """Whether g++ takes ``-ftrivial-auto-var-init`` (GCC 12+, Clang 8+); probed once per compiler."""
    with _SANITIZERS_LOCK:
        if gxx not in _INIT_FLAGS:
            with tempfile.TemporaryDirectory(prefix="mot-verify-probe-") as tmp:
                (Path(tmp) / "probe.cpp").write_text("int main() { int x; return x * 0; }\n")
                _INIT_FLAGS[gxx] = compile_program([gxx, "-ftrivial-auto-var-init=zero", "-o", "prog", "probe.cpp"],
                                                   tmp, timeout_s).ok
        return _INIT_FLAGS[gxx]


def build_reference(program: Program, tc: Toolchain, workdir: str, timeout_s: float) -> tuple[bool, str, float, bool]:
    """Build the reference -> (ok, compiler message, seconds, sanitised).

    Two binaries where the compiler can: ``prog`` with uninitialised locals filled with a pattern and
    ``prog_zero`` with them zeroed; `run_reference` discards an input on which the two disagree (the C code read
    an uninitialised variable: its result is whatever the stack held).
    """
    sanitizers = sanitizer_flags(tc.gxx)
    flags = (*BASE_FLAGS, *sanitizers)
    twins = _init_flags_supported(tc.gxx, timeout_s)
    first = (*flags, "-ftrivial-auto-var-init=pattern") if twins else flags
    ok, message, seconds = _build_gxx(program, tc, workdir, timeout_s, first, "reference.cpp")
    if ok and twins:
        ok, message, more = _build_gxx(program, tc, workdir, timeout_s, (*flags, "-ftrivial-auto-var-init=zero"),
                                       "reference_zero.cpp", binary="prog_zero")
        seconds += more
    return ok, message, seconds, bool(sanitizers)


def build_kernel(program: Program, backend: str, tc: Toolchain, workdir: str, timeout_s: float) -> tuple[bool, str,
                                                                                                     float]:
    """Build the kernel program into ``prog``: nvcc for "gpu" (runtime inline), g++ with the CPU backend's flags
    and headers for "cpu" (its head precompiled, the runtime linked)."""
    if backend == "gpu":
        (Path(workdir) / "candidate_program.cu").write_text(program.text(inline_runtime=True), encoding="utf-8")
        built = compile_program(nvcc_command(tc), workdir, timeout_s, nvcc=tc.nvcc)
        return built.ok, built.message, built.seconds
    return _build_gxx(program, tc, workdir, timeout_s, CPU_KERNEL_FLAGS, "kernel_program.cpp", (str(HEADER_DIR),))


# --------------------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------------------
_LINE = re.compile(r"^(MOT_[A-Z_]+) (.*)$", re.M)
_UB = re.compile(r"runtime error: ([^\n]*)")
_ASAN = re.compile(r"ERROR: AddressSanitizer: ([^\n]*)")


@dataclass
class _Pass:
    records: dict[int, list[Item]]
    markers: list[tuple[str, list[str]]]
    stderr: str
    returncode: int | None
    timed_out: bool
    exit_text: str
    seconds: float


def _run_pass(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, launches: dict[int, Launch] | None,
              append: bool, per_input_s: int, timeout_s: float, env: dict[str, str], rlimits: dict[str, int],
              binary: str = "prog", which: int = 0) -> _Pass:
    Path(workdir, "plan.txt").write_text(plan_text(inputs, c, launches), encoding="utf-8")
    if not append:
        Path(workdir, "out.bin").unlink(missing_ok=True)
    result = run_sandboxed([f"./{binary}", str(per_input_s), "1" if append else "0", str(which)], cwd=workdir,
                           env=env, timeout_s=timeout_s, rlimits=rlimits)
    out = Path(workdir, "out.bin")
    records = parse_records(out.read_bytes()) if out.exists() else {}
    err = decode_output(result.stderr)
    markers = [(m.group(1), m.group(2).split()) for m in _LINE.finditer(err)]
    return _Pass(records, markers, err, result.returncode, result.timed_out, describe_exit(result), result.seconds)


def _culprit_reason(run: _Pass, per_input_s: int) -> str:
    """Why a program stopped before finishing its inputs, in words."""
    ub = _UB.search(run.stderr)
    if ub:
        return f"undefined behaviour: {ub.group(1).strip()}"
    for name, args in run.markers:
        if name == "MOT_CUDA_ERROR":
            return "CUDA error: " + " ".join(args[1:])
    asan = _ASAN.search(run.stderr)
    if asan:
        return f"AddressSanitizer: {asan.group(1).strip()}"
    if run.timed_out or "SIGALRM" in run.exit_text:
        return f"did not finish within {per_input_s} s"
    tail = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("MOT_BEGIN")]
    detail = f": {clip_text(tail[-1].strip(), 300)}" if tail else ""
    return f"{run.exit_text}{detail}"


@dataclass
class ReferenceRun:
    """The reference's records of the inputs it ran, those inputs (extents possibly regrown), the discarded."""

    records: dict[int, list[Item]]
    inputs: list[InputCase]
    discarded: dict[int, str] = field(default_factory=dict)
    regrown: int = 0
    seconds: float = 0.0
    sanitised: bool = True


def _regrow(case: InputCase, c: FunctionInfo, args: list[str], grown: dict[int, int]) -> bool:
    """Grow the array an ``MOT_REF_OOB`` past-the-end report names; False when it cannot (or may not) grow."""
    param, offset = int(args[1]), int(args[2])
    if param < 0 or param >= len(c.params) or offset < 0:
        return False
    p = c.params[param]
    if p.vector or p.is_scalar_ref or grown.get(case.index, 0) >= MAX_REGROWTHS:
        return False
    current = case.extents.get(p.name, 0)
    needed = offset // p.scalar.size + 1
    if needed <= current:
        return False
    new = max(needed, current + current // 4 + 1)
    if new > MAX_ELEMENTS:
        return False
    case.extents[p.name] = new
    grown[case.index] = grown.get(case.index, 0) + 1
    return True


def run_reference(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, *, per_input_s: int = 10,
                  budget_s: float = 120.0, sanitised: bool = True) -> ReferenceRun:
    """Run the built reference over ``inputs`` (see the module docstring)."""
    start = time.monotonic()
    remaining = list(inputs)
    run = ReferenceRun(records={}, inputs=[], sanitised=sanitised)
    grown: dict[int, int] = {}
    append = False
    env, rlimits = _reference_env(workdir), _reference_rlimits(per_input_s)
    while remaining:
        left = budget_s - (time.monotonic() - start)
        if left <= 1:
            for case in remaining:
                run.discarded[case.index] = f"the reference's time budget ({budget_s:g} s) ran out"
            break
        p = _run_pass(workdir, remaining, c, None, append, per_input_s, left, env, rlimits)
        append = True
        guards = {int(args[0]) for name, args in p.markers if name == "MOT_GUARD"}
        resized = {int(args[0]) for name, args in p.markers if name == "MOT_RESIZED"}
        for case in remaining:
            if case.index in p.records:
                if case.index in guards:
                    run.discarded[case.index] = "the reference wrote out of bounds (a guard zone changed)"
                elif case.index in resized:
                    run.discarded[case.index] = "the reference resized a std::vector (a kernel cannot)"
                else:
                    run.records[case.index] = p.records[case.index]
        done = set(p.records)
        remaining = [case for case in remaining if case.index not in done]
        if not remaining:
            break
        culprit = remaining[0]
        oob = next((args for name, args in p.markers if name == "MOT_REF_OOB" and int(args[0]) == culprit.index), None)
        if oob is not None and _regrow(culprit, c, oob, grown):
            run.regrown += 1
            continue
        if oob is not None:
            name = c.params[int(oob[1])].name if 0 <= int(oob[1]) < len(c.params) else "memory"
            where = "before the start" if int(oob[2]) < 0 else "past the end"
            run.discarded[culprit.index] = f"the reference {oob[3]}s {name} {where} (out of bounds)"
        else:
            run.discarded[culprit.index] = "the reference " + _culprit_reason(p, per_input_s)
        remaining = remaining[1:]
    if Path(workdir, "prog_zero").exists():
        _discard_uninitialised(workdir, inputs, c, run, per_input_s, budget_s - (time.monotonic() - start))
    run.inputs = [case for case in inputs if case.index in run.records]
    run.seconds = time.monotonic() - start
    return run


def _discard_uninitialised(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, run: ReferenceRun,
                           per_input_s: int, budget_s: float) -> None:
    """Re-run the kept inputs with zeroed locals (``prog_zero``); an input whose records change read an
    uninitialised variable of the C code, and is discarded."""
    env, rlimits = _reference_env(workdir), _reference_rlimits(per_input_s)
    remaining = [case for case in inputs if case.index in run.records]
    append = False
    start = time.monotonic()
    while remaining and budget_s - (time.monotonic() - start) > 1:
        p = _run_pass(workdir, remaining, c, None, append, per_input_s, budget_s - (time.monotonic() - start), env,
                      rlimits, binary="prog_zero")
        append = True
        for case in remaining:
            if case.index in p.records and p.records[case.index] != run.records[case.index]:
                del run.records[case.index]
                run.discarded[case.index] = ("the reference reads an uninitialised variable (its result changes "
                                             "with what the stack held)")
        missing = [case for case in remaining if case.index not in p.records]
        if missing:
            del run.records[missing[0].index]
            run.discarded[missing[0].index] = ("the reference reads an uninitialised variable (it fails with "
                                               "zeroed locals: " + _culprit_reason(p, per_input_s) + ")")
            remaining = [case for case in remaining if case.index not in p.records][1:]
        else:
            remaining = []


@dataclass
class KernelRun:
    """The kernel program's records, and its first failure: (input index, what happened) or None."""

    records: dict[int, list[Item]]
    failure: tuple[int, str] | None = None
    seconds: float = 0.0


# Lines of the CPU backend's emulation that fail the input they appear under (MOT_NOTE lines are only notes).
EMULATION_FAILURES = ("MOT_RACE", "MOT_OOB", "MOT_FAULT", "MOT_BARRIER", "MOT_ERROR")
_FINDING = re.compile(r"^(MOT_[A-Z]+): (.*)$")


def _emulation_findings(stderr: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(failures as (input, text), notes) of the emulation's ``MOT_X: text`` lines, each attributed to the input
    whose ``MOT_BEGIN`` came last before it."""
    current, failures, notes = -1, [], []
    for line in stderr.splitlines():
        if line.startswith("MOT_BEGIN "):
            current = int(line.split()[1])
            continue
        found = _FINDING.match(line)
        if found is None:
            continue
        if found.group(1) in EMULATION_FAILURES:
            failures.append((current, f"{found.group(1)[4:].lower()}: {found.group(2).strip()}"))
        elif found.group(1) == "MOT_NOTE":
            notes.append(found.group(2).strip())
    return failures, notes


@dataclass(frozen=True)
class Failure:
    """An input on which the kernel program failed: what happened, and the argument it concerns (if known)."""

    input: int
    reason: str
    argument: str = ""


@dataclass
class KernelRun:
    """The kernel program's records, its first failure (in input order; None if none), its notes."""

    records: dict[int, list[Item]]
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_kernel(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, launches: dict[int, Launch], *,
               cuda: bool, per_input_s: int = 20, budget_s: float = 300.0, which: int = 0) -> KernelRun:
    """Run kernel number ``which`` of the built kernel program over ``inputs``; its first failure, in input order,
    is the one reported."""
    env = scrubbed_env(workdir, cuda=cuda)
    rlimits = run_rlimits(per_input_s, cuda=True)
    rlimits["RLIMIT_FSIZE"] = _OUTPUT_FILE_LIMIT
    p = _run_pass(workdir, inputs, c, launches, False, per_input_s, budget_s, env, rlimits, which=which)
    found, notes = _emulation_findings(p.stderr)
    failures = [Failure(index, text) for index, text in found]
    run = KernelRun(records=dict(p.records), notes=notes, seconds=p.seconds)
    for name, args in p.markers:
        if name == "MOT_GUARD":
            param = int(args[1])
            what = c.params[param].name if 0 <= param < len(c.params) else "the return-value slot"
            side = "before its start" if args[2] == "before" else "past its end"
            failures.append(Failure(int(args[0]), f"the kernel wrote out of bounds of {what} ({side}, byte "
                                                  f"{args[3]} of the guard zone)", what))
    missing = [case.index for case in inputs if case.index not in p.records]
    if missing and not any(f.input == missing[0] for f in failures):
        failures.append(Failure(missing[0], "the kernel program " + _culprit_reason(p, per_input_s)))
    if failures:
        order = {case.index: i for i, case in enumerate(inputs)}
        run.failure = min(failures, key=lambda f: order.get(f.input, len(order)))
    return run

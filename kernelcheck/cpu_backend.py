"""The CPU backend: CUDA kernels (and their host harness) compiled by g++ and run on the CPU, with CUDA's
semantics where they matter and the bugs a sequential run would hide made visible — for differential testing
of a translation on machines without a GPU (laptops, CI).

A plain module rather than a ``kernelcheck/emulation`` package: ``kernelcheck``'s submodules are flat modules
(``tests/test_kernelcheck.py`` imports each one and checks it stays torch-free), and ``emulation/`` holds only
the C++ headers (package data, no Python).  `kernelcheck.cpu_source` does the source rewrites; this module
builds and runs through `kernelcheck.sandbox` and reads the runtime's findings.  Standard library only.

Use::

    from kernelcheck.cpu_backend import check_on_cpu
    check = check_on_cpu(program_source, arg_sets=[["0"], ["1"]])
    check.status            # "unsupported" | "compile_error" | "ran"
    check.reason            # "not verifiable on CPU: ..." / the compiler's message / ""
    check.runs[0].stdout, check.runs[0].findings, check.runs[0].verdict

or step by step: `prepare_for_cpu` -> `build_cpu_program` (in a directory the caller made) -> `run_cpu_program`.

**What is emulated** (``kernelcheck/emulation/cuda_cpu.h``, with shims named ``cuda_runtime.h``, ``cuda.h``,
``cuda_runtime_api.h``, ``device_launch_parameters.h``): the qualifiers; ``dim3``, the vector types and
``make_*``; ``threadIdx``/``blockIdx``/``blockDim``/``gridDim`` per emulated thread, ``warpSize``;
``__shared__`` per block (blocks run one after another) and ``extern __shared__`` dynamic shared memory;
``__constant__``, ``__device__`` and ``__managed__`` variables; ``__syncthreads`` and its ``_count/_and/_or``
forms (a block's threads run as fibers once the program calls a barrier anywhere; otherwise each thread runs to
completion, with no context switch); the atomics (Add, Sub, Exch, Min, Max, Inc, Dec, CAS, And, Or, Xor for
int, unsigned, long long, unsigned long long, float, double as CUDA has them, plus ``_block``/``_system``);
fences; CUDA math: ``<math.h>`` with the float overloads, ``rsqrtf``, ``__fdividef``, ``__expf`` and the other
fast intrinsics (computed at full precision), ``__saturatef``, ``__float2int_rn`` and the other conversions (with
CUDA's saturation), bit casts, ``__popc``/``__clz``/``__brev``/..., ``__ldg`` and the cache hints, CUDA's exact
``min``/``max`` overload set (a mixed int/float call is ambiguous, as with nvcc); ``printf`` and ``assert``;
the host runtime: ``cudaMalloc`` (+ Managed/Host/Pitch), ``cudaFree``, ``cudaMemcpy`` (+ kinds, Async on the
default stream, 2D, To/FromSymbol), ``cudaMemset``, ``cudaDeviceSynchronize``, ``cudaGetLastError``,
``cudaPeekAtLastError``, ``cudaGetErrorString``/``Name``, device and occupancy queries,
``cudaFuncSetAttribute``.  ``kernel<<<...>>>`` becomes ``mot_cpu::launch(kernel, grid, block, bytes, args...)``
(`prepare_for_cpu`); an invalid launch (more than 1024 threads a block, a zero dimension, a grid too large, too
much dynamic shared memory) does not run and sets the error ``cudaGetLastError()`` returns, as on a GPU.

**What is not** — `prepare_for_cpu` returns ``Unsupported`` ("not verifiable on CPU: <feature> (<token>, line
N)"): warp-level primitives (``__shfl*``, ``__ballot*``, ``__any/__all_sync``, ``__activemask``,
``__syncwarp``, ``__match*``, ``__reduce*_sync``), cooperative groups, textures and surfaces, streams and events
(a launch on a stream other than 0 included), dynamic parallelism (a launch inside device code), inline PTX
(``asm``), half precision, tensor cores (WMMA), Thrust/CUB/libcu++/cuBLAS/cuRAND..., the driver API,
``cudaLaunchKernel`` and graphs, asynchronous copies, peer access (`kernelcheck.cpu_features`).

**Races** (a kernel with a race must not pass): every launch is checked twice.

1. Per thread segment (what a thread runs up to its next barrier), with the watched memory — every ``cudaMalloc``
   allocation (automatically), ``mot_cpu::watch``ed memory, ``__device__`` variables, the block's shared memory.
   The build instruments every load and store (``INSTRUMENT_FLAGS``: GCC's kernel-address instrumentation with a
   call per access, served by the header's own hooks, no sanitizer runtime).  The bytes a segment touched in
   allocations (the globals — shared memory, ``__device__`` variables — whole) are compared with a shadow copy
   when it ends; a byte changed by two threads that no barrier orders (the same barrier interval of one block, or
   two blocks) is a **write-write** race, unless both wrote it through atomics; a plain read of a byte that
   another thread of the block changed with a plain store in the same interval is a **read-after-write** race,
   reported where the read happens.  A write of the value already there changes nothing and is not reported
   (same-value races); reads across blocks are left to check 2 (a block may legitimately read what another
   published with ``__threadfence`` and an atomic).  Cost: a hook call per access (a kernel runs some 2-3x
   slower) and, past ``MOT_CPU_RACE_BUDGET`` (2^30) tracked accesses and compared bytes in a launch, the check
   stops (the first blocks are covered; a ``MOT_NOTE`` line says how many); it is off above
   ``MOT_CPU_RACE_MAX_BYTES`` (64 MiB) watched.  Without instrumentation (``instrument=False``, or clang++) the
   write-write check diffs all watched memory after every segment instead (buffers the kernel gets only as
   ``const T*`` excepted), so the same budget covers far fewer threads of a large launch.
2. Order dependence: the launch is re-run from the same memory with blocks and threads in reverse order (shared
   memory poisoned with another pattern); a watched byte that differs is a race (a thread reads what another
   writes, across blocks too, or reads uninitialised shared memory), unless only atomics wrote it (float atomics
   round differently in another order).  The in-order result is kept; the re-run's ``printf`` output is dropped.
   Off above ``MOT_CPU_ORDER_MAX_BYTES`` (256 MiB); each launch runs twice.

Findings print as ``MOT_RACE:`` lines naming the threads, blocks, kernel parameter and element, buffer and bytes
("data race: threads (3,0,0) and (7,0,0) of block (0,0,0) both write result[0] (buffer 2 "d_result", bytes
0..3) without a barrier between them in kernel sum (launch 1)").

**Out-of-bounds accesses**: each allocation sits between 256+ bytes of guard zones (canary-filled; the dynamic
shared memory has one after it).  Instrumented, any read or write of a guard zone is reported at once
(``MOT_OOB: out-of-bounds read of 4 bytes in buffer 1 "d_in" (256 bytes) at offset +256 (past its end) by thread
(31,0,0) of block (1,0,0) in kernel k (launch 1)``).  The canaries are also checked after every launch, at
``cudaFree``, by ``mot_cpu::check_guards()`` and at exit, which catches writes without instrumentation (reads then
get the canary, -6.5e35f, and show in the results).  An access beyond the guard zones lands in other memory and is
not seen as such; static ``__shared__`` arrays have no guards.  ``sanitize=True`` builds with AddressSanitizer
instead (exact-size allocations; out-of-bounds reads and writes are caught, also in shared and local arrays;
fibers are announced to ASan): slower, no guards, no race tracking by access, and its report ends the run (an
``oob`` finding).  A kernel that crashes prints ``MOT_FAULT`` with its thread and block and dies of the signal (an
illegal address on a GPU); a pointer argument that is not device memory is a ``MOT_HOST_POINTER`` finding.

**Known differences from a GPU**: no FMA contraction (``-ffp-contract=off``; nvcc contracts ``a*b+c`` by default,
so results can differ in the last bits unless the kernel calls ``fmaf``); fast intrinsics are exact; float
conversions and ``__f*_rz/ru/rd`` round to nearest; execution is sequential, so warp-synchronous code (lanes
assumed in lockstep without ``__syncwarp``) is reported as a race or computes differently; a block that spins on
a flag another block sets never ends (the time limit stops it); integer division by zero kills the run
(``MOT_FAULT``); a plain ``(int)`` cast of an out-of-range float is x86's, not CUDA's saturation; fresh
``cudaMalloc`` memory is zero (``MOT_CPU_ALLOC_FILL``); device ``printf`` is printed at once.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from .cpu_source import Prepared, Unsupported, prepare_for_cpu
from .sandbox import (
    DEFAULT_COMPILE_TIMEOUT_S,
    DEFAULT_MAX_OUTPUT_BYTES,
    DEFAULT_TIMEOUT_S,
    Compiled,
    compile_program,
    decode_output,
    run_rlimits,
    run_sandboxed,
    scrubbed_env,
)
from .toolchain import find_gxx

__all__ = ["HEADER_DIR", "GXX_CPU_FLAGS", "SANITIZE_FLAGS", "INSTRUMENT_FLAGS", "FINDING_KINDS", "CpuBackendError", "Finding", "CpuRun",
           "CpuCheck", "Prepared", "Unsupported", "prepare_for_cpu", "instrumentable", "gxx_cpu_command", "build_cpu_program",
           "run_cpu_program", "parse_findings", "check_on_cpu"]

HEADER_DIR = Path(__file__).resolve().parent / "emulation"
# -O1: fast enough to run, quick to build.  -ffp-contract=off: no FMA contraction the source did not ask for (so
# the kernel rounds like the C++ reference).  -fno-strict-aliasing: kernels pun float/int through pointers
# (atomicCAS loops).  -w: the harness shows errors, and warnings about model output are noise there.
GXX_CPU_FLAGS = ("-std=c++17", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-w")
SANITIZE_FLAGS = ("-fsanitize=address", "-fno-omit-frame-pointer")
# Every load and store of the program calls the runtime's hooks (kernel-address instrumentation, no sanitizer
# runtime): exact write tracking for the race checks and out-of-bounds reads (mot_cpu_instrument.h).  GCC's
# spelling; other compilers build without it (the race check then diffs memory, with a budget).
INSTRUMENT_FLAGS = ("-fsanitize=kernel-address", "--param", "asan-instrumentation-with-call-threshold=0", "--param",
                    "asan-stack=0", "--param", "asan-globals=0", "-DMOT_CPU_INSTRUMENTED=1")
SOURCE_NAME = "prog.cpp"
BINARY_NAME = "prog"
# AddressSanitizer reserves terabytes of address space, so it runs without RLIMIT_AS and bounds itself.
_ASAN_OPTIONS = "detect_leaks=0:allocator_may_return_null=1:hard_rss_limit_mb=2048:print_summary=1"

FINDING_KINDS = ("race", "oob", "fault", "barrier", "host_pointer", "error", "note")
_FINDING_RE = re.compile(r"^MOT_(RACE|OOB|FAULT|BARRIER|HOST_POINTER|ERROR|NOTE): (.*)$", re.M)
_SUMMARY_RE = re.compile(r"^MOT_CPU_SUMMARY: (.*)$", re.M)
_ASAN_RE = re.compile(r"ERROR: AddressSanitizer: ([\w-]+).*?\n(READ|WRITE)? ?(?:of size (\d+))?.*?\n\s*#0 [^\n]*? in "
                      r"([^\n(]+)", re.S)


class CpuBackendError(RuntimeError):
    """The CPU backend cannot work here (no C++ compiler)."""


@dataclass(frozen=True)
class Finding:
    """One line the runtime printed: ``kind`` (one of `FINDING_KINDS`) and its message."""

    kind: str
    message: str

    @property
    def is_problem(self) -> bool:
        """Races, out-of-bounds writes, faults, barrier divergence, host pointers given to a kernel, internal
        errors; notes are not."""
        return self.kind != "note"


@dataclass
class CpuRun:
    """One run of a built program (one argv)."""

    args: tuple[str, ...]
    returncode: int | None
    stdout: str
    stderr: str
    seconds: float
    timed_out: bool = False
    output_overflow: bool = False
    findings: tuple[Finding, ...] = ()
    summary: dict[str, int] = field(default_factory=dict)  # MOT_CPU_SUMMARY counts; empty: it died before exit

    @property
    def problems(self) -> tuple[Finding, ...]:
        return tuple(f for f in self.findings if f.is_problem)

    @property
    def verdict(self) -> str:
        """"" when the run shows no problem, else the first one ("data race: ...", "out-of-bounds write ...")."""
        if self.problems:
            return self.problems[0].message
        if self.timed_out:
            return "time limit exceeded"
        if self.output_overflow:
            return "output limit exceeded"
        return ""


@dataclass
class CpuCheck:
    """`check_on_cpu`'s outcome: prepared (or not), built (or not), and the runs."""

    prepared: Prepared | None
    unsupported: Unsupported | None
    compiled: Compiled | None
    runs: list[CpuRun] = field(default_factory=list)

    @property
    def status(self) -> str:
        if self.unsupported is not None:
            return "unsupported"
        if self.compiled is None or not self.compiled.ok:
            return "compile_error"
        return "ran"

    @property
    def reason(self) -> str:
        if self.unsupported is not None:
            return self.unsupported.reason
        if self.compiled is not None and not self.compiled.ok:
            return self.compiled.message
        return ""


def instrumentable(gxx: str) -> bool:
    """Whether ``gxx`` takes `INSTRUMENT_FLAGS` (GCC's g++; not clang++)."""
    return "clang" not in Path(gxx).name


def gxx_cpu_command(gxx: str, source: str = SOURCE_NAME, output: str = BINARY_NAME, *, sanitize: bool = False,
                    instrument: bool = True, defines: Mapping[str, object] | None = None) -> list[str]:
    """The g++ command line for a prepared program.  ``sanitize``: AddressSanitizer (then no instrumentation);
    ``instrument``: the access hooks where the compiler has them; ``defines``: the header's MOT_CPU_* settings."""
    flags = list(GXX_CPU_FLAGS)
    if sanitize:
        flags += SANITIZE_FLAGS
    elif instrument and instrumentable(gxx):
        flags += INSTRUMENT_FLAGS
    flags += [f"-D{name}={value}" for name, value in (defines or {}).items()]
    return [gxx, *flags, "-I", str(HEADER_DIR), "-o", output, source, "-lm"]


def build_cpu_program(source: str, workdir: str, *, gxx: str | None = None, sanitize: bool = False,
                      instrument: bool = True, defines: Mapping[str, object] | None = None,
                      timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S) -> Compiled:
    """Write prepared ``source`` into ``workdir`` and build it there in the sandbox (binary ``prog``).

    Raises `CpuBackendError` when there is no C++ compiler."""
    compiler = gxx or find_gxx()
    if compiler is None:
        raise CpuBackendError("no C++ compiler (g++, c++ or clang++) on PATH: the CPU backend needs one")
    (Path(workdir) / SOURCE_NAME).write_text(source, encoding="utf-8")
    command = gxx_cpu_command(compiler, sanitize=sanitize, instrument=instrument, defines=defines)
    return compile_program(command, workdir, timeout_s, binary=BINARY_NAME)


def _asan_findings(stderr: str) -> list[Finding]:
    found = []
    for m in _ASAN_RE.finditer(stderr):
        access = f"{m.group(2)} of {m.group(3)} bytes " if m.group(2) else ""
        found.append(Finding("oob", f"AddressSanitizer: {m.group(1)}: {access}in {m.group(4).strip()}"))
    return found


def parse_findings(stderr: str) -> tuple[tuple[Finding, ...], dict[str, int]]:
    """The MOT_* lines (and AddressSanitizer reports) of a run's stderr, and its MOT_CPU_SUMMARY counts."""
    findings = [Finding(m.group(1).lower(), m.group(2).strip()) for m in _FINDING_RE.finditer(stderr)]
    findings += _asan_findings(stderr)
    summary: dict[str, int] = {}
    m = _SUMMARY_RE.search(stderr)
    if m:
        for item in m.group(1).split():
            name, _, value = item.partition("=")
            if value.isdigit():
                summary[name] = int(value)
    return tuple(findings), summary


def run_cpu_program(workdir: str, args: Sequence[str] = (), *, timeout_s: float = DEFAULT_TIMEOUT_S,
                    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES, sanitize: bool = False) -> CpuRun:
    """Run ``workdir``/prog with ``args`` in the sandbox (time, memory and output limits, scrubbed environment)."""
    env = scrubbed_env(workdir)
    rlimits = run_rlimits(timeout_s, cuda=False)
    if sanitize:
        rlimits.pop("RLIMIT_AS", None)
        env["ASAN_OPTIONS"] = _ASAN_OPTIONS
    result = run_sandboxed([f"./{BINARY_NAME}", *map(str, args)], cwd=workdir, env=env, timeout_s=timeout_s,
                           rlimits=rlimits, max_output_bytes=max_output_bytes, kill_on_overflow=True)
    stderr = decode_output(result.stderr)
    findings, summary = parse_findings(stderr)
    return CpuRun(args=tuple(map(str, args)), returncode=result.returncode, stdout=decode_output(result.stdout),
                  stderr=stderr, seconds=result.seconds, timed_out=result.timed_out,
                  output_overflow=result.output_overflow, findings=findings, summary=summary)


def check_on_cpu(source: str, arg_sets: Sequence[Sequence[str]] = ((),), *, gxx: str | None = None,
                 sanitize: bool = False, instrument: bool = True, defines: Mapping[str, object] | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S,
                 max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES) -> CpuCheck:
    """Prepare ``source`` (a whole CUDA program), build it once in a fresh temporary directory and run it once
    per argv of ``arg_sets``."""
    prepared = prepare_for_cpu(source)
    if isinstance(prepared, Unsupported):
        return CpuCheck(prepared=None, unsupported=prepared, compiled=None)
    with tempfile.TemporaryDirectory(prefix="mot-cpu-") as workdir:
        compiled = build_cpu_program(prepared.source, workdir, gxx=gxx, sanitize=sanitize, instrument=instrument,
                                     defines=defines, timeout_s=compile_timeout_s)
        check = CpuCheck(prepared=prepared, unsupported=None, compiled=compiled)
        if compiled.ok:
            check.runs = [run_cpu_program(workdir, args, timeout_s=timeout_s, max_output_bytes=max_output_bytes,
                                          sanitize=sanitize) for args in arg_sets]
    return check

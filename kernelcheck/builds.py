"""Building the programs of a differential check (through `kernelcheck.sandbox.compile_program`).

* The **reference** (`build_reference`): g++ with AddressSanitizer and UndefinedBehaviorSanitizer
  (`SANITIZER_FLAGS`, ``-fno-sanitize-recover``: the first report ends the run) where this g++ can build and run
  them (`sanitizer_flags`, probed once), else plain g++ (canaries only); twice where the compiler takes
  ``-ftrivial-auto-var-init``: ``prog`` with uninitialised locals patterned, ``prog_zero`` with them zeroed (the
  runner discards an input on which they disagree).
* The **kernel program** (`build_kernel`): nvcc for the GPU (`kernelcheck.functional.nvcc_command`:
  ``-fmad=false``, the GPU's ``-arch``), g++ with the CPU backend's flags and headers for the CPU.

g++ builds precompile the program's head (`kernelcheck.functional.PreludePCH`) and link the runtime from an
object built once per flag set (`RuntimeObject`): most of a build's time was the prelude and the runtime.
"""

from __future__ import annotations

import atexit
import tempfile
import threading
from pathlib import Path
from typing import Sequence

from .cpu_backend import GXX_CPU_FLAGS, HEADER_DIR, INSTRUMENT_FLAGS, instrumentable
from .functional import PreludePCH, nvcc_command
from .harness import Program
from .harness_runtime import RUNTIME_HEADER, RUNTIME_SOURCE
from .sandbox import compile_program, run_rlimits, run_sandboxed, scrubbed_env
from .toolchain import Toolchain

__all__ = ["BASE_FLAGS", "SANITIZER_FLAGS", "CPU_KERNEL_FLAGS", "RuntimeObject", "sanitizer_flags",
           "build_reference", "build_kernel", "reference_env", "reference_rlimits", "OUTPUT_FILE_LIMIT"]

BASE_FLAGS = ("-std=c++17", "-O0", "-w")
SANITIZER_FLAGS = ("-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
                   "-fno-omit-frame-pointer")
CPU_KERNEL_FLAGS = GXX_CPU_FLAGS
SANITIZER_ENV = {
    "ASAN_OPTIONS": "detect_leaks=0:halt_on_error=1:exitcode=86:allocator_may_return_null=1:"
                    "hard_rss_limit_mb=2048:handle_abort=1:print_summary=1",
    "UBSAN_OPTIONS": "halt_on_error=1:exitcode=87:print_stacktrace=0",
}
OUTPUT_FILE_LIMIT = 256 << 20


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
                ran = built.ok and run_sandboxed(["./prog"], cwd=tmp, env=reference_env(tmp), timeout_s=30,
                                                 rlimits=reference_rlimits(30)).returncode == 0
                _SANITIZERS_OK[gxx] = bool(ran)
        return SANITIZER_FLAGS if _SANITIZERS_OK[gxx] else ()


def reference_env(tmp: str) -> dict[str, str]:
    return scrubbed_env(tmp) | SANITIZER_ENV


def reference_rlimits(timeout_s: float) -> dict[str, int]:
    """Run limits without an address-space cap (AddressSanitizer reserves terabytes of shadow memory; its own
    ``hard_rss_limit_mb`` bounds the memory instead) and with room for the records file."""
    limits = run_rlimits(timeout_s, cuda=True)
    limits["RLIMIT_FSIZE"] = OUTPUT_FILE_LIMIT
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
               filename: str, include_dirs: Sequence[str] = (), binary: str = "prog",
               runtime_flags: Sequence[str] | None = None) -> tuple[bool, str, float]:
    """g++ build of a program: its head precompiled, the runtime linked from its object built with
    ``runtime_flags`` (default ``flags``; inline as fallback)."""
    includes = tuple(f"-I{d}" for d in include_dirs)
    runtime = RuntimeObject.path(tc.gxx, runtime_flags if runtime_flags is not None else flags, timeout_s)
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
    # The CPU backend instruments every load and store of the program (its race and out-of-bounds checks by
    # access); the runtime object stays uninstrumented: it is harness code, and the hooks live in the header.
    flags = (*CPU_KERNEL_FLAGS, *INSTRUMENT_FLAGS) if instrumentable(tc.gxx) else CPU_KERNEL_FLAGS
    return _build_gxx(program, tc, workdir, timeout_s, flags, "kernel_program.cpp", (str(HEADER_DIR),),
                      runtime_flags=CPU_KERNEL_FLAGS)

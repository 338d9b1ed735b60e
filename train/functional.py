"""Functional correctness of C/C++ -> CUDA translations (BabelTower executable format).

Every case of a BabelTower executable file (``exec_dev.jsonl``: ``id``, ``cpp_code``, ``cuda_code``,
``consistent_cpp_inputs``, ``consistent_cuda_inputs``, ``cuda_wrapper``, ``consistent_outputs``) is checked in
two independent halves:

* **C++ reference** (g++, runs on any CPU): ``cpp_code`` + the test statements of ``consistent_cpp_inputs``.
  This checks the data/harness itself: the reference must reproduce ``consistent_outputs``.
* **CUDA candidate** (nvcc, needs a GPU to run): the candidate kernel + the case's ``cuda_wrapper`` (host code
  ``<name>_invoke_in_cpp`` that allocates, copies, launches the kernel and copies back) + the test statements of
  ``consistent_cuda_inputs``.  If the candidate's ``__global__`` function has another name than the kernel the
  wrapper launches, the launch in the wrapper is renamed to the candidate's kernel (as the BabelTower
  evaluation does).

Both programs get the harness's own ``wrapper(function, args...)`` template (``_PRELUDE``): it calls the
function and prints ``Return value: <value|void>`` then ``Arguments after function call: (a, b, ...)``.  Test
statements declare real C arrays (``float A3[] = {...}; wrapper(f, A3, 3);``): the template takes its arguments
as forwarding references, so an array keeps its type ``T (&)[N]`` and is printed whole as ``[ x, y, z ]``
(its length ``N`` is known statically); scalars are printed with ``std::cout <<`` (default precision, chars as
raw characters) exactly like the published outputs.  One binary is built per case (tests are selected with
``argv[1]``) and every test runs in its own process; stdout is compared with ``consistent_outputs``
whitespace-insensitively (``" ".join(text.split())``).

Outcome of each (case, sample)::

    pass            every test printed the expected output
    wrong_output    a test printed something else (a unified diff is kept)
    runtime_error   non-zero exit / signal / output over the size limit / a CUDA error after the call
                    (launch failure, illegal address) with a wrong output (with any output under
                    --strict_cuda_errors; a matching output passes and the error is listed, see _run_tests)
    timeout         a test ran past the time limit (its process group is killed)
    compile_error   nvcc rejected the candidate (the message is kept); also an empty prediction
    skipped         it compiled, but there is no GPU, so it was NOT run (never counted as a pass)
    unavailable     there is no nvcc, nothing was built

Without a GPU (CI, laptops) the build stage still runs, since nvcc builds device code without a GPU; the run
stage is then reported as ``skipped (no GPU)`` and pass@k is ``null``.  Without nvcc the run stage is
``unavailable (no nvcc)``.  nvcc is looked up on ``PATH``, in ``$CUDA_HOME/bin``, ``$CUDA_PATH/bin`` and
``/usr/local/cuda/bin``; a GPU is detected with ``nvidia-smi -L`` or, without nvidia-smi, a tiny CUDA probe.

Untrusted code: every build and run happens in a fresh temporary directory, as a plain subprocess (never in
the calling/daemon process) in its own session whose whole process group is killed at the time limit; stdout
is read up to ``max_output_bytes`` (the run is killed past it), stderr is truncated; the environment is
scrubbed to ``PATH``, ``HOME``/``TMPDIR`` = the temporary directory, ``LANG``, plus ``CUDA_VISIBLE_DEVICES`` and
``LD_LIBRARY_PATH`` for CUDA binaries; resource limits (core files off, file size, open files, CPU time and,
for compilers and CPU-only programs, the address space ``RLIMIT_AS``) are set by a tiny exec shim.  CUDA
binaries get no ``RLIMIT_AS``: the CUDA driver reserves tens to hundreds of GiB of *virtual* address space
(unified addressing) when it creates a context, so any useful limit makes ``cudaMalloc``/context creation
fail; their device memory is bounded by the GPU and their time by the timeout.  This is process isolation,
not a security sandbox: run untrusted model output in a container or VM.

nvcc flags: ``-std=c++17 --expt-relaxed-constexpr -fmad=false`` (+ ``-arch=sm_XY`` of the detected GPU when
nvcc supports it).  ``-fmad=false`` stops nvcc from contracting ``a*b+c`` into FMAs, whose different rounding
can make exact comparisons with the CPU-generated ``consistent_outputs`` fail for correct kernels.  g++ flags:
``-std=c++17 -O0`` with the prelude precompiled once per process.

Determinism: some tests leave output arrays partly unwritten or read/write a little past an array (undefined
behaviour in the data set).  The published outputs show zeros and untouched neighbours there, so each test
runs in its own function on a zeroed stack and its local arrays are declared ``alignas(4096)`` (zeroed padding
between them).  With that, 121 of the 122 C++ references of exec_dev.jsonl reproduce ``consistent_outputs``
(case 196 reads ``vec[1..2]`` of a one-element array: it depends on the original stack layout).  Measured on
an H200 (nvcc 13.0, sm_90): 121/122 reference kernels pass (about 93 s wall with 16 workers); 4 of them (115, 126,
159, 186) pass with a CUDA error after the call, because the data's own wrapper launch fails and the expected
outputs are the untouched arguments (117/122 under ``--strict_cuda_errors``).  The wrappers of cases 132 and
224 launch no kernel at all: there a candidate is only compiled (listed in ``cases_without_kernel_launch``).

Several samples per case give pass@k with the unbiased estimator of Chen et al. (2021),
``1 - C(n-c, k) / C(n, k)`` computed as a stable product.  Identical samples of a case are built once.

Library::

    from train.functional import load_exec_cases, evaluate_functional, has_test_cases
    cases = load_exec_cases("../shared/data/babeltower/exec_dev.jsonl")
    report = evaluate_functional(cases, {c.id: [c.cuda_code] for c in cases}, timeout_s=10, workers=4)
    report.summary()        # dict: counts, compile_rate, pass@k, run_stage, C++ reference check
    report.results          # list[SampleResult], one per (case, sample)

Command line (``python -m train.functional``; also ``mot-eval functional`` / ``python -m train functional``)::

    python -m train.functional --data ../shared/data/babeltower/exec_dev.jsonl \\
        (--predictions preds.jsonl | --candidates reference) --output_dir out/ \\
        [--limit N] [--samples K] [--timeout S] [--workers N] [--compile_timeout S] \\
        [--max_output_bytes B] [--skip_cpp_reference] [--strict_cuda_errors] [--nvcc PATH] [--quiet]

``--predictions`` is JSONL, one ``{"id": ..., "prediction": "<cuda code>"}`` per line (the code field may
also be ``cuda`` or ``generated_cuda``; several lines with one id are several samples; markdown fences are
stripped).  ``--candidates reference`` evaluates the data set's own ``cuda_code``.  Writes
``out/functional_results.json`` (summary) and ``out/functional_cases.jsonl`` (one line per case/sample) and
prints a summary table.  Exit status 0 unless the arguments or the data are unusable.
"""

from __future__ import annotations

import argparse
import atexit
import dataclasses
import difflib
import hashlib
import json
import math
import os
import re
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

__all__ = [
    "OUTCOMES",
    "BROKEN_VARIANTS",
    "ExecCase",
    "TestRun",
    "SampleResult",
    "ReferenceCheck",
    "Toolchain",
    "FunctionalReport",
    "load_exec_cases",
    "has_test_cases",
    "load_predictions",
    "evaluate_functional",
    "check_cpp_references",
    "detect_toolchain",
    "find_nvcc",
    "find_gxx",
    "pass_at_k",
    "normalize_output",
    "make_broken_candidate",
    "write_outputs",
    "functional_main",
]

OUTCOMES = ("pass", "wrong_output", "runtime_error", "timeout", "compile_error", "skipped", "unavailable")

RUN_STAGE_RAN = "ran"
RUN_STAGE_NO_GPU = "skipped (no GPU)"
RUN_STAGE_NO_NVCC = "unavailable (no nvcc)"

DEFAULT_TIMEOUT_S = 10.0
DEFAULT_COMPILE_TIMEOUT_S = 180.0
DEFAULT_MAX_OUTPUT_BYTES = 1 << 20
_MAX_STDERR_BYTES = 64 * 1024
_MAX_KEPT_TEXT = 4000

_GXX_FLAGS = ("-std=c++17", "-O0", "-w")
_GIB = 1 << 30
_RLIMIT_AS_COMPILER = 8 * _GIB
_RLIMIT_AS_CPU_RUN = 2 * _GIB

_REQUIRED_FIELDS = ("id", "consistent_cuda_inputs", "cuda_wrapper", "consistent_outputs")

# --------------------------------------------------------------------------------------------------------------
# The harness's C++ prelude: headers and the printing `wrapper` template (shared by g++ and nvcc programs).
# --------------------------------------------------------------------------------------------------------------
_PRELUDE = r"""
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cstdint>
#include <climits>
#include <cfloat>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>
#include <tuple>
#include <utility>
#include <type_traits>
#include <algorithm>
#include <numeric>
#include <functional>
#include <limits>
using namespace std;

namespace mot_functional {
// Scalars (and anything else printable): exactly what `std::cout << value` prints.
template <typename T>
inline void show(const T& value) { std::cout << value; }
// Arrays keep their static length through the forwarding reference: print every element.
template <typename T, std::size_t N>
inline void show(const T (&values)[N]) {
    std::cout << "[ ";
    for (std::size_t i = 0; i < N; ++i) {
        if (i != 0) std::cout << ", ";
        show(values[i]);
    }
    std::cout << " ]";
}
}  // namespace mot_functional

// wrapper(function, args...): call the function, print its return value, then every argument's final state.
template <typename Function, typename... Args>
void wrapper(Function&& function, Args&&... args) {
    using Result = decltype(function(args...));
    if constexpr (std::is_void<Result>::value) {
        function(args...);
        std::cout << "Return value: void" << std::endl;
    } else {
        Result result = function(args...);
        std::cout << "Return value: ";
        mot_functional::show(result);
        std::cout << std::endl;
    }
    std::cout << "Arguments after function call: (";
    bool first = true;
    ((std::cout << (first ? "" : ", "), first = false, mot_functional::show(args)), ...);
    std::cout << ")" << std::endl;
}
"""

_DISPATCH_HEAD = r"""
__attribute__((noinline)) static void mot_scrub_stack() {
    volatile unsigned char pad[1 << 20];
    for (unsigned i = 0; i < sizeof(pad); ++i) pad[i] = 0;
}
__attribute__((noinline)) static int mot_dispatch(int which) {
    volatile unsigned char headroom[1 << 16];
    for (unsigned i = 0; i < sizeof(headroom); ++i) headroom[i] = 0;
    switch (which) {"""

_DISPATCH_TAIL = r"""    std::cout.flush();
    return headroom[0];
}
int main(int argc, char** argv) {
    if (argc < 2) { std::fprintf(stderr, "usage: %s TEST_INDEX\n", argv[0]); return 2; }
    int which = std::atoi(argv[1]);
    mot_scrub_stack();
    return mot_dispatch(which);
}
"""

_CUDA_CHECK = r"""
    {
        cudaError_t mot_err = cudaDeviceSynchronize();
        if (mot_err == cudaSuccess) mot_err = cudaGetLastError();
        if (mot_err != cudaSuccess) {
            std::cout.flush();
            std::fprintf(stderr, "MOT_CUDA_ERROR: %s (%s)\n", cudaGetErrorName(mot_err), cudaGetErrorString(mot_err));
            return 3;
        }
    }
"""


# --------------------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecCase:
    """One BabelTower executable case."""

    id: str
    cpp_code: str
    cuda_code: str
    cpp_inputs: tuple[str, ...]
    cuda_inputs: tuple[str, ...]
    cuda_wrapper: str
    outputs: tuple[str, ...]

    @classmethod
    def from_record(cls, record: Mapping) -> "ExecCase":
        missing = [k for k in _REQUIRED_FIELDS if k not in record]
        if missing:
            raise ValueError(f"record {record.get('id', '?')!r} lacks executable fields {missing}")
        return cls(
            id=str(record["id"]),
            cpp_code=str(record.get("cpp_code") or ""),
            cuda_code=str(record.get("cuda_code") or ""),
            cpp_inputs=tuple(str(s) for s in record.get("consistent_cpp_inputs") or ()),
            cuda_inputs=tuple(str(s) for s in record["consistent_cuda_inputs"]),
            cuda_wrapper=str(record["cuda_wrapper"]),
            outputs=tuple(str(s) for s in record["consistent_outputs"]),
        )

    @property
    def launched_kernels(self) -> list[str]:
        """Names of the kernels the wrapper launches with ``<<<...>>>`` (empty for CPU-only wrappers)."""
        return _launch_names(self.cuda_wrapper)

    @property
    def launches_kernel(self) -> bool:
        """False for the few cases whose wrapper computes on the CPU: there the candidate is only compiled."""
        return bool(self.launched_kernels)


def load_exec_cases(path: str | os.PathLike) -> list[ExecCase]:
    """Read a BabelTower executable JSONL file (a JSON list is accepted too)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(stripped)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [ExecCase.from_record(r) for r in records]


def has_test_cases(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSONL/JSON data file whose records carry the executable (unit-test) fields."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
            first = head.lstrip()
            if not first:
                return False
            if first.startswith("["):
                fh.seek(0)
                records = json.load(fh)
                record = records[0] if records else None
            else:
                line = first.splitlines()[0]
                if not line.rstrip().endswith("}"):  # the first record is longer than what was read
                    fh.seek(0)
                    line = next(ln for ln in fh if ln.strip())
                record = json.loads(line)
    except (OSError, ValueError, UnicodeDecodeError, StopIteration, IndexError):
        return False
    return isinstance(record, dict) and all(k in record for k in _REQUIRED_FIELDS)


_PREDICTION_FIELDS = ("prediction", "cuda", "generated_cuda")


def load_predictions(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{"id": ..., "prediction"|"cuda"|"generated_cuda": code}`` JSONL -> {id: [sample, ...]} (file order)."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "id" not in record:
                raise ValueError(f"{path}:{lineno}: no 'id' field")
            for name in _PREDICTION_FIELDS:
                if name in record:
                    code = record[name]
                    break
            else:
                raise ValueError(f"{path}:{lineno}: none of the fields {_PREDICTION_FIELDS}")
            out.setdefault(str(record["id"]), []).append("" if code is None else str(code))
    return out


# --------------------------------------------------------------------------------------------------------------
# Source helpers
# --------------------------------------------------------------------------------------------------------------
_LAUNCH_RE = re.compile(r"\b([A-Za-z_]\w*)\s*(?:<[^<>;(){}]*>\s*)?<<<")
_GLOBAL_RE = re.compile(r"__global__\b[^;{}()]*?\b([A-Za-z_]\w*)\s*\(")
_FENCE_RE = re.compile(r"```[ \t]*[\w+.-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)
_MAIN_RE = re.compile(r"\bmain\s*\(")


def _launch_names(code: str) -> list[str]:
    names: list[str] = []
    for m in _LAUNCH_RE.finditer(code):
        if m.group(1) not in names:
            names.append(m.group(1))
    return names


def _global_functions(code: str) -> list[str]:
    names: list[str] = []
    for m in _GLOBAL_RE.finditer(code):
        if m.group(1) not in names and m.group(1) not in ("__launch_bounds__",):
            names.append(m.group(1))
    return names


def strip_code_fences(text: str) -> str:
    """Keep the contents of markdown code blocks when a prediction has any."""
    if "```" not in text:
        return text
    blocks = _FENCE_RE.findall(text)
    return "\n".join(blocks) if blocks else text.replace("```", "")


def _match_close(code: str, open_index: int, opening: str, closing: str) -> int:
    depth = 0
    for i in range(open_index, len(code)):
        ch = code[i]
        if ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return i
    return -1


def _kernel_span(code: str, name: str | None = None) -> tuple[int, int] | None:
    """(index of the body's ``{``, index of its ``}``) of a ``__global__`` function (the first if no name)."""
    for m in _GLOBAL_RE.finditer(code):
        if name is not None and m.group(1) != name:
            continue
        close_paren = _match_close(code, m.end() - 1, "(", ")")
        if close_paren < 0:
            return None
        brace = code.find("{", close_paren)
        if brace < 0:
            return None
        end = _match_close(code, brace, "{", "}")
        return (brace, end) if end > 0 else None
    return None


def _param_count(code: str, name: str) -> int | None:
    m = re.search(r"\b" + re.escape(name) + r"\s*\(", code)
    if not m:
        return None
    close = _match_close(code, m.end() - 1, "(", ")")
    inside = code[m.end(): close].strip() if close > 0 else ""
    if not inside or inside == "void":
        return 0
    depth, count = 0, 1
    for ch in inside:
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        elif ch == "," and depth == 0:
            count += 1
    return count


def adapt_wrapper(wrapper_code: str, candidate: str) -> tuple[str, str | None]:
    """Rename the wrapper's kernel launch to the candidate's ``__global__`` function when their names differ.

    Returns (wrapper, note).  Nothing changes when the launched kernel is defined by the candidate, when the
    candidate has no ``__global__`` function (then the build fails: the launched kernel is undeclared), or when
    the wrapper launches nothing.
    """
    launched = _launch_names(wrapper_code)
    kernels = _global_functions(candidate)
    if not launched or not kernels or all(name in kernels for name in launched):
        return wrapper_code, None
    notes = []
    for old in launched:
        if old in kernels:
            continue
        choice = kernels[0]
        if len(kernels) > 1:
            wanted = _param_count(wrapper_code[wrapper_code.find(old):], old)
            same = [k for k in kernels if _param_count(candidate, k) == wanted]
            choice = same[0] if same else kernels[0]
        wrapper_code = re.sub(r"\b" + re.escape(old) + r"(\s*(?:<[^<>;(){}]*>\s*)?<<<)", choice + r"\1", wrapper_code)
        notes.append(f"wrapper launch {old} -> {choice}")
    return wrapper_code, "; ".join(notes) or None


_ARRAY_ALIGN = 4096
_ARRAY_DECL_RE = re.compile(
    r"^([ \t]*)(?=(?:(?:const|static|volatile|unsigned|signed|long|short)\s+)*"
    r"(?:float|double|int|char|long|short|bool|size_t|unsigned|signed|u?int(?:8|16|32|64)_t)\b[\w \t]*?\b\w+\s*\[)",
    re.M)


def isolate_arrays(statements: str, align: int = _ARRAY_ALIGN) -> str:
    """Prefix the test's local array declarations with ``alignas(align)``.

    A few references/wrappers read or write slightly past a test array (undefined behaviour in the data set);
    where arrays sit back to back that corrupts a neighbouring argument and the printed result depends on the
    compiler's stack layout.  Page-aligned arrays are separated by zeroed padding instead, which reproduces
    the published outputs (see ``_test_dispatch``).
    """
    return _ARRAY_DECL_RE.sub(lambda m: f"{m.group(1)}alignas({align}) ", statements)


def _test_dispatch(inputs: Sequence[str], after_each: str = "") -> str:
    """One function per test (selected by ``argv[1]``), called on a zeroed stack.

    Uninitialized locals (output arrays the code under test leaves partly unwritten) and small out-of-bounds
    reads of a few cases would otherwise print stack garbage; the published outputs were made in fresh
    processes and show zeros there.  So ``main`` first zeroes 1 MiB of stack below itself, and the dispatcher
    keeps 64 KiB of zeros above the test's frame.
    """
    parts = ["namespace mot_functional_tests {"]
    for i, stmt in enumerate(inputs):
        parts.append(f"__attribute__((noinline)) void test_{i}() {{")
        parts.append(isolate_arrays(stmt))
        parts.append("}")
    parts.append("}  // namespace mot_functional_tests")
    parts.append(_DISPATCH_HEAD)
    for i in range(len(inputs)):
        parts.append(f"        case {i}: mot_functional_tests::test_{i}(); break;")
    parts.append("        default: std::fprintf(stderr, \"no test %d\\n\", which); return 2;")
    parts.append("    }")
    if after_each:
        parts.append(after_each)
    parts.append(_DISPATCH_TAIL)
    return "\n".join(parts) + "\n"


def build_cpp_program(case: ExecCase, cpp_code: str | None = None, *, include_prelude: bool = True) -> str:
    """The g++ program of the C++ reference (or of ``cpp_code``): prelude + code + one function per test.

    ``include_prelude=False`` leaves the prelude out (it then comes from ``-include`` of a precompiled header).
    """
    code = case.cpp_code if cpp_code is None else cpp_code
    prelude = _PRELUDE if include_prelude else ""
    return f"{prelude}\n#line 1 \"reference.cpp\"\n{code}\n\n{_test_dispatch(case.cpp_inputs)}"


def build_cuda_program(case: ExecCase, candidate: str) -> tuple[str, str | None]:
    """The nvcc program: prelude + candidate kernel + (adapted) wrapper + one block per test. -> (source, note)"""
    wrapper_code, note = adapt_wrapper(case.cuda_wrapper, candidate)
    guard_main = bool(_MAIN_RE.search(candidate))
    pieces = [_PRELUDE, "#include <cuda_runtime.h>"]
    if guard_main:  # a candidate's own main() must not clash with the harness's
        pieces.append("#define main mot_candidate_main")
    pieces.append('#line 1 "candidate.cu"')
    pieces.append(candidate)
    if guard_main:
        pieces.append("#undef main")
    pieces.append('#line 1 "cuda_wrapper.cu"')
    pieces.append(wrapper_code)
    pieces.append(_test_dispatch(case.cuda_inputs, _CUDA_CHECK))
    return "\n".join(pieces), note


def normalize_output(text: str) -> str:
    """Whitespace-insensitive form used for comparisons."""
    return " ".join(text.split())


def _decode(data: bytes) -> str:
    return data.decode("utf-8", errors="replace")


def _clip(text: str, limit: int = _MAX_KEPT_TEXT) -> str:
    return text if len(text) <= limit else text[:limit] + f"\n... [{len(text) - limit} more characters]"


def _unified_diff(expected: str, actual: str) -> str:
    exp_lines = [normalize_output(line) for line in expected.splitlines() if line.strip()]
    act_lines = [normalize_output(line) for line in actual.splitlines() if line.strip()]
    diff = difflib.unified_diff(exp_lines, act_lines, "expected", "actual", lineterm="")
    return _clip("\n".join(diff))


# --------------------------------------------------------------------------------------------------------------
# Toolchain detection
# --------------------------------------------------------------------------------------------------------------
def find_nvcc(env: Mapping[str, str] | None = None) -> str | None:
    """nvcc on PATH, in $CUDA_HOME/bin, $CUDA_PATH/bin or /usr/local/cuda/bin (None if none is executable)."""
    env = os.environ if env is None else env
    found = shutil.which("nvcc", path=env.get("PATH"))
    if found:
        return found
    candidates = [Path(env[v]) / "bin" / "nvcc" for v in ("CUDA_HOME", "CUDA_PATH") if env.get(v)]
    candidates.append(Path("/usr/local/cuda/bin/nvcc"))
    for c in candidates:
        if c.is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def find_gxx(env: Mapping[str, str] | None = None) -> str | None:
    env = os.environ if env is None else env
    for name in ("g++", "c++", "clang++"):
        found = shutil.which(name, path=env.get("PATH"))
        if found:
            return found
    return None


@dataclass
class Toolchain:
    """What is available: g++ for the C++ references, nvcc for the build stage, a GPU for the run stage."""

    gxx: str | None
    nvcc: str | None
    gpu: bool
    gpu_info: str = ""
    arch: str | None = None

    @property
    def run_stage(self) -> str:
        if not self.nvcc:
            return RUN_STAGE_NO_NVCC
        return RUN_STAGE_RAN if self.gpu else RUN_STAGE_NO_GPU

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"run_stage": self.run_stage}


_TOOLCHAIN_CACHE: dict[tuple, Toolchain] = {}
_TOOLCHAIN_LOCK = threading.Lock()

_PROBE_SOURCE = r"""
#include <cstdio>
#include <cuda_runtime.h>
int main() {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) { std::printf("no GPU: %s\n", cudaGetErrorString(e)); return 1; }
    cudaDeviceProp p;
    if (n < 1 || cudaGetDeviceProperties(&p, 0) != cudaSuccess) { std::printf("no GPU: 0 devices\n"); return 1; }
    std::printf("%d.%d %s\n", p.major, p.minor, p.name);
    return 0;
}
"""


def _gpu_via_nvidia_smi() -> tuple[bool | None, str, str | None]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None, "nvidia-smi not found", None
    try:
        listing = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"nvidia-smi -L failed: {exc}", None
    gpus = [ln for ln in listing.stdout.splitlines() if ln.startswith("GPU ")]
    if listing.returncode != 0 or not gpus:
        msg = (listing.stdout + listing.stderr).strip().splitlines()
        return False, "nvidia-smi -L: " + (msg[0] if msg else f"exit {listing.returncode}, no GPU"), None
    cap = None
    try:
        q = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True,
                           text=True, timeout=30)
        first = q.stdout.strip().splitlines()[0].strip() if q.returncode == 0 and q.stdout.strip() else ""
        if re.fullmatch(r"\d+\.\d+", first):
            cap = first
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return True, gpus[0], cap


def _gpu_via_probe(nvcc: str) -> tuple[bool, str, str | None]:
    with tempfile.TemporaryDirectory(prefix="mot-func-probe-") as tmp:
        src = Path(tmp) / "probe.cu"
        src.write_text(_PROBE_SOURCE)
        build = _run_sandboxed([nvcc, "-o", "probe", "probe.cu"], cwd=tmp, env=_scrubbed_env(tmp, nvcc=nvcc),
                               timeout_s=DEFAULT_COMPILE_TIMEOUT_S, rlimits=_compiler_rlimits(300))
        if build.returncode != 0:
            return False, "CUDA probe did not build: " + _clip(_decode(build.stderr), 300), None
        run = _run_sandboxed(["./probe"], cwd=tmp, env=_scrubbed_env(tmp, cuda=True), timeout_s=60,
                             rlimits=_run_rlimits(60, cuda=True))
        out = _decode(run.stdout).strip()
        if run.returncode == 0 and re.match(r"\d+\.\d+ ", out):
            cap, name = out.split(" ", 1)
            return True, f"CUDA probe: {name}", cap
        return False, "CUDA probe: " + (out or _decode(run.stderr).strip() or f"exit {run.returncode}"), None


def _supported_arch(nvcc: str, cap: str | None) -> str | None:
    if not cap:
        return None
    arch = "sm_" + cap.replace(".", "")
    try:
        listing = subprocess.run([nvcc, "--list-gpu-arch"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return arch if ("compute_" + cap.replace(".", "")) in listing.stdout.split() else None


def _is_executable(path: str) -> bool:
    found = shutil.which(path)
    return bool(found) and os.access(found, os.X_OK)


def detect_toolchain(nvcc: str | None = None, gxx: str | None = None, *, refresh: bool = False) -> Toolchain:
    """Find g++, nvcc and a GPU (cached).  ``CUDA_VISIBLE_DEVICES`` set to ``""``/``-1`` means no GPU."""
    key = (nvcc, gxx, os.environ.get("PATH"), os.environ.get("CUDA_HOME"), os.environ.get("CUDA_VISIBLE_DEVICES"))
    with _TOOLCHAIN_LOCK:
        if not refresh and key in _TOOLCHAIN_CACHE:
            return _TOOLCHAIN_CACHE[key]
        nvcc_path = find_nvcc() if nvcc is None else (nvcc if _is_executable(nvcc) else None)
        gxx_path = find_gxx() if gxx is None else (gxx if _is_executable(gxx) else None)
        gpu, info, cap = False, "", None
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        if visible is not None and visible.strip() in ("", "-1"):
            info = f"CUDA_VISIBLE_DEVICES={visible!r} hides every GPU"
        else:
            found, info, cap = _gpu_via_nvidia_smi()
            if found is None:
                if nvcc_path:
                    gpu, info, cap = _gpu_via_probe(nvcc_path)
                else:
                    info += "; no nvcc for a CUDA probe"
            else:
                gpu = found
        arch = _supported_arch(nvcc_path, cap) if (gpu and nvcc_path) else None
        tc = Toolchain(gxx=gxx_path, nvcc=nvcc_path, gpu=gpu, gpu_info=info, arch=arch)
        _TOOLCHAIN_CACHE[key] = tc
        return tc


# --------------------------------------------------------------------------------------------------------------
# Sandboxed subprocesses
# --------------------------------------------------------------------------------------------------------------
# Runs as `python -I -S -c _SHIM limits.json cmd...`: sets the resource limits, then execs the command (the pid
# stays the same, so the session/process group made by start_new_session is the command's own).  A shim instead
# of preexec_fn because preexec_fn is unsafe with the thread pool.
_SHIM = (
    "import json,os,resource,sys\n"
    "for n,v in json.loads(sys.argv[1]).items():\n"
    "    r=getattr(resource,n,None)\n"
    "    if r is None: continue\n"
    "    soft,hard=(v,v) if n!='RLIMIT_CPU' else (v,v+1)\n"
    "    try: resource.setrlimit(r,(soft,hard))\n"
    "    except (ValueError,OSError): pass\n"
    "os.execvp(sys.argv[2],sys.argv[2:])\n"
)


@dataclass
class _Proc:
    returncode: int | None
    stdout: bytes
    stderr: bytes
    timed_out: bool = False
    output_overflow: bool = False
    seconds: float = 0.0


def _scrubbed_env(tmpdir: str, *, nvcc: str | None = None, cuda: bool = False) -> dict[str, str]:
    """Only what a compiler/program needs; nothing else (tokens, keys...) is inherited."""
    path = os.environ.get("PATH") or "/usr/local/bin:/usr/bin:/bin"
    if nvcc:
        path = str(Path(nvcc).resolve().parent) + os.pathsep + str(Path(nvcc).parent) + os.pathsep + path
    env = {"PATH": path, "HOME": tmpdir, "TMPDIR": tmpdir, "LANG": os.environ.get("LANG", "C.UTF-8")}
    if cuda or nvcc:
        for name in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH"):
            if name in os.environ:
                env[name] = os.environ[name]
    return env


def _compiler_rlimits(timeout_s: float) -> dict[str, int]:
    return {"RLIMIT_CORE": 0, "RLIMIT_CPU": int(timeout_s) + 5, "RLIMIT_AS": _RLIMIT_AS_COMPILER,
            "RLIMIT_FSIZE": 512 << 20, "RLIMIT_NOFILE": 1024}


def _run_rlimits(timeout_s: float, *, cuda: bool) -> dict[str, int]:
    limits = {"RLIMIT_CORE": 0, "RLIMIT_CPU": int(timeout_s) + 5, "RLIMIT_FSIZE": 16 << 20,
              "RLIMIT_NOFILE": 1024 if cuda else 256}
    if not cuda:  # see the module docstring: the CUDA driver needs a huge virtual address space
        limits["RLIMIT_AS"] = _RLIMIT_AS_CPU_RUN
    return limits


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    except OSError:
        try:
            proc.kill()
        except OSError:
            pass


def _run_sandboxed(cmd: Sequence[str], *, cwd: str, env: Mapping[str, str], timeout_s: float,
                   rlimits: Mapping[str, int] | None = None, max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES,
                   kill_on_overflow: bool = False) -> _Proc:
    """Run ``cmd`` in its own session; read at most ``max_output_bytes`` of stdout (kill past it when
    ``kill_on_overflow``), at most 64 KiB of stderr; kill the process group at the deadline."""
    argv = [sys.executable, "-I", "-S", "-c", _SHIM, json.dumps(dict(rlimits or {})), *cmd]
    start = time.monotonic()
    deadline = start + timeout_s
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
    except OSError as exc:
        return _Proc(127, b"", f"cannot start {cmd[0]}: {exc}".encode(), seconds=0.0)
    caps = {proc.stdout: max_output_bytes, proc.stderr: _MAX_STDERR_BYTES}
    bufs = {proc.stdout: bytearray(), proc.stderr: bytearray()}
    timed_out = overflow = False
    sel = selectors.DefaultSelector()
    try:
        for stream in (proc.stdout, proc.stderr):
            sel.register(stream, selectors.EVENT_READ)
        while sel.get_map():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            for key, _ in sel.select(min(remaining, 1.0)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                buf = bufs[key.fileobj]
                room = caps[key.fileobj] - len(buf)
                if room > 0:
                    buf += chunk[:room]
                if len(chunk) > room and key.fileobj is proc.stdout:
                    overflow = True
            if overflow and kill_on_overflow:
                break
        if not timed_out and not (overflow and kill_on_overflow):
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
    finally:
        _kill_group(proc)  # also reaps grandchildren left in the group
        proc.wait()
        sel.close()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
    return _Proc(None if timed_out else proc.returncode, bytes(bufs[proc.stdout]), bytes(bufs[proc.stderr]),
                 timed_out=timed_out, output_overflow=overflow, seconds=time.monotonic() - start)


def _describe_exit(proc: _Proc) -> str:
    if proc.output_overflow:
        return "output limit exceeded (the program was killed)"
    rc = proc.returncode
    if rc is not None and rc < 0:
        try:
            return f"killed by signal {signal.Signals(-rc).name}"
        except ValueError:
            return f"killed by signal {-rc}"
    return f"exit status {rc}"


# --------------------------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------------------------
@dataclass
class TestRun:
    index: int
    status: str  # pass | wrong_output | runtime_error | timeout
    seconds: float
    stdout: str = ""
    stderr: str = ""
    message: str = ""
    diff: str = ""
    cuda_error: str = ""  # CUDA error pending after the call (launch failure, illegal address...), if any


@dataclass
class SampleResult:
    case_id: str
    sample: int
    outcome: str
    message: str = ""
    diff: str = ""
    failed_test: int | None = None
    tests_passed: int = 0
    tests_total: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    kernel_launched: bool = True
    cuda_error: str = ""  # a CUDA error pending after a test whose output nevertheless matched
    note: str = ""
    candidate_sha1: str = ""
    cpp_reference: str | None = None  # outcome of the C++ reference check of this case (None: not checked)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ReferenceCheck:
    """Whether the C++ reference of a case reproduces ``consistent_outputs`` (g++, CPU)."""

    case_id: str
    outcome: str  # pass | wrong_output | runtime_error | timeout | compile_error | unavailable
    message: str = ""
    diff: str = ""
    failed_test: int | None = None
    tests_passed: int = 0
    tests_total: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    tests: list[TestRun] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("tests")
        return d


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), as a numerically stable product."""
    if n < 1 or k < 1 or k > n or c < 0 or c > n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def _id_key(case_id: str) -> tuple:
    return (0, int(case_id), "") if case_id.isdigit() else (1, 0, case_id)


def _standard_ks(max_samples: int) -> list[int]:
    return sorted({k for k in (1, 2, 5, 10, 20, 50, 100, max_samples) if 1 <= k <= max_samples})


@dataclass
class FunctionalReport:
    results: list[SampleResult]
    references: list[ReferenceCheck]
    toolchain: Toolchain
    case_ids: list[str]
    missing_predictions: list[str] = field(default_factory=list)
    cases_without_kernel_launch: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    reference_checked: bool = True

    @property
    def run_stage(self) -> str:
        return self.toolchain.run_stage

    def counts(self) -> dict[str, int]:
        counts = {o: 0 for o in OUTCOMES}
        for r in self.results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        return counts

    @property
    def compile_rate(self) -> float | None:
        built = [r for r in self.results if r.outcome != "unavailable"]
        if not built:
            return None
        return sum(r.outcome != "compile_error" for r in built) / len(built)

    def samples_per_case(self) -> dict[str, tuple[int, int]]:
        """case id -> (n samples, c passes)."""
        stats = {cid: [0, 0] for cid in self.case_ids}
        for r in self.results:
            s = stats.setdefault(r.case_id, [0, 0])
            s[0] += 1
            s[1] += r.outcome == "pass"
        return {cid: (n, c) for cid, (n, c) in stats.items()}

    def pass_at(self, k: int) -> float | None:
        """Mean pass@k over the cases (None unless the run stage ran, or when a case has fewer than k samples)."""
        if self.run_stage != RUN_STAGE_RAN:
            return None
        stats = [v for v in self.samples_per_case().values() if v[0] > 0]
        if not stats or any(n < k for n, _ in stats):
            return None
        return sum(pass_at_k(n, c, k) for n, c in stats) / len(stats)

    def summary(self) -> dict:
        per_case = self.samples_per_case()
        ns = [n for n, _ in per_case.values()] or [0]
        ks = _standard_ks(min(ns)) if min(ns) > 0 else []
        pass_k = {str(k): self.pass_at(k) for k in ks}
        counts = self.counts()
        out: dict = {
            "cases": len(self.case_ids),
            "samples": len(self.results),
            "samples_per_case": {"min": min(ns), "max": max(ns)},
            "run_stage": self.run_stage,
            "counts": counts,
            "compile_rate": self.compile_rate,
            "pass@1": pass_k.get("1"),
            "pass@k": pass_k,
            "cases_passing": sum(1 for n, c in per_case.values() if c > 0) if self.run_stage == RUN_STAGE_RAN else None,
            "toolchain": self.toolchain.to_dict(),
            "missing_predictions": self.missing_predictions,
            "cases_without_kernel_launch": self.cases_without_kernel_launch,
            "passes_with_cuda_error": sorted({r.case_id for r in self.results if r.outcome == "pass" and r.cuda_error},
                                             key=_id_key),
            "cpp_reference": self.reference_summary(),
            "wall_seconds": round(self.wall_seconds, 3),
            "compile_seconds_total": round(sum(r.compile_seconds for r in self.results), 3),
            "run_seconds_total": round(sum(r.run_seconds for r in self.results), 3),
        }
        if self.run_stage != RUN_STAGE_RAN:
            out["note"] = (f"run stage {self.run_stage}: pass@k is null; 'skipped' samples compiled but were not "
                           "run, they are not passes")
        return out

    def reference_summary(self) -> dict:
        if not self.reference_checked:
            return {"status": "not checked"}
        if not self.toolchain.gxx:
            return {"status": "unavailable (no g++)"}
        checked = [r for r in self.references]
        ok = [r for r in checked if r.outcome == "pass"]
        return {
            "status": "ran",
            "checked": len(checked),
            "reproduced": len(ok),
            "rate": (len(ok) / len(checked)) if checked else None,
            "not_reproduced": [{"id": r.case_id, "outcome": r.outcome, "failed_test": r.failed_test}
                               for r in checked if r.outcome != "pass"],
        }

    def format_table(self) -> str:
        s = self.summary()
        lines = [f"functional evaluation: {s['cases']} cases, {s['samples']} samples, run stage: {s['run_stage']}"]
        if self.toolchain.gpu_info:
            lines.append(f"  device: {self.toolchain.gpu_info}")
        lines.append(f"  {'outcome':<15}{'count':>7}{'share':>9}")
        total = max(1, s["samples"])
        for outcome, count in s["counts"].items():
            lines.append(f"  {outcome:<15}{count:>7}{count / total:>9.1%}")
        fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
        lines.append(f"  {'compile_rate':<15}{fmt(s['compile_rate']):>16}")
        for k, v in s["pass@k"].items():
            lines.append(f"  {'pass@' + k:<15}{fmt(v):>16}")
        if s["run_stage"] != RUN_STAGE_RAN:
            lines.append(f"  (pass@k n/a: run stage {s['run_stage']})")
        ref = s["cpp_reference"]
        if ref.get("status") == "ran":
            lines.append(f"  C++ references reproducing consistent_outputs: {ref['reproduced']}/{ref['checked']}")
        else:
            lines.append(f"  C++ references: {ref.get('status')}")
        if s["missing_predictions"]:
            lines.append(f"  cases without a prediction (counted as compile_error): {len(s['missing_predictions'])}")
        if s["passes_with_cuda_error"]:
            lines.append("  passes whose wrapper hit a CUDA error (outputs untouched, as expected by the data): "
                         + ", ".join(s["passes_with_cuda_error"]))
        if s["cases_without_kernel_launch"]:
            lines.append("  cases whose wrapper launches no kernel (candidate only compiled): "
                         + ", ".join(s["cases_without_kernel_launch"]))
        lines.append(f"  wall time: {s['wall_seconds']:.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------------------------
# Build & run
# --------------------------------------------------------------------------------------------------------------
_CUDA_ERROR_RE = re.compile(r"MOT_CUDA_ERROR: ([^\n]*)")


def _run_tests(binary_dir: str, inputs_count: int, expected: Sequence[str], *, timeout_s: float,
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
    env = _scrubbed_env(binary_dir, cuda=cuda)
    for i in range(inputs_count):
        if gate is not None:
            gate.acquire()
        try:
            proc = _run_sandboxed(["./prog", str(i)], cwd=binary_dir, env=env, timeout_s=timeout_s,
                                  rlimits=_run_rlimits(timeout_s, cuda=cuda), max_output_bytes=max_output_bytes,
                                  kill_on_overflow=True)
        finally:
            if gate is not None:
                gate.release()
        out, err = _decode(proc.stdout), _decode(proc.stderr)
        run = TestRun(index=i, status="pass", seconds=proc.seconds, stdout=_clip(out), stderr=_clip(err))
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
                run.diff = "" if matches or i >= len(expected) else _unified_diff(expected[i], out)
        elif proc.returncode != 0 or proc.output_overflow:
            run.status = "runtime_error"
            run.message = f"test {i}: {_describe_exit(proc)}" + (f": {_clip(err.strip(), 600)}" if err.strip() else "")
        elif i >= len(expected):
            run.status, run.message = "wrong_output", f"test {i} has no expected output"
        elif normalize_output(out) != normalize_output(expected[i]):
            run.status = "wrong_output"
            run.message = f"test {i}: output differs from consistent_outputs"
            run.diff = _unified_diff(expected[i], out)
        runs.append(run)
        if run.status != "pass":
            break
    return runs


def _summarize_runs(runs: list[TestRun], total: int) -> tuple[str, str, str, int | None, int, float]:
    passed = sum(r.status == "pass" for r in runs)
    seconds = sum(r.seconds for r in runs)
    failed = next((r for r in runs if r.status != "pass"), None)
    if failed is None:
        errors = sorted({r.cuda_error for r in runs if r.cuda_error})
        note = f" (with a CUDA error after the call: {'; '.join(errors)})" if errors else ""
        return "pass", f"{passed}/{total} tests passed{note}", "", None, passed, seconds
    return failed.status, failed.message, failed.diff, failed.index, passed, seconds


def _compile(compiler_cmd: list[str], tmp: str, timeout_s: float, nvcc: str | None = None) -> tuple[bool, str, float]:
    proc = _run_sandboxed(compiler_cmd, cwd=tmp, env=_scrubbed_env(tmp, nvcc=nvcc), timeout_s=timeout_s,
                          rlimits=_compiler_rlimits(timeout_s), max_output_bytes=_MAX_STDERR_BYTES)
    text = (_decode(proc.stderr) + _decode(proc.stdout)).strip()
    if proc.timed_out:
        return False, f"compiler timed out after {timeout_s:g} s", proc.seconds
    if proc.returncode != 0 or not (Path(tmp) / "prog").exists():
        return False, _clip(text or _describe_exit(proc)), proc.seconds
    return True, text, proc.seconds


class _PreludePCH:
    """The prelude precompiled once per process for g++ (saves ~1.5 s of header parsing per C++ build).

    Lives in a private temporary directory (made read-only) removed at exit; ``flags()`` is empty when the
    compiler cannot build it, and the prelude is then compiled inline.
    """

    _lock = threading.Lock()
    _built: dict[tuple, tuple[str, ...]] = {}
    _dirs: list[tempfile.TemporaryDirectory] = []

    @classmethod
    def flags(cls, gxx: str, compile_timeout_s: float) -> tuple[str, ...]:
        key = (gxx, _GXX_FLAGS, _PRELUDE)
        with cls._lock:
            if key in cls._built:
                return cls._built[key]
            result: tuple[str, ...] = ()
            holder = tempfile.TemporaryDirectory(prefix="mot-func-pch-")
            header = Path(holder.name) / "mot_prelude.hpp"
            header.write_text(_PRELUDE, encoding="utf-8")
            proc = _run_sandboxed([gxx, *_GXX_FLAGS, "-x", "c++-header", "-o", str(header) + ".gch", str(header)],
                                  cwd=holder.name, env=_scrubbed_env(holder.name), timeout_s=compile_timeout_s,
                                  rlimits=_compiler_rlimits(compile_timeout_s))
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
            pass
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
        pch = _PreludePCH.flags(tc.gxx, compile_timeout_s) if use_pch else ()
        source = build_cpp_program(case, cpp_code, include_prelude=not pch)
        (Path(tmp) / "reference.cpp").write_text(source, encoding="utf-8")
        ok, msg, csec = _compile([tc.gxx, *_GXX_FLAGS, *pch, "-o", "prog", "reference.cpp", "-lm"], tmp,
                                 compile_timeout_s)
        if not ok:
            return ReferenceCheck(case.id, "compile_error", msg, tests_total=total, compile_seconds=csec)
        runs = _run_tests(tmp, total, case.outputs, timeout_s=timeout_s, max_output_bytes=max_output_bytes,
                          cuda=False, gate=None)
    outcome, message, diff, failed, passed, rsec = _summarize_runs(runs, total)
    return ReferenceCheck(case.id, outcome, message, diff, failed, passed, total, csec, rsec,
                          tests=runs if keep_tests else [])


def _nvcc_command(tc: Toolchain, extra_flags: Sequence[str] = ()) -> list[str]:
    cmd = [tc.nvcc or "nvcc", "-std=c++17", "--expt-relaxed-constexpr", "-fmad=false", "-w",
           "-Wno-deprecated-gpu-targets"]
    if tc.arch:
        cmd.append(f"-arch={tc.arch}")
    cmd.extend(extra_flags)
    return cmd + ["-o", "prog", "candidate_program.cu"]


def _evaluate_candidate(case: ExecCase, candidate: str, *, tc: Toolchain, timeout_s: float,
                        compile_timeout_s: float, max_output_bytes: int, gate: threading.Semaphore | None,
                        nvcc_flags: Sequence[str], strict_cuda_errors: bool = False) -> SampleResult:
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
        result.message = "nvcc not found (PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin)"
        return result
    source, note = build_cuda_program(case, code)
    if note:
        result.note = (result.note + "; " if result.note else "") + note
    with tempfile.TemporaryDirectory(prefix="mot-func-cuda-") as tmp:
        (Path(tmp) / "candidate_program.cu").write_text(source, encoding="utf-8")
        ok, msg, csec = _compile(_nvcc_command(tc, nvcc_flags), tmp, compile_timeout_s, nvcc=tc.nvcc)
        result.compile_seconds = csec
        if not ok:
            result.outcome, result.message = "compile_error", msg
            return result
        if not tc.gpu:
            result.outcome = "skipped"
            result.message = f"built; not run: no GPU ({tc.gpu_info})" if tc.gpu_info else "built; not run: no GPU"
            return result
        runs = _run_tests(tmp, total, case.outputs, timeout_s=timeout_s, max_output_bytes=max_output_bytes,
                          cuda=True, gate=gate, strict_cuda_errors=strict_cuda_errors)
    outcome, message, diff, failed, passed, rsec = _summarize_runs(runs, total)
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
    fails the sample only when the output is wrong, unless ``strict_cuda_errors`` (see ``_run_tests``); such
    passes are listed in the summary's ``passes_with_cuda_error``.
    """
    start = time.monotonic()
    tc = toolchain or detect_toolchain()
    workers = workers or _default_workers()
    gate = threading.Semaphore(gpu_concurrency or min(workers, 8))
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
            return _evaluate_candidate(case, code, tc=tc, timeout_s=timeout_s, compile_timeout_s=compile_timeout_s,
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
    span = _kernel_span(code, name) or _kernel_span(code)
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
        close = _match_close(body, m.end() - 1, "(", ")")
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


# --------------------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------------------
def _build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m train.functional",
        description="Functional correctness of C->CUDA translations: build with nvcc, run on the GPU, compare "
                    "with the C++ reference outputs (BabelTower executable format).")
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
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    return p


def write_outputs(report: FunctionalReport, output_dir: Path) -> tuple[Path, Path]:
    output_dir.mkdir(parents=True, exist_ok=True)
    summary_path = output_dir / "functional_results.json"
    cases_path = output_dir / "functional_cases.jsonl"
    summary_path.write_text(json.dumps(report.summary(), indent=2) + "\n", encoding="utf-8")
    refs = {r.case_id: r for r in report.references}
    with open(cases_path, "w", encoding="utf-8") as fh:
        for r in report.results:
            line = r.to_dict()
            ref = refs.get(r.case_id)
            if ref is not None and ref.outcome != "pass":
                line["cpp_reference_detail"] = {"message": ref.message, "diff": ref.diff}
            fh.write(json.dumps(line) + "\n")
    return summary_path, cases_path


def functional_main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    data = Path(args.data)
    if not data.is_file():
        print(f"error: data file {data} not found", file=sys.stderr)
        return 2
    if not has_test_cases(data):
        print(f"error: {data} has no executable test fields {list(_REQUIRED_FIELDS)}", file=sys.stderr)
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
        print("note: nvcc not found (PATH, $CUDA_HOME/bin, $CUDA_PATH/bin, /usr/local/cuda/bin): "
              "CUDA candidates are 'unavailable'", file=sys.stderr)
    elif not tc.gpu:
        print(f"note: no GPU ({tc.gpu_info}): candidates are built but not run ('skipped', never 'pass')",
              file=sys.stderr)

    last = [0.0]

    def progress(done: int, total: int) -> None:
        now = time.monotonic()
        if not args.quiet and (done == total or now - last[0] > 5):
            last[0] = now
            print(f"  [{done}/{total}] builds/checks done", file=sys.stderr, flush=True)

    report = evaluate_functional(cases, predictions, timeout_s=args.timeout, workers=args.workers,
                                 compile_timeout_s=args.compile_timeout, max_output_bytes=args.max_output_bytes,
                                 check_reference=not args.skip_cpp_reference, toolchain=tc, samples=args.samples,
                                 strict_cuda_errors=args.strict_cuda_errors, progress=progress)
    summary_path, cases_path = write_outputs(report, Path(args.output_dir))
    print(report.format_table())
    print(f"wrote {summary_path} and {cases_path}")
    return 0


if __name__ == "__main__":
    sys.exit(functional_main())

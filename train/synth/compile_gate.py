"""The compile gates: every C function through g++ and every kernel through nvcc (`-c`, compile only), many per
compiler run, each run through `kernelcheck.sandbox`.

A compiler run costs about a second (nvcc one to two), so sources are compiled in batches: each source in its own
namespace (two pairs may share a function name), one file per batch. When a batch fails, its error lines name
the sources to blame (`kernelcheck.compile_check.parse_nvcc_diagnostics` reads both compilers' diagnostics); the
blamed ones are compiled again on their own and the rest as a batch, so a misattributed error can never reject a
source that compiles alone. A batch whose errors point nowhere is split in halves.
"""

from __future__ import annotations

import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from kernelcheck import toolchain
from kernelcheck.compile_check import CompileCheck, nvcc_compile_check, parse_nvcc_diagnostics
from kernelcheck.sandbox import clip_text, compiler_rlimits, decode_output, run_sandboxed, scrubbed_env

CPP_PRELUDE = "#include <cmath>\n#include <cstddef>\n#include <cstdlib>\n"  # what host code of this kind includes
GXX_SOURCE = "batch.cpp"
DEFAULT_BATCH = {"gxx": 200, "nvcc": 150}
COMPILE_TIMEOUT_S = 300.0


class CompilerMissing(RuntimeError):
    """The compiler this gate needs is not installed; the message says which and where it was looked for."""


@dataclass(frozen=True)
class Outcome:
    ok: bool
    message: str = ""  # the compiler's errors for this source (clipped) when not ok


Compile = Callable[[str], CompileCheck]


def gxx_compile_check(code: str, timeout_s: float = COMPILE_TIMEOUT_S, *, gxx: str | None = None) -> CompileCheck:
    """`g++ -std=c++17 -c` of `code` in a fresh temporary directory, in the sandbox (status as `CompileCheck`)."""
    gxx_path = gxx or toolchain.find_gxx()
    if gxx_path is None:
        return CompileCheck("unavailable", "no C++ compiler (g++, c++, clang++) on PATH")
    with tempfile.TemporaryDirectory(prefix="mot-synth-gxx-") as workdir:
        (Path(workdir) / GXX_SOURCE).write_text(code, encoding="utf-8")
        result = run_sandboxed([gxx_path, "-std=c++17", "-w", "-c", GXX_SOURCE, "-o", os.devnull], cwd=workdir,
                               env=scrubbed_env(workdir), timeout_s=timeout_s, rlimits=compiler_rlimits(timeout_s),
                               max_output_bytes=1 << 20, max_stderr_bytes=1 << 20)
    output = (decode_output(result.stderr) + decode_output(result.stdout)).strip()
    if result.start_failed:
        return CompileCheck("unavailable", result.start_error)
    if result.timed_out:
        return CompileCheck("timeout", f"g++ did not finish within {timeout_s} s")
    if result.returncode == 0:
        return CompileCheck("ok", output)
    return CompileCheck("error", output or f"g++ exited with status {result.returncode}",
                        parse_nvcc_diagnostics(output, code, GXX_SOURCE))


def _batch_source(sources: Sequence[str], prelude: str) -> tuple[str, list[tuple[int, int]]]:
    """One file with each source in its own namespace, and each source's 0-based line range [first, last]."""
    lines = prelude.splitlines()
    spans = []
    for k, source in enumerate(sources):
        lines.append(f"namespace synth_{k} {{")
        first = len(lines)
        lines += source.splitlines()
        spans.append((first, len(lines) - 1))
        lines.append("}")
    return "\n".join(lines) + "\n", spans


def _blamed(check: CompileCheck, spans: list[tuple[int, int]]) -> set[int]:
    lines = {problem.line for problem in check.diagnostics}
    return {k for k, (first, last) in enumerate(spans) if any(first <= line <= last for line in lines)}


def check_sources(sources: Sequence[str], compile_: Compile, prelude: str = "") -> list[Outcome]:
    """The outcome of compiling each source, found with as few compiler runs as the errors allow."""
    outcomes: dict[int, Outcome] = {}

    def visit(keys: list[int]) -> None:
        if not keys:
            return
        code, spans = _batch_source([sources[k] for k in keys], prelude)
        check = compile_(code)
        if check.status == "unavailable":
            raise CompilerMissing(check.message)
        if check.status == "ok":
            outcomes.update((k, Outcome(True)) for k in keys)
            return
        if len(keys) == 1:
            outcomes[keys[0]] = Outcome(False, clip_text(f"{check.status}: {check.message}", 2000))
            return
        blamed = _blamed(check, spans)
        if blamed and len(blamed) < len(keys):
            visit([keys[b] for b in sorted(blamed)])
            visit([k for b, k in enumerate(keys) if b not in blamed])
        else:
            visit(keys[: len(keys) // 2])
            visit(keys[len(keys) // 2:])

    visit(list(range(len(sources))))
    return [outcomes[k] for k in range(len(sources))]


def check_batched(sources: Sequence[str], compiler: str, *, batch: int | None = None,
                  workers: int = 1) -> list[Outcome]:
    """Compile `sources` ("gxx": C functions, "nvcc": kernels) in batches on `workers` threads.

    CompilerMissing when the compiler is not installed (the caller reports the gate as not run).
    """
    if compiler == "gxx":
        compile_, prelude = gxx_compile_check, CPP_PRELUDE
        if toolchain.find_gxx() is None:
            raise CompilerMissing("no C++ compiler (g++, c++, clang++) on PATH")
    elif compiler == "nvcc":
        nvcc = toolchain.find_nvcc()
        if nvcc is None:
            raise CompilerMissing(toolchain.nvcc_missing_message())
        compile_, prelude = (lambda code: nvcc_compile_check(code, COMPILE_TIMEOUT_S, nvcc=nvcc)), ""
    else:
        raise ValueError(f"compiler must be 'gxx' or 'nvcc', got {compiler!r}")
    size = batch or DEFAULT_BATCH[compiler]
    if size < 1 or workers < 1:
        raise ValueError(f"batch and workers must be at least 1, got batch={size} workers={workers}")
    chunks = [list(sources[i:i + size]) for i in range(0, len(sources), size)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda chunk: check_sources(chunk, compile_, prelude), chunks))
    return [outcome for chunk in results for outcome in chunk]

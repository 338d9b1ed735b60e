"""Compile-check CUDA with nvcc (`nvcc_compile_check`), where a toolkit exists; the language server's and
`compile_rate`'s check.

nvcc is looked for, never assumed (`kernelcheck.toolchain.find_nvcc`): without it the result is "unavailable"
with `nvcc_missing_message`, not "failed".  The snippet is compiled with ``nvcc -c -o /dev/null`` in a fresh
temporary directory through the sandbox (`kernelcheck.sandbox.run_sandboxed`: scrubbed environment, compiler
resource limits, the process group killed at the time limit).  Errors that point into the snippet become
0-based `SyntaxProblem` ranges (`parse_nvcc_diagnostics`) an editor can show.
"""

from __future__ import annotations

import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from . import toolchain
from .parsing import SyntaxProblem
from .sandbox import compiler_rlimits, decode_output, run_sandboxed, scrubbed_env

__all__ = ["SOURCE_NAME", "CompileCheck", "parse_nvcc_diagnostics", "nvcc_compile_check"]

SOURCE_NAME = "candidate.cu"
# nvcc's output is read up to this much (both streams): enough for every diagnostic an editor can show.
_MAX_COMPILER_OUTPUT = 1 << 20


@dataclass
class CompileCheck:
    """Outcome of `nvcc -c` on a snippet.

    status: "ok" compiled; "error" nvcc rejected it (see diagnostics / message); "unavailable" no
    usable nvcc (not a verdict on the code); "timeout" nvcc ran past the limit.
    """

    status: Literal["ok", "error", "unavailable", "timeout"]
    message: str
    diagnostics: list[SyntaxProblem] = field(default_factory=list)


# nvcc front end: `candidate.cu(3): error: expected a ";"` (also `error #20-D:`, `catastrophic error:`).
_NVCC_DIAGNOSTIC = re.compile(
    r"^(?P<file>[^\s()][^()]*)\((?P<line>\d+)\): (?P<kind>(?:catastrophic |fatal )?error)(?: #[\w-]+)?: (?P<text>.*)$"
)
# host compiler (gcc/clang) style: `candidate.cu:3:5: error: ...`.
_HOST_DIAGNOSTIC = re.compile(r"^(?P<file>[^:\s][^:]*):(?P<line>\d+):(?P<col>\d+): (?P<kind>(?:fatal )?error): (?P<text>.*)$")


def parse_nvcc_diagnostics(output: str, code: str, source_name: str = SOURCE_NAME) -> list[SyntaxProblem]:
    """Error lines of nvcc's output that point into `source_name`, as 0-based ranges of `code`.

    nvcc front-end errors give only a line: the range then covers that line from its first
    non-blank character to its end. Errors in other files (headers) are left to the message.
    """
    code_lines = code.split("\n")
    problems = []
    for raw in output.splitlines():
        match = _NVCC_DIAGNOSTIC.match(raw) or _HOST_DIAGNOSTIC.match(raw)
        if match is None or Path(match["file"]).name != source_name:
            continue
        line = int(match["line"]) - 1
        text = code_lines[line] if 0 <= line < len(code_lines) else ""
        if "col" in match.groupdict() and match["col"] is not None:
            col = max(int(match["col"]) - 1, 0)
        else:
            col = len(text) - len(text.lstrip())
        end_col = max(len(text), col)
        problems.append(SyntaxProblem(line, col, line, end_col, f"line {line + 1}: {match['kind']}: {match['text']}"))
    return problems


def nvcc_compile_check(code: str, timeout_s: float = 60, *, nvcc: str | None = None) -> CompileCheck:
    """Compile `code` with `nvcc -c -o /dev/null` in a fresh temporary directory, in the sandbox.

    No -arch flag: nvcc's default target is enough to tell whether the code compiles. `nvcc` overrides
    the search of `find_nvcc`. Blank code is an error (nothing to compile), never "ok".
    """
    if not isinstance(timeout_s, (int, float)) or not timeout_s > 0:
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if not code.strip():
        return CompileCheck("error", "nothing to compile: the code is empty")
    nvcc_path = nvcc if nvcc is not None else toolchain.find_nvcc()
    if nvcc_path is None:
        return CompileCheck("unavailable", toolchain.nvcc_missing_message())
    with tempfile.TemporaryDirectory(prefix="mot-nvcc-") as workdir:
        (Path(workdir) / SOURCE_NAME).write_text(code, encoding="utf-8")
        result = run_sandboxed([nvcc_path, "-c", SOURCE_NAME, "-o", os.devnull], cwd=workdir,
                               env=scrubbed_env(workdir, nvcc=nvcc_path), timeout_s=timeout_s,
                               rlimits=compiler_rlimits(timeout_s), max_output_bytes=_MAX_COMPILER_OUTPUT,
                               max_stderr_bytes=_MAX_COMPILER_OUTPUT)
    output = (decode_output(result.stderr) + decode_output(result.stdout)).strip()
    if result.start_failed:
        return CompileCheck("unavailable", result.start_error)
    if result.timed_out:
        return CompileCheck("timeout", f"nvcc did not finish within {timeout_s} s")
    if result.returncode == 0:
        return CompileCheck("ok", output)
    diagnostics = parse_nvcc_diagnostics(output, code)
    message = output or f"nvcc exited with status {result.returncode} and printed nothing"
    return CompileCheck("error", message, diagnostics)

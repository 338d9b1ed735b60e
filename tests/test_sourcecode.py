"""kernelcheck.parsing, .toolchain, .compile_check: function spans, tree-sitter syntax checks, nvcc detection and
compile checks."""

from __future__ import annotations

import stat
import time

import pytest

from kernelcheck import toolchain
from kernelcheck.compile_check import nvcc_compile_check, parse_nvcc_diagnostics
from kernelcheck.parsing import check_cuda_syntax, find_functions, function_at, functions_in_range, is_valid_cuda
from kernelcheck.toolchain import find_nvcc

VALID_KERNEL = "__global__ void k(float* a){int i=threadIdx.x; a[i]=0;}"
BROKEN_KERNEL = "__global__ void k(float* a){int i=threadIdx.x a[i]=0;"

SOURCE = """\
#include <cstdio>
int declared_only(int x);
template <typename T>
T twice(T x) { return 2 * x; }

namespace ns {
struct S {
    S() = default;
    int method(int y) const { return y + 1; }
};
}

void broken( { int x = ;

int S::out_of_line() {
    struct Local { int inner() { return 3; } };
    return Local().inner();
}
"""


def _names(spans):
    return [span.name for span in spans]


def test_find_functions_covers_kinds_and_skips_declarations():
    spans = find_functions(SOURCE)
    assert _names(spans) == ["twice", "method", "S::out_of_line", "inner"]
    twice = spans[0]
    assert twice.text.startswith("template <typename T>\nT twice")  # the template prefix belongs to the span
    assert (twice.start_line, twice.start_col, twice.end_line) == (2, 0, 3)
    method = spans[1]
    assert method.text == "int method(int y) const { return y + 1; }"
    assert (method.start_line, method.start_col) == (8, 4)
    for span in spans:
        # offsets index the UTF-8 bytes of the source and agree with the text
        assert SOURCE.encode()[span.start_byte : span.end_byte].decode() == span.text


def test_columns_count_characters_not_bytes():
    source = "/* é€ */ int f() { return 1; }\nint g() { return 2; }"
    f, g = find_functions(source)
    assert f.start_col == source.index("int f")  # 10 characters, 13 bytes
    assert f.start_byte == len(source[: f.start_col].encode())
    assert f.start_byte > f.start_col
    assert f.end_col == len(source.split("\n")[0])
    assert (g.start_line, g.start_col) == (1, 0)


def test_cuda_grammar_parses_kernel_launch():
    source = "__global__ void k(float* a){ a[0] = 1; }\nvoid host(float* p){ k<<<1, 32>>>(p); }\n"
    assert _names(find_functions(source, grammar="cuda")) == ["k", "host"]
    with pytest.raises(ValueError, match="fortran"):
        find_functions(source, grammar="fortran")


def test_function_at_returns_innermost_or_none():
    lines = SOURCE.split("\n")
    inner_line = next(i for i, line in enumerate(lines) if "Local" in line and "inner()" in line)
    inner_col = lines[inner_line].index("return 3")
    assert function_at(SOURCE, inner_line, inner_col).name == "inner"
    assert function_at(SOURCE, inner_line + 1, 4).name == "S::out_of_line"
    assert function_at(SOURCE, 0, 3) is None  # the #include line
    assert function_at(SOURCE, 500, 0) is None  # past the end
    with pytest.raises(ValueError, match="line=-1"):
        function_at(SOURCE, -1, 0)


def test_functions_in_range_selects_overlapping():
    # From inside twice's body to the first line of method: both overlap the selection.
    assert _names(functions_in_range(SOURCE, 3, 15, 8, 5)) == ["twice", "method"]
    assert functions_in_range(SOURCE, 0, 0, 1, 5) == []
    with pytest.raises(ValueError, match="after range end"):
        functions_in_range(SOURCE, 5, 0, 4, 0)


def test_check_cuda_syntax_accepts_valid_kernel():
    assert check_cuda_syntax(VALID_KERNEL) == []
    assert is_valid_cuda(VALID_KERNEL)


def test_check_cuda_syntax_reports_error_and_missing_positions():
    problems = check_cuda_syntax(BROKEN_KERNEL)
    assert not is_valid_cuda(BROKEN_KERNEL)
    messages = " | ".join(problem.message for problem in problems)
    assert "missing '}'" in messages
    missing = next(problem for problem in problems if "missing" in problem.message)
    assert (missing.line, missing.col) == (0, len(BROKEN_KERNEL))  # where the brace had to be invented
    unexpected = next(problem for problem in problems if "unexpected" in problem.message)
    assert BROKEN_KERNEL[unexpected.col : unexpected.end_col] == "a"  # the token after the missing ';'

    two_lines = "__global__ void k(float* a){\n  int x = ;\n}\n"
    (problem,) = check_cuda_syntax(two_lines)
    assert problem.line == 1
    assert "line 2" in problem.message


def test_blank_code_is_not_valid_cuda():
    assert check_cuda_syntax("  \n") == []  # nothing wrong with the parse ...
    assert not is_valid_cuda("  \n")  # ... but nothing was translated either


def _hide_nvcc(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv("CUDA_HOME", raising=False)
    monkeypatch.delenv("CUDA_PATH", raising=False)
    monkeypatch.setattr(toolchain, "NVCC_FALLBACK_DIRS", ())


def _fake_nvcc(directory, script: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nvcc"
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_missing_nvcc_is_reported_unavailable(monkeypatch, tmp_path):
    _hide_nvcc(monkeypatch, tmp_path)
    assert find_nvcc() is None
    check = nvcc_compile_check(VALID_KERNEL)
    assert check.status == "unavailable"
    assert "nvcc not found" in check.message and "CUDA_HOME" in check.message


def test_find_nvcc_searches_cuda_home(monkeypatch, tmp_path):
    _hide_nvcc(monkeypatch, tmp_path)
    fake = _fake_nvcc(tmp_path / "cuda" / "bin", "exit 0")
    monkeypatch.setenv("CUDA_HOME", str(tmp_path / "cuda"))
    assert find_nvcc() == fake
    assert nvcc_compile_check(VALID_KERNEL).status == "ok"


def test_nvcc_timeout_kills_compiler(monkeypatch, tmp_path):
    fake = _fake_nvcc(tmp_path / "bin", "sleep 30")
    started = time.monotonic()
    check = nvcc_compile_check(VALID_KERNEL, timeout_s=0.5, nvcc=fake)
    assert check.status == "timeout"
    assert time.monotonic() - started < 10
    with pytest.raises(ValueError, match="timeout_s"):
        nvcc_compile_check(VALID_KERNEL, timeout_s=0)


def test_parse_nvcc_diagnostics_maps_lines_to_zero_based():
    code = "int a;\n  int b = c;\nint d\n"
    output = (
        'candidate.cu(2): error: identifier "c" is undefined\n'
        "      int b = c;\n              ^\n"
        'candidate.cu(3): warning #177-D: variable "d" was declared but never referenced\n'
        "/usr/include/x.h(10): error: something in a header\n"
        "candidate.cu:3:5: error: expected ';'\n"
    )
    problems = parse_nvcc_diagnostics(output, code)
    assert [(p.line, p.col, p.end_col) for p in problems] == [(1, 2, 12), (2, 4, 5)]
    assert 'identifier "c" is undefined' in problems[0].message


@pytest.mark.skipif(find_nvcc() is None, reason="nvcc not found on PATH, $CUDA_HOME/bin or /usr/local/cuda/bin")
def test_real_nvcc_compiles_valid_and_rejects_broken_kernel():
    assert nvcc_compile_check(VALID_KERNEL).status == "ok"
    broken = "__global__ void k(float* a){\n  int i = threadIdx.x;\n  undefined_fn(i);\n}\n"
    check = nvcc_compile_check(broken)
    assert check.status == "error"
    assert any(problem.line == 2 and "undefined_fn" in problem.message for problem in check.diagnostics), check
    assert nvcc_compile_check("   ").status == "error"  # nothing to compile is not a success

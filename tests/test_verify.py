"""End-to-end differential checks on the CPU backend (g++ only): every verdict status, the first-mismatch report,
discarded inputs, return values, vectors, races and out-of-bounds writes, the GPU program (nvcc, compile only) and
``mot-check``'s exit codes."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from kernelcheck import toolchain as kc_toolchain
from kernelcheck.builds import build_kernel
from kernelcheck.harness import kernel_program
from kernelcheck.loopnest import shape_of
from kernelcheck.mapping import map_params
from kernelcheck.signatures import read_c_function, read_kernel
from kernelcheck.vacuity import is_vacuous
from kernelcheck.verify import verify

REPO = Path(__file__).resolve().parents[1]
needs_gxx = pytest.mark.skipif(kc_toolchain.find_gxx() is None, reason="no C++ compiler (g++) on this machine")
needs_nvcc = pytest.mark.skipif(kc_toolchain.find_nvcc() is None, reason="no nvcc")

SAXPY_C = "void saxpy_cpu(int n, float a, const float* x, float* y) {\n" \
          "    for (int i = 0; i < n; i++) y[i] = a * x[i] + y[i];\n}\n"
SAXPY_K = """__global__ void saxpy(int n, float a, const float* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}
"""


def check(c_src: str, k_src: str, **kw):
    return verify(c_src, k_src, backend="cpu", **kw)


@pytest.fixture(scope="module")
def saxpy():
    return check(SAXPY_C, SAXPY_K)


@needs_gxx
def test_a_correct_kernel_is_verified_and_says_how(saxpy):
    v = saxpy
    assert v.status == "verified" and v.exit_code == 0 and v.backend == "cpu"
    assert v.inputs >= 18 and v.mismatch is None and v.launched >= 1
    assert "1-D grid from the bound" in v.launch and "<<<4, 256>>>" in v.launch  # n = 1000 needs 4 blocks
    assert v.mapping == "(n, a, x, y)" and "not a proof" in v.reason
    data = json.loads(v.dumps())
    assert {"status", "backend", "inputs", "mismatch", "reason", "launch"} <= set(data) and data["mismatch"] is None


@needs_gxx
def test_a_flipped_operator_is_a_mismatch_with_the_first_difference():
    v = check(SAXPY_C, SAXPY_K.replace("a * x[i] + y[i]", "a * x[i] - y[i]"))
    assert v.status == "mismatch" and v.exit_code == 1
    m = v.mismatch
    assert m.argument == "y" and m.index is not None and m.expected != m.got
    assert {"sizes", "seed", "values", "launch"} <= set(m.input) and m.input["sizes"]["n"] > 0
    assert "tolerance" in m.reason and f"y[{m.index}]" in v.reason


@needs_gxx
def test_an_out_of_bounds_write_is_a_mismatch():
    v = check(SAXPY_C, SAXPY_K.replace("i < n", "i <= n"))
    assert v.status == "mismatch" and ("out of bounds" in v.reason or "out-of-bounds" in v.reason), v.reason


@needs_gxx
def test_a_race_is_a_mismatch_never_verified():
    c = "void hist(int n, const int* color, int* bucket) { for (int i = 0; i < n; i++) bucket[color[i]] += 1; }"
    racy = """__global__ void hist(int n, const int* color, int* bucket) {
        int i = threadIdx.x + blockDim.x * blockIdx.x;
        if (i < n) bucket[color[i]] += 1;
    }"""
    v = check(c, racy)
    assert v.status == "mismatch" and "race" in v.reason
    assert check(c, racy.replace("bucket[color[i]] += 1", "atomicAdd(&bucket[color[i]], 1)")).status == "verified"


@needs_gxx
def test_a_serial_kernel_is_verified_only_if_many_threads_running_it_leave_the_right_result():
    # Every thread runs the whole C loop. Right under a one-thread launch, but a user launches kernels with many
    # threads: the in-place update then runs once per thread.
    serial = "__global__ void saxpy(int n, float a, const float* x, float* y) {\n" \
             "    for (int i = 0; i < n; i++) y[i] = a * x[i] + y[i];\n}\n"
    v = check(SAXPY_C, serial)
    assert v.status == "mismatch" and "<<<2, 2>>>" in v.launch, (v.status, v.reason, v.launch)
    swap_c = "void swap_halves(int n, float* x) {\n    for (int i = 0; i < n / 2; i++) {\n" \
             "        float t = x[i]; x[i] = x[i + n / 2]; x[i + n / 2] = t;\n    }\n}\n"
    swap = swap_c.replace("void swap_halves", "__global__ void swap_halves")
    assert check(swap_c, swap).status == "mismatch"  # swapped four times: as if never
    # A loop that writes only what the inputs decide is right however many threads run it.
    scale_c = "void scale(int n, float a, const float* x, float* y) {\n" \
              "    for (int i = 0; i < n; i++) y[i] = a * x[i];\n}\n"
    v = check(scale_c, scale_c.replace("void scale", "__global__ void scale"))
    assert v.status == "verified", (v.status, v.reason)


@needs_gxx
def test_compile_and_syntax_errors():
    v = check(SAXPY_C, SAXPY_K.replace("a * x[i]", "a * xx[i]"))
    assert v.status == "compile_error" and v.exit_code == 1 and "xx" in v.reason
    v = check(SAXPY_C, SAXPY_K.replace("if (i < n)", "if (i < n"))
    assert v.status == "syntax_error" and v.exit_code == 1
    assert check(SAXPY_C, "   ").status == "syntax_error"


@needs_gxx
def test_not_verifiable_and_unavailable_say_why():
    v = check("struct P { float s; };\nvoid f(P p, float* a, int n) { for (int i = 0; i < n; i++) a[i] *= p.s; }",
              "__global__ void f(float* a, int n, float s) { int i = threadIdx.x; if (i < n) a[i] *= s; }")
    assert v.status == "not_verifiable" and v.exit_code == 2 and "struct" in v.reason
    tc = kc_toolchain.detect_toolchain()
    no_nvcc = dataclasses.replace(tc, nvcc=None, gpu=False)
    v = verify(SAXPY_C, SAXPY_K, backend="gpu", toolchain=no_nvcc)
    assert v.status == "unavailable" and v.exit_code == 2 and "nvcc" in v.reason
    no_gxx = dataclasses.replace(tc, gxx=None)
    assert verify(SAXPY_C, SAXPY_K, backend="cpu", toolchain=no_gxx).status == "unavailable"


@needs_gxx
def test_never_verified_when_no_input_launches_the_kernel():
    v = check("void f(float* a) { for (int i = 0; i < 0; i++) a[i] = 1; }",
              "__global__ void f(float* a) { a[threadIdx.x] = 1; }")
    assert v.status == "not_verifiable" and v.inputs >= 0 and "no non-trivial input" in v.reason


@needs_gxx
def test_inputs_where_the_reference_is_undefined_are_discarded_not_blamed():
    c = "void to_byte(const float* x, unsigned char* out, int n) { for (int i = 0; i < n; i++) " \
        "out[i] = (unsigned char)(255 * x[i]); }"
    k = """__global__ void to_byte(const float* x, unsigned char* out, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = (unsigned char)(255 * x[i]);
    }"""
    v = check(c, k)
    assert v.status == "verified" and v.discarded > 0
    assert any("undefined behaviour" in reason for reason in v.discard_reasons)


@needs_gxx
def test_return_values_and_vectors_are_compared():
    c = "float total(const float* x, int n) { float s = 0; for (int i = 0; i < n; i++) s += x[i]; return s; }"
    k = """__global__ void total_k(const float* x, int n, float* result) {
        int i = threadIdx.x + blockIdx.x * blockDim.x;
        if (i < n) atomicAdd(result, x[i]);
    }"""
    assert check(c, k, seeds=1).status == "verified"
    wrong = check(c, k.replace("if (i < n)", "if (i < n - 1)"), seeds=1)
    assert wrong.status == "mismatch" and wrong.mismatch.argument == "return value"
    cv = "void scale(std::vector<float>& v, float s) { for (size_t i = 0; i < v.size(); i++) v[i] *= s; }"
    kv = "__global__ void scale_k(float* v, int n, float s) { int i = threadIdx.x + blockIdx.x * blockDim.x; " \
         "if (i < n) v[i] *= s; }"
    v = check(cv, kv, seeds=1)
    assert v.status == "verified" and "n <- v.size()" in v.mapping


@needs_gxx
def test_2d_and_unchecked_kernels_are_launched_as_their_indexing_says():
    c = "void tr(const float* in, float* out, int rows, int cols) { for (int r = 0; r < rows; r++) " \
        "for (int c = 0; c < cols; c++) out[c * rows + r] = in[r * cols + c]; }"
    k = """__global__ void tr(const float* in, float* out, int rows, int cols) {
        int c = blockIdx.x * blockDim.x + threadIdx.x; int r = blockIdx.y * blockDim.y + threadIdx.y;
        if (r < rows && c < cols) out[c * rows + r] = in[r * cols + c];
    }"""
    v = check(c, k, seeds=1)
    assert v.status == "verified" and "2-D grid" in v.launch and "(16,16,1)" in v.launch
    unchecked = check("void z(float* a, int size) { for (int i = 0; i < size; i++) a[i] = 2 * a[i]; }",
                      "__global__ void z(float* a) { int i = blockIdx.x * blockDim.x + threadIdx.x; a[i] = 2 * a[i]; }",
                      seeds=1)
    assert unchecked.status == "verified" and "one thread per element" in unchecked.launch
    assert "<<<1000, 1>>>" in unchecked.launch


@needs_gxx
def test_arrays_the_analysis_cannot_size_are_regrown_from_the_reference():
    c = "static int far(int i) { return 100 * i; }\n" \
        "void gather(const float* in, float* out, int n) { for (int i = 0; i < n; i++) out[i] = in[far(i)]; }"
    k = """__global__ void gather(const float* in, float* out, int n) {
        int i = blockIdx.x * blockDim.x + threadIdx.x;
        if (i < n) out[i] = in[100 * i];
    }"""
    v = check(c, k, seeds=1)
    assert v.status == "verified" and v.discarded == 0 and any("regrown" in note for note in v.notes)


@needs_gxx
def test_a_hanging_reference_input_is_discarded():
    c = "void f(const int* stop, int* out, int n) { for (int i = 0; i < n; i++) { while (stop[i] < -900) {} " \
        "out[i] = stop[i]; } }"
    k = "__global__ void f(const int* stop, int* out, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; " \
        "if (i < n) out[i] = stop[i]; }"
    v = check(c, k, seeds=1, per_input_s=1)
    assert v.status == "verified" and any("did not finish" in reason for reason in v.discard_reasons)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kernelcheck.check_cli", *args], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/local/bin:/usr/bin:/bin"},
                          timeout=300)


@needs_gxx
def test_mot_check_exit_codes_and_json(tmp_path):
    (tmp_path / "f.cpp").write_text(SAXPY_C)
    (tmp_path / "ok.cu").write_text(SAXPY_K)
    (tmp_path / "bad.cu").write_text(SAXPY_K.replace("+ y[i]", "- y[i]"))
    (tmp_path / "odd.cu").write_text("__global__ void k(float* a, int n, float* b, float* c) {}")
    ok = _cli(str(tmp_path / "f.cpp"), str(tmp_path / "ok.cu"), "--backend", "cpu", "--seeds", "1")
    assert ok.returncode == 0 and ok.stdout.startswith("verified")
    bad = _cli(str(tmp_path / "f.cpp"), str(tmp_path / "bad.cu"), "--backend", "cpu", "--json", "--seeds", "1")
    data = json.loads(bad.stdout)
    assert bad.returncode == 1 and data["status"] == "mismatch" and data["mismatch"]["argument"] == "y"
    odd = _cli(str(tmp_path / "f.cpp"), str(tmp_path / "odd.cu"), "--backend", "cpu")
    assert odd.returncode == 2 and odd.stdout.startswith("not_verifiable")
    assert _cli(str(tmp_path / "missing.cpp"), str(tmp_path / "ok.cu")).returncode == 2
    assert "exit status" in _cli("--help").stdout


@needs_nvcc
@pytest.mark.slow
def test_the_gpu_program_builds_with_nvcc():
    c, k = read_c_function(SAXPY_C), read_kernel(SAXPY_K)
    program = kernel_program(SAXPY_K, k, c, map_params(c, k, set(shape_of(c).size_params)), "gpu")
    assert "<<<dim3(" in program.body and "cudaDeviceSynchronize" in program.body
    tc = kc_toolchain.detect_toolchain()
    with tempfile.TemporaryDirectory() as tmp:
        ok, message, _ = build_kernel(program, "gpu", tc, tmp, 300)
    assert ok, message


@needs_gxx
def test_vacuous_references_are_told_apart():
    changes = is_vacuous("void copy(const float* a, float* b, int n) { for (int i = 0; i < n; i++) b[i] = a[i]; }",
                         seeds=1)
    assert changes.vacuous is False and "b changes" in changes.reason
    idle = is_vacuous("void check(const int* a, const int* b, int n) { for (int i = 0; i < n; i++) "
                      "if (a[i] != b[i]) printf(\"%d\\n\", i); }", seeds=1)
    assert idle.vacuous is True and idle.inputs >= 1
    assert is_vacuous("float first(const float* a, int n) { return a[0]; }").vacuous is False

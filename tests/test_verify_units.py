"""Unit tests of the differential check's pieces: signatures, mapping and its refusals, launch inference, input
generation, interval evaluation, comparison, verdicts, records.  No compiler needed; fast."""

from __future__ import annotations

import math
import struct

import pytest

from kernelcheck import inputs as kc_inputs
from kernelcheck.compare import compare_item, first_mismatch
from kernelcheck.intervals import Evaluator, Iv
from kernelcheck.launch import LaunchError, launch_rule
from kernelcheck.launch_config import concrete_launch
from kernelcheck.loopnest import measure, shape_of
from kernelcheck.mapping import NotVerifiable, map_params
from kernelcheck.mutants import MUTANT_KINDS, make_mutants
from kernelcheck.parsing import syntax_tree
from kernelcheck.runner import Item, parse_records
from kernelcheck.signatures import SignatureError, read_c_function, read_kernel
from kernelcheck.verdict import EXIT_CODES, STATUSES, Verdict

SAXPY_C = "void saxpy_cpu(int n, float a, const float* x, float* y) { for (int i = 0; i < n; i++) y[i] = a * x[i] + y[i]; }"
SAXPY_K = """__global__ void saxpy(int n, float a, const float* x, float* y) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = a * x[i] + y[i];
}"""


# --------------------------------------------------------------------------------------------------------------
# Signatures
# --------------------------------------------------------------------------------------------------------------
def test_parameters_are_read_by_kind():
    fn = read_c_function("void f(const float* a, unsigned char b[], std::vector<double>& v, long int n, "
                         "float& out, size_t m, uint* u) {}")
    by = {p.name: p for p in fn.params}
    assert by["a"].pointer_depth == 1 and by["a"].const and by["a"].scalar.name == "float" and by["a"].is_buffer
    assert by["b"].array and by["b"].scalar.name == "unsigned char" and by["b"].is_buffer
    assert by["v"].vector and by["v"].reference and by["v"].scalar.name == "double"
    assert by["n"].is_value and by["n"].scalar.name == "long" and by["n"].scalar.size == 8
    assert by["out"].is_scalar_ref and by["out"].scalar.is_float
    assert by["m"].scalar.name == "unsigned long" and by["u"].scalar.name == "unsigned int"
    assert not any(p.unsupported for p in fn.params)


@pytest.mark.parametrize("decl, why", [
    ("struct S s", "struct"), ("S* s", "not a plain scalar"), ("void (*fp)(int)", "function pointer"),
    ("float** m", "pointer to pointer"), ("void* p", "void*"), ("float m[n]", "extent"),
])
def test_unsupported_parameters_say_why(decl, why):
    fn = read_c_function(f"void f({decl}, int n) {{}}")
    assert why in fn.params[0].unsupported


def test_the_function_is_the_named_one_else_the_root():
    source = "int helper(int x) { return 2 * x; }\nvoid top(int* a, int n) { for (int i = 0; i < n; i++) " \
             "a[i] = helper(a[i]); }\nint main() { return 0; }"
    assert read_c_function(source).name == "top"
    assert read_c_function(source, "helper").name == "helper"
    with pytest.raises(SignatureError, match="no function named 'nope'"):
        read_c_function(source, "nope")


def test_the_kernel_is_the_global_function():
    source = "__device__ float sq(float x) { return x * x; }\n" + SAXPY_K
    assert read_kernel(source).name == "saxpy"
    with pytest.raises(SignatureError, match="several __global__"):
        read_kernel(SAXPY_K + SAXPY_K.replace("saxpy", "other"))
    with pytest.raises(SignatureError, match="no __global__"):
        read_kernel("void host_only() {}")


# --------------------------------------------------------------------------------------------------------------
# Mapping
# --------------------------------------------------------------------------------------------------------------
def _map(c_src: str, k_src: str):
    c, k = read_c_function(c_src), read_kernel(k_src)
    return map_params(c, k, set(shape_of(c).size_params))


def test_mapping_by_name_by_position_and_for_sizes():
    assert _map(SAXPY_C, SAXPY_K).describe() == "(n, a, x, y)"
    renamed = _map("void add(int* dst, int* a, int* b, unsigned int end) { for (unsigned i = 0; i < end; i++) "
                   "dst[i] = a[i] + b[i]; }",
                   "__global__ void k(int* c, const int* x, const int* y, const unsigned int d) { int i = "
                   "threadIdx.x + blockIdx.x * blockDim.x; if (i < d) c[i] = x[i] + y[i]; }")
    assert renamed.by_position and "c <- dst" in renamed.describe()
    launch_only = _map("void f(float* a, int n) { for (int i = 0; i < n; i++) a[i] = 0; }",
                       "__global__ void g(float* a) { a[blockIdx.x * blockDim.x + threadIdx.x] = 0; }")
    assert [p.name for p in launch_only.launch_only] == ["n"]


def test_mapping_return_value_and_vector_size():
    ret = _map("float total(const float* x, int n) { float s = 0; for (int i = 0; i < n; i++) s += x[i]; return s; }",
               "__global__ void total_k(const float* x, int n, float* result) { int i = threadIdx.x + blockIdx.x * "
               "blockDim.x; if (i < n) atomicAdd(result, x[i]); }")
    assert [b.source for b in ret.bindings] == ["param", "param", "return"]
    vec = _map("void scale(std::vector<float>& v, float s) { for (size_t i = 0; i < v.size(); i++) v[i] *= s; }",
               "__global__ void scale_k(float* v, int n, float s) { int i = threadIdx.x + blockIdx.x * blockDim.x; "
               "if (i < n) v[i] *= s; }")
    assert [b.source for b in vec.bindings] == ["param", "vector_size", "param"]


@pytest.mark.parametrize("c_src, k_src, why", [
    ("struct P { float x; }; void f(P p, float* a, int n) { for (int i = 0; i < n; i++) a[i] = p.x; }",
     "__global__ void k(float* a, int n) {}", "struct"),
    ("template <typename T> void f(T* a, int n) { for (int i = 0; i < n; i++) a[i] = 0; }",
     "__global__ void k(float* a, int n) {}", "template"),
    ("void f(float* a, int n, void (*cb)(int)) { for (int i = 0; i < n; i++) a[i] = 0; }",
     "__global__ void k(float* a, int n) {}", "function pointer"),
    ("void f(float** m, int n) { for (int i = 0; i < n; i++) m[i][0] = 0; }",
     "__global__ void k(float** m, int n) {}", "pointer to pointer"),
    ("float f(const float* a, int n) { float s = 0; for (int i = 0; i < n; i++) s += a[i]; return s; }",
     "__global__ void k(const float* a, int n) {}", "no output parameter"),
    ("void f(float* a, int n, float scale) { for (int i = 0; i < n; i++) a[i] *= scale; }",
     "__global__ void k(float* a, int n) {}", "not a size the launch can use"),
    ("void f(float* a, int n) { for (int i = 0; i < n; i++) a[i] = 0; }",
     "__global__ void k(float* a, int n, float* extra, float* more) {}", "no counterpart"),
    ("void f(double* a, int n) { for (int i = 0; i < n; i++) a[i] = 0; }",
     "__global__ void k(float* a, int n) {}", "element types differ"),
])
def test_mapping_refuses_with_a_reason(c_src, k_src, why):
    with pytest.raises(NotVerifiable, match=why):
        _map(c_src, k_src)


# --------------------------------------------------------------------------------------------------------------
# Launch inference
# --------------------------------------------------------------------------------------------------------------
def _launch(k_src: str, values: dict, loops=()):
    rule = launch_rule(read_kernel(k_src))
    return rule, concrete_launch(rule, {k: Iv.point(v) for k, v in values.items()}, list(loops))


def test_launch_1d_from_the_bound_leaves_threads_past_it():
    rule, launch = _launch(SAXPY_K, {"n": 257})
    assert rule.dims == 1 and rule.checked
    assert launch.grid == (2, 1, 1) and launch.block == (256, 1, 1)
    assert _launch(SAXPY_K, {"n": 0})[1].grid == (1, 1, 1)  # the bounds check must stop every thread


def test_launch_2d_and_early_return_bounds():
    k2 = """__global__ void mm(float* C, int rows, int cols) { int r = blockIdx.y * blockDim.y + threadIdx.y;
            int c = blockIdx.x * blockDim.x + threadIdx.x; if (r >= rows || c >= cols) return; C[r * cols + c] = 1; }"""
    rule, launch = _launch(k2, {"rows": 33, "cols": 7})
    assert rule.dims == 2 and launch.block == (16, 16, 1) and launch.grid == (1, 3, 1)


def test_launch_grid_stride_uses_fewer_blocks_than_elements():
    k = """__global__ void add(float* y, const float* x, int n) { int s = blockDim.x * gridDim.x;
           for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += s) y[i] += x[i]; }"""
    rule, launch = _launch(k, {"n": 1000})
    assert rule.axes["x"][0].stride == "grid"
    assert launch.grid[0] * launch.block[0] < 1000 and launch.grid[0] >= 1


def test_launch_without_bounds_check_is_one_thread_per_element():
    k = "__global__ void z(float* a) { int idx = blockIdx.x * blockDim.x + threadIdx.x; a[idx] = 0; }"
    c = read_c_function("void z(float* a, int size) { for (int idx = 0; idx < size; idx++) a[idx] = 0; }")
    loops = measure(c, {"size": Iv.point(33)}, {}, {}).loops
    rule, launch = _launch(k, {}, loops)
    assert not rule.checked and "one thread per element" in rule.describe()
    assert launch.grid == (33, 1, 1) and launch.block == (1, 1, 1)


def test_launch_thread_index_only_fits_one_block():
    k = "__global__ void h(float* s, float* d) { int i = threadIdx.x; if (i < 3) d[i] = s[i] * 0.5f; }"
    rule, launch = _launch(k, {})
    assert launch.grid == (1, 1, 1) and launch.block == (32, 1, 1)
    k_stride = "__global__ void o(int s, int n, int* out) { for (int i = threadIdx.x; i < n; i += blockDim.x) " \
               "out[i] = i * s; }"
    assert _launch(k_stride, {"n": 5000, "s": 2})[1].grid == (1, 1, 1)


def test_launch_darknet_flattened_grid_is_1d_and_tiles_fix_the_block():
    k = "__global__ void c(int N, float* X) { int i = (blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + " \
        "threadIdx.x; if (i < N) X[i] = 0; }"
    assert _launch(k, {"N": 300})[0].dims == 1
    tiled = """#define TILE 16
    __global__ void t(float* a, int n) { __shared__ float s[TILE][TILE]; int x = blockIdx.x * blockDim.x + threadIdx.x;
    int y = blockIdx.y * blockDim.y + threadIdx.y; if (x < n && y < n) a[y * n + x] = s[threadIdx.y][threadIdx.x]; }"""
    assert _launch(tiled, {"n": 40})[1].block == (16, 16, 1)


def test_an_index_with_a_constant_block_width_gets_that_block():
    k = "#define BLOCK 128\n__global__ void f(float* a, int n) { int i = blockIdx.x * BLOCK + threadIdx.x; " \
        "if (i < n) a[i] = 0; }"
    rule, launch = _launch(k, {"n": 1000})
    assert launch.block == (128, 1, 1) and launch.grid == (8, 1, 1) and "blocks of 128" in rule.describe()


def test_dynamic_shared_memory_cannot_be_launched():
    k = "__global__ void r(float* a, int n) { extern __shared__ float s[]; int i = threadIdx.x; if (i < n) a[i] = s[i]; }"
    with pytest.raises(LaunchError, match="extern __shared__"):
        launch_rule(read_kernel(k))


# --------------------------------------------------------------------------------------------------------------
# Inputs and extents
# --------------------------------------------------------------------------------------------------------------
def test_sizes_cover_empty_one_and_non_multiples_of_the_block():
    assert [combo["n"] for combo in kc_inputs.size_combos(["n"])] == [0, 1, 7, 33, 255, 257, 1000]
    combos = kc_inputs.size_combos(["rows", "cols"])
    assert {"rows": 1, "cols": 1} in combos and any(c["rows"] == 0 for c in combos)
    assert any(c["cols"] == 257 for c in combos) and any(c["rows"] == 1000 for c in combos)


def test_inputs_per_parameter_kind():
    c = read_c_function("void f(float* out, const int* idx, const float* data, int n, int stride, float scale, "
                        "bool flag, unsigned u) { for (int i = 0; i < n; i++) out[i] = flag ? data[idx[i]] * scale "
                        ": data[i * stride] + u; }")
    shape = shape_of(c)
    assert shape.size_params == ("n",) and shape.index_arrays == ("idx",) and "stride" in shape.stride_params
    cases, dropped = kc_inputs.make_inputs(c, shape, seeds=3)
    assert dropped == 0 and len(cases) == 21
    assert sorted({case.values["n"] for case in cases}) == [0, 1, 7, 33, 255, 257, 1000]
    assert {case.values["flag"] for case in cases} == {0, 1}
    assert all(case.values["u"] >= 0 for case in cases)
    floats = [case.values["scale"] for case in cases]
    assert any(math.isnan(v) for v in floats) and any(v == 0 for v in floats)  # edge values, in edge profiles
    assert all(math.isfinite(case.values["scale"]) or case.profile == "edge" for case in cases)
    for case in cases:
        fill = case.fills["idx"]
        assert fill.mode == "int_uniform" and fill.lo == 0 and fill.hi <= max(1, case.values["n"]) - 1 + 1
        n = case.values["n"]
        assert case.extents["out"] == n and case.extents["idx"] == n
        if n:
            assert case.extents["data"] >= max(fill.hi + 1, (n - 1) * case.values["stride"] + 1)


def test_extents_follow_the_loop_nest():
    c = read_c_function("void mm(float* A, float* B, float* C, int m, int k, int n) { for (int i = 0; i < m; i++) "
                        "for (int j = 0; j < n; j++) { float s = 0; for (int p = 0; p < k; p++) s += A[i * k + p] * "
                        "B[p * n + j]; C[i * n + j] = s; } }")
    got = measure(c, {"m": Iv.point(7), "k": Iv.point(33), "n": Iv.point(5)}, {}, {})
    assert got.extents == {"A": 7 * 33, "B": 33 * 5, "C": 7 * 5}
    assert got.work == 7 + 7 * 5 + 7 * 5 * 33


def test_unknown_extents_fall_back_and_are_listed():
    c = read_c_function("void helper(float* p, int n);\nvoid f(float* a, int n) { helper(a, n); }")
    case = kc_inputs.make_inputs(c, shape_of(c), seeds=1)[0][0]
    assert case.unknown_extents == ("a",) and case.extents["a"] >= kc_inputs.FALLBACK_ELEMENTS


# --------------------------------------------------------------------------------------------------------------
# Intervals
# --------------------------------------------------------------------------------------------------------------
def _eval(expr: str, env: dict) -> Iv:
    root = syntax_tree(f"int f() {{ return {expr}; }}")
    ret = root.children[0].child_by_field_name("body").named_children[0].named_children[0]
    return Evaluator(env).eval(ret)


@pytest.mark.parametrize("expr, env, lo, hi", [
    ("row * cols + k", {"row": Iv(0, 6), "cols": Iv.point(33), "k": Iv(0, 32)}, 0, 230),
    ("-7 / 2", {}, -3, -3),                       # C truncates toward zero
    ("i % 4", {"i": Iv(-9, 9)}, -3, 3),           # % takes the dividend's sign
    ("n / sizeof(double)", {"n": Iv.point(64)}, 8, 8),
    ("(unsigned int) x", {"x": Iv(-1, 5)}, 0, 2 ** 32 - 1),
    ("x + 1 < n ? x : 0", {"x": Iv(3, 9)}, 0, 9),
])
def test_interval_evaluation_follows_c(expr, env, lo, hi):
    value = _eval(expr, env)
    assert (value.lo, value.hi) == (lo, hi)


# --------------------------------------------------------------------------------------------------------------
# Comparison, verdicts, records
# --------------------------------------------------------------------------------------------------------------
def _floats(values, code="f"):
    return Item(1, "f", 4 if code == "f" else 8, 0, struct.pack(f"<{len(values)}{code}", *values))


def test_float_tolerance_nan_and_exact_integers():
    assert compare_item(_floats([1.0, math.nan, math.inf]), _floats([1.00001, math.nan, math.inf])) is None
    assert compare_item(_floats([1.0]), _floats([1.001]))[0] == 0
    assert compare_item(_floats([0.0, 100.0]), _floats([5e-4, 100.0])) is None  # cancellation: atol x scale
    assert compare_item(_floats([1.0, 2.0], "d"), _floats([1.0, 2.0 + 1e-6], "d"))[0] == 1
    assert compare_item(_floats([math.inf]), _floats([-math.inf])) is not None
    ints = Item(1, "i", 4, 0, struct.pack("<3i", 1, 2, 3))
    assert compare_item(ints, Item(1, "i", 4, 0, struct.pack("<3i", 1, 2, 4)))[:3] == (2, 3, 4)


def test_first_mismatch_names_input_argument_index_and_values():
    c = read_c_function(SAXPY_C)
    case = kc_inputs.make_inputs(c, shape_of(c), seeds=1)[0][3]
    expected = [Item(1, "f", 4, 2, struct.pack("<2f", 1, 2)), Item(1, "f", 4, 3, struct.pack("<2f", 3, 4))]
    got = [expected[0], Item(1, "f", 4, 3, struct.pack("<2f", 3, -4))]
    found = first_mismatch(case, c, expected, got)
    assert (found.argument, found.index, found.expected, found.got) == ("y", 1, 4.0, -4.0)
    assert found.input["sizes"] == {"n": 33} and "seed" in found.input
    assert first_mismatch(case, c, expected, expected) is None


def test_a_verdict_is_never_verified_without_inputs():
    with pytest.raises(ValueError, match="cannot be 'verified'"):
        Verdict("verified", "no inputs", inputs=0)
    assert set(EXIT_CODES) == set(STATUSES)
    assert [EXIT_CODES[s] for s in STATUSES] == [0, 1, 1, 1, 2, 2]


def test_records_parse_and_a_cut_record_is_dropped():
    one = b"MOTR" + struct.pack("<II", 7, 1) + bytes([1, ord("f"), 4]) + struct.pack("<iQ", 2, 8) + \
        struct.pack("<2f", 1.5, 2.5)
    records = parse_records(one + one[:20])
    assert list(records) == [7] and records[7][0].param == 2 and records[7][0].data == struct.pack("<2f", 1.5, 2.5)


def test_mutants_of_every_kind():
    kinds = {m.kind for m in make_mutants(SAXPY_K)}
    assert kinds == set(MUTANT_KINDS)
    flipped = [m for m in make_mutants(SAXPY_K) if m.kind == "flip_operator"]
    assert all("blockIdx . x" not in m.description for m in flipped) and flipped

"""The CPU backend: CUDA programs prepared by kernelcheck.cpu_source, built by g++ with
kernelcheck/emulation/cuda_cpu.h and run on the CPU in the sandbox (kernelcheck.cpu_backend).

The CUDA programs are in tests/cpu_backend/ (each is built once per session; argv picks a scenario):
features.cu (what is emulated; it uses barriers, so threads run as fibers), races.cu (races, out-of-bounds
writes, host pointers, faults; no barriers: the fast path), barriers.cu (barrier bugs).  They are built with the
access instrumentation (the default); races.cu also without it ("races-diff": the write-write check diffs memory).
"""

from __future__ import annotations

import json
import math
import re
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from kernelcheck import cpu_backend as cb
from kernelcheck.cases import load_exec_cases
from kernelcheck.cpu_source import Prepared, Unsupported, prepare_for_cpu
from kernelcheck.functional import normalize_output
from kernelcheck.programs import build_cuda_program
from kernelcheck.toolchain import find_gxx

PROGRAMS = Path(__file__).resolve().parent / "cpu_backend"
EXEC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "babeltower" / "exec_dev.jsonl"
# Every reference kernel of exec_dev.jsonl compiled with the header when this was written (122 of 122).
EXEC_DEV_COMPILE_FLOOR = 122

needs_gxx = pytest.mark.skipif(find_gxx() is None, reason="no C++ compiler (g++) on this machine")
needs_data = pytest.mark.skipif(not EXEC.is_file(), reason=f"BabelTower executable data not found at {EXEC}")


def _build(name: str, root: Path, key: str, **options) -> Path:
    workdir = root / key
    workdir.mkdir()
    prepared = prepare_for_cpu((PROGRAMS / f"{name}.cu").read_text())
    assert isinstance(prepared, Prepared), prepared
    compiled = cb.build_cpu_program(prepared.source, str(workdir), **options)
    assert compiled.ok, compiled.message
    return workdir


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> dict[str, Path]:
    if find_gxx() is None:
        pytest.skip("no C++ compiler (g++) on this machine")
    root = tmp_path_factory.mktemp("cpu-backend")
    builds = {"features": ("features", True), "races": ("races", True), "barriers": ("barriers", True),
              "races-diff": ("races", False)}
    with ThreadPoolExecutor(2) as pool:  # the builds dominate this module's time
        dirs = pool.map(lambda item: _build(item[1][0], root, item[0], instrument=item[1][1]), builds.items())
        return dict(zip(builds, dirs))


def _run(programs: dict[str, Path], program: str, scenario: str) -> cb.CpuRun:
    run = cb.run_cpu_program(str(programs[program]), [scenario], timeout_s=30)
    assert not run.timed_out, run.stderr
    assert run.summary, f"the program died before exit: {run.returncode}\n{run.stderr}"
    return run


def _numbers(text: str) -> list[float]:
    return [float(x) for x in re.findall(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?", text)]


def _clean(run: cb.CpuRun) -> None:
    assert run.returncode == 0, run.stderr
    assert not run.problems, run.problems


# --------------------------------------------------------------------------------------------------------------
# What is emulated
# --------------------------------------------------------------------------------------------------------------
def test_block_tree_reduction_with_shared_memory_and_syncthreads(programs):
    run = _run(programs, "features", "block_sum")
    _clean(run)
    values = [i % 7 for i in range(1000)]
    assert _numbers(run.stdout) == [sum(values[b * 256:(b + 1) * 256]) for b in range(4)]


def test_dynamic_shared_memory(programs):
    run = _run(programs, "features", "dynamic_shared")
    _clean(run)
    assert _numbers(run.stdout) == list(range(39, -1, -1))


def test_syncthreads_count_or_and(programs):
    run = _run(programs, "features", "barrier_reductions")
    _clean(run)
    assert _numbers(run.stdout) == [20, 1, 1]  # 31..50 are above 30; some are; all values are positive


def test_atomics_histogram_max_inc_and_a_cas_loop(programs):
    run = _run(programs, "features", "atomics")
    _clean(run)
    histogram, (maximum, total, ticket) = _numbers(run.stdout.splitlines()[0]), _numbers(run.stdout.splitlines()[1])
    assert histogram == [600] * 5
    values = [(i * 37) % 101 for i in range(100)]
    assert (maximum, total, ticket) == (max(values), sum(values), 100)


def test_two_dimensional_grid_and_blocks_multiply_matrices(programs):
    run = _run(programs, "features", "matmul")
    _clean(run)
    m, k, n = 5, 3, 7
    a = [i + 1 for i in range(m * k)]
    b = [i % 4 - 1 for i in range(k * n)]
    expected = [sum(a[r * k + j] * b[j * n + c] for j in range(k)) for r in range(m) for c in range(n)]
    assert _numbers(run.stdout) == expected


def test_device_helpers_and_cuda_math(programs):
    run = _run(programs, "features", "math")
    _clean(run)
    floats, ints = _numbers(run.stdout.splitlines()[0]), _numbers(run.stdout.splitlines()[1])
    expected = []
    for v in (-2.5, 0.25, 1.5, 3.5):
        expected += [math.sqrt(abs(v)) + 0.5, 1 / (1 + math.exp(-v)), min(max(v, -1), 1) + min(max(v, 0), 1) + v / 2,
                     2 ** v + math.log(2) + 1]
    assert floats == pytest.approx(expected, rel=1e-5)
    # __float2int_rn rounds half to even; CUDA's max/min; __popc(i) + __clz(1)
    assert ints == [-2, 0, 31, 0, 10, 32, 2, 20, 32, 4, 25, 33]


def test_grid_stride_loop(programs):
    run = _run(programs, "features", "grid_stride")
    _clean(run)
    assert _numbers(run.stdout) == [1, 2 * 9999 + 1, sum(2 * i + 1 for i in range(10000))]


def test_invalid_launches_do_not_run_and_set_the_error_cudaGetLastError_returns(programs):
    run = _run(programs, "features", "invalid")
    _clean(run)
    assert run.stdout.splitlines() == [
        "cudaErrorInvalidConfiguration",  # 1025 threads
        "cudaSuccess",  # cudaGetLastError cleared it
        "invalid configuration argument",  # a zero grid dimension (cudaPeekAtLastError keeps it)
        "cudaErrorInvalidConfiguration",
        "cudaErrorInvalidConfiguration",  # grid.y > 65535
        "cudaErrorInvalidConfiguration",  # block.z > 64
        "cudaErrorInvalidValue",  # 100 KiB of dynamic shared memory without cudaFuncSetAttribute
        "cudaSuccess cudaSuccess",  # 1024 threads are fine
        "cudaErrorInvalidValue",  # a copy past the end of an allocation
    ]
    assert run.summary["launches"] == 1 and run.summary["launch_errors"] == 5


def test_kernel_printf_is_printed_once(programs):
    run = _run(programs, "features", "printf")
    _clean(run)
    assert run.stdout.splitlines() == ["thread 0 of block 0 says 7", "thread 1 of block 0 says 9", "done"]


# --------------------------------------------------------------------------------------------------------------
# Races, out-of-bounds writes, faults
# --------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("program", ["races", "races-diff"])
@pytest.mark.parametrize("scenario, words", [
    ("count_plain", "threads (0,0,0) and (1,0,0) of block (0,0,0) both write count[0] (buffer 4 \"d_count\""),
    ("last_writer", "threads (0,0,0) and (1,0,0) of block (0,0,0) both write result[0] (buffer 2 \"d_out\""),
    ("count_across_blocks", "thread (0,0,0) of block (0,0,0) and thread (0,0,0) of block (1,0,0) both write count[0]"),
    ("mixed_atomic_plain", "both write count[0] (buffer 4 \"d_count\", bytes 0..3) (one with an atomic, one with a plain"),
])
def test_write_write_races_are_reported_with_threads_blocks_and_element(programs, program, scenario, words):
    run = _run(programs, program, scenario)
    races = [f.message for f in run.findings if f.kind == "race"]
    assert any(words in message and f"in kernel {scenario}" in message for message in races), races
    assert run.verdict.startswith("data race: ")


@pytest.mark.parametrize("program", ["races", "races-diff"])
def test_an_order_dependent_race_is_reported(programs, program):
    run = _run(programs, program, "stencil_in_place")
    assert {f.kind for f in run.problems} == {"race"}
    assert any("the result depends on the order in which threads run: data[1]" in f.message for f in run.problems)


def test_a_read_of_what_another_thread_wrote_without_a_barrier_is_reported_where_it_happens(programs):
    run = _run(programs, "races", "stencil_in_place")  # instrumented: the read itself is seen
    assert run.verdict == ("data race: thread (2,0,0) of block (0,0,0) reads data[1] (buffer 1 \"d_data\", bytes "
                           "4..7) that thread (1,0,0) wrote without a barrier between them in kernel stencil_in_place "
                           "(launch 1)")


@pytest.mark.parametrize("program", ["races", "races-diff"])
def test_race_free_kernels_pass_and_float_atomics_are_not_a_race(programs, program):
    run = _run(programs, program, "race_free")
    _clean(run)
    assert "fibers=0" in run.stdout  # no barrier in the program: threads ran without fibers


@pytest.mark.parametrize("program, past_end, before_start", [
    ("races", 'out-of-bounds write of 4 bytes in buffer 2 "d_out" (256 bytes) at offset +256 (past its end) by '
              "thread (0,0,0) of block (2,0,0) in kernel write_past_end (launch 1)",
     'buffer 4 "d_count" (4 bytes) at offset -4 (before its start) by thread (0,0,0) of block (0,0,0)'),
    ("races-diff", 'out-of-bounds write in buffer 2 "d_out" (256 bytes) at offset +256..+259 (past its end) by '
                   "thread (0,0,0) of block (2,0,0) in kernel write_past_end (launch 1)",  # the guards' canaries
     'buffer 4 "d_count" (4 bytes) at offset -4..-1 (before its start) by thread (0,0,0) of block (0,0,0)'),
])
def test_out_of_bounds_writes_are_reported_with_offset_and_thread(programs, program, past_end, before_start):
    past = _run(programs, program, "write_past_end")
    assert [f.message for f in past.problems] == [past_end]
    before = _run(programs, program, "write_before_start")
    assert [f.kind for f in before.problems] == ["oob"]
    assert before_start in before.verdict


def test_an_out_of_bounds_read_is_reported_by_the_instrumentation_only(programs):
    run = _run(programs, "races", "read_past_end")
    assert [f.message for f in run.problems] == [
        'out-of-bounds read of 4 bytes in buffer 1 "d_data" (256 bytes) at offset +256 (past its end) by thread '
        "(31,0,0) of block (1,0,0) in kernel read_past_end (launch 1)"]
    diff = _run(programs, "races-diff", "read_past_end")
    _clean(diff)  # the guards see writes only: the read got the canary, -6.5e35
    assert "out[1]=" in diff.stdout


def test_a_host_pointer_given_to_a_kernel_is_reported(programs):
    run = _run(programs, "races", "host_pointer")
    assert [f.kind for f in run.problems] == ["host_pointer"]
    assert run.verdict.startswith("argument 0 (data) of kernel scale_in_place (launch 1) is 0x")


def test_a_kernel_that_faults_names_its_thread_and_dies_of_the_signal(programs):
    run = cb.run_cpu_program(str(programs["races"]), ["wild_write"], timeout_s=30)
    assert run.returncode == -11 and not run.summary
    assert run.findings[0].kind == "fault"
    assert run.verdict.startswith("invalid memory access (an illegal address on a GPU) at address 0x")
    assert "by thread (0,0,0) of block (0,0,0) in kernel wild_write (launch 1)" in run.verdict


def test_a_missing_barrier_is_reported_and_the_fixed_kernel_passes(programs):
    without = _run(programs, "barriers", "without")
    assert [f.kind for f in without.problems] == ["race"]
    assert "sum_without_barrier" in without.verdict and "uninitialised shared memory" in without.verdict
    with_barrier = _run(programs, "barriers", "with")
    _clean(with_barrier)
    assert with_barrier.stdout.startswith(f"{sum(i % 5 for i in range(64))} ")


def test_shared_memory_write_write_race(programs):
    run = _run(programs, "barriers", "shared_last_writer")
    assert run.verdict == ("data race: threads (0,0,0) and (1,0,0) of block (0,0,0) both write flag (shared memory) "
                           "without a barrier between them in kernel shared_last_writer (launch 1)")


def test_races_in_shared_arrays_name_the_array_and_element(programs):
    run = _run(programs, "barriers", "pairs")
    races = [f.message for f in run.problems]
    assert ("data race: threads (0,0,0) and (1,0,0) of block (0,0,0) both write tile[0] (shared memory) without a "
            "barrier between them in kernel pairs_share_a_slot (launch 1)") in races
    assert any("both write spill[0] (dynamic shared memory)" in message for message in races), races


def test_barrier_divergence_is_reported_once_and_early_exit_is_fine(programs):
    divergent = _run(programs, "barriers", "divergent")
    assert [f.kind for f in divergent.problems] == ["barrier"]
    assert "wait at different __syncthreads() (lines 36 and 39)" in divergent.verdict
    early = _run(programs, "barriers", "early_exit")
    _clean(early)
    assert _numbers(early.stdout)[:2] == [(40 - 1) % 5, 0]


# --------------------------------------------------------------------------------------------------------------
# What is not supported, and the rewrites
# --------------------------------------------------------------------------------------------------------------
_KERNEL = "__global__ void k(float* x, int n) {{ int i = threadIdx.x; {body} }}\n"


@pytest.mark.parametrize("code, feature, token", [
    (_KERNEL.format(body="x[i] = __shfl_down_sync(0xffffffff, x[i], 1);"), "warp-level primitive", "__shfl_down_sync"),
    (_KERNEL.format(body="if (__ballot_sync(0xffffffff, x[i] > 0)) x[i] = 0;"), "warp-level primitive",
     "__ballot_sync"),
    (_KERNEL.format(body="x[i] = __any_sync(__activemask(), x[i] > 0);"), "warp-level primitive", "__any_sync"),
    (_KERNEL.format(body="__syncwarp(); x[i] = 1;"), "warp-level primitive", "__syncwarp"),
    ("#include <cooperative_groups.h>\n" + _KERNEL.format(body="x[i] = 1;"), "cooperative groups",
     "#include <cooperative_groups.h>"),
    (_KERNEL.format(body="auto b = cooperative_groups::this_thread_block(); b.sync();"), "cooperative groups",
     "cooperative_groups"),
    ("texture<float, 1, cudaReadModeElementType> tex;\n" + _KERNEL.format(body="x[i] = tex1Dfetch(tex, i);"),
     "textures/surfaces", "texture"),
    (_KERNEL.format(body="x[i] = 1;") + "void run(float* x) { cudaStream_t s; cudaStreamCreate(&s); }\n",
     "streams/events", "cudaStream_t"),
    (_KERNEL.format(body="x[i] = 1;") + "void run(float* x) { k<<<1, 32, 0, s>>>(x, 32); }\n", "streams/events",
     "launch on stream s"),
    (_KERNEL.format(body="x[i] = 1;") + "__global__ void parent(float* x) { k<<<1, 1>>>(x, 1); }\n",
     "dynamic parallelism", "k<<<...>>> in device code"),
    (_KERNEL.format(body='asm volatile("mov.u32 %0, %%laneid;" : "=r"(n));'), "inline PTX assembly", "asm"),
    ("#include <cuda_fp16.h>\n" + _KERNEL.format(body="x[i] = 1;"), "half-precision types",
     "#include <cuda_fp16.h>"),
    (_KERNEL.format(body="__half h = __float2half(x[i]);"), "half-precision types", "__half"),
    (_KERNEL.format(body="wmma::fragment<int> f;"), "tensor-core", "wmma"),
    ("#include <thrust/device_vector.h>\n", "a CUDA library", "#include <thrust/device_vector.h>"),
    (_KERNEL.format(body="curandState s; curand_init(0, i, 0, &s);"), "a CUDA library", "curandState"),
    ("void run() { cudaLaunchKernel((void*)0, 1, 1, 0, 0, 0); }\n", "launch APIs other than", "cudaLaunchKernel"),
])
def test_unsupported_features_are_named_with_their_token_and_line(code, feature, token):
    result = prepare_for_cpu(code)
    assert isinstance(result, Unsupported), result
    assert result.feature.startswith(feature) and result.name == token
    assert result.reason.startswith(f"not verifiable on CPU: {feature}")
    assert f"({token}, line {result.line})" in result.reason and result.line >= 1


def test_features_in_comments_and_strings_do_not_count_and_ldg_is_fine():
    code = ('// no __shfl_sync here, nor asm\n/* __ballot_sync(...) texture<float> */\n'
            + _KERNEL.format(body='printf("__syncwarp asm %d\\n", i); x[i] = __ldg(&x[i]) + thrust;'))
    assert isinstance(prepare_for_cpu(code), Prepared)


def test_prepare_rewrites_launches_dynamic_shared_memory_and_device_variables():
    code = ("__device__ int hits;\n__device__ const int table[2] = {1, 2};\n__device__ float helper(float v);\n"
            "extern __shared__ float cache[];\n"
            "template <typename T> __global__ void fill(T* out) {\n"
            "    extern __shared__ __align__(16) unsigned char raw[];\n    out[threadIdx.x] = raw[0];\n}\n"
            "__global__ void k(const float* __restrict__ in, float *out, int n) { out[0] = in[0] + cache[0]; }\n"
            "void run(float* a, float* b) {\n    k<<<dim3(2, 1), 32>>>(a, b,\n        3);\n"
            "    k<<<1, 32, 64, 0>>>(a, b, 3);\n    fill<float><<<1, 2, 8 * sizeof(float)>>>(b);\n}\n")
    prepared = prepare_for_cpu(code)
    assert isinstance(prepared, Prepared), prepared
    text = prepared.source
    assert text.startswith('#include "cuda_cpu.h"\n#line 1\n')
    assert "MOT_CPU_DEVICE_VAR __device__ int hits;" in text
    assert "MOT_CPU_DEVICE_VAR __device__ const" not in text and "MOT_CPU_DEVICE_VAR __device__ float helper" not in text
    assert ("float *const cache = reinterpret_cast<float *>(::mot_cpu::dynamic_shared()); "
            "MOT_CPU_NAME_DYNAMIC_SHARED(cache)") in text
    assert ("unsigned char *const raw = reinterpret_cast<unsigned char *>(::mot_cpu::dynamic_shared()); "
            "MOT_CPU_NAME_DYNAMIC_SHARED(raw)") in text
    assert '::mot_cpu::launch_named("k", k, dim3(2, 1), 32, 0, a, b,\n        3);\n' in text  # lines are kept
    assert '::mot_cpu::launch_named("k", k, 1, 32, 64, a, b, 3);' in text
    assert '::mot_cpu::launch_named("fill<float>", fill<float>, 1, 2, 8 * sizeof(float), b);' in text
    assert 'MOT_CPU_DESCRIBE_KERNEL(k, "in,out,n")' in text and "MOT_CPU_DESCRIBE_KERNEL(fill" not in text
    assert prepared.kernels == ("fill", "k")
    assert text.count("\n") == code.count("\n") + 4  # include, #line, the end, one description


def test_parse_findings_reads_the_runtime_lines_and_address_sanitizer_reports():
    stderr = ("MOT_RACE: data race: a\nnoise\nMOT_NOTE: covered 1 of 2 blocks\nMOT_OOB: out-of-bounds write b\n"
              "==1==ERROR: AddressSanitizer: heap-buffer-overflow on address 0x6 at pc 0x5\nREAD of size 4 at 0x6 "
              "thread T0\n    #0 0x55 in copy(float*, int) (/tmp/prog+0x47)\n"
              "MOT_CPU_SUMMARY: launches=2 races=1 oob=1 notes=1\n")
    findings, summary = cb.parse_findings(stderr)
    assert [(f.kind, f.message) for f in findings] == [
        ("race", "data race: a"), ("note", "covered 1 of 2 blocks"), ("oob", "out-of-bounds write b"),
        ("oob", "AddressSanitizer: heap-buffer-overflow: READ of 4 bytes in copy")]
    assert summary == {"launches": 2, "races": 1, "oob": 1, "notes": 1}
    assert [f.is_problem for f in findings] == [True, False, True, True]


def test_gxx_command_and_a_missing_compiler(tmp_path, monkeypatch):
    command = cb.gxx_cpu_command("g++", sanitize=True, defines={"MOT_CPU_ORDER_CHECK": 0})
    assert command[:6] == ["g++", "-std=c++17", "-O1", "-ffp-contract=off", "-fno-strict-aliasing", "-w"]
    assert "-fsanitize=address" in command and "-DMOT_CPU_ORDER_CHECK=0" in command
    assert "-fsanitize=kernel-address" not in command  # AddressSanitizer replaces the instrumentation
    assert "-DMOT_CPU_INSTRUMENTED=1" in cb.gxx_cpu_command("/usr/bin/g++-12")
    assert "-fsanitize=kernel-address" not in cb.gxx_cpu_command("clang++")
    assert command[command.index("-I") + 1] == str(cb.HEADER_DIR) and (cb.HEADER_DIR / "cuda_runtime.h").is_file()
    monkeypatch.setattr(cb, "find_gxx", lambda: None)
    with pytest.raises(cb.CpuBackendError, match="no C\\+\\+ compiler"):
        cb.build_cpu_program("int main() {}", str(tmp_path))


# --------------------------------------------------------------------------------------------------------------
# The data set's reference kernels, AddressSanitizer
# --------------------------------------------------------------------------------------------------------------
@needs_gxx
@needs_data
def test_every_exec_dev_reference_kernel_compiles_with_the_header(tmp_path):
    """All reference kernels in one translation unit, each in its own namespace and file name (fast: one g++)."""
    records = [json.loads(line) for line in EXEC.read_text().splitlines() if line.strip()]
    includes, bodies, unsupported = [], [], []
    for record in records:
        prepared = prepare_for_cpu(record["cuda_code"])
        if isinstance(prepared, Unsupported):
            unsupported.append((record["id"], prepared.reason))
            continue
        lines = prepared.source.split("\n")[2:]  # the header include and #line go once, at the top
        includes += [ln for ln in lines if ln.lstrip().startswith("#include")]
        body = "\n".join("" if ln.lstrip().startswith("#include") else ln for ln in lines)
        bodies.append(f'namespace mot_case_{record["id"]} {{\n#line 1 "case_{record["id"]}.cu"\n{body}\n}}\n')
    (tmp_path / "all.cpp").write_text('#include "cuda_cpu.h"\n' + "\n".join(includes) + "\n" + "\n".join(bodies))
    proc = subprocess.run([find_gxx(), "-std=c++17", "-fsyntax-only", "-w", "-I", str(cb.HEADER_DIR), "all.cpp"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    failed = set(re.findall(r"^case_(\d+)\.cu:\d+", proc.stderr, re.M))
    compiled = len(records) - len(unsupported) - len(failed)
    assert compiled >= EXEC_DEV_COMPILE_FLOOR, (compiled, sorted(failed), unsupported, proc.stderr[:3000])


@pytest.mark.slow
@needs_gxx
@needs_data
def test_an_exec_dev_case_runs_its_tests_on_the_cpu():
    case = next(c for c in load_exec_cases(EXEC) if c.id == "109")  # 2-D grid matrix multiply, 4 tests
    program, _ = build_cuda_program(case, case.cuda_code)
    check = cb.check_on_cpu(program, [[str(i)] for i in range(len(case.cuda_inputs))], timeout_s=30)
    assert check.status == "ran", check.reason
    for run, expected in zip(check.runs, case.outputs):
        _clean(run)
        assert normalize_output(run.stdout) == normalize_output(expected)


@pytest.mark.slow
@needs_gxx
def test_address_sanitizer_catches_an_out_of_bounds_read_with_fibers():
    code = ("#include <cstdio>\n__global__ void shift(const float* in, float* out, int n) {\n"
            "    __shared__ float s[32];\n    int i = threadIdx.x;\n    s[i] = in[i + 1];\n    __syncthreads();\n"
            "    out[i] = s[31 - i];\n}\n"
            "int main() {\n    float *in, *out;\n    cudaMalloc((void**)&in, 32 * sizeof(float));\n"
            "    cudaMalloc((void**)&out, 32 * sizeof(float));\n    shift<<<1, 32>>>(in, out, 32);\n"
            "    printf(\"done\\n\");\n}\n")
    sanitized = cb.check_on_cpu(code, sanitize=True, timeout_s=60)
    run = sanitized.runs[0]
    assert run.returncode != 0 and "done" not in run.stdout
    assert run.problems[0].kind == "oob"
    assert run.verdict == "AddressSanitizer: heap-buffer-overflow: READ of 4 bytes in shift"

"""Hand-made executable cases in BabelTower's JSON shape whose own tests are weak the way the data set's are: a
kernel passes them and is still wrong, which the generated-input check catches (tests/test_functional_generated.py,
tests/test_bench_quality.py).

* ``relu``: the tests hold only non-negative values, so a kernel taking absolute values (`RELU_ABS`) passes them;
* ``scale``: one element per test, so a kernel that scales ``x[0]`` only (`SCALE_FIRST`) passes them;
* ``sum_check``: vacuous — the reference sums into a local and changes nothing (its expected outputs are its inputs);
* ``copy``: a right kernel through a warp shuffle, which the CPU backend cannot run (not verifiable there).

The expected outputs are what the C++ references print; the wrappers allocate, copy, launch and copy back as the
data set's do (the ``gpu`` test of tests/test_functional_generated.py runs both halves for real).
"""

from __future__ import annotations

from kernelcheck.cases import ExecCase


def _wrapper(name: str, kernel: str, params: str, copies_in: list[str], copies_out: list[str], args: str,
             launch: str = "(n + 255) / 256, 256") -> str:
    """A data-set style ``<name>_invoke_in_cpp``: float arrays of n elements to the device and back."""
    body = [f"void {name}_invoke_in_cpp({params}) {{"]
    for a in copies_in:
        body += [f"    float* d_{a};", f"    cudaMalloc((void**)&d_{a}, n * sizeof(float));",
                 f"    cudaMemcpy(d_{a}, {a}, n * sizeof(float), cudaMemcpyHostToDevice);"]
    body.append(f"    {kernel}<<<{launch}>>>({args});")
    body += [f"    cudaMemcpy({a}, d_{a}, n * sizeof(float), cudaMemcpyDeviceToHost);" for a in copies_out]
    body += [f"    cudaFree(d_{a});" for a in copies_in]
    return "\n".join(body + ["}"])


def _record(case_id: str, fn: str, cpp: str, cuda: str, wrapper: str, tests: list[str], outputs: list[str]) -> dict:
    return {"id": case_id, "cpp_code": cpp, "cuda_code": cuda,
            "consistent_cpp_inputs": [t.replace("{f}", fn) for t in tests],
            "consistent_cuda_inputs": [t.replace("{f}", fn + "_invoke_in_cpp") for t in tests],
            "cuda_wrapper": wrapper, "consistent_outputs": outputs}


OUT = "Return value: void\nArguments after function call: ({})\n"
RECORDS = [
    # The data's tests hold only non-negative values: a kernel taking absolute values passes them.
    _record("relu", "relu_cpu",
            "void relu_cpu ( float * x , int n ) { for ( int i = 0 ; i < n ; i ++ ) { if ( x [ i ] < 0 ) { "
            "x [ i ] = 0 ; } } }",
            "__global__ void relu ( float * x , int n ) { int i = blockIdx . x * blockDim . x + threadIdx . x ; "
            "if ( i < n && x [ i ] < 0 ) { x [ i ] = 0 ; } }",
            _wrapper("relu_cpu", "relu", "float* x, int n", ["x"], ["x"], "d_x, n"),
            ["float x1[] = {1, 2, 3};\nwrapper({f}, x1, 3);\n", "float x2[] = {0.5, 4};\nwrapper({f}, x2, 2);\n"],
            [OUT.format("[ 1, 2, 3 ], 3"), OUT.format("[ 0.5, 4 ], 2")]),
    # One element per test: a kernel that scales x[0] only passes them.
    _record("scale", "scale_cpu",
            "void scale_cpu ( float * x , float a , int n ) { for ( int i = 0 ; i < n ; i ++ ) { "
            "x [ i ] = x [ i ] * a ; } }",
            "__global__ void scale ( float * x , float a , int n ) { int i = blockIdx . x * blockDim . x + "
            "threadIdx . x ; if ( i < n ) { x [ i ] = x [ i ] * a ; } }",
            _wrapper("scale_cpu", "scale", "float* x, float a, int n", ["x"], ["x"], "d_x, a, n"),
            ["float x1[] = {3};\nwrapper({f}, x1, 2.0f, 1);\n", "float x2[] = {-1};\nwrapper({f}, x2, 0.5f, 1);\n"],
            [OUT.format("[ 6 ], 2, 1"), OUT.format("[ -0.5 ], 0.5, 1")]),
    # Vacuous: the reference sums into a local and changes nothing; its expected outputs are its inputs.
    _record("sum_check", "sum_check_cpu",
            "void sum_check_cpu ( float * x , int n ) { float s = 0 ; for ( int i = 0 ; i < n ; i ++ ) { "
            "s += x [ i ] ; } }",
            "__global__ void sum_check ( float * x , int n ) { }",
            _wrapper("sum_check_cpu", "sum_check", "float* x, int n", ["x"], ["x"], "d_x, n", launch="1, n"),
            ["float x1[] = {1, 2};\nwrapper({f}, x1, 2);\n"], [OUT.format("[ 1, 2 ], 2")]),
    # A warp shuffle: right, but not verifiable on the CPU backend (no warps there).
    _record("copy", "copy_cpu",
            "void copy_cpu ( const float * a , float * b , int n ) { for ( int i = 0 ; i < n ; i ++ ) { "
            "b [ i ] = a [ i ] ; } }",
            "__global__ void copy_values ( const float * a , float * b , int n ) { int i = blockIdx . x * "
            "blockDim . x + threadIdx . x ; if ( i < n ) { b [ i ] = __shfl_sync ( 0xffffffff , a [ i ] , "
            "threadIdx . x % 32 ) ; } }",
            _wrapper("copy_cpu", "copy_values", "const float* a, float* b, int n", ["a", "b"], ["b"],
                     "d_a, d_b, n"),
            ["float a1[] = {1, 2};\nfloat b1[2];\nwrapper({f}, a1, b1, 2);\n"], [OUT.format("[ 1, 2 ], [ 1, 2 ], 2")]),
]
CASES = [ExecCase.from_record(r) for r in RECORDS]
REFERENCE = {c.id: c.cuda_code for c in CASES}
RELU_ABS = ("__global__ void relu ( float * x , int n ) { int i = blockIdx . x * blockDim . x + threadIdx . x ; "
            "if ( i < n ) { x [ i ] = fabsf ( x [ i ] ) ; } }")
SCALE_FIRST = ("__global__ void scale ( float * x , float a , int n ) { if ( threadIdx . x == 0 && blockIdx . x == 0 "
               ") { x [ 0 ] = x [ 0 ] * a ; } }")
# relu: the right kernel, then the weak one; every other case: its one kernel (scale's is the weak one).
PREDICTIONS = {"relu": [REFERENCE["relu"], RELU_ABS], "scale": [SCALE_FIRST], "sum_check": [REFERENCE["sum_check"]],
               "copy": [REFERENCE["copy"]]}

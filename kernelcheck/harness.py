"""One generator for the programs of a differential check, and the plan they read.

* `reference_program`: the user's C/C++ source + a ``main`` that, for every input of ``plan.txt``, allocates
  each array with guard zones (`kernelcheck.harness_runtime`), fills it, calls the function (a
  ``std::vector<T>&`` gets a vector built from the array, a ``T&`` the array's one element) and records the
  return value and every array afterwards.  Built by g++ under AddressSanitizer and UndefinedBehaviorSanitizer
  (`kernelcheck.runner`).
* `kernel_program`: the kernel source + the same ``main`` shape, but the call is a launch:

  - ``backend="gpu"`` (nvcc): each array is copied with its guard zones into one ``cudaMalloc`` block, the
    kernel runs with ``<<<grid, block, shared>>>``, ``cudaGetLastError`` and ``cudaDeviceSynchronize`` are
    checked, and the blocks come back whole, so the guards show out-of-bounds writes on the GPU too;
  - ``backend="cpu"`` (g++ + the emulation header ``kernelcheck/emulation/cuda_cpu.h``): the same program,
    rewritten by `kernelcheck.cpu_source.prepare_for_cpu` (``<<<>>>`` -> ``mot_cpu::launch_named``); the
    emulated ``cudaMalloc`` watches each array for data races and has its own guards beyond ours.

  Kernel arguments follow `kernelcheck.mapping`: the C argument cast to the kernel's type, a zeroed one-element
  slot for the C return value (recorded as the return value, converted to the C return type), a vector's size.

Both programs fill arrays in C-parameter order with the same seeds and record the same items in the same order,
so the records compare one to one (`kernelcheck.compare`).  One build per (function, backend) runs every input.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Sequence

from .cpu_source import Unsupported, prepare_for_cpu
from .harness_runtime import RUNTIME_HEADER, RUNTIME_SOURCE
from .inputs import FILL_MODES, InputCase
from .launch_config import Launch
from .mapping import ParamMapping
from .programs import PRELUDE
from .signatures import FunctionInfo, Param

__all__ = ["Program", "KernelUnderTest", "CpuUnsupported", "plan_text", "reference_program", "kernel_program",
           "kernels_program", "CPU_INCLUDE"]

CPU_INCLUDE = '#include "cuda_cpu.h"'
_MAIN_RE = re.compile(r"\bmain\s*\(")


@dataclass(frozen=True)
class Program:
    """A generated program: ``head`` (prelude and the runtime's declarations: precompilable, the same for every
    program of a backend) and ``body`` (the user's source and the ``main`` that drives it).  The runtime's
    definitions (`RUNTIME_SOURCE`) come from a prebuilt object for g++, inline for nvcc (`text`)."""

    head: str
    body: str

    def text(self, inline_runtime: bool) -> str:
        return "\n".join([self.head, RUNTIME_SOURCE if inline_runtime else "", self.body])


def _number(value: float) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value.hex()
    return str(int(value))


def plan_text(inputs: Sequence[InputCase], c: FunctionInfo, launches: dict[int, Launch] | None = None) -> str:
    """``plan.txt``: one line per input (format in `kernelcheck.harness_runtime`)."""
    lines = []
    for case in inputs:
        tokens = [f"I {case.index} {case.seed}"]
        for p in c.params:
            if p.name in case.extents:
                fill = case.fills[p.name]
                tokens.append(f"a {case.extents[p.name]} {FILL_MODES[fill.mode]} {_number(float(fill.lo))} "
                              f"{_number(float(fill.hi))}")
            elif p.scalar is not None and p.scalar.is_float:
                tokens.append(f"f {_number(float(case.values[p.name]))}")
            else:
                tokens.append(f"i {int(case.values[p.name])}")
        launch = (launches or {}).get(case.index)
        if launch is None:
            tokens.append("L 0 0 0 0 0 0 0")
        else:
            tokens.append("L " + " ".join(str(v) for v in (*launch.grid, *launch.block, launch.shared_bytes)))
        lines.append(" ".join(tokens))
    return "\n".join(lines) + "\n"


def _wrap_source(source: str, filename: str) -> str:
    """The user's source with its own ``main`` renamed out of the way and ``#line`` set for messages."""
    own_main = bool(_MAIN_RE.search(source))
    parts = ["#define main mot_user_main"] if own_main else []
    parts += [f'#line 1 "{filename}"', source, '#line 1 "mot_harness.cpp"']
    if own_main:
        parts.append("#undef main")
    return "\n".join(parts)


_MAIN_HEAD = r"""
int main(int argc, char** argv) {
    mot::Plan plan;
    if (!plan.read("plan.txt")) { std::fprintf(stderr, "MOT_PLAN_ERROR cannot read plan.txt\n"); return 2; }
    unsigned seconds = argc > 1 ? (unsigned)std::atoi(argv[1]) : 10;
    bool append = argc > 2 && std::atoi(argv[2]) != 0;
    mot::Output out;
    if (!out.open("out.bin", append)) { std::fprintf(stderr, "MOT_PLAN_ERROR cannot write out.bin\n"); return 2; }
    for (size_t n = 0; n < plan.inputs.size(); ++n) {
        std::vector<mot::Value>& v = plan.inputs[n];
        mot::begin_input(plan.index[n], seconds);
"""

_MAIN_TAIL = r"""        alarm(0);
        mot::check_all();
        out.begin(plan.index[n]);
{items}
        out.end();
{free}
        mot::release_all();
    }
    return 0;
}
"""


def _buffer_lines(c: FunctionInfo) -> list[str]:
    """Allocate and fill every array of the C function (C-parameter order, the same in every program)."""
    lines = []
    for j, p in enumerate(c.params):
        if not (p.is_buffer or p.is_scalar_ref):
            continue
        t = p.scalar.name
        lines.append(f"        {t}* b{j} = ({t}*)mot::guarded_alloc(v[{j}].n * sizeof({t}), {j});")
        lines.append(f"        mot::fill(b{j}, v[{j}].n, plan.seed[n], {j}, v[{j}].mode, v[{j}].lo, v[{j}].hi);")
    return lines


def _value(p: Param, j: int) -> str:
    return f"({p.scalar.name})v[{j}].f" if p.scalar.is_float else f"({p.scalar.name})v[{j}].i"


def _items(c: FunctionInfo, return_expr: str | None) -> str:
    lines = []
    if return_expr is not None:
        r = c.return_type.name
        lines.append(f"        {{ {r} mot_r = {return_expr}; out.item(0, mot::kind_of<{r}>(), sizeof({r}), -1, "
                     "&mot_r, sizeof mot_r); }")
    for j, p in enumerate(c.params):
        if p.is_buffer or p.is_scalar_ref:
            t = p.scalar.name
            lines.append(f"        out.item(1, mot::kind_of<{t}>(), sizeof({t}), {j}, b{j}, v[{j}].n * sizeof({t}));")
    return "\n".join(lines)


def reference_program(source: str, c: FunctionInfo, *, call: bool = True) -> Program:
    """The C/C++ reference program (see the module docstring); ``call=False``: the same program without the call
    (it records the arrays as filled: what the function would leave if it changed nothing)."""
    body = _buffer_lines(c)
    args = []
    for j, p in enumerate(c.params):
        if p.vector:
            t = p.scalar.name
            body.append(f"        std::vector<{t}> vec{j}(b{j}, b{j} + v[{j}].n);")
            args.append(f"vec{j}")
        elif p.is_scalar_ref:
            args.append(f"b{j}[0]")
        elif p.is_buffer:
            args.append(f"b{j}")
        else:
            args.append(_value(p, j))
    # Qualified: under the prelude's `using namespace std`, an unqualified `copy(a, b, n)` would pick std::copy
    # (an exact template match beats the user's function when a `const` is added to an argument).
    callee = c.name if "::" in c.name else f"::{c.name}"
    text = f"{callee}({', '.join(args)})"
    if not call:
        pass
    elif c.returns_value:
        body.append(f"        {c.return_type.name} mot_ret = {text};")
    else:
        body.append(f"        {text};")
    for j, p in enumerate(c.params):
        if p.vector:
            t = p.scalar.name
            body.append(f"        if (vec{j}.size() != v[{j}].n) std::fprintf(stderr, \"MOT_RESIZED %d {j}\\n\", "
                        f"mot::current_input);")
            body.append(f"        else if (v[{j}].n) std::memcpy(b{j}, vec{j}.data(), v[{j}].n * sizeof({t}));")
    tail = _MAIN_TAIL.replace("{items}", _items(c, "mot_ret" if c.returns_value and call else None)) \
        .replace("{free}", "")
    return Program(head="\n".join([PRELUDE, RUNTIME_HEADER]),
                   body="\n".join([_wrap_source(source, "reference.cpp"), _MAIN_HEAD, *body, tail]))


def _kernel_args(k: FunctionInfo, c: FunctionInfo, mapping: ParamMapping, device: str) -> list[str]:
    """The launch's argument list; ``device``: the prefix of the arrays the kernel gets (d for GPU, b for CPU)."""
    index = {p.name: j for j, p in enumerate(c.params)}
    args = []
    for binding in mapping.bindings:
        kt = binding.kernel.scalar.name
        if binding.source == "return":
            args.append(f"({kt}*){device}_ret")
        elif binding.source == "vector_size":
            args.append(f"({kt})v[{index[binding.c_param.name]}].n")
        elif binding.c_param.is_buffer or binding.c_param.is_scalar_ref:
            args.append(f"({kt}*){device}{index[binding.c_param.name]}")
        else:
            j = index[binding.c_param.name]
            args.append(f"({kt}){_value(binding.c_param, j)}")
    return args


_GPU_CHECK = r"""
#define MOT_CUDA_CHECK(call) do { cudaError_t mot_e = (call); if (mot_e != cudaSuccess) { \
    std::fprintf(stderr, "MOT_CUDA_ERROR %d %s: %s\n", mot::current_input, cudaGetErrorName(mot_e), \
                 cudaGetErrorString(mot_e)); std::exit(3); } } while (0)
"""


@dataclass(frozen=True)
class KernelUnderTest:
    """One kernel of a kernel program: its source, its ``__global__`` function, its argument mapping."""

    source: str
    kernel: FunctionInfo
    mapping: ParamMapping


def _launch_case(j: int, ku: KernelUnderTest, c: FunctionInfo, qualified: str) -> list[str]:
    """``case j:`` of the launch switch: kernel ``j`` with its arguments (device pointers ``d*``)."""
    args = ", ".join(_kernel_args(ku.kernel, c, ku.mapping, "d"))
    return [f"        case {j}:",
            "            if (L[0] > 0 && L[1] > 0 && L[2] > 0) {",
            f"                {qualified}<<<dim3((unsigned)L[0], (unsigned)L[1], (unsigned)L[2]), dim3((unsigned)L[3], "
            f"(unsigned)L[4], (unsigned)L[5]), (size_t)L[6]>>>({args});",
            "                MOT_CUDA_CHECK(cudaGetLastError());",
            "            }",
            "            break;"]


def _return_case(j: int, ku: KernelUnderTest, c: FunctionInfo) -> str:
    slot = next((b for b in ku.mapping.bindings if b.source == "return"), None)
    if slot is None:
        return ""
    return f"        case {j}: mot_ret = ({c.return_type.name})(({slot.kernel.scalar.name}*)b_ret)[0]; break;"


def _gpu_body(kernels: Sequence[KernelUnderTest], names: Sequence[str], c: FunctionInfo,
              device_guards: bool) -> tuple[list[str], list[str]]:
    """(lines before the record, lines freeing device memory) of the kernel program's per-input body: the arrays
    copied into ``cudaMalloc`` blocks — with their guard zones (``device_guards``: on a GPU nothing else sees an
    out-of-bounds write) or exactly (the CPU backend's allocations have guards of their own and report reads as
    well) — the launch of kernel ``which``, the blocks copied back."""
    body = _buffer_lines(c)
    copies_back, frees = [], []
    buffers = [(str(j), f"(v[{j}].n * sizeof({p.scalar.name}))") for j, p in enumerate(c.params)
               if p.is_buffer or p.is_scalar_ref]
    if c.returns_value:
        body.append("        unsigned char* b_ret = mot::guarded_alloc(8, -1);")
        body.append("        std::memset(b_ret, 0, 8);")
        buffers.append(("_ret", "8"))
    guard = "mot::GUARD" if device_guards else "0"
    for j, size in buffers:
        body.append(f"        unsigned char* r{j} = nullptr;")
        body.append(f"        MOT_CUDA_CHECK(cudaMalloc((void**)&r{j}, {size} + 2 * {guard}));")
        body.append(f"        MOT_CUDA_CHECK(cudaMemcpy(r{j}, (unsigned char*)b{j} - {guard}, {size} + 2 * {guard}, "
                    "cudaMemcpyHostToDevice));")
        body.append(f"        void* d{j} = r{j} + {guard};")
        copies_back.append(f"        MOT_CUDA_CHECK(cudaMemcpy((unsigned char*)b{j} - {guard}, r{j}, "
                           f"{size} + 2 * {guard}, cudaMemcpyDeviceToHost));")
        frees.append(f"        cudaFree(r{j});")
    body.append("        const std::vector<long long>& L = plan.launch[n];")
    body.append("        switch (which) {")
    for j, (ku, name) in enumerate(zip(kernels, names)):
        body.extend(_launch_case(j, ku, c, name))
    body.append("        default: std::fprintf(stderr, \"MOT_PLAN_ERROR no kernel %d\\n\", which); return 2;")
    body.append("        }")
    body.append("        MOT_CUDA_CHECK(cudaDeviceSynchronize());")
    body.extend(copies_back)
    if c.returns_value:
        body.append(f"        {c.return_type.name} mot_ret = 0;")
        body.append("        switch (which) {")
        body.extend(_return_case(j, ku, c) for j, ku in enumerate(kernels))
        body.append("        }")
    return body, frees


_INCLUDE_RE = re.compile(r"^[ \t]*#[ \t]*include\b.*$", re.M)


def _kernel_sources(kernels: Sequence[KernelUnderTest]) -> tuple[str, list[str]]:
    """The kernels' sources for one program and the name each kernel is launched by.  One kernel stays at global
    scope; several go into namespaces ``mot_k0``, ``mot_k1``... (their ``#include`` lines hoisted above them)."""
    if len(kernels) == 1:
        return _wrap_source(kernels[0].source, "kernel.cu"), [kernels[0].kernel.name]
    includes: list[str] = []
    parts = []
    for j, ku in enumerate(kernels):
        includes += [m.group(0).strip() for m in _INCLUDE_RE.finditer(ku.source)]
        source = _INCLUDE_RE.sub("", ku.source)
        parts.append(f"namespace mot_k{j} {{\n{_wrap_source(source, f'kernel{j}.cu')}\n}}  // namespace mot_k{j}")
    return "\n".join([*dict.fromkeys(includes), *parts]), [f"mot_k{j}::{ku.kernel.name}" for j, ku in
                                                           enumerate(kernels)]


class CpuUnsupported(ValueError):
    """The CPU backend cannot run this kernel; the message is "not verifiable on CPU: <reason>"."""


def kernel_program(source: str, k: FunctionInfo, c: FunctionInfo, mapping: ParamMapping, backend: str) -> Program:
    """The program of one kernel (see `kernels_program`)."""
    return kernels_program([KernelUnderTest(source, k, mapping)], c, backend)


def kernels_program(kernels: Sequence[KernelUnderTest], c: FunctionInfo, backend: str) -> Program:
    """One program for ``backend`` "gpu" (nvcc) or "cpu" (g++ with the emulation header, the body rewritten by
    `kernelcheck.cpu_source.prepare_for_cpu`: ``<<<>>>`` becomes ``mot_cpu::launch_named``, the emulated
    ``cudaMalloc`` watches every array for races) that runs kernel number ``argv[3]`` (default 0) of ``kernels``
    on the plan's inputs: several candidate kernels of one function share one build.  `CpuUnsupported` when the
    CPU backend cannot run them."""
    sources, names = _kernel_sources(kernels)
    body_lines, frees = _gpu_body(kernels, names, c, device_guards=backend == "gpu")
    tail = _MAIN_TAIL.replace("{items}", _items(c, "mot_ret" if c.returns_value else None)) \
        .replace("{free}", "\n".join(frees))
    head = _MAIN_HEAD.replace("    mot::Output out;", "    int which = argc > 3 ? std::atoi(argv[3]) : 0;\n"
                                                       "    mot::Output out;")
    body = "\n".join([sources, head, *body_lines, tail])
    if backend == "gpu":
        return Program(head="\n".join([PRELUDE, "#include <cuda_runtime.h>", RUNTIME_HEADER, _GPU_CHECK]), body=body)
    if backend != "cpu":
        raise ValueError(f"unknown backend {backend!r}; expected 'gpu' or 'cpu'")
    prepared = prepare_for_cpu(body)
    if isinstance(prepared, Unsupported):
        raise CpuUnsupported(prepared.reason)
    return Program(head="\n".join([PRELUDE, CPU_INCLUDE, RUNTIME_HEADER, _GPU_CHECK]), body=prepared.source)

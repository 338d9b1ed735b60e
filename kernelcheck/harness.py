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

from .harness_runtime import RUNTIME_HEADER, RUNTIME_SOURCE
from .inputs import FILL_MODES, InputCase
from .launch import Launch
from .mapping import ParamMapping
from .cpu_source import Unsupported, prepare_for_cpu
from .programs import PRELUDE
from .signatures import FunctionInfo, Param

__all__ = ["Program", "CpuUnsupported", "plan_text", "reference_program", "kernel_program", "CPU_INCLUDE"]

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


def reference_program(source: str, c: FunctionInfo) -> Program:
    """The C/C++ reference program (see the module docstring)."""
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
    call = f"{c.name}({', '.join(args)})"
    if c.returns_value:
        body.append(f"        {c.return_type.name} mot_ret = {call};")
    else:
        body.append(f"        {call};")
    for j, p in enumerate(c.params):
        if p.vector:
            t = p.scalar.name
            body.append(f"        if (vec{j}.size() != v[{j}].n) std::fprintf(stderr, \"MOT_RESIZED %d {j}\\n\", "
                        f"mot::current_input);")
            body.append(f"        else if (v[{j}].n) std::memcpy(b{j}, vec{j}.data(), v[{j}].n * sizeof({t}));")
    tail = _MAIN_TAIL.replace("{items}", _items(c, "mot_ret" if c.returns_value else None)).replace("{free}", "")
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


def _return_slot(k: FunctionInfo, mapping: ParamMapping) -> tuple[str, str] | None:
    slot = next((b for b in mapping.bindings if b.source == "return"), None)
    return (slot.kernel.scalar.name, slot.kernel.name) if slot is not None else None


_GPU_CHECK = r"""
#define MOT_CUDA_CHECK(call) do { cudaError_t mot_e = (call); if (mot_e != cudaSuccess) { \
    std::fprintf(stderr, "MOT_CUDA_ERROR %d %s: %s\n", mot::current_input, cudaGetErrorName(mot_e), \
                 cudaGetErrorString(mot_e)); std::exit(3); } } while (0)
"""


def _gpu_body(k: FunctionInfo, c: FunctionInfo, mapping: ParamMapping) -> tuple[list[str], list[str]]:
    """(lines before the record, lines freeing device memory) of the GPU program's per-input body."""
    body = _buffer_lines(c)
    copies_back, frees = [], []
    buffers = [(j, p) for j, p in enumerate(c.params) if p.is_buffer or p.is_scalar_ref]
    slot = _return_slot(k, mapping)
    if slot is not None:
        kt, _ = slot
        body.append(f"        {kt}* b_ret = ({kt}*)mot::guarded_alloc(sizeof({kt}), -1);")
        body.append(f"        b_ret[0] = ({kt})0;")
        buffers.append(("_ret", None))
    for j, p in buffers:
        size = f"(v[{j}].n * sizeof({p.scalar.name}))" if p is not None else f"sizeof(*b_ret)"
        body.append(f"        unsigned char* r{j} = nullptr;")
        body.append(f"        MOT_CUDA_CHECK(cudaMalloc((void**)&r{j}, {size} + 2 * mot::GUARD));")
        body.append(f"        MOT_CUDA_CHECK(cudaMemcpy(r{j}, (unsigned char*)b{j} - mot::GUARD, {size} + 2 * mot::GUARD, "
                    "cudaMemcpyHostToDevice));")
        body.append(f"        void* d{j} = r{j} + mot::GUARD;")
        copies_back.append(f"        MOT_CUDA_CHECK(cudaMemcpy((unsigned char*)b{j} - mot::GUARD, r{j}, "
                           f"{size} + 2 * mot::GUARD, cudaMemcpyDeviceToHost));")
        frees.append(f"        cudaFree(r{j});")
    args = ", ".join(_kernel_args(k, c, mapping, "d"))
    body.append("        const std::vector<long long>& L = plan.launch[n];")
    body.append("        if (L[0] > 0 && L[1] > 0 && L[2] > 0) {")
    body.append(f"            {k.name}<<<dim3((unsigned)L[0], (unsigned)L[1], (unsigned)L[2]), dim3((unsigned)L[3], "
                f"(unsigned)L[4], (unsigned)L[5]), (size_t)L[6]>>>({args});")
    body.append("            MOT_CUDA_CHECK(cudaGetLastError());")
    body.append("        }")
    body.append("        MOT_CUDA_CHECK(cudaDeviceSynchronize());")
    body.extend(copies_back)
    return body, frees


class CpuUnsupported(ValueError):
    """The CPU backend cannot run this kernel; the message is "not verifiable on CPU: <reason>"."""


def kernel_program(source: str, k: FunctionInfo, c: FunctionInfo, mapping: ParamMapping, backend: str) -> Program:
    """The kernel program for ``backend`` "gpu" (nvcc) or "cpu" (g++ with the emulation header, the body
    rewritten by `kernelcheck.cpu_source.prepare_for_cpu`: ``<<<>>>`` becomes ``mot_cpu::launch_named``, the
    emulated ``cudaMalloc`` watches every array for races).  `CpuUnsupported` when the CPU backend cannot run it."""
    slot = _return_slot(k, mapping)
    return_expr = f"({c.return_type.name})b_ret[0]" if slot is not None else None
    body_lines, frees = _gpu_body(k, c, mapping)
    tail = _MAIN_TAIL.replace("{items}", _items(c, return_expr)).replace("{free}", "\n".join(frees))
    body = "\n".join([_wrap_source(source, "kernel.cu"), _MAIN_HEAD, *body_lines, tail])
    if backend == "gpu":
        return Program(head="\n".join([PRELUDE, "#include <cuda_runtime.h>", RUNTIME_HEADER, _GPU_CHECK]), body=body)
    if backend != "cpu":
        raise ValueError(f"unknown backend {backend!r}; expected 'gpu' or 'cpu'")
    prepared = prepare_for_cpu(body)
    if isinstance(prepared, Unsupported):
        raise CpuUnsupported(prepared.reason)
    return Program(head="\n".join([PRELUDE, CPU_INCLUDE, RUNTIME_HEADER, _GPU_CHECK]), body=prepared.source)

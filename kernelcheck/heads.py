"""The head of the kernel a C/C++ function becomes: what a prompt can open the answer with, so a model writes the
body of a kernel instead of echoing the source or choosing its own (wrong) parameters.

`kernel_head(source)` reads the source's first function with tree-sitter (`kernelcheck.parsing`) and gives
`__global__ void <name>_kernel(<parameters>)` when every parameter maps one to one onto a kernel parameter (scalars,
pointers, `T a[]` as `T *a`) and the function returns nothing; otherwise only `__global__ void <name>_kernel(`, and
the model writes the parameters itself (a `std::vector<T>&` needs a pointer and a size, a reference an output
pointer, a return value an output parameter). The kernel is named apart from the host function (`saxpy` ->
`saxpy_kernel`, `scale_cpu` -> `scale_kernel`): both live in one program once the user adds a launcher.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from kernelcheck.parsing import FunctionSignature, Parameter, function_signatures

FRAGMENT_KERNEL = "translated_kernel"  # the name of a kernel made from code that is not a whole function
_HOST_SUFFIX = re.compile(r"(_cpu|_host|_CPU|Cpu|CPU|_seq|_serial)$")


@dataclass(frozen=True)
class KernelHead:
    name: str  # the kernel's name
    text: str  # `__global__ void name(params)`, or `__global__ void name(` when `complete` is False
    complete: bool  # the parameter list is closed (every parameter mapped one to one)
    function: str  # the C/C++ function it comes from


def kernel_name(function_name: str) -> str:
    """`saxpy` -> `saxpy_kernel`; `scale_cpu` -> `scale_kernel`; a name that already says kernel keeps it."""
    base = function_name.split("::")[-1] or "translated"
    if "kernel" in base.lower():
        return base
    return (_HOST_SUFFIX.sub("", base) or base) + "_kernel"


def _kernel_parameter(p: Parameter) -> str | None:
    """The parameter as the kernel takes it, or None when it does not map one to one."""
    if p.kind == "scalar" or (p.kind == "pointer" and p.pointer_depth == 1):
        return p.text
    if p.kind == "array" and p.pointer_depth == 1:
        return f"{'const ' if p.const else ''}{p.type} *{p.name}"
    return None


def head_for(signature: FunctionSignature) -> KernelHead:
    name = kernel_name(signature.name)
    params = [_kernel_parameter(p) for p in signature.parameters]
    if signature.return_type == "void" and all(p is not None for p in params):
        return KernelHead(name, f"__global__ void {name}({', '.join(params)})", True, signature.name)
    return KernelHead(name, f"__global__ void {name}(", False, signature.name)


def kernel_head(source: str) -> KernelHead:
    """The head for the first function defined in `source`; for a fragment (a loop selected in an editor) an open
    head, `__global__ void translated_kernel(`, whose parameters the model writes."""
    signatures = function_signatures(source)
    if signatures:
        return head_for(signatures[0])
    return KernelHead(FRAGMENT_KERNEL, f"__global__ void {FRAGMENT_KERNEL}(", False, "")

"""Is a kernel parallel? Whether it spreads its work over threads and blocks, or runs its C loop whole in every thread.

Small models given an opened `__global__` head often keep the source's loop as is: every thread then does all the
work (correct output, no parallelism, and a data race wherever it writes). The quality benchmark counts those apart
from parallel kernels, so "kernel delivered" is not mistaken for "kernel that parallelises".

`parallelism(code)` reads the first `__global__` function's body as text (model output is often not valid C++):

| result | meaning |
|---|---|
| `parallel` | the thread or block index reaches an array subscript or a loop's start: each thread does its part |
| `serial` | a loop runs, and no thread index reaches a subscript or a loop start: the C loop whole in every thread |
| `none` | neither: no thread index used for work and no loop (e.g. one fixed element written) |

The index "reaches" a subscript through variables assigned from it (`int i = blockIdx.x * blockDim.x + threadIdx.x;
int row = i / w;` -> `a[row * w + c]`), followed to a fixed point.
"""

from __future__ import annotations

import re

from kernelcheck.sourcetext import kernel_span

PARALLEL, SERIAL, NONE = "parallel", "serial", "none"
_BUILTIN_INDEX = re.compile(r"\b(threadIdx|blockIdx)\s*\.\s*[xyz]\b")
_ASSIGNMENT = re.compile(r"\b([A-Za-z_]\w*)\s*(?:\[[^\]]*\])?\s*(?:[-+*/%&|^]|<<|>>)?=(?!=)\s*([^;{}]*)")
_LOOP = re.compile(r"\b(for|while)\s*\(")
_FOR_INIT = re.compile(r"\bfor\s*\(([^;]*);")
_SUBSCRIPT = re.compile(r"\[([^\[\]]*)\]")
_COMMENT = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)


def _mentions(text: str, names: set[str]) -> bool:
    if _BUILTIN_INDEX.search(text):
        return True
    return any(re.search(rf"\b{re.escape(name)}\b", text) for name in names)


def _index_variables(body: str) -> set[str]:
    """Variables whose value depends on the thread or block index (through assignments, to a fixed point)."""
    assignments = [(m.group(1), m.group(2)) for m in _ASSIGNMENT.finditer(body)]
    names: set[str] = set()
    while True:
        grown = {target for target, value in assignments if target not in names and _mentions(value, names)}
        if not grown:
            return names
        names |= grown


def parallelism(code: str) -> str:
    """`parallel`, `serial` or `none` for the first `__global__` function of `code` (see the module docstring);
    `none` where no kernel body can be found."""
    span = kernel_span(code)
    if span is None:
        return NONE
    body = _COMMENT.sub(" ", code[span[0] + 1:span[1]])
    names = _index_variables(body)
    subscripts = [m.group(1) for m in _SUBSCRIPT.finditer(body)]
    loop_starts = [m.group(1) for m in _FOR_INIT.finditer(body)]
    if any(_mentions(text, names) for text in subscripts + loop_starts):
        return PARALLEL
    return SERIAL if _LOOP.search(body) else NONE

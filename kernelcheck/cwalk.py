"""The expression half of the abstract walk of a C function (`kernelcheck.loopnest`): values, pointers, accesses.

`ExpressionWalker` keeps, while the walk goes through the function's statements: each variable's range
(`kernelcheck.intervals.Iv`) and the parameters its value depends on; each pointer's buffer and byte offset (a
parameter, or an alias such as ``(float*)((char*)h + pitch * j)`` or ``&a[k]``); and, per buffer parameter, the
byte range the function touches.  `scan` walks one expression: subscripts and dereferences record accesses
(reads and writes), assignments and increments update ranges and aliases, and a buffer handed to a function the
walk does not follow (anything but printf, the maths functions and memset/memcpy/memmove, whose byte counts it
reads) makes that buffer's extent unknown.  It also notes what indexing says about the parameters: integer
arrays whose values index other arrays, integer parameters that scale indexes (strides) or divide.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .intervals import TOP, TOP_FLOAT, Evaluator, Iv, binary
from .signatures import FunctionInfo, node_text, scalar_type

__all__ = ["ExpressionWalker", "Alias", "subscript_index", "strip_parens", "as_type"]

_MEMORY_CALLS = {"memset": (0, 2), "memcpy": (0, 2), "memmove": (0, 2)}  # name -> (pointer arg, byte count arg)
_PURE_CALLS = {"printf", "fprintf", "puts", "assert", "sqrt", "sqrtf", "exp", "expf", "log", "logf", "pow", "powf",
               "fabs", "fabsf", "abs", "min", "max", "fmin", "fmax", "fminf", "fmaxf", "floor", "ceil", "round"}


def subscript_index(node: Any) -> Any | None:
    """The index expression of ``a[i]`` (tree-sitter-cpp puts it in a ``subscript_argument_list``)."""
    index = node.child_by_field_name("index")
    if index is not None:
        return index
    indices = node.child_by_field_name("indices")
    if indices is None:
        indices = next((c for c in node.children if c.type == "subscript_argument_list"), None)
    if indices is None:
        return None
    named = [c for c in indices.named_children if c.type != "comment"]
    return named[0] if named else None


def strip_parens(node: Any) -> Any:
    while node is not None and node.type in ("parenthesized_expression", "condition_clause"):
        named = [c for c in node.named_children if c.type != "comment"]
        node = named[-1] if named else None
    return node


@dataclass
class Alias:
    base: str
    offset: Iv  # bytes from the start of the parameter's buffer
    elem: int   # bytes of the element type this pointer reads


class ExpressionWalker:
    """The state of the walk and its expression half (see the module docstring); `kernelcheck.loopnest` adds
    the statements and loops."""

    def __init__(self, fn: FunctionInfo, values: dict[str, Iv], contents: dict[str, Iv], sizes: dict[str, Iv]):
        self.fn = fn
        self.env: dict[str, Iv] = dict(values)
        self.deps: dict[str, frozenset[str]] = {p.name: frozenset([p.name]) for p in fn.params}
        self.contents = contents
        self.sizes = sizes
        self.ptr: dict[str, Alias] = {}
        self.buffers = {p.name for p in fn.params if p.is_buffer or p.is_scalar_ref}
        for p in fn.params:
            if p.name in self.buffers:
                self.ptr[p.name] = Alias(p.name, Iv.point(0), p.scalar.size if p.scalar else 1)
            elif p.scalar is not None and p.scalar.is_float:
                self.env.setdefault(p.name, TOP_FLOAT)
        self.acc: dict[str, Iv] = {}
        self.unknown: set[str] = set()
        self.record = True
        self.mult = 1.0
        self.unbounded = False
        self.work = 0.0
        self.depth = 0
        self.loops: list = []  # kernelcheck.loopnest.LoopInfo of the loops met, in order
        self.bound_params: set[str] = set()
        self.index_arrays: set[str] = set()
        self.stride_params: set[str] = set()
        self.divisor_params: set[str] = set()
        self.written: set[str] = set()

    # ---------------------------------------------------------------- expressions
    def ev(self, node: Any) -> Iv:
        arrays = {name: self.contents.get(alias.base, TOP) for name, alias in self.ptr.items()}
        return Evaluator(self.env, arrays, self.sizes).eval(node)

    def dep(self, node: Any) -> frozenset[str]:
        """Parameters an expression's value depends on (through locals, and array contents it reads)."""
        out: set[str] = set()
        pending = [node]
        while pending:
            n = pending.pop()
            if n is None:
                continue
            if n.type == "identifier":
                name = node_text(n)
                out |= self.deps.get(name, frozenset())
                if name in self.ptr:
                    out.add(self.ptr[name].base)
            elif n.type == "call_expression":
                callee = n.child_by_field_name("function")
                if callee is not None and callee.type == "field_expression":
                    out.add(node_text(callee).replace(" ", "").rsplit(".", 1)[0])
            pending.extend(n.named_children)
        return frozenset(out)

    def pointer(self, node: Any) -> Alias | None:
        """The buffer (and byte offset) a pointer-valued expression points into, or None."""
        node = strip_parens(node)
        if node is None:
            return None
        kind = node.type
        if kind == "identifier":
            return self.ptr.get(node_text(node))
        if kind == "cast_expression":
            inner = self.pointer(node.child_by_field_name("value"))
            type_text = node_text(node.child_by_field_name("type"))
            if inner is None or not type_text.endswith("*"):
                return inner
            scalar = scalar_type(type_text.rstrip("*").strip())
            return Alias(inner.base, inner.offset, scalar.size if scalar else 1)
        if kind == "binary_expression" and node_text(node.child_by_field_name("operator")) in ("+", "-"):
            left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
            op = node_text(node.child_by_field_name("operator"))
            base, other = self.pointer(left), right
            if base is None and op == "+":
                base, other = self.pointer(right), left
            if base is None:
                return None
            step = binary("*", self.ev(other), Iv.point(base.elem))
            return Alias(base.base, binary(op, base.offset, step), base.elem)
        if kind == "pointer_expression" and node_text(node).startswith("&"):
            target = strip_parens(node.child_by_field_name("argument"))
            if target is not None and target.type == "subscript_expression":
                base = self.pointer(target.child_by_field_name("argument"))
                index = subscript_index(target)
                if base is not None and index is not None:
                    return Alias(base.base, binary("+", base.offset, binary("*", self.ev(index), Iv.point(base.elem))),
                                  base.elem)
        return None

    def touch(self, alias: Alias, index: Iv, write: bool) -> None:
        if write:
            self.written.add(alias.base)
        if not self.record:
            return
        start = binary("+", alias.offset, binary("*", index, Iv.point(alias.elem)))
        if not math.isfinite(start.hi):
            self.unknown.add(alias.base)
            return
        end = Iv(start.lo, start.hi + alias.elem)
        self.acc[alias.base] = self.acc[alias.base].union(end) if alias.base in self.acc else end

    def mark_index_use(self, index: Any) -> None:
        for name in self.dep(index):
            param = self.fn.param(name)
            if param is None:
                continue
            if name in self.buffers and param.scalar is not None and param.scalar.is_integer:
                self.index_arrays.add(name)
            elif param.is_value and param.scalar is not None and param.scalar.is_integer:
                self.stride_params.add(name)

    def scan(self, node: Any, write: bool = False) -> None:  # noqa: C901 - one dispatch over node types
        """Walk an expression: record accesses, apply assignments and increments."""
        if node is None:
            return
        kind = node.type
        if kind == "subscript_expression":
            index = subscript_index(node)
            alias = self.pointer(node.child_by_field_name("argument"))
            if alias is not None and index is not None:
                self.touch(alias, self.ev(index), write)
                self.mark_index_use(index)
            self.scan(node.child_by_field_name("argument"))
            self.scan(index)
            return
        if kind == "pointer_expression" and node_text(node).startswith("*"):
            target = node.child_by_field_name("argument")
            alias = self.pointer(target)
            if alias is not None:
                self.touch(alias, Iv.point(0), write)
                stripped = strip_parens(target)
                if stripped is not None and stripped.type == "binary_expression":
                    self.mark_index_use(stripped)
            self.scan(target)
            return
        if kind == "assignment_expression":
            self.assign(node)
            return
        if kind == "update_expression":
            self.update(node.child_by_field_name("argument"), node_text(node.child_by_field_name("operator")))
            return
        if kind == "call_expression":
            self.call(node)
            return
        if kind == "binary_expression" and node_text(node.child_by_field_name("operator")) in ("/", "%"):
            for name in self.dep(node.child_by_field_name("right")):
                self.divisor_params.add(name)
        for child in node.named_children:
            self.scan(child)

    def assign(self, node: Any) -> None:
        left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
        op = node_text(node.child_by_field_name("operator"))
        self.scan(right)
        target = strip_parens(left)
        if target is not None and target.type == "identifier":
            name = node_text(target)
            if name in self.ptr:
                alias = self.ptr[name]
                if op == "=":
                    new = self.pointer(right)
                    if new is None:
                        self.unknown.add(alias.base)
                    else:
                        self.ptr[name] = new
                elif op in ("+=", "-="):
                    step = binary("*", self.ev(right), Iv.point(alias.elem))
                    self.ptr[name] = Alias(alias.base, binary(op[0], alias.offset, step), alias.elem)
                return
            value = self.ev(right)
            if op != "=":
                value = binary(op[:-1], self.env.get(name, TOP), value)
            if name in self.env and not self.env[name].flt and value.flt:
                value = as_type(value, "long")  # stored into an integer variable: truncated
            self.env[name] = value
            self.deps[name] = self.deps.get(name, frozenset()) | self.dep(right) if op != "=" else self.dep(right)
            return
        if op != "=":
            self.scan(left)  # a compound assignment reads its target too
        self.scan(left, write=True)

    def update(self, target: Any, op: str) -> None:
        target = strip_parens(target)
        if target is None:
            return
        if target.type == "identifier":
            name = node_text(target)
            if name in self.ptr:
                alias = self.ptr[name]
                self.ptr[name] = Alias(alias.base, binary(op[0], alias.offset, Iv.point(alias.elem)), alias.elem)
            else:
                self.env[name] = binary(op[0], self.env.get(name, TOP), Iv.point(1))
            return
        self.scan(target)
        self.scan(target, write=True)

    def call(self, node: Any) -> None:
        callee = node.child_by_field_name("function")
        name = node_text(callee).split("::")[-1] if callee is not None else ""
        args_node = node.child_by_field_name("arguments")
        args = [a for a in args_node.named_children if a.type != "comment"] if args_node is not None else []
        if name in _MEMORY_CALLS and len(args) == 3:
            ptr_arg, count_arg = _MEMORY_CALLS[name]
            alias = self.pointer(args[ptr_arg])
            if alias is not None:
                count = self.ev(args[count_arg])
                self.touch(Alias(alias.base, alias.offset, 1), Iv(0, max(count.hi - 1, 0)), write=True)
            source = self.pointer(args[1])
            if source is not None:
                count = self.ev(args[count_arg])
                self.touch(Alias(source.base, source.offset, 1), Iv(0, max(count.hi - 1, 0)), write=False)
        elif name not in _PURE_CALLS:
            for arg in args:  # a buffer handed to code the walk does not follow: its extent is unknown
                alias = self.pointer(arg)
                if alias is not None:
                    self.unknown.add(alias.base)
                    self.written.add(alias.base)
        for arg in args:
            self.scan(arg)


def as_type(value: Iv, type_text: str) -> Iv:
    scalar = scalar_type(type_text)
    if scalar is None:
        return value
    if scalar.is_float:
        return Iv(value.lo, value.hi, True)
    lo = math.trunc(value.lo) if value.flt and math.isfinite(value.lo) else value.lo
    hi = math.trunc(value.hi) if value.flt and math.isfinite(value.hi) else value.hi
    if scalar.kind == "u" and lo < 0:
        return Iv(0, (1 << (8 * scalar.size)) - 1)
    return Iv(lo, hi)

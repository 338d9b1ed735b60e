"""Launch inference: a grid from the size, one thread per element unless the kernel's indexing says otherwise.

`launch_rule` reads the kernel: every variable (or loop variable) computed from ``threadIdx``/``blockIdx`` is an
*index* of one axis (x, y, z) and one form — ``global`` (``blockIdx.x * blockDim.x + threadIdx.x``, also
darknet's flattened ``(blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x``), ``thread``
(``threadIdx.x`` only) or ``block`` (``blockIdx.x`` only).  The bound an index is compared with (``i < n``,
``if (i >= n) return;``, a loop condition) gives the axis its extent; a loop that adds ``blockDim``/``gridDim``
to its index is a grid- (or block-) stride loop.

`kernelcheck.launch_config.concrete_launch` turns the rule into one input's launch.

A kernel that needs what the harness cannot infer (``extern __shared__`` memory of unknown size, an index that
mixes axes) raises `LaunchError`, which the verdict reports as "not verifiable".
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from .intervals import TOP, Evaluator, Iv, constant_macros, parse_number
from .loopnest import strip_parens
from .signatures import FunctionInfo, node_text

__all__ = ["AXES", "LaunchError", "IndexVar", "LaunchRule", "launch_rule", "thread_coords"]

AXES = ("x", "y", "z")


class LaunchError(ValueError):
    """No launch configuration can be inferred for this kernel; the message says why."""


@dataclass
class IndexVar:
    """A variable computed from the thread's coordinates."""

    name: str
    axis: str
    form: str  # "global" | "thread" | "block"
    bounds: list[tuple[Any, bool]] = field(default_factory=list)  # (upper bound node, inclusive)
    stride: str | None = None  # "grid" | "block" when a loop strides it
    block: int | None = None  # the block width the index assumes: `blockIdx.x * BLOCK + threadIdx.x` (no blockDim)


@dataclass
class LaunchRule:
    """What the kernel's indexing says about its launch (see the module docstring)."""

    axes: dict[str, list[IndexVar]]
    tile: tuple[int, int, int] | None
    kernel: FunctionInfo
    macros: dict[str, Iv]

    @property
    def dims(self) -> int:
        used = [a for a in AXES if a in self.axes]
        return AXES.index(used[-1]) + 1 if used else 1

    @property
    def checked(self) -> bool:
        return all(any(v.bounds for v in self.axes[a]) for a in self.axes)

    def describe(self) -> str:
        parts = []
        for axis in AXES:
            if axis not in self.axes:
                continue
            for var in self.axes[axis]:
                bound = " / ".join(("<= " if inc else "< ") + node_text(b) for b, inc in var.bounds) or \
                    "no bounds check"
                stride = f", {var.stride}-stride loop" if var.stride else ""
                stride += f", blocks of {var.block} (its index assumes them)" if var.block else ""
                parts.append(f"{axis}: {var.form} index {var.name} {bound}{stride}" if var.bounds
                             else f"{axis}: {var.form} index {var.name} ({bound}{stride})")
        shape = "one thread per element (no bounds check; extents from the C loops)" if not self.checked \
            else f"{self.dims}-D grid from the bound"
        tile = f"; block fixed by the __shared__ tile {self.tile}" if self.tile else ""
        return f"{shape} ({'; '.join(parts) or 'no thread index'}){tile}"


# --------------------------------------------------------------------------------------------------------------
# Reading the kernel
# --------------------------------------------------------------------------------------------------------------
_BUILTINS = {"threadIdx": "t", "blockIdx": "b", "blockDim": "d", "gridDim": "g"}


def _builtin(node: Any) -> str | None:
    """"t.x" for ``threadIdx.x`` (b, d, g for blockIdx, blockDim, gridDim), else None."""
    if node is None or node.type != "field_expression":
        return None
    base = node_text(node.child_by_field_name("argument"))
    field_name = node_text(node.child_by_field_name("field"))
    return f"{_BUILTINS[base]}.{field_name}" if base in _BUILTINS and field_name in AXES else None


def thread_coords(node: Any, known: Mapping[str, set[str]]) -> set[str]:
    """Thread-coordinate tokens ("t.x", "b.y", "d.x", "g.x") an expression mentions (also via ``known`` names).

    A value read from memory is data, not a coordinate: subscripts are not entered (``int c = color[i]``).
    """
    out: set[str] = set()
    pending = [node]
    while pending:
        n = pending.pop()
        if n is None or n.type == "subscript_expression":
            continue
        token = _builtin(n)
        if token is not None:
            out.add(token)
            continue
        if n.type == "identifier":
            out |= known.get(node_text(n), set())
        pending.extend(n.named_children)
    return out


def _index_coords(node: Any, index_vars: Mapping[str, "IndexVar"], coords: Mapping[str, set[str]],
                  macros: Mapping[str, Iv]) -> set[str] | None:
    """Coordinates of an *index expression* — a sum of coordinate products (``blockIdx.x * blockDim.x``,
    ``threadIdx.x``), index variables and constants, through casts and parentheses — else None.

    ``tid / clsNum``, ``2 * u`` or ``y * width + x`` compute data positions from an index: they are not indexes.
    A constant in a product (``blockIdx.x * 256``, ``blockIdx.x * BLOCK`` of ``#define BLOCK 256``) comes out as the
    token "#256".
    """
    node = strip_parens(node)
    if node is None:
        return None
    kind = node.type
    if kind == "cast_expression":
        return _index_coords(node.child_by_field_name("value"), index_vars, coords, macros)
    token = _builtin(node)
    if token is not None:
        return {token}
    if kind == "number_literal":
        return set()
    if kind == "identifier":
        name = node_text(node)
        return set(coords[name]) if name in index_vars else None
    if kind != "binary_expression":
        return None
    op = node_text(node.child_by_field_name("operator"))
    left, right = node.child_by_field_name("left"), node.child_by_field_name("right")
    if op == "+":
        a, b = _index_coords(left, index_vars, coords, macros), _index_coords(right, index_vars, coords, macros)
        return None if a is None or b is None else a | b
    if op == "*":
        a, b = _builtin_product(left, macros), _builtin_product(right, macros)
        return None if a is None or b is None else a | b
    return None


def _builtin_product(node: Any, macros: Mapping[str, Iv]) -> set[str] | None:
    """Coordinates of a sum/product made only of builtins and constants (``blockIdx.x + blockIdx.y * gridDim.x``);
    a constant (a number, a ``#define``d one) as the token "#value"."""
    node = strip_parens(node)
    if node is None:
        return None
    if node.type == "cast_expression":
        return _builtin_product(node.child_by_field_name("value"), macros)
    token = _builtin(node)
    if token is not None:
        return {token}
    constant = parse_number(node_text(node)) if node.type == "number_literal" else (
        macros.get(node_text(node)) if node.type == "identifier" else None)
    if constant is not None:
        return {f"#{int(constant.lo)}"} if constant.is_point and not constant.flt else set()
    if node.type == "binary_expression" and node_text(node.child_by_field_name("operator")) in ("+", "*"):
        a = _builtin_product(node.child_by_field_name("left"), macros)
        b = _builtin_product(node.child_by_field_name("right"), macros)
        return None if a is None or b is None else a | b
    return None


def _form(coords: set[str]) -> tuple[str, str] | None:
    """(axis, form) of an index's coordinates; None when it has none or mixes thread axes.

    The axis is the thread's (``threadIdx.x``); block coordinates of other axes are darknet's flattened grid
    (``blockIdx.y * gridDim.x``), which a grid of height 1 makes 0.
    """
    threads = sorted(c[2] for c in coords if c.startswith("t."))
    blocks = sorted(c[2] for c in coords if c.startswith("b."))
    if len(threads) > 1:
        return None
    if threads:
        axis = threads[0]
        return axis, "global" if axis in blocks else "thread"
    if len(blocks) == 1:
        return blocks[0], "block"
    return None


class _KernelReader:
    """Finds index variables, their bounds and strides in one pass over the kernel body (source order)."""

    def __init__(self, kernel: FunctionInfo, macros: Mapping[str, Iv]):
        self.coords: dict[str, set[str]] = {}
        self.vars: dict[str, IndexVar] = {}
        self.used_axes: set[str] = set()
        self.consumed: set[tuple[int, int]] = set()
        self.kernel = kernel
        self.macros = macros

    def define(self, name: str, value: Any) -> None:
        if value is None:
            return
        plain = thread_coords(value, self.coords)
        if plain:
            self.coords[name] = self.coords.get(name, set()) | plain
        index = _index_coords(value, self.vars, self.coords, self.macros)
        found = _form(index) if index else None
        if found is None:
            return
        self.consumed.add((value.start_byte, value.end_byte))
        if not (name in self.vars and self.vars[name].axis == found[0]):
            self.vars[name] = IndexVar(name, found[0], found[1])
        widths = [int(t[1:]) for t in index if t.startswith("#")]
        if found[1] == "global" and f"d.{found[0]}" not in index and len(widths) == 1 and 0 < widths[0] <= 1024:
            self.vars[name].block = widths[0]

    def read(self, node: Any) -> None:
        """Walk the body in source order: definitions first, then each comparison and stride update."""
        if node is None or (node.start_byte, node.end_byte) in self.consumed:
            return
        kind = node.type
        token = _builtin(node)
        if token is not None and token[0] in "tb":
            self.used_axes.add(token[2])
            return
        if kind == "init_declarator":
            target = node.child_by_field_name("declarator")
            while target is not None and target.type != "identifier":
                target = target.child_by_field_name("declarator")
            if target is not None:
                self.define(node_text(target), node.child_by_field_name("value"))
        elif kind == "assignment_expression":
            left = strip_parens(node.child_by_field_name("left"))
            op = node_text(node.child_by_field_name("operator"))
            if left is not None and left.type == "identifier":
                name = node_text(left)
                right = node.child_by_field_name("right")
                if op == "=":
                    self.define(name, right)
                elif op == "+=" and name in self.vars:
                    self.stride(name, right)
        elif kind == "if_statement":
            self.children(node)
            self.condition(node.child_by_field_name("condition"), positive=not _returns(node))
            return
        elif kind in ("for_statement", "while_statement", "do_statement"):
            self.children(node)
            self.condition(node.child_by_field_name("condition"), positive=True)
            return
        elif kind == "conditional_expression":
            self.condition(node.child_by_field_name("condition"), positive=True)
        self.children(node)

    def children(self, node: Any) -> None:
        for child in node.children:
            self.read(child)

    def stride(self, name: str, step: Any) -> None:
        coords = thread_coords(step, {k: v for k, v in self.coords.items() if k not in self.vars})
        if any(c.startswith("g.") for c in coords):
            self.vars[name].stride = "grid"
        elif any(c.startswith("d.") for c in coords):
            self.vars[name].stride = "block"

    def condition(self, cond: Any, positive: bool) -> None:
        for var, bound, inclusive in _upper_bounds(cond, positive):
            index = self.vars.get(var)
            if index is not None and not (thread_coords(bound, self.coords) & {f"{p}.{a}" for p in "tb" for a in AXES}):
                if all(node_text(b) != node_text(bound) for b, _ in index.bounds):
                    index.bounds.append((bound, inclusive))


def _returns(node: Any) -> bool:
    body = node.child_by_field_name("consequence")
    if body is not None and body.type == "compound_statement" and len(body.named_children) == 1:
        body = body.named_children[0]
    return body is not None and body.type == "return_statement" and node.child_by_field_name("alternative") is None


def _upper_bounds(cond: Any, positive: bool) -> list[tuple[str, Any, bool]]:
    """(variable, bound, inclusive) the condition caps: ``v < E`` / ``v <= E`` (inclusive) when it is true,
    ``v >= E`` / ``v > E`` (inclusive) when it must be false (``if (v >= E) return;``)."""
    cond = strip_parens(cond)
    if cond is None:
        return []
    if cond.type == "unary_expression" and node_text(cond.child_by_field_name("operator")) == "!":
        return _upper_bounds(cond.child_by_field_name("argument"), not positive)
    if cond.type != "binary_expression":
        return []
    op = node_text(cond.child_by_field_name("operator"))
    left, right = cond.child_by_field_name("left"), cond.child_by_field_name("right")
    if op == ("&&" if positive else "||"):
        return _upper_bounds(left, positive) + _upper_bounds(right, positive)
    caps = {"<": False, "<=": True} if positive else {">=": False, ">": True}
    mirror = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
    out = []
    for side, other, side_op in ((left, right, op), (right, left, mirror.get(op, op))):
        side = strip_parens(side)
        if side is not None and side.type == "binary_expression" and \
                node_text(side.child_by_field_name("operator")) == "+":
            side = strip_parens(side.child_by_field_name("left"))  # i + 1 < N caps i below N as well
        if side is not None and side.type == "identifier" and side_op in caps:
            out.append((node_text(side), other, caps[side_op]))
    return out


def _tile(kernel: FunctionInfo, macros: Mapping[str, Iv]) -> tuple[int, int, int] | None:
    """The block a static ``__shared__`` tile implies, or None; LaunchError for ``extern __shared__``."""
    pending = [kernel.body]
    while pending:
        node = pending.pop()
        if node is None:
            continue
        if node.type == "declaration" and "__shared__" in node_text(node).split():
            if node_text(node).startswith("extern") or "extern" in node_text(node).split():
                raise LaunchError("the kernel uses dynamic (extern __shared__) shared memory: the harness cannot "
                                  "infer its size")
            dims = []
            target = node.child_by_field_name("declarator")
            while target is not None and target.type == "array_declarator":
                size = target.child_by_field_name("size")
                value = Evaluator(macros).eval(size) if size is not None else TOP
                dims.append(int(value.lo) if value.is_point else None)
                target = target.child_by_field_name("declarator")
            dims.reverse()
            if dims and all(d is not None and 0 < d <= 1024 for d in dims):
                if len(dims) == 1:
                    return (dims[0], 1, 1)
                if len(dims) == 2 and dims[0] * dims[1] <= 1024:
                    return (dims[1], dims[0], 1)
        pending.extend(node.children)
    return None


def launch_rule(kernel: FunctionInfo) -> LaunchRule:
    """Read the kernel's indexing (see the module docstring); LaunchError when no launch can be inferred."""
    macros = constant_macros(kernel.source)
    reader = _KernelReader(kernel, macros)
    reader.read(kernel.body)
    axes: dict[str, list[IndexVar]] = {}
    for var in reader.vars.values():
        axes.setdefault(var.axis, []).append(var)
    for axis, vars_ in axes.items():
        # Unbounded indexes next to bounded ones are intermediates (``idx = threadIdx.x; gidx = ... + idx``) or
        # aliases (``i = tid``); an unchecked write through one shows up as an out-of-bounds write at run time.
        bounded = [v for v in vars_ if v.bounds]
        axes[axis] = bounded or vars_
    for axis in reader.used_axes:
        if axis not in axes:  # used directly, e.g. means[blockIdx.x * blockDim.x + threadIdx.x] = 0
            axes[axis] = [IndexVar(f"(thread index {axis})", axis, "global")]
    return LaunchRule(axes=axes, tile=_tile(kernel, macros), kernel=kernel, macros=macros)


# --------------------------------------------------------------------------------------------------------------
# One input's launch
# --------------------------------------------------------------------------------------------------------------

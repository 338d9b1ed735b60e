"""Launch inference: a grid from the size, one thread per element unless the kernel's indexing says otherwise.

`launch_rule` reads the kernel: every variable (or loop variable) computed from ``threadIdx``/``blockIdx`` is an
*index* of one axis (x, y, z) and one form — ``global`` (``blockIdx.x * blockDim.x + threadIdx.x``, also
darknet's flattened ``(blockIdx.x + blockIdx.y * gridDim.x) * blockDim.x + threadIdx.x``), ``thread``
(``threadIdx.x`` only) or ``block`` (``blockIdx.x`` only).  The bound an index is compared with (``i < n``,
``if (i >= n) return;``, a loop condition) gives the axis its extent; a loop that adds ``blockDim``/``gridDim``
to its index is a grid- (or block-) stride loop.

`concrete_launch` turns the rule into one input's ``<<<grid, block>>>``:

* checked global axis: blocks of 256 (1-D), 16x16 (2-D) or 8x8x4 (3-D) — so sizes that are not a multiple of
  the block leave threads past the bound, which exercises the bounds check — and ``ceil(extent / block)``
  blocks (one block when the extent is 0: the check must stop every thread);
* grid-stride: about half the blocks the extent needs, so each thread takes the loop more than once;
* ``thread`` form: one block as wide as the extent rounded up to a warp (at most 1024 threads);
  ``block`` form: one block per element;
* no bounds check at all: exactly one thread per element (``<<<n, 1>>>``), the extent taken from the C loop
  with the index variable's name (or the C function's outermost loop for a 1-D kernel), and the launch is
  skipped for an extent of 0;
* a static ``__shared__`` tile ``T s[A][B]`` fixes the block at B x A (A for ``T s[A]``).

A kernel that needs what the harness cannot infer (``extern __shared__`` memory of unknown size, an index that
mixes axes) raises `LaunchError`, which the verdict reports as "not verifiable".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

from .intervals import TOP, Evaluator, Iv, constant_macros
from .loopnest import LoopInfo, _strip_parens
from .signatures import FunctionInfo, node_text

__all__ = ["LaunchError", "IndexVar", "LaunchRule", "Launch", "launch_rule", "concrete_launch", "MAX_THREADS",
           "DEFAULT_BLOCKS"]

AXES = ("x", "y", "z")
DEFAULT_BLOCKS = {1: (256, 1, 1), 2: (16, 16, 1), 3: (8, 8, 4)}
MAX_THREADS = 1 << 20  # per launch: the CPU backend runs every thread
MAX_GRID_YZ = 65535


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
                parts.append(f"{axis}: {var.form} index {var.name} {bound}{stride}" if var.bounds
                             else f"{axis}: {var.form} index {var.name} ({bound}{stride})")
        shape = "one thread per element" if not self.checked else f"{self.dims}-D grid from the bound"
        tile = f"; block fixed by the __shared__ tile {self.tile}" if self.tile else ""
        return f"{shape} ({'; '.join(parts) or 'no thread index'}){tile}"


@dataclass(frozen=True)
class Launch:
    """One input's launch configuration."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int = 0

    @property
    def empty(self) -> bool:
        return 0 in self.grid

    def describe(self) -> str:
        def dim(v: tuple[int, int, int]) -> str:
            return str(v[0]) if v[1:] == (1, 1) else f"({v[0]},{v[1]},{v[2]})"
        return f"<<<{dim(self.grid)}, {dim(self.block)}>>>" + (" (no threads: skipped)" if self.empty else "")


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


def _coords(node: Any, known: Mapping[str, set[str]]) -> set[str]:
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


def _index_coords(node: Any, index_vars: Mapping[str, "IndexVar"], coords: Mapping[str, set[str]]) -> set[str] | None:
    """Coordinates of an *index expression* — a sum of coordinate products (``blockIdx.x * blockDim.x``,
    ``threadIdx.x``), index variables and constants, through casts and parentheses — else None.

    ``tid / clsNum``, ``2 * u`` or ``y * width + x`` compute data positions from an index: they are not indexes.
    """
    node = _strip_parens(node)
    if node is None:
        return None
    kind = node.type
    if kind == "cast_expression":
        return _index_coords(node.child_by_field_name("value"), index_vars, coords)
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
        a, b = _index_coords(left, index_vars, coords), _index_coords(right, index_vars, coords)
        return None if a is None or b is None else a | b
    if op == "*":
        a, b = _builtin_product(left), _builtin_product(right)
        return None if a is None or b is None else a | b
    return None


def _builtin_product(node: Any) -> set[str] | None:
    """Coordinates of a sum/product made only of builtins and constants (``blockIdx.x + blockIdx.y * gridDim.x``)."""
    node = _strip_parens(node)
    if node is None:
        return None
    if node.type == "cast_expression":
        return _builtin_product(node.child_by_field_name("value"))
    token = _builtin(node)
    if token is not None:
        return {token}
    if node.type == "number_literal":
        return set()
    if node.type == "binary_expression" and node_text(node.child_by_field_name("operator")) in ("+", "*"):
        a = _builtin_product(node.child_by_field_name("left"))
        b = _builtin_product(node.child_by_field_name("right"))
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

    def __init__(self, kernel: FunctionInfo):
        self.coords: dict[str, set[str]] = {}
        self.vars: dict[str, IndexVar] = {}
        self.used_axes: set[str] = set()
        self.consumed: set[tuple[int, int]] = set()
        self.kernel = kernel

    def define(self, name: str, value: Any) -> None:
        if value is None:
            return
        plain = _coords(value, self.coords)
        if plain:
            self.coords[name] = self.coords.get(name, set()) | plain
        index = _index_coords(value, self.vars, self.coords)
        found = _form(index) if index else None
        if found is None:
            return
        self.consumed.add((value.start_byte, value.end_byte))
        if not (name in self.vars and self.vars[name].axis == found[0]):
            self.vars[name] = IndexVar(name, found[0], found[1])

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
            left = _strip_parens(node.child_by_field_name("left"))
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
        coords = _coords(step, {k: v for k, v in self.coords.items() if k not in self.vars})
        if any(c.startswith("g.") for c in coords):
            self.vars[name].stride = "grid"
        elif any(c.startswith("d.") for c in coords):
            self.vars[name].stride = "block"

    def condition(self, cond: Any, positive: bool) -> None:
        for var, bound, inclusive in _upper_bounds(cond, positive):
            index = self.vars.get(var)
            if index is not None and not (_coords(bound, self.coords) & {f"{p}.{a}" for p in "tb" for a in AXES}):
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
    cond = _strip_parens(cond)
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
        side = _strip_parens(side)
        if side is not None and side.type == "binary_expression" and \
                node_text(side.child_by_field_name("operator")) == "+":
            side = _strip_parens(side.child_by_field_name("left"))  # i + 1 < N caps i below N as well
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
    reader = _KernelReader(kernel)
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
    macros = constant_macros(kernel.source)
    return LaunchRule(axes=axes, tile=_tile(kernel, macros), kernel=kernel, macros=macros)


# --------------------------------------------------------------------------------------------------------------
# One input's launch
# --------------------------------------------------------------------------------------------------------------
def _kernel_env(rule: LaunchRule, values: Mapping[str, Iv]) -> dict[str, Iv]:
    """Kernel parameter values plus the straight-line locals of the body that do not depend on the thread."""
    env = dict(rule.macros)
    env.update(values)
    for node in rule.kernel.body.named_children:
        if node.type != "declaration":
            continue
        for decl in node.children_by_field_name("declarator"):
            if decl.type != "init_declarator":
                continue
            target = decl.child_by_field_name("declarator")
            value = decl.child_by_field_name("value")
            if target is not None and target.type == "identifier" and value is not None \
                    and not _coords(value, {}):
                env.setdefault(node_text(target), Evaluator(env).eval(value))
    return env


def _extent(var: IndexVar, env: Mapping[str, Iv]) -> int | None:
    best = None
    for bound, inclusive in var.bounds:
        value = Evaluator(env).eval(bound)
        if math.isfinite(value.hi):
            best = max(best or 0, max(0, math.ceil(value.hi) + (1 if inclusive else 0)))
    return best


def _c_extent(var: IndexVar, rule: LaunchRule, loops: list[LoopInfo]) -> int | None:
    """Trips of the C loop an unchecked index stands for: same variable name, else (1-D) the outermost loop."""
    named = [loop for loop in loops if loop.var == var.name and math.isfinite(loop.trips.hi)]
    if named:
        return int(max(loop.trips.hi for loop in named))
    outer = [loop for loop in loops if loop.depth == 0 and math.isfinite(loop.trips.hi)]
    if len(rule.axes) == 1 and outer:
        return int(outer[0].trips.hi)
    return None


def _axis_launch(axis: str, vars_: list[IndexVar], env: Mapping[str, Iv], rule: LaunchRule,
                 loops: list[LoopInfo], default: int) -> tuple[int, int]:
    """(grid, block) along one axis; LaunchError when this input cannot be launched."""
    def need(var: IndexVar) -> int:
        extent = _extent(var, env) if var.bounds else None
        if extent is None:
            extent = _c_extent(var, rule, loops)
        if extent is None:
            raise LaunchError(f"no extent for the {axis} index {var.name}: it has no bounds check the harness can "
                              "evaluate and no C loop of that name")
        return extent

    by_form = {form: [v for v in vars_ if v.form == form] for form in ("global", "block", "thread")}
    unchecked = any(not v.bounds for v in vars_)
    strided = all(v.stride for v in vars_)
    if by_form["global"]:
        extent = max(need(v) for v in by_form["global"])
        if unchecked:
            return extent, 1
        block = default
        blocks = math.ceil(extent / block)
        return max(1, math.ceil(blocks / 2) if strided else blocks), block
    block = 1
    if by_form["thread"]:
        extent = max(need(v) for v in by_form["thread"])
        block = default if all(v.stride for v in by_form["thread"]) else (
            extent if unchecked else max(32, 32 * math.ceil(extent / 32)))
    if by_form["block"]:
        extent = max(need(v) for v in by_form["block"])
        grid = max(1, math.ceil(extent / 2)) if all(v.stride for v in by_form["block"]) else (
            extent if unchecked else max(1, extent))
        return grid, block
    return 1, block


def concrete_launch(rule: LaunchRule, values: Mapping[str, Iv], loops: list[LoopInfo]) -> Launch:
    """The launch of one input (kernel parameter values, the C function's loops for this input).

    Raises LaunchError when this input cannot be launched (too many threads, a block over 1024 threads, no
    extent for an axis).
    """
    env = _kernel_env(rule, values)
    dims = rule.dims
    defaults = rule.tile or DEFAULT_BLOCKS[dims]
    grid, block = [1, 1, 1], [1, 1, 1]
    for i, axis in enumerate(AXES[:dims]):
        vars_ = rule.axes.get(axis, [])
        if not vars_:
            block[i] = defaults[i] if rule.tile else 1
            continue
        grid[i], block[i] = _axis_launch(axis, vars_, env, rule, loops, defaults[i])
    if rule.tile:
        block = list(rule.tile)
    threads_per_block = block[0] * block[1] * block[2]
    if threads_per_block > 1024:
        raise LaunchError(f"a block of {block[0]}x{block[1]}x{block[2]} threads exceeds 1024")
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise LaunchError(f"grid {tuple(grid)} exceeds 65535 blocks in y or z")
    if grid[0] * grid[1] * grid[2] * threads_per_block > MAX_THREADS:
        raise LaunchError(f"{grid[0] * grid[1] * grid[2] * threads_per_block} threads exceed the harness's "
                          f"{MAX_THREADS}")
    return Launch(tuple(grid), tuple(block))

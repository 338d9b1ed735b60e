"""What a C function's loops and index expressions say: its size parameters, index arrays, array extents, work.

One abstract walk of the function body (`_Walker`) over `kernelcheck.intervals` ranges does both jobs:

* **Static shape** (`shape_of`, every scalar unknown): which integer parameters bound loops (size-like: they get
  the sizes 0, 1, 7, 33, ...), which integer arrays hold indices of other arrays (filled with valid indices),
  which integer parameters scale or divide indices (strides: small values), which arrays are written.
* **One input** (`measure`, scalars known): the extent each array needs — the largest byte the function can
  touch through it, from every ``a[e]`` / ``*(a + e)`` / pointer alias ``(float*)((char*)a + pitch * j)`` with the
  loop variables' ranges — the estimated loop iterations (to keep inputs affordable; a loop whose trip count
  depends on data counts once, and the run's time limit bounds it) and the trip counts of the loops (the
  launch of a kernel without a bounds check uses them).

Loops: ``for (v = a; v < b; v += s)`` gives v the range [a, b - 1] (and the mirror for decreasing loops); a
loop that cannot run (b <= a) is not entered, so its accesses need nothing.  A variable the body changes (a
counter ``index++``, a moved pointer ``w += k``) is widened over the loop's iterations.  ``if (i < E)``
narrows i in its branch, ``if (i >= E) return;`` after it.  What the walk cannot follow (a pointer handed to
another function, an index read from a float array) leaves that array's extent unknown: the caller then sizes
it generously and lets the sanitised reference run regrow it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable

from .cwalk import Alias, ExpressionWalker, as_type, strip_parens, subscript_index
from .intervals import INF, TOP, TOP_FLOAT, Iv, binary
from .signatures import FunctionInfo, node_text, scalar_type

__all__ = ["CShape", "Measure", "shape_of", "measure", "subscript_index", "loop_parts", "LoopInfo", "strip_parens"]


@dataclass
class LoopInfo:
    """A loop of the function: its variable, its trip range for one input, its nesting depth."""

    var: str
    trips: Iv
    depth: int
    bound_deps: frozenset[str]


@dataclass(frozen=True)
class CShape:
    """Static facts (no input values) the input generator uses."""

    size_params: tuple[str, ...]
    index_arrays: tuple[str, ...]
    stride_params: tuple[str, ...]
    divisor_params: tuple[str, ...]
    written: tuple[str, ...]
    loop_vars: tuple[str, ...]


@dataclass
class Measure:
    """One input's needs: elements per array (None: unknown), estimated iterations, the loops met."""

    extents: dict[str, int | None]
    work: float
    loops: list[LoopInfo] = field(default_factory=list)
    unbounded: bool = False  # some loop's trip count is unknown (data-dependent): its body counts once in `work`


class _Walker(ExpressionWalker):
    """Statements and loops of the abstract walk (see the module docstring)."""

    # ---------------------------------------------------------------- statements
    def stmt(self, node: Any) -> None:  # noqa: C901 - one dispatch over statement types
        if node is None:
            return
        kind = node.type
        if kind == "compound_statement":
            for child in node.named_children:
                self.stmt(child)
                if child.type == "if_statement":
                    self.after_early_return(child)
        elif kind == "declaration":
            self.declare(node)
        elif kind == "expression_statement":
            for child in node.named_children:
                self.scan(child)
        elif kind == "if_statement":
            self.branch(node)
        elif kind == "for_statement":
            self.for_loop(node)
        elif kind in ("while_statement", "do_statement"):
            self.while_loop(node)
        elif kind in ("return_statement", "switch_statement", "case_statement", "labeled_statement"):
            for child in node.named_children:
                if child.type.endswith("statement") or child.type == "compound_statement":
                    self.stmt(child)
                else:
                    self.scan(child)
        elif kind == "for_range_loop":
            self.unknown.update(self.dep(node.child_by_field_name("right")) & self.buffers)
            self.stmt(node.child_by_field_name("body"))

    def declare(self, node: Any) -> None:
        type_text = node_text(node.child_by_field_name("type"))
        flt = bool(scalar_type(type_text) and scalar_type(type_text).is_float)
        for decl in node.children_by_field_name("declarator"):
            value = decl.child_by_field_name("value") if decl.type == "init_declarator" else None
            target = decl.child_by_field_name("declarator") if decl.type == "init_declarator" else decl
            pointer = target is not None and target.type == "pointer_declarator"
            while target is not None and target.type != "identifier":
                target = target.child_by_field_name("declarator")
            if target is None:
                continue
            name = node_text(target)
            if value is not None:
                self.scan(value)
            if pointer:
                alias = self.pointer(value) if value is not None else None
                if alias is not None:
                    scalar = scalar_type(type_text)
                    self.ptr[name] = Alias(alias.base, alias.offset, scalar.size if scalar else alias.elem)
                elif value is not None:
                    self.unknown.update(self.dep(value) & self.buffers)
                continue
            if value is None or value.type == "initializer_list":
                self.env[name] = TOP_FLOAT if flt else TOP
                self.deps[name] = frozenset()
            else:
                result = self.ev(value)
                if scalar_type(type_text) is not None:
                    result = as_type(result, type_text)
                self.env[name] = result
                self.deps[name] = self.dep(value)

    def branch(self, node: Any) -> None:
        cond = node.child_by_field_name("condition")
        self.scan(cond)
        saved_env = dict(self.env)
        self.refine(cond, positive=True)
        self.stmt(node.child_by_field_name("consequence"))
        then_env = self.env
        self.env = dict(saved_env)
        alternative = node.child_by_field_name("alternative")
        if alternative is not None:
            for child in alternative.named_children:
                self.stmt(child)
        else_env = self.env
        self.env = {k: then_env[k].union(else_env[k]) if k in then_env and k in else_env else TOP
                    for k in set(then_env) | set(else_env)}

    def comparisons(self, cond: Any, conj: str) -> Iterable[tuple[str, str, Iv, frozenset[str]]]:
        """(variable, operator, bound range, bound's parameters) of the comparisons ``v OP E`` / ``E OP v`` /
        ``v + c OP E`` joined by ``conj`` (``v + c < E`` is ``v < E - c``)."""
        cond = strip_parens(cond)
        if cond is None or cond.type != "binary_expression":
            return
        op = node_text(cond.child_by_field_name("operator"))
        left, right = cond.child_by_field_name("left"), cond.child_by_field_name("right")
        if op == conj:
            yield from self.comparisons(left, conj)
            yield from self.comparisons(right, conj)
            return
        mirror = {"<": ">", "<=": ">=", ">": "<", ">=": "<="}
        if op not in mirror:
            return
        for side, other, side_op in ((left, right, op), (right, left, mirror[op])):
            var, shift = self.shifted_var(side)
            if var is not None:
                yield var, side_op, binary("-", self.ev(other), shift), self.dep(other)

    def shifted_var(self, node: Any) -> tuple[str | None, Iv]:
        """``v`` -> (v, 0); ``v + c`` / ``v - c`` (c without v) -> (v, ±c); else (None, 0)."""
        node = strip_parens(node)
        if node is None:
            return None, Iv.point(0)
        if node.type == "identifier":
            return node_text(node), Iv.point(0)
        if node.type == "binary_expression" and node_text(node.child_by_field_name("operator")) in ("+", "-"):
            inner = strip_parens(node.child_by_field_name("left"))
            if inner is not None and inner.type == "identifier":
                name = node_text(inner)
                offset = node.child_by_field_name("right")
                if name not in self.dep(offset) and name not in node_text(offset).split():
                    value = self.ev(offset)
                    if node_text(node.child_by_field_name("operator")) == "-":
                        value = Iv(-value.hi, -value.lo, value.flt)
                    return name, value
        return None, Iv.point(0)

    def refine(self, cond: Any, positive: bool) -> None:
        """Narrow variables by a condition known true (``positive``) or, for ``||`` chains, known false."""
        pairs = self.comparisons(cond, "&&" if positive else "||")
        for var, op, bound, _ in pairs:
            if var not in self.env or var in self.ptr:
                continue
            value = self.env[var]
            if not positive:
                op = {"<": ">=", "<=": ">", ">": "<=", ">=": "<"}[op]
            if op == "<":
                self.env[var] = value.clamp_hi(bound.hi - 1)
            elif op == "<=":
                self.env[var] = value.clamp_hi(bound.hi)
            elif op == ">":
                self.env[var] = value.clamp_lo(bound.lo + 1)
            elif op == ">=":
                self.env[var] = value.clamp_lo(bound.lo)

    def after_early_return(self, node: Any) -> None:
        consequence = node.child_by_field_name("consequence")
        body = consequence
        if body is not None and body.type == "compound_statement" and len(body.named_children) == 1:
            body = body.named_children[0]
        if body is not None and body.type == "return_statement" and node.child_by_field_name("alternative") is None:
            self.refine(node.child_by_field_name("condition"), positive=False)

    # ---------------------------------------------------------------- loops
    def loop_var(self, init: Any, cond: Any) -> str | None:
        if init is not None and init.type == "declaration":
            for decl in init.children_by_field_name("declarator"):
                target = decl.child_by_field_name("declarator") if decl.type == "init_declarator" else decl
                if target is not None and target.type == "identifier":
                    return node_text(target)
        first = strip_parens(init.child_by_field_name("left")) if init is not None and init.type == \
            "assignment_expression" else None
        if first is not None and first.type == "identifier":
            return node_text(first)
        for var, _, _, _ in self.comparisons(cond, "&&"):
            return var
        return None

    def var_range(self, var: str, cond: Any, start: Iv, up: bool) -> tuple[Iv, frozenset[str]]:
        """The range of ``var`` inside the loop: from its start to the tightest bound of ``cond``."""
        lo, hi, deps = start.lo, start.hi, frozenset()
        bounded = False
        for name, op, bound, bound_deps in self.comparisons(cond, "&&"):
            if name != var:
                continue
            deps |= bound_deps
            if up and op in ("<", "<="):
                hi = min(hi if bounded else INF, bound.hi - (1 if op == "<" else 0))
                bounded = True
            elif not up and op in (">", ">="):
                lo = max(lo if bounded else -INF, bound.lo + (1 if op == ">" else 0))
                bounded = True
        if not bounded:
            deps |= self.dep(cond) if cond is not None else frozenset()
            return (Iv(start.lo, INF) if up else Iv(-INF, start.hi)), deps
        return (Iv(start.lo, hi) if up else Iv(lo, start.hi)), deps

    def for_loop(self, node: Any) -> None:
        init, cond = node.child_by_field_name("initializer"), node.child_by_field_name("condition")
        update = node.child_by_field_name("update")
        if init is not None:
            self.stmt(init) if init.type == "declaration" else self.scan(init)
        var = self.loop_var(init, cond)
        self.loop(var, cond, node.child_by_field_name("body"), update)

    def while_loop(self, node: Any) -> None:
        cond = node.child_by_field_name("condition")
        var = next((v for v, _, _, _ in self.comparisons(cond, "&&") if v in self.env), None)
        self.loop(var, cond, node.child_by_field_name("body"), None, run_once=node.type == "do_statement")

    def loop(self, var: str | None, cond: Any, body: Any, update: Any, run_once: bool = False) -> None:
        start = self.env.get(var, TOP) if var else TOP
        step, up = self.step_of(var, body, update)
        rng, deps = self.var_range(var, cond, start, up) if var else (TOP, self.dep(cond) if cond else frozenset())
        self.bound_params.update(d for d in deps if d != var)
        trips = _trips(rng, step)
        if run_once:
            trips = Iv(max(trips.lo, 1), max(trips.hi, 1))
        if self.record:
            self.loops.append(LoopInfo(var or "", trips, self.depth, deps))
        if trips.hi <= 0:
            return
        if var:
            self.env[var] = rng
        self.widen(body, update, trips)
        if var:
            self.env[var] = rng
        saved_mult = self.mult
        if not math.isfinite(trips.hi):
            self.unbounded = True  # data-dependent: counted once; the run's time limit bounds it
        self.mult = self.mult * (trips.hi if math.isfinite(trips.hi) else 1)
        if self.record:
            self.work += self.mult
        self.depth += 1
        self.stmt(body)
        self.scan(update)
        self.depth -= 1
        self.mult = saved_mult
        if var:
            self.env[var] = Iv(min(start.lo, rng.lo), max(start.hi, rng.hi + step) if up else max(start.hi, rng.hi))

    def step_of(self, var: str | None, body: Any, update: Any) -> tuple[float, bool]:
        """(smallest step, counts up) of the loop variable, from a dry run of the update (and body)."""
        if var is None or var not in self.env:
            return 1, True
        before = self.env[var]
        probe = Iv(0, 0)
        saved = self.snapshot()
        self.record = False
        self.env[var] = probe
        if update is not None:
            self.scan(update)
        else:
            self.stmt(body)
        after = self.env.get(var, TOP)
        self.restore(saved)
        self.env[var] = before
        if after.lo > 0:
            return max(1, after.lo), True
        if after.hi < 0:
            return max(1, -after.hi), False
        return 1, True

    def widen(self, body: Any, update: Any, trips: Iv) -> None:
        """Variables and pointers the body changes: widen each over the loop's iterations."""
        saved = self.snapshot()
        self.record = False
        self.stmt(body)
        self.scan(update)
        after_env, after_ptr = dict(self.env), dict(self.ptr)
        self.restore(saved)
        n = trips.hi if math.isfinite(trips.hi) else INF
        for name, before in saved[0].items():
            after = after_env.get(name, TOP)
            if after == before:
                continue
            grow_hi = max(0.0, after.hi - before.hi)
            grow_lo = max(0.0, before.lo - after.lo)
            self.env[name] = Iv(before.lo - _mul(grow_lo, n), before.hi + _mul(grow_hi, n), before.flt or after.flt)
        for name, before in saved[1].items():
            after = after_ptr.get(name)
            if after is None or after.offset == before.offset:
                continue
            grow = max(0.0, after.offset.hi - before.offset.hi)
            self.ptr[name] = Alias(before.base, Iv(min(before.offset.lo, after.offset.lo),
                                                    before.offset.hi + _mul(grow, n)), before.elem)

    def snapshot(self) -> tuple[dict, dict, bool, set, set]:
        return dict(self.env), dict(self.ptr), self.record, set(self.unknown), set(self.written)

    def restore(self, saved: tuple[dict, dict, bool, set, set]) -> None:
        self.env, self.ptr, self.record = dict(saved[0]), dict(saved[1]), saved[2]
        self.unknown, self.written = set(saved[3]), set(saved[4]) | self.written


def _mul(a: float, b: float) -> float:
    return 0.0 if a == 0 or b == 0 else a * b


def _trips(rng: Iv, step: float) -> Iv:
    if not math.isfinite(rng.lo) or not math.isfinite(rng.hi):
        return Iv(0, INF)
    count = math.floor((rng.hi - rng.lo) / step) + 1
    return Iv(0, max(0, count))


def loop_parts(node: Any) -> tuple[Any, Any, Any, Any]:
    """(initializer, condition, update, body) of a for/while/do statement (missing parts are None)."""
    return (node.child_by_field_name("initializer"), node.child_by_field_name("condition"),
            node.child_by_field_name("update"), node.child_by_field_name("body"))


def _walk(fn: FunctionInfo, values: dict[str, Iv], contents: dict[str, Iv], sizes: dict[str, Iv]) -> _Walker:
    walker = _Walker(fn, values, contents, sizes)
    walker.stmt(fn.body)
    return walker


def shape_of(fn: FunctionInfo) -> CShape:
    """The function's static shape (see `CShape`), from a walk where every scalar is unknown."""
    walker = _walk(fn, {}, {}, {})
    ints = {p.name for p in fn.params if p.is_value and p.scalar is not None and p.scalar.is_integer}
    vectors = {p.name for p in fn.params if p.vector}
    sizes = tuple(p.name for p in fn.params if p.name in (walker.bound_params & (ints | vectors)))
    strides = tuple(p.name for p in fn.params if p.name in (walker.stride_params - set(sizes)))
    return CShape(size_params=sizes, index_arrays=tuple(sorted(walker.index_arrays)), stride_params=strides,
                  divisor_params=tuple(sorted(walker.divisor_params & ints)), written=tuple(sorted(walker.written)),
                  loop_vars=tuple(loop.var for loop in walker.loops))


def measure(fn: FunctionInfo, values: dict[str, Iv], contents: dict[str, Iv], sizes: dict[str, Iv]) -> Measure:
    """One input's extents (elements; None where the walk cannot tell), work and loops."""
    walker = _walk(fn, values, contents, sizes)
    extents: dict[str, int | None] = {}
    for p in fn.params:
        if p.name not in walker.buffers:
            continue
        elem = p.scalar.size if p.scalar else 1
        if p.name in walker.unknown:
            extents[p.name] = None
        elif p.name not in walker.acc:
            extents[p.name] = 0
        else:
            end = walker.acc[p.name].hi
            extents[p.name] = None if not math.isfinite(end) else max(0, math.ceil(end / elem))
    return Measure(extents=extents, work=walker.work, loops=walker.loops, unbounded=walker.unbounded)

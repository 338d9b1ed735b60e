"""Interval arithmetic over C expressions: what range can an index, a loop bound or a launch extent take?

The harness knows the concrete value of every scalar argument of one input, the range it fills each array
with, and (from the loop headers) the range of every loop variable.  `Evaluator` folds a tree-sitter C
expression into an `Iv` [lo, hi] from those: ``row * numAColumns + k`` with row in [0, 6], k in [0, 32] and
numAColumns = 33 is [0, 230].  It is an over-approximation (sound for the operators it knows, TOP — unbounded —
for everything else), which is all sizing needs: a larger array than necessary costs a little memory; a smaller
one is caught at run time (the reference runs under AddressSanitizer and its arrays are regrown).

C semantics kept: integer division truncates toward zero, ``%`` takes the sign of the dividend, ``sizeof`` of the
scalar types, casts to unsigned types wrap negative ranges, integer results of floating expressions truncate.
A divisor range containing 0 is split around it: division by zero is undefined behaviour, which the reference
run reports, so no input that divides by zero is ever used.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any, Callable, Mapping

from .signatures import SCALAR_TYPES, node_text, scalar_type

__all__ = ["INF", "Iv", "TOP", "TOP_FLOAT", "Evaluator", "parse_number", "MACRO_RE", "constant_macros"]

INF = math.inf


@dataclass(frozen=True)
class Iv:
    """A closed range [lo, hi] (ints, or ±inf); ``flt``: the value is floating point (``/`` is real division)."""

    lo: float
    hi: float
    flt: bool = False

    @staticmethod
    def point(value: float, flt: bool = False) -> "Iv":
        return Iv(value, value, flt)

    @property
    def bounded(self) -> bool:
        return math.isfinite(self.lo) and math.isfinite(self.hi)

    @property
    def is_point(self) -> bool:
        return self.lo == self.hi and math.isfinite(self.lo)

    def union(self, other: "Iv") -> "Iv":
        return Iv(min(self.lo, other.lo), max(self.hi, other.hi), self.flt or other.flt)

    def clamp_hi(self, hi: float) -> "Iv":
        return Iv(self.lo, min(self.hi, hi), self.flt) if hi >= self.lo else self

    def clamp_lo(self, lo: float) -> "Iv":
        return Iv(max(self.lo, lo), self.hi, self.flt) if lo <= self.hi else self


TOP = Iv(-INF, INF)
TOP_FLOAT = Iv(-INF, INF, True)
BOOL = Iv(0, 1)


def _mul(a: float, b: float) -> float:
    return 0 if a == 0 or b == 0 else a * b  # interval convention: 0 * inf = 0


def _corners(a: Iv, b: Iv, op: Callable[[float, float], float], flt: bool) -> Iv:
    values = [op(x, y) for x in (a.lo, a.hi) for y in (b.lo, b.hi)]
    values = [v for v in values if not math.isnan(v)]
    return Iv(min(values), max(values), flt) if values else (TOP_FLOAT if flt else TOP)


def _int_div(x: float, y: float) -> float:
    if math.isinf(x) or math.isinf(y):
        return x / y if not (math.isinf(x) and math.isinf(y)) else math.nan
    q = abs(int(x)) // abs(int(y))
    return q if (x >= 0) == (y > 0) else -q


def _divide(a: Iv, b: Iv, flt: bool) -> Iv:
    """a / b.  Integer division leaves the divisor's 0 out (division by zero is undefined: never used); a real
    divisor range around 0 makes the quotient unbounded."""
    if flt:
        if b.lo <= 0 <= b.hi:
            return TOP_FLOAT
        return _corners(a, b, lambda x, y: x / y if not (math.isinf(x) and math.isinf(y)) else math.nan, True)
    parts = [part for part in (Iv(max(b.lo, 1), b.hi), Iv(b.lo, min(b.hi, -1))) if part.lo <= part.hi]
    if not parts:
        return TOP
    out = _corners(a, parts[0], _int_div, False)
    return out.union(_corners(a, parts[1], _int_div, False)) if len(parts) == 2 else out


def _modulo(a: Iv, b: Iv) -> Iv:
    m = max(abs(b.lo), abs(b.hi))
    if m == 0:
        return TOP
    top = m - 1
    if a.lo >= 0:
        return Iv(0, min(a.hi, top))
    if a.hi <= 0:
        return Iv(max(a.lo, -top), 0)
    return Iv(-top, top)


def _bit_or(a: Iv, b: Iv) -> Iv:
    if a.lo < 0 or b.lo < 0 or not (a.bounded and b.bounded):
        return TOP
    return Iv(0, (1 << int(max(a.hi, b.hi)).bit_length()) - 1)


def _shift(a: Iv, b: Iv, left: bool) -> Iv:
    if a.lo < 0 or b.lo < 0 or not b.bounded or b.hi > 63:
        return TOP
    if left:
        return Iv(a.lo * (1 << int(b.lo)), _mul(a.hi, 1 << int(b.hi)))
    return Iv(int(a.lo) >> int(b.hi), a.hi if math.isinf(a.hi) else int(a.hi) >> int(b.lo))


def binary(op: str, a: Iv, b: Iv) -> Iv:
    """The range of ``a op b`` (C operators)."""
    flt = a.flt or b.flt
    if op == "+":
        return Iv(a.lo + b.lo, a.hi + b.hi, flt)
    if op == "-":
        return Iv(a.lo - b.hi, a.hi - b.lo, flt)
    if op == "*":
        return _corners(a, b, _mul, flt)
    if op == "/":
        return _divide(a, b, flt)
    if op == "%":
        return TOP_FLOAT if flt else _modulo(a, b)
    if op in ("<", ">", "<=", ">=", "==", "!=", "&&", "||"):
        return BOOL
    if op == "&":
        if a.lo >= 0 or b.lo >= 0:
            return Iv(0, min(x.hi for x in (a, b) if x.lo >= 0))
        return TOP
    if op in ("|", "^"):
        return _bit_or(a, b)
    if op in ("<<", ">>"):
        return _shift(a, b, op == "<<")
    return TOP_FLOAT if flt else TOP


def _cast(value: Iv, type_text: str) -> Iv:
    scalar = scalar_type(type_text)
    if scalar is None:
        return value
    if scalar.is_float:
        return Iv(value.lo, value.hi, True)
    lo, hi = value.lo, value.hi
    if value.flt:  # float -> integer truncates toward zero
        lo = math.trunc(lo) if math.isfinite(lo) else lo
        hi = math.trunc(hi) if math.isfinite(hi) else hi
    if scalar.kind == "b":
        return BOOL
    bits = 8 * scalar.size
    if scalar.kind == "u":
        if lo < 0:
            return Iv(0, (1 << bits) - 1)
        return Iv(lo, min(hi, (1 << bits) - 1))
    return Iv(max(lo, -(1 << (bits - 1))), min(hi, (1 << (bits - 1)) - 1))


_INT_LITERAL = re.compile(r"^(0[xX][0-9a-fA-F']+|0[bB][01']+|0[0-7']*|[1-9][0-9']*)([uUlL]*)$")


def parse_number(text: str) -> Iv | None:
    """A C number literal's value (``10``, ``0x1F``, ``3u``, ``1e-7``, ``.5f``, ``1.f``), or None."""
    text = text.replace("'", "")
    if text[:1] in "+-":  # tree-sitter reads `-7` as one literal
        inner = parse_number(text[1:])
        return None if inner is None else (inner if text[0] == "+" else Iv(-inner.hi, -inner.lo, inner.flt))
    match = _INT_LITERAL.match(text)
    if match:
        digits = match.group(1)
        if digits.lower().startswith("0x"):
            value = int(digits, 16)
        elif digits.lower().startswith("0b"):
            value = int(digits[2:], 2)
        elif len(digits) > 1 and digits.startswith("0"):
            value = int(digits, 8)
        else:
            value = int(digits)
        return Iv.point(value)
    body = text.rstrip("fFlL")
    try:
        value = float.fromhex(body) if body.lower().startswith("0x") else float(body)
    except ValueError:
        return None
    return Iv.point(value, True)


MACRO_RE = re.compile(r"^[ \t]*#[ \t]*define[ \t]+([A-Za-z_]\w*)[ \t]+\(?\s*([-+]?[0-9][0-9a-fA-FxX.uUlLfF']*)\s*\)?"
                      r"[ \t]*(?://.*)?$", re.M)


def constant_macros(source: str) -> dict[str, Iv]:
    """``#define NAME 16`` style object macros of a source with a numeric value (block sizes, tile widths)."""
    found: dict[str, Iv] = {}
    for match in MACRO_RE.finditer(source):
        value = parse_number(match.group(2))
        if value is not None:
            found[match.group(1)] = value
    return found


_UNARY_CALLS = {"abs": "abs", "fabs": "abs", "fabsf": "abs", "labs": "abs", "llabs": "abs",
                "floor": "floor", "floorf": "floor", "ceil": "ceil", "ceilf": "ceil", "sqrt": "sqrt", "sqrtf": "sqrt"}
_BINARY_CALLS = {"min": min, "max": max, "fmin": min, "fmax": max, "fminf": min, "fmaxf": max, "MIN": min, "MAX": max}


class Evaluator:
    """Folds C expressions into `Iv`s.

    ``env``: ranges of variables (parameters, loop variables, locals); ``arrays``: the range of the values an
    array holds (an unknown name reads TOP); ``sizes``: ``v.size()`` of vectors; ``float_vars``: names of
    floating-point variables (so that ``x / 2`` is real division for them).
    """

    def __init__(self, env: Mapping[str, Iv], arrays: Mapping[str, Iv] | None = None,
                 sizes: Mapping[str, Iv] | None = None):
        self.env = env
        self.arrays = arrays or {}
        self.sizes = sizes or {}

    def eval(self, node: Any) -> Iv:  # noqa: C901 - one dispatch over expression node types
        kind = node.type
        if kind == "number_literal":
            return parse_number(node_text(node)) or TOP
        if kind == "char_literal":
            text = node_text(node)
            return Iv.point(ord(text[1])) if len(text) == 3 else TOP
        if kind in ("true", "false"):
            return Iv.point(1 if kind == "true" else 0)
        if kind in ("null", "nullptr"):
            return Iv.point(0)
        if kind in ("identifier", "qualified_identifier"):
            return self.env.get(node_text(node), TOP)
        if kind in ("parenthesized_expression", "condition_clause"):
            inner = [c for c in node.named_children if c.type != "comment"]
            return self.eval(inner[-1]) if inner else TOP
        if kind == "binary_expression":
            op = node_text(node.child_by_field_name("operator"))
            return binary(op, self.eval(node.child_by_field_name("left")), self.eval(node.child_by_field_name("right")))
        if kind == "unary_expression":
            return self._unary(node)
        if kind == "cast_expression":
            return _cast(self.eval(node.child_by_field_name("value")), node_text(node.child_by_field_name("type")))
        if kind == "conditional_expression":
            return self.eval(node.child_by_field_name("consequence")).union(
                self.eval(node.child_by_field_name("alternative")))
        if kind == "sizeof_expression":
            return self._sizeof(node)
        if kind == "subscript_expression":
            return self.arrays.get(node_text(node.child_by_field_name("argument")), TOP)
        if kind == "pointer_expression" and node_text(node).startswith("*"):
            target = node.child_by_field_name("argument")
            while target is not None and target.type == "parenthesized_expression":
                target = target.named_children[0] if target.named_children else None
            if target is not None and target.type == "binary_expression":
                target = target.child_by_field_name("left")
            return self.arrays.get(node_text(target), TOP) if target is not None else TOP
        if kind == "call_expression":
            return self._call(node)
        if kind in ("update_expression",):
            return self.eval(node.child_by_field_name("argument"))
        if kind == "assignment_expression":
            return self.eval(node.child_by_field_name("right"))
        if kind == "comma_expression":
            return self.eval(node.child_by_field_name("right"))
        if kind == "field_expression":
            return self.env.get(node_text(node).replace(" ", ""), TOP)
        return TOP

    def _unary(self, node: Any) -> Iv:
        op = node_text(node.child_by_field_name("operator"))
        value = self.eval(node.child_by_field_name("argument"))
        if op == "-":
            return Iv(-value.hi, -value.lo, value.flt)
        if op == "+":
            return value
        if op == "!":
            return BOOL
        if op == "~" and value.bounded:
            return Iv(-value.hi - 1, -value.lo - 1)
        return TOP

    def _sizeof(self, node: Any) -> Iv:
        target = node.child_by_field_name("type") or node.child_by_field_name("value")
        text = node_text(target) if target is not None else ""
        text = text.strip("() ")
        scalar = SCALAR_TYPES.get(" ".join(text.split()))
        if scalar is not None:
            return Iv.point(scalar.size)
        if text.endswith("*"):
            return Iv.point(8)
        return TOP

    def _call(self, node: Any) -> Iv:
        callee = node.child_by_field_name("function")
        args_node = node.child_by_field_name("arguments")
        args = [a for a in args_node.named_children if a.type != "comment"] if args_node is not None else []
        name = node_text(callee).replace(" ", "") if callee is not None else ""
        if callee is not None and callee.type == "field_expression" and name.endswith((".size", ".length")):
            return self.sizes.get(name.rsplit(".", 1)[0], TOP)
        short = name.split("::")[-1]
        if short in _BINARY_CALLS and len(args) == 2:
            a, b = self.eval(args[0]), self.eval(args[1])
            pick = _BINARY_CALLS[short]
            return Iv(pick(a.lo, b.lo), pick(a.hi, b.hi), a.flt or b.flt or short.startswith("f"))
        if short in _UNARY_CALLS and len(args) == 1:
            return self._unary_call(_UNARY_CALLS[short], self.eval(args[0]))
        return TOP_FLOAT if short.endswith("f") else TOP

    @staticmethod
    def _unary_call(what: str, a: Iv) -> Iv:
        if what == "abs":
            if a.lo >= 0:
                return a
            return Iv(0 if a.hi >= 0 else -a.hi, max(-a.lo, a.hi), a.flt)
        if what in ("floor", "ceil"):
            fn = math.floor if what == "floor" else math.ceil
            return Iv(fn(a.lo) if math.isfinite(a.lo) else a.lo, fn(a.hi) if math.isfinite(a.hi) else a.hi, True)
        if what == "sqrt" and a.lo >= 0:
            return Iv(math.sqrt(a.lo), math.sqrt(a.hi) if math.isfinite(a.hi) else INF, True)
        return TOP_FLOAT

"""Comparing the kernel's records with the reference's, and the first mismatch.

Integers (and ``bool``) are compared exactly.  Floating-point values pass when

    |got - expected| <= max(RTOL * |expected|, ATOL * scale)

where ``scale`` is the largest finite magnitude the reference produced in that argument (at least 1):

* float32: RTOL = 1e-4, ATOL = 1e-5.  The GPU's ``expf``/``logf``/``powf`` are within 1-2 ulp of glibc's, a
  kernel may sum in another order (atomics, per-thread partial sums) or keep a float where the C code used a
  double; a few hundred rounding errors of 6e-8 stay below 1e-4.  The scaled absolute term keeps cancellation
  (a sum of large terms that comes out near 0) from failing on noise, while an operator, an index or a bound
  that is wrong changes values by far more.
* float64: RTOL = 1e-9, ATOL = 1e-12 for the same reasons at double precision.

NaN equals NaN (any payload), an infinity equals the same infinity, and -0.0 equals 0.0.  nvcc builds with
``-fmad=false`` so that ``a * b + c`` rounds as on the CPU (exact integer results of float expressions, such as
``(unsigned char)(0.21f * r + ...)``, then agree bit for bit).
"""

from __future__ import annotations

import math
import struct
from array import array
from dataclasses import dataclass
from typing import Sequence

from .inputs import InputCase
from .runner import Item
from .signatures import FunctionInfo

__all__ = ["TOLERANCES", "Mismatch", "first_mismatch", "compare_item", "decode"]

TOLERANCES = {4: (1e-4, 1e-5), 8: (1e-9, 1e-12)}  # float size -> (rtol, atol relative to the argument's scale)
_INT_CODES = {(1, "i"): "b", (1, "u"): "B", (1, "b"): "B", (2, "i"): "h", (2, "u"): "H", (4, "i"): "i",
              (4, "u"): "I", (8, "i"): "q", (8, "u"): "Q"}


@dataclass
class Mismatch:
    """The first difference: which input, which argument and element, what was expected and what came."""

    input: dict
    argument: str
    index: int | None
    expected: object
    got: object
    reason: str

    def to_json(self) -> dict:
        return {"input": self.input, "argument": self.argument, "index": self.index,
                "expected": _json_value(self.expected), "got": _json_value(self.got), "reason": self.reason}

    def describe(self) -> str:
        """"<argument>[<index>]: expected E, got G (<why>)", or the failure's reason when no value is involved."""
        if self.expected is None and self.got is None:
            return self.reason
        where = f"{self.argument}[{self.index}]" if self.index is not None else self.argument
        return f"{where}: expected {_json_value(self.expected)}, got {_json_value(self.got)} ({self.reason})"


def _json_value(value: object) -> object:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def decode(item: Item) -> Sequence[float] | Sequence[int]:
    """The values of a recorded item (native little-endian, as written)."""
    if item.elem_kind == "f":
        return array("f" if item.elem_size == 4 else "d", item.data)
    code = _INT_CODES.get((item.elem_size, item.elem_kind))
    if code is None:
        raise ValueError(f"unknown element type {item.elem_kind}{item.elem_size} of parameter {item.param}")
    return array(code, item.data) if code not in ("q", "Q") else struct.unpack(f"<{len(item.data) // 8}{code}",
                                                                               item.data)


def _float_equal(expected: float, got: float, rtol: float, atol: float) -> bool:
    if expected == got:
        return True
    if math.isnan(expected) or math.isnan(got):
        return math.isnan(expected) and math.isnan(got)
    if math.isinf(expected) or math.isinf(got):
        return False
    return abs(got - expected) <= max(rtol * abs(expected), atol)


def compare_item(expected: Item, got: Item) -> tuple[int | None, object, object, str] | None:
    """None when equal (within tolerance), else (index or None, expected, got, why)."""
    if expected.data == got.data:
        return None
    if expected.elem_size != got.elem_size or expected.elem_kind != got.elem_kind:
        return None, f"{expected.elem_kind}{expected.elem_size}", f"{got.elem_kind}{got.elem_size}", \
            "the recorded element types differ"
    exp_values, got_values = decode(expected), decode(got)
    if len(exp_values) != len(got_values):
        return None, len(exp_values), len(got_values), "the recorded lengths differ"
    if expected.elem_kind != "f":
        for i, (e, g) in enumerate(zip(exp_values, got_values)):
            if e != g:
                return i, e, g, "differs (integers are compared exactly)"
        return None
    rtol, atol = TOLERANCES[expected.elem_size]
    finite = [abs(v) for v in exp_values if math.isfinite(v)]
    scale = max(1.0, max(finite, default=1.0))
    for i, (e, g) in enumerate(zip(exp_values, got_values)):
        if not _float_equal(e, g, rtol, atol * scale):
            return i, e, g, f"differs beyond the tolerance (rtol {rtol:g}, atol {atol:g} x {scale:g})"
    return None


def first_mismatch(case: InputCase, c: FunctionInfo, expected: list[Item], got: list[Item]) -> Mismatch | None:
    """The first differing item of one input (return value first, then arrays in parameter order)."""
    by_param = {item.param: item for item in got}
    for item in expected:
        name = "return value" if item.param < 0 else c.params[item.param].name
        other = by_param.get(item.param)
        if other is None:
            return Mismatch(case.to_json(), name, None, None, None, "the kernel program recorded no value for it")
        found = compare_item(item, other)
        if found is not None:
            index, exp_value, got_value, why = found
            return Mismatch(case.to_json(), name, index if item.param >= 0 else None, exp_value, got_value, why)
    return None

"""Inputs: sizes, scalar values, array extents and fills for every parameter kind, over several seeds.

* **Sizes** (integer parameters that bound the C function's loops, and every ``std::vector``'s length) take
  0, 1, 7, 33, 255, 257, 1000 — empty, one element, and sizes that are not a multiple of a block of 256 (or of
  16 x 16) — one parameter at a time around small values (3, 5, 2, 4, ...) when there are several (`size_combos`),
  plus all-ones and all-small combinations; a combination is dropped when the C loops would run more than `MAX_WORK`
  iterations or its arrays would hold more than `MAX_ELEMENTS` elements (a 1000 x 1000 x 1000 product is not
  a unit test).
* **Other integer scalars**: ordinary values (3, -2, 0, 1, 7, 100, -1000, 5); strides (parameters that scale an
  index) 1..5 and 0; divisors non-zero; in the *edge* profiles the type's extremes.  Unsigned types never get
  negative ordinary values.  ``bool`` alternates 0 and 1.
* **Floating scalars**: 1.5, -0.75, 0, 2, 0.25, -3.5, 10; edge profiles add ±1e30, 1e-30, -0, and (one profile)
  ±inf and NaN.
* **Arrays** are filled inside the programs from (seed, parameter) by the same generator (so nothing large is
  passed around); the *profile* of an input picks the distribution: ``mixed`` (floats in [-16, 16) on a 2^-19
  grid with zeros and small integers sprinkled in, exactly representable in float; integers mostly in
  [-3, 8] — zeros and ones are common flags), ``positive`` ((0, 4], [1, 100]), ``unit`` ([0, 1), {0, 1}),
  ``edge`` (extremes, ±0, ±inf, NaN) and ``edge-finite``.  Arrays whose values index other arrays
  (`kernelcheck.loopnest`) hold valid indices [0, R).  ``unsigned char`` arrays span [0, 255].
* **Extents** come from `kernelcheck.loopnest.measure` (the largest element the C function can touch); where
  it cannot tell, `FALLBACK_ELEMENTS` (the reference run regrows an array it overruns).

An input on which the C reference is undefined (it crashes, times out, overruns an array, divides by zero,
converts NaN to an integer...) is discarded by the run, never used to judge the kernel: edge values are safe to
try.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from .intervals import TOP, TOP_FLOAT, Iv
from .loopnest import CShape, LoopInfo, measure
from .signatures import FunctionInfo, Param, ScalarType

__all__ = ["SIZE_VALUES", "PROFILES", "MAX_WORK", "MAX_ELEMENTS", "FALLBACK_ELEMENTS", "Fill", "InputCase",
           "size_combos", "make_inputs", "FILL_MODES"]

SIZE_VALUES = (0, 1, 7, 33, 255, 257, 1000)
_AROUND = (3, 5, 2, 4, 6, 3, 5, 2)
PROFILES = ("mixed", "positive", "mixed", "unit", "edge-finite", "mixed", "edge")
MAX_WORK = 4_000_000
MAX_ELEMENTS = 1 << 20
FALLBACK_ELEMENTS = 1 << 12
MAX_INPUT_BYTES = 8 << 20

# Fill modes understood by the programs' generator (kernelcheck.harness_runtime).
FILL_MODES = {"int_uniform": 0, "int_mixed": 1, "int_edge": 2, "float_mixed": 10, "float_uniform": 11,
              "float_edge": 12, "float_edge_finite": 13, "bool": 20}

_ORDINARY_INTS = (3, -2, 0, 1, 7, 100, -1000, 5)
_STRIDES = (1, 2, 3, 4, 0, 5, 1, 2)
_DIVISORS = (3, 2, 5, 7, 1, -2, 4, 6)
_ORDINARY_FLOATS = (1.5, -0.75, 0.0, 2.0, 0.25, -3.5, 10.0)
_EDGE_FINITE_FLOATS = (1e30, -1e30, 1e-30, -0.0, 3.0e38)
_EDGE_FLOATS = (math.inf, -math.inf, math.nan, 1e30, -0.0)


@dataclass(frozen=True)
class Fill:
    """How a program fills one array: a generator mode and its range."""

    mode: str
    lo: float = 0
    hi: float = 0

    def content(self, scalar: ScalarType) -> Iv:
        """The range of values the array holds (what indexing analysis may assume)."""
        if self.mode == "int_uniform":
            return Iv(self.lo, self.hi)
        if self.mode == "int_mixed":
            return Iv(min(self.lo, 0 if scalar.kind == "u" else -3), max(self.hi, 8))
        if self.mode == "bool":
            return Iv(0, 1)
        if scalar.is_integer and scalar.kind == "u" and scalar.size == 1:
            return Iv(0, 255)
        return TOP_FLOAT if scalar.is_float else TOP


@dataclass
class InputCase:
    """One input: scalar values and array extents/fills by C parameter name, plus what produced them."""

    index: int
    seed: int
    profile: str
    sizes: dict[str, int]
    values: dict[str, float]
    extents: dict[str, int]
    fills: dict[str, Fill]
    work: float = 0.0
    loops: list[LoopInfo] = field(default_factory=list)
    unknown_extents: tuple[str, ...] = ()

    def describe(self) -> str:
        sizes = ", ".join(f"{k}={v}" for k, v in self.sizes.items())
        others = ", ".join(f"{k}={_fmt(v)}" for k, v in self.values.items() if k not in self.sizes)
        parts = [p for p in (sizes, others) if p]
        return f"input #{self.index} ({'; '.join(parts) or 'no scalars'}; seed {self.seed}, {self.profile} values)"

    def to_json(self) -> dict:
        return {"index": self.index, "describe": self.describe(), "seed": self.seed, "profile": self.profile,
                "sizes": dict(self.sizes), "values": {k: _fmt(v) for k, v in self.values.items()},
                "extents": dict(self.extents)}


def _fmt(value: float) -> float | int | str:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def size_combos(names: Sequence[str]) -> list[dict[str, int]]:
    """Size assignments: every `SIZE_VALUES` for one size; for several, all ones, small distinct values (3, 5, 2,
    4, ...), 7, 9, 11, ..., and each size in turn swept over 0, 33, 257, 1000 (7 and 255 for every other size)
    with the others at their small values."""
    if not names:
        return [{}]
    if len(names) == 1:
        return [{names[0]: v} for v in SIZE_VALUES]
    base = {name: _AROUND[i % len(_AROUND)] for i, name in enumerate(names)}
    combos = [dict.fromkeys(names, 1), dict(base), {name: 7 + 2 * i for i, name in enumerate(names)}]
    sweep = (0, 33, 257, 1000, 7, 255)
    for j, value in enumerate(sweep):
        for i, name in enumerate(names):
            if (i + j) % 2 and value in (7, 255):
                continue  # fewer redundant mid sizes for many-size functions
            combo = dict(base)
            combo[name] = value
            combos.append(combo)
    unique: list[dict[str, int]] = []
    for combo in combos:
        if combo not in unique:
            unique.append(combo)
    return unique


def _int_value(param: Param, shape: CShape, k: int, profile: str) -> int:
    scalar = param.scalar
    if scalar.kind == "b":
        return k % 2
    bits = 8 * scalar.size
    top = (1 << bits) - 1 if scalar.kind == "u" else (1 << (bits - 1)) - 1
    bottom = 0 if scalar.kind == "u" else -(1 << (bits - 1))
    if param.name in shape.stride_params:
        return _STRIDES[k % len(_STRIDES)]
    if param.name in shape.divisor_params:
        value = _DIVISORS[k % len(_DIVISORS)]
    elif profile == "edge":
        value = (top, bottom, -1, top // 2)[k % 4]
    else:
        value = _ORDINARY_INTS[k % len(_ORDINARY_INTS)]
    if scalar.kind == "u" and value < 0:
        value = -value if profile != "edge" else top
    return max(bottom, min(top, value))


def _float_value(k: int, profile: str) -> float:
    if profile == "edge":
        return _EDGE_FLOATS[k % len(_EDGE_FLOATS)]
    if profile == "edge-finite":
        return _EDGE_FINITE_FLOATS[k % len(_EDGE_FINITE_FLOATS)]
    return _ORDINARY_FLOATS[k % len(_ORDINARY_FLOATS)]


def _fill(param: Param, shape: CShape, profile: str, index_range: int) -> Fill:
    scalar = param.scalar
    if param.name in shape.index_arrays:
        return Fill("int_uniform", 0, max(0, min(index_range, 255 if scalar.size == 1 else index_range) - 1))
    if scalar.kind == "b":
        return Fill("bool")
    if scalar.is_float:
        return {"mixed": Fill("float_mixed", -16, 16), "positive": Fill("float_uniform", 0, 4),
                "unit": Fill("float_uniform", 0, 1), "edge": Fill("float_edge", -16, 16),
                "edge-finite": Fill("float_edge_finite", -16, 16)}[profile]
    if scalar.size == 1 and scalar.kind == "u":
        return Fill("int_uniform", 0, 255 if profile != "unit" else 1)
    lo = 0 if scalar.kind == "u" else -1000
    return {"mixed": Fill("int_mixed", lo, 1000), "positive": Fill("int_uniform", 1, 100),
            "unit": Fill("int_uniform", 0, 1), "edge": Fill("int_edge"),
            "edge-finite": Fill("int_mixed", lo, 1 << 20)}[profile]


def _scalars(fn: FunctionInfo, shape: CShape, sizes: dict[str, int], k: int, profile: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for j, p in enumerate(fn.params):
        if not p.is_value or p.scalar is None:
            continue
        if p.name in sizes:
            values[p.name] = sizes[p.name]
        elif p.scalar.is_float:
            values[p.name] = _float_value(k + j, profile)
        else:
            values[p.name] = _int_value(p, shape, k + j, profile)
    return values


def _extents(fn: FunctionInfo, sizes: dict[str, int], found: dict[str, int | None]) -> tuple[dict[str, int], list]:
    """Extents per buffer: vectors their size, ``T&`` one element, else what the walk found (or the fallback)."""
    known = [v for v in found.values() if v is not None]
    fallback = min(FALLBACK_ELEMENTS * 16, max([FALLBACK_ELEMENTS, max(sizes.values(), default=0) ** 2] + known))
    extents, unknown = {}, []
    for p in fn.params:
        if p.vector:
            extents[p.name] = sizes[p.name]
        elif p.is_scalar_ref:
            extents[p.name] = 1
        elif p.is_buffer:
            value = found.get(p.name)
            if value is None:
                unknown.append(p.name)
                value = fallback
            if p.array_len:
                value = max(value, p.array_len)
            extents[p.name] = value
    return extents, unknown


def make_inputs(fn: FunctionInfo, shape: CShape, seeds: int = 3, max_inputs: int = 48) -> tuple[list[InputCase], int]:
    """The inputs for ``fn`` (see the module docstring) and how many candidates were dropped as too large."""
    size_names = [n for n in shape.size_params] + [p.name for p in fn.params if p.vector and p.name not in
                                                   shape.size_params]
    combos = size_combos(size_names)
    inputs: list[InputCase] = []
    dropped = 0
    for seed in range(seeds):
        for c, sizes in enumerate(combos):
            if len(inputs) >= max_inputs:
                return inputs, dropped
            k = seed * len(combos) + c
            profile = PROFILES[(c + seed) % len(PROFILES)]
            case = _one_input(fn, shape, sizes, k, seed, profile, len(inputs))
            if case is None:
                dropped += 1
            else:
                inputs.append(case)
    return inputs, dropped


def _one_input(fn: FunctionInfo, shape: CShape, sizes: dict[str, int], k: int, seed: int, profile: str,
               index: int) -> InputCase | None:
    values = _scalars(fn, shape, sizes, k, profile)
    index_range = max(1, min(1024, max(sizes.values(), default=8)))
    fills = {p.name: _fill(p, shape, profile, index_range) for p in fn.params
             if (p.is_buffer or p.is_scalar_ref) and p.scalar is not None}
    env = {name: Iv.point(v, isinstance(v, float)) for name, v in values.items() if math.isfinite(v)}
    contents = {p.name: fills[p.name].content(p.scalar) for p in fn.params if p.name in fills}
    vector_sizes = {p.name: Iv.point(sizes[p.name]) for p in fn.params if p.vector}
    result = measure(fn, env, contents, vector_sizes)
    if result.work > MAX_WORK:
        return None
    extents, unknown = _extents(fn, sizes, result.extents)
    total = sum(extents[p.name] * p.scalar.size for p in fn.params if p.name in extents)
    if max(extents.values(), default=0) > MAX_ELEMENTS or total > MAX_INPUT_BYTES:
        return None
    return InputCase(index=index, seed=1000 * seed + k, profile=profile, sizes=dict(sizes), values=values,
                     extents=extents, fills=fills, work=result.work, loops=result.loops,
                     unknown_extents=tuple(unknown))

"""Elementwise families over 1-D arrays: unary, binary and ternary maps (arithmetic, math functions, integer
operations), maps with scalar parameters (scale, offset, axpy-like updates), in place or into a second array.

Every iteration reads and writes only its own element, so the kernel is the C body under one thread per index,
correct for any input values.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

from . import names as vocab
from .kit import Draw, Family
from .spec import Param, Spec

NOUNS = ("values", "array", "data", "elements", "buffer", "vector", "samples", "signal", "entries", "items",
         "points", "readings", "coeffs", "vals", "list", "field", "series", "inputs")
SMALL = ("2", "3", "4", "5", "7", "10")
FRACTIONS = ("0.5", "1.5", "0.25", "2.5", "0.75", "3.0", "0.125")

Expr = Callable[[Draw, str, str], str]  # (draw, type, operand) -> expression

# Arithmetic any element type can do; (verbs, expression).
ARITH: tuple[tuple[tuple[str, ...], Expr], ...] = (
    (("square", "power2"), lambda d, t, x: f"{x} * {x}"),
    (("cube",), lambda d, t, x: f"{x} * {x} * {x}"),
    (("poly", "transform", "remap"), lambda d, t, x: f"{d.lit(t, SMALL)} * {x} + {d.lit(t, ('1', '3', '5'))}"),
    (("halve", "divide", "shrink"), lambda d, t, x: f"{x} / {d.lit(t, ('2', '4', '8'))}"),
    (("offset", "shift", "bump"), lambda d, t, x: f"{x} + {d.lit(t, SMALL)}"),
    (("amplify", "multiply", "boost"), lambda d, t, x: f"{x} * {d.lit(t, SMALL)}"),
    (("poly", "quad", "evaluate"), lambda d, t, x: f"{x} * {x} - {d.lit(t, SMALL)} * {x}"),
    (("twice", "double_up"), lambda d, t, x: f"{x} + {x}"),
)
FLOAT_ARITH: tuple[tuple[tuple[str, ...], Expr], ...] = (
    (("invert", "reciprocal"), lambda d, t, x: f"{vocab.literal(t, '1')} / ({vocab.literal(t, '1')} + {x} * {x})"),
    (("damp", "attenuate"), lambda d, t, x: f"{x} * {d.lit(t, FRACTIONS)}"),
    (("negate", "flip"), lambda d, t, x: f"-{x}"),
)
MATH: tuple[tuple[tuple[str, ...], Expr], ...] = (
    (("sqrt_abs", "root"), lambda d, t, x: f"{vocab.math_fn(t, 'sqrt')}({vocab.math_fn(t, 'fabs')}({x}))"),
    (("exponentiate", "exp"), lambda d, t, x: f"{vocab.math_fn(t, 'exp')}({x})"),
    (("abs", "magnitude"), lambda d, t, x: f"{vocab.math_fn(t, 'fabs')}({x})"),
    (("tanh", "squash"), lambda d, t, x: f"{vocab.math_fn(t, 'tanh')}({x})"),
    (("sine", "wave"), lambda d, t, x: f"{vocab.math_fn(t, 'sin')}({x})"),
    (("cosine",), lambda d, t, x: f"{vocab.math_fn(t, 'cos')}({x}) * {d.lit(t, FRACTIONS)}"),
    (("log_abs", "logscale"), lambda d, t, x: f"{vocab.math_fn(t, 'log')}({vocab.literal(t, '1')} + "
                                              f"{vocab.math_fn(t, 'fabs')}({x}))"),
    (("sigmoid", "logistic"), lambda d, t, x: f"{vocab.literal(t, '1')} / ({vocab.literal(t, '1')} + "
                                              f"{vocab.math_fn(t, 'exp')}(-{x}))"),
    (("gauss", "bell"), lambda d, t, x: f"{vocab.math_fn(t, 'exp')}(-{x} * {x})"),
    (("floor", "truncate"), lambda d, t, x: f"{vocab.math_fn(t, 'floor')}({x})"),
    (("round", "quantize"), lambda d, t, x: f"{vocab.math_fn(t, 'floor')}({x} * {d.lit(t, SMALL)} + "
                                            f"{vocab.literal(t, '0.5')})"),
    (("softplus",), lambda d, t, x: f"{vocab.math_fn(t, 'log')}({vocab.literal(t, '1')} + "
                                    f"{vocab.math_fn(t, 'exp')}({x}))"),
)
INT_OPS: tuple[tuple[tuple[str, ...], Expr], ...] = (
    (("abs", "magnitude"), lambda d, t, x: f"{x} < 0 ? -{x} : {x}"),
    (("wrap", "modulo"), lambda d, t, x: f"{x} % {d.choice(('3', '5', '7', '16', '10'))}"),
    (("mask", "lowbits"), lambda d, t, x: f"{x} & {d.choice(('255', '15', '0xff', '1023', '7'))}"),
    (("parity", "even_odd"), lambda d, t, x: f"{x} % 2 == 0 ? {x} / 2 : {x} * 3 + 1"),
    (("mix", "scramble"), lambda d, t, x: f"({x} ^ {d.choice(('0x5a', '21', '0x33', '99'))}) + 1"),
)
UNSIGNED_OPS: tuple[tuple[tuple[str, ...], Expr], ...] = (
    (("shift_right", "halve_bits"), lambda d, t, x: f"{x} >> {d.choice(('1', '2', '3'))}"),
    (("shift_left", "pack"), lambda d, t, x: f"{x} << {d.choice(('1', '2', '4'))}"),
    (("wrap", "modulo"), lambda d, t, x: f"{x} % {d.choice(('3', '5', '7', '16', '10'))}u"),
)


def _unary(d: Draw, table, types: tuple[str, ...], inplace: bool) -> Spec:
    t = d.choice(types)
    verbs, expr = d.choice(table)
    n, i = d.size(), d.var()
    if inplace:
        a = d.array(t, vocab.INPUTS + vocab.OUTPUTS, "inout")
        params, body = [a, n], f"{a.name}[{i}] = {expr(d, t, f'{a.name}[{i}]')};"
    else:
        src = d.array(t, vocab.INPUTS, "in")
        dst = d.array(t, vocab.OUTPUTS, "out")
        params, body = d.choice(([src, dst, n], [dst, src, n], [n, src, dst])), \
            f"{dst.name}[{i}] = {expr(d, t, f'{src.name}[{i}]')};"
    name = d.fname(verbs + ("apply", "map"), NOUNS) + ("_inplace" if inplace and d.chance(0.3) else "")
    return d.spec_1d(name, params, i, n.name, [body])


def unary_arith(d: Draw) -> Spec:
    return _unary(d, ARITH, vocab.ELEMENT_TYPES, inplace=False)


def unary_float(d: Draw) -> Spec:
    return _unary(d, FLOAT_ARITH + MATH, vocab.FLOATS, inplace=d.chance(0.3))


def unary_int(d: Draw) -> Spec:
    if d.chance(0.3):
        return _unary(d, UNSIGNED_OPS, ("unsigned int",), inplace=d.chance(0.3))
    return _unary(d, INT_OPS, ("int", "long"), inplace=d.chance(0.3))


def unary_inplace(d: Draw) -> Spec:
    return _unary(d, ARITH, vocab.ELEMENT_TYPES, inplace=True)


BINARY: tuple[tuple[tuple[str, ...], str], ...] = (
    (("add", "sum", "combine"), "{a} + {b}"), (("subtract", "diff"), "{a} - {b}"),
    (("multiply", "mul", "product"), "{a} * {b}"), (("blend", "average"), "({a} + {b}) / 2"),
    (("sqdiff", "square_diff"), "({a} - {b}) * ({a} - {b})"), (("maxof", "pick_max"), "{a} > {b} ? {a} : {b}"),
    (("minof", "pick_min"), "{a} < {b} ? {a} : {b}"), (("cross_term", "mac"), "{a} * {b} + {a}"),
)
FLOAT_BINARY: tuple[tuple[tuple[str, ...], str], ...] = (
    (("divide", "ratio"), "{a} / {b}"), (("hypot", "norm2"), "{sqrt}({a} * {a} + {b} * {b})"),
    (("absdiff", "distance"), "{fabs}({a} - {b})"), (("fmax", "upper"), "{fmax}({a}, {b})"),
    (("fmin", "lower"), "{fmin}({a}, {b})"), (("weighted", "scale_by"), "{a} * {b} * {half}"),
)


def _binary_expr(d: Draw, t: str, a: str, b: str) -> tuple[tuple[str, ...], str]:
    table = BINARY + (FLOAT_BINARY if t in vocab.FLOATS else ())
    verbs, template = d.choice(table)
    fns = {f: vocab.math_fn(t, f) for f in ("sqrt", "fabs", "fmax", "fmin")} if t in vocab.FLOATS else {}
    return verbs, template.format(a=a, b=b, half=vocab.literal(t, "0.5") if t in vocab.FLOATS else "2", **fns)


def binary_map(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    a, b = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.SECOND, "in")
    out = d.array(t, vocab.OUTPUTS, "out")
    verbs, expr = _binary_expr(d, t, f"{a.name}[{i}]", f"{b.name}[{i}]")
    params = d.choice(([a, b, out, n], [out, a, b, n], [n, a, b, out], [a, b, n, out]))
    return d.spec_1d(d.fname(verbs, NOUNS + ("arrays", "vectors", "pairs")), params, i, n.name,
                     [f"{out.name}[{i}] = {expr};"])


def binary_inplace(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    acc, b = d.array(t, vocab.OUTPUTS + vocab.INPUTS, "inout"), d.array(t, vocab.SECOND, "in")
    op = d.choice(("+=", "-=", "*=") + (("/=",) if t in vocab.FLOATS else ()))
    verb = {"+=": "accumulate", "-=": "subtract", "*=": "multiply", "/=": "divide"}[op]
    body = d.choice((f"{acc.name}[{i}] {op} {b.name}[{i}];",
                     f"{acc.name}[{i}] = {acc.name}[{i}] {op[0]} {b.name}[{i}];"))
    return d.spec_1d(d.fname((verb, verb + "_into", "update"), NOUNS), d.choice(([acc, b, n], [n, acc, b])), i,
                     n.name, [body])


TERNARY = {"fma": (("fma", "muladd"), "{a} * {b} + {c}"), "sum3": (("add3", "sum3"), "{a} + {b} + {c}"),
           "select": (("select", "choose"), "{c} > {zero} ? {a} : {b}"),
           "combine": (("combine", "mix3"), "({a} - {b}) * {c}"),
           "lerp": (("lerp", "interpolate"), "{a} + {c} * ({b} - {a})")}


def ternary_map(d: Draw, kind: str) -> Spec:
    t = d.choice(vocab.FLOATS if kind == "lerp" else vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    a, b = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.SECOND, "in")
    c, out = d.array(t, vocab.THIRD, "in"), d.array(t, vocab.OUTPUTS, "out")
    verbs, template = TERNARY[kind]
    expr = template.format(a=f"{a.name}[{i}]", b=f"{b.name}[{i}]", c=f"{c.name}[{i}]", zero=vocab.literal(t, "0"))
    params = d.choice(([a, b, c, out, n], [out, a, b, c, n], [n, a, b, c, out]))
    return d.spec_1d(d.fname(verbs, NOUNS), params, i, n.name, [f"{out.name}[{i}] = {expr};"])


def _scalar_params(d: Draw, t: str) -> tuple[Param, Param]:
    return d.scalar(t, vocab.SCALARS), d.scalar(t, vocab.OFFSETS)


def scalar_affine(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    s, o = _scalar_params(d, t)
    x = f"{src.name}[{i}]"
    verbs, expr = d.choice(((("affine", "scale_shift", "rescale"), f"{s.name} * {x} + {o.name}"),
                            (("normalize", "standardize", "center"), f"({x} - {o.name}) * {s.name}"),
                            (("shift_scale",), f"({x} + {o.name}) * {s.name}")))
    params = d.choice(([src, dst, s, o, n], [dst, src, n, s, o], [n, s, o, src, dst]))
    return d.spec_1d(d.fname(verbs, NOUNS), params, i, n.name, [f"{dst.name}[{i}] = {expr};"])


def scalar_update(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    y, x = d.array(t, vocab.OUTPUTS, "inout"), d.array(t, vocab.INPUTS, "in")
    s = d.scalar(t, vocab.SCALARS)
    yi, xi = f"{y.name}[{i}]", f"{x.name}[{i}]"
    body = d.choice((f"{yi} = {s.name} * {xi} + {yi};", f"{yi} += {s.name} * {xi};", f"{yi} = {yi} + {xi} * {s.name};",
                     f"{yi} -= {s.name} * {xi};"))
    params = d.choice(([y, x, s, n], [n, s, x, y], [x, y, s, n]))
    return d.spec_1d(d.fname(("accumulate", "update", "blend", "fold"), ("scaled", "weighted", "vectors") + NOUNS),
                     params, i, n.name, [body])


def scalar_inplace(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    a = d.array(t, vocab.INPUTS + vocab.OUTPUTS, "inout")
    s = d.scalar(t, vocab.SCALARS + vocab.OFFSETS)
    op = d.choice(("*=", "+=", "-=") + (("/=",) if t in vocab.FLOATS else ()))
    verb = {"*=": ("scale", "multiply", "rescale"), "+=": ("offset", "add_scalar", "shift"),
            "-=": ("subtract", "lower", "deduct"), "/=": ("divide", "normalize")}[op]
    body = d.choice((f"{a.name}[{i}] {op} {s.name};", f"{a.name}[{i}] = {a.name}[{i}] {op[0]} {s.name};"))
    return d.spec_1d(d.fname(verb, NOUNS), d.choice(([a, s, n], [a, n, s], [n, s, a])), i, n.name, [body])


FAMILIES = (
    Family("map_unary", {"arith": unary_arith, "float_math": unary_float, "int_ops": unary_int,
                         "inplace": unary_inplace},
           "out[i] = f(in[i]) or a[i] = f(a[i]): arithmetic, math functions, integer and bit operations"),
    Family("map_binary", {"out": binary_map, "inplace": binary_inplace},
           "out[i] = a[i] op b[i], or a[i] op= b[i]"),
    Family("map_ternary", {kind: partial(ternary_map, kind=kind) for kind in TERNARY},
           "out[i] = f(a[i], b[i], c[i]): fma, lerp, select"),
    Family("scalar_map", {"affine": scalar_affine, "update": scalar_update, "inplace": scalar_inplace},
           "maps with scalar parameters: scale and offset, y += s * x, a[i] op= s"),
)

"""Families whose iterations read neighbours or do not start at 0: 1-D and 2-D stencils that read an input and
write a separate output (so no iteration reads what another writes), loops with a non-zero start, a range
`[begin, end)`, or a step.

Bounds are respected the way host code respects them: by the loop's range (`for (i = 1; i < n - 1; i++)`), by a
check in the body (`if (r > 0 && r < rows - 1 ...)`), or by clamping the neighbour's index. Sizes subtracted
from are signed, so `n - 1` cannot wrap around. The kernel starts its index where the C loop starts and steps it
as the C loop steps (`int i = 1 + blockIdx.x * blockDim.x + threadIdx.x;`, `(...) * 2`).
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from . import names as vocab
from .kit import Draw, Family
from .spec import If, Spec

NOUNS = ("signal", "values", "samples", "series", "profile", "row", "trace", "data", "curve", "line")
SMALL = ("2", "3")
GRID_NOUNS = ("image", "grid", "field", "plane", "heightmap", "frame")


def diff(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(signed=True), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    if d.chance(0.5):  # forward difference over [0, n - 1)
        body = [f"{dst.name}[{i}] = {src.name}[{i} + 1] - {src.name}[{i}];"]
        return d.spec_1d(d.fname(("forward_diff", "difference", "delta"), NOUNS), [src, dst, n], i,
                         f"{n.name} - 1", body)
    body = [f"{dst.name}[{i}] = {src.name}[{i}] - {src.name}[{i} - 1];"]  # backward difference over [1, n)
    return d.spec_1d(d.fname(("backward_diff", "gradient", "increments"), NOUNS), [src, dst, n], i, n.name, body,
                     start="1")


def smooth3(d: Draw) -> Spec:
    t = d.choice(vocab.FLOATS + ("int",))
    n, i = d.size(signed=True), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    x = src.name
    left, mid, right = f"{x}[{i} - 1]", f"{x}[{i}]", f"{x}[{i} + 1]"
    verbs, expr = d.choice(((("smooth", "blur", "average3"), f"({left} + {mid} + {right}) / {vocab.literal(t, '3')}"),
                            (("laplacian", "second_diff", "curvature"), f"{left} - 2 * {mid} + {right}"),
                            (("central_diff", "derivative"), f"({right} - {left}) / {vocab.literal(t, '2')}")))
    params = d.choice(([src, dst, n], [dst, src, n], [n, src, dst]))
    if d.chance(0.5):  # the loop's range keeps the neighbours in bounds
        return d.spec_1d(d.fname(verbs, NOUNS), params, i, f"{n.name} - 1", [f"{dst.name}[{i}] = {expr};"],
                         start="1")
    inside = If(f"{i} > 0 && {i} < {n.name} - 1", (f"{dst.name}[{i}] = {expr};",),
                (f"{dst.name}[{i}] = {mid};",) if d.chance(0.6) else ())
    return d.spec_1d(d.fname(verbs, NOUNS), params, i, n.name, [inside])


def clamped3(d: Draw) -> Spec:
    t = d.choice(vocab.FLOATS)
    n, i = d.size(signed=True), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    w = d.scalar(t, ("w", "weight", "alpha", "k", "center_w"))
    lo, hi = d.names.take_pair((("l", "r"), ("prev", "next"), ("left", "right"), ("im1", "ip1"), ("a0", "a2")))
    body = [f"int {lo} = {i} > 0 ? {i} - 1 : 0;", f"int {hi} = {i} < {n.name} - 1 ? {i} + 1 : {n.name} - 1;",
            (f"{dst.name}[{i}] = {w.name} * {src.name}[{i}] + ({vocab.literal(t, '1')} - {w.name}) * "
             f"({src.name}[{lo}] + {src.name}[{hi}]) * {vocab.literal(t, '0.5')};")]
    return d.spec_1d(d.fname(("smooth_clamped", "filter", "diffuse", "relax"), NOUNS), [src, dst, w, n], i, n.name,
                     body)


def stencil2d(d: Draw) -> Spec:
    t = d.choice(vocab.FLOATS + ("int",))
    rows, cols = d.rows_cols()
    rows, cols = replace(rows, type="int"), replace(cols, type="int")  # `rows - 1` must not wrap
    r, c = d.row_col_vars()
    src, dst = d.array(t, vocab.INPUTS + GRID_NOUNS, "in"), d.array(t, vocab.OUTPUTS, "out")
    W = cols.name
    at = f"{r} * {W} + {c}"
    up, down, left, right = (f"{src.name}[({r} - 1) * {W} + {c}]", f"{src.name}[({r} + 1) * {W} + {c}]",
                             f"{src.name}[{at} - 1]", f"{src.name}[{at} + 1]")
    verbs, expr = d.choice(((("laplace", "laplacian2d"), f"{up} + {down} + {left} + {right} - 4 * {src.name}[{at}]"),
                            (("blur", "average5", "smooth2d"),
                             f"({up} + {down} + {left} + {right} + {src.name}[{at}]) / {vocab.literal(t, '5')}"),
                            (("grad_x", "sobel_h"), f"{right} - {left}"), (("grad_y", "sobel_v"), f"{down} - {up}")))
    interior = f"{r} > 0 && {r} < {rows.name} - 1 && {c} > 0 && {c} < {W} - 1"
    border = (f"{dst.name}[{at}] = {src.name}[{at}];",) if d.chance(0.5) else \
        ((f"{dst.name}[{at}] = {vocab.literal(t, '0')};",) if d.chance(0.5) else ())
    body = [If(interior, (f"{dst.name}[{at}] = {expr};",), border)]
    return d.spec_2d(d.fname(verbs, GRID_NOUNS), d.choice(([src, dst, rows, cols], [rows, cols, src, dst])), r,
                     rows.name, c, cols.name, body)


def start_offset(d: Draw, kind: str) -> Spec:
    """A constant start (`const`), a start parameter (`param`), or a `[begin, end)` range (`range`)."""
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(signed=True), d.var()
    a = d.array(t, vocab.INPUTS + vocab.OUTPUTS, "inout")
    s = d.scalar(t, vocab.SCALARS)
    body = [d.choice((f"{a.name}[{i}] *= {s.name};", f"{a.name}[{i}] = {a.name}[{i}] + {s.name};",
                      f"{a.name}[{i}] = {s.name};"))]
    if kind == "const":
        start = d.choice(("1", "2", "3", "4"))
        return d.spec_1d(d.fname(("skip_first", "update_tail", "scale_tail", "process_after"), NOUNS), [a, s, n], i,
                         n.name, body, start=start)
    first = d.scalar(n.type, ("start", "first", "begin", "from_idx", "lo_idx", "skip"), "stride")
    if kind == "param":
        return d.spec_1d(d.fname(("update_from", "scale_from", "tail_update"), NOUNS),
                         d.choice(([a, s, first, n], [a, first, n, s])), i, n.name, body, start=first.name)
    end = d.scalar(n.type, ("end", "last", "stop", "to_idx", "hi_idx"), "size")
    d.names.used.discard(n.name)
    return d.spec_1d(d.fname(("update_range", "scale_range", "fill_span", "set_slice"), NOUNS),
                     d.choice(([a, s, first, end], [a, first, end, s])), i, end.name, body, start=first.name)


def step_loop(d: Draw, kind: str) -> Spec:
    """`i += 2` (`step_const`) or `i += stride` (`step_param`), from 0 or (a third of the time) 1 or 2."""
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    if kind == "step_const":
        step = d.choice(("2", "3", "4"))
        params = [src, dst, n]
    else:
        sp = d.scalar("int", vocab.STRIDES, "stride")
        step, params = sp.name, [src, dst, n, sp]
    x = f"{src.name}[{i}]"
    body = [f"{dst.name}[{i}] = {d.choice((x, f'{x} * {d.lit(t, SMALL)}', f'{x} + {x}'))};"]
    if d.chance(0.3):
        start = d.choice(("1", "2"))
        return d.spec_1d(d.fname(("copy_every", "stride_copy", "sample_every"), NOUNS), params, i, n.name, body,
                         start=start, step=step)
    return d.spec_1d(d.fname(("copy_every", "stride_copy", "sample_every", "decimate"), NOUNS), params, i, n.name,
                     body, step=step)


FAMILIES = (
    Family("stencil", {"diff": diff, "smooth3": smooth3, "clamped3": clamped3, "stencil2d": stencil2d},
           "neighbours read from an input into a separate output, bounds kept by the range, a check, or a clamp"),
    Family("offset_step", {**{k: partial(start_offset, kind=k) for k in ("const", "param", "range")},
                           **{k: partial(step_loop, kind=k) for k in ("step_const", "step_param")}},
           "loops with a non-zero start, a [begin, end) range, or a step"),
)

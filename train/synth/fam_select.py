"""Elementwise families with a choice or an index in them: conditional assignments (thresholds, clamps, relu,
select by a mask, replace a value), fills computed from the index (`a[i] = i * k`), strided or offset access,
and copies between arrays of different types (casts between int, long, float and double).

Strided *reads* take the stride as a parameter (any value, 0 included, reads correctly); strided *writes* use
a constant stride, since a stride of 0 would make every iteration write one element and the kernel's order
would then decide the result.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from . import names as vocab
from .kit import Draw, Family
from .spec import If, Param, Spec

NOUNS = ("values", "array", "data", "buffer", "vector", "samples", "signal", "entries", "elements", "scores",
         "weights", "activations", "pixels", "levels", "readings")


def threshold(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    ot = d.choice((t, "int", "float"))
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(ot, vocab.OUTPUTS, "out")
    th = d.scalar(t, vocab.THRESHOLDS)
    cmp = d.choice((">", ">=", "<", "<="))
    x, on, off = f"{src.name}[{i}]", vocab.literal(ot, "1"), vocab.literal(ot, "0")
    body = d.choice(([f"{dst.name}[{i}] = {x} {cmp} {th.name} ? {on} : {off};"],
                     [If(f"{x} {cmp} {th.name}", (f"{dst.name}[{i}] = {on};",), (f"{dst.name}[{i}] = {off};",))],
                     [f"{dst.name}[{i}] = ({x} {cmp} {th.name}) ? {x} : {off};"]))
    params = d.choice(([src, dst, th, n], [src, th, dst, n], [n, th, src, dst]))
    return d.spec_1d(d.fname(("threshold", "binarize_above", "mark", "cut"), NOUNS), params, i, n.name, body)


def clamp(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    lo_name, hi_name = d.names.take_pair(vocab.CLAMPS)
    lo, hi = Param(t, lo_name), Param(t, hi_name)
    inplace = d.chance(0.4)
    src = d.array(t, vocab.INPUTS + vocab.OUTPUTS, "inout" if inplace else "in")
    dst = src if inplace else d.array(t, vocab.OUTPUTS, "out")
    x, y = f"{src.name}[{i}]", f"{dst.name}[{i}]"
    forms = [[f"{y} = {x} < {lo.name} ? {lo.name} : ({x} > {hi.name} ? {hi.name} : {x});"],
             [If(f"{x} < {lo.name}", (f"{y} = {lo.name};",),
                 (If(f"{x} > {hi.name}", (f"{y} = {hi.name};",), (f"{y} = {x};",)),))]]
    if inplace:
        forms.append([If(f"{x} < {lo.name}", (f"{y} = {lo.name};",)), If(f"{x} > {hi.name}", (f"{y} = {hi.name};",))])
    if t in vocab.FLOATS:
        forms.append([f"{y} = {vocab.math_fn(t, 'fmin')}({vocab.math_fn(t, 'fmax')}({x}, {lo.name}), {hi.name});"])
    arrays = [src] if inplace else [src, dst]
    params = d.choice((arrays + [lo, hi, n], [n] + arrays + [lo, hi], arrays + [n, lo, hi]))
    return d.spec_1d(d.fname(("clamp", "clip", "saturate", "bound", "limit"), NOUNS), params, i, n.name,
                     d.choice(forms))


def relu(d: Draw) -> Spec:
    t = d.choice(("float", "double", "int", "long"))
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    x, zero = f"{src.name}[{i}]", vocab.literal(t, "0")
    if t in vocab.FLOATS and d.chance(0.5):
        slope = d.scalar(t, ("slope", "leak", "negSlope", "alpha", "k"))
        body = [f"{dst.name}[{i}] = {x} > {zero} ? {x} : {slope.name} * {x};"]
        return d.spec_1d(d.fname(("leaky_relu", "leaky", "rectify"), NOUNS), [src, dst, slope, n], i, n.name, body)
    body = d.choice(([f"{dst.name}[{i}] = {x} > {zero} ? {x} : {zero};"],
                     [If(f"{x} < {zero}", (f"{dst.name}[{i}] = {zero};",), (f"{dst.name}[{i}] = {x};",))]))
    return d.spec_1d(d.fname(("relu", "rectify", "positive_part", "drop_negative"), NOUNS),
                     d.choice(([src, dst, n], [dst, src, n], [n, src, dst])), i, n.name, body)


def replace_value(d: Draw) -> Spec:
    t = d.choice(("int", "long", "unsigned int", "float"))
    n, i = d.size(), d.var()
    a = d.array(t, vocab.INPUTS + vocab.OUTPUTS, "inout")
    old, new = d.scalar(t, ("oldVal", "from", "target_val", "match", "needle")), \
        d.scalar(t, ("newVal", "to", "replacement", "subst", "with_val"))
    x = f"{a.name}[{i}]"
    body = d.choice(([If(f"{x} == {old.name}", (f"{x} = {new.name};",))],
                     [f"{x} = {x} == {old.name} ? {new.name} : {x};"]))
    return d.spec_1d(d.fname(("replace", "substitute", "swap_value"), NOUNS), d.choice(([a, old, new, n],
                     [n, a, old, new])), i, n.name, body)


def sign(d: Draw) -> Spec:
    t = d.choice(("float", "double", "int", "long"))
    ot = d.choice((t, "int"))
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(ot, vocab.OUTPUTS, "out")
    x, z = f"{src.name}[{i}]", vocab.literal(t, "0")
    one, zero = vocab.literal(ot, "1"), vocab.literal(ot, "0")
    body = d.choice(([f"{dst.name}[{i}] = {x} > {z} ? {one} : ({x} < {z} ? -{one} : {zero});"],
                     [If(f"{x} > {z}", (f"{dst.name}[{i}] = {one};",),
                         (If(f"{x} < {z}", (f"{dst.name}[{i}] = -{one};",), (f"{dst.name}[{i}] = {zero};",)),))]))
    return d.spec_1d(d.fname(("sign", "signum", "polarity"), NOUNS), [src, dst, n], i, n.name, body)


def masked(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    src, mask = d.array(t, vocab.INPUTS, "in"), d.array(d.choice(("int", "unsigned int")),
                                                       ("mask", "keep", "flags", "valid", "active"), "in")
    dst = d.array(t, vocab.OUTPUTS, "out")
    fill = d.scalar(t, ("fill", "pad", "defaultVal", "empty", "blank"))
    body = d.choice(([f"{dst.name}[{i}] = {mask.name}[{i}] ? {src.name}[{i}] : {fill.name};"],
                     [If(f"{mask.name}[{i}] != 0", (f"{dst.name}[{i}] = {src.name}[{i}];",),
                         (f"{dst.name}[{i}] = {fill.name};",))]))
    return d.spec_1d(d.fname(("apply_mask", "mask", "select_where", "keep"), NOUNS), [src, mask, dst, fill, n], i,
                     n.name, body)


FILLS = ("ramp", "linspace", "constant", "squares", "ratio")


def fill_index(d: Draw, kind: str) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    a = d.array(t, vocab.OUTPUTS + ("arr", "buf", "table", "ramp", "seq"), "out")
    k = d.scalar(t, vocab.SCALARS + ("step", "spacing", "dx"))
    o = d.scalar(t, vocab.OFFSETS + ("start", "origin", "x0"))
    if kind == "ramp":
        verbs, params, expr = ("ramp", "fill", "iota"), [a, k, n], f"{i} * {k.name}"
    elif kind == "linspace":
        verbs, params, expr = ("linspace", "fill_range", "arange"), [a, o, k, n], f"{o.name} + {i} * {k.name}"
    elif kind == "constant":
        verbs, params, expr = ("fill", "set", "init", "reset"), [a, o, n], o.name
        if t not in vocab.FLOATS and d.chance(0.4):
            params, expr = [a, n], d.choice(("0", "1", "-1")) if t != "unsigned int" else "0"
    elif kind == "squares":
        verbs, params, expr = ("squares", "fill_squares"), [a, n], f"{i} * {i}"
    elif t in vocab.FLOATS:  # ratio: the index over the size, or modulo a constant for integers
        verbs, params, expr = ("normalized_index", "unit_ramp"), [a, n], f"({t}){i} / {n.name}"
    else:
        verbs, params, expr = ("cycle", "fill_mod", "wrap_index"), [a, n], f"{i} % {d.choice(('4', '7', '8', '16'))}"
    return d.spec_1d(d.fname(verbs, NOUNS + ("table", "grid", "positions")), d.choice((params, params[::-1])), i,
                     n.name, [f"{a.name}[{i}] = {expr};"])


def strided_read(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    s = d.scalar(d.choice(("int", "int", "long")), vocab.STRIDES, "stride")
    if d.chance(0.5):
        o = d.scalar(s.type, ("offset", "start", "first", "base", "shift"), "stride")
        params, index = [dst, src, n, s, o], f"{i} * {s.name} + {o.name}"
    else:
        params, index = [dst, src, s, n], f"{i} * {s.name}"
    value = d.choice((f"{src.name}[{index}]", f"{src.name}[{index}] * {vocab.literal(t, d.choice(('2', '3')))}"))
    return d.spec_1d(d.fname(("gather_strided", "extract", "pick_every", "subsample", "decimate"), NOUNS),
                     d.choice((params, params[::-1])), i, n.name, [f"{dst.name}[{i}] = {value};"])


def strided_write(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    k, o = d.choice(("2", "3", "4")), d.choice(("0", "1"))
    index = f"{i} * {k}" if o == "0" else f"{i} * {k} + {o}"
    if d.chance(0.5):
        src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
        return d.spec_1d(d.fname(("spread", "upsample", "expand", "place_every"), NOUNS), [dst, src, n], i, n.name,
                         [f"{dst.name}[{index}] = {src.name}[{i}];"])
    a, s = d.array(t, vocab.INPUTS + vocab.OUTPUTS, "inout"), d.scalar(t, vocab.SCALARS)
    return d.spec_1d(d.fname(("scale_every", "scale_channel", "update_lane"), NOUNS), [a, s, n], i, n.name,
                     [f"{a.name}[{index}] *= {s.name};"])


def interleave(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    packed = d.array(t, ("packed", "pairs", "complexBuf", "xy", "stereo", "joined"), "out")
    first = d.array(t, ("re", "real", "left", "xs", "first", "even"), "in")
    second = d.array(t, ("im", "imag", "right", "ys", "second", "odd"), "in")
    if d.chance(0.5):
        body = [f"{packed.name}[2 * {i}] = {first.name}[{i}];", f"{packed.name}[2 * {i} + 1] = {second.name}[{i}];"]
        return d.spec_1d(d.fname(("interleave", "pack", "zip"), ("pairs", "channels", "components")),
                         [first, second, packed, n], i, n.name, body)
    packed, first, second = replace(packed, role="in"), replace(first, role="out"), replace(second, role="out")
    body = [f"{first.name}[{i}] = {packed.name}[2 * {i}];", f"{second.name}[{i}] = {packed.name}[2 * {i} + 1];"]
    return d.spec_1d(d.fname(("split", "unpack", "unzip"), ("pairs", "channels", "components")),
                     [packed, first, second, n], i, n.name, body)


CASTS = (("float", "double"), ("double", "float"), ("int", "float"), ("int", "double"), ("float", "int"),
         ("double", "int"), ("int", "long"), ("long", "double"), ("unsigned int", "float"), ("float", "long"),
         ("long", "int"), ("unsigned int", "double"))


def convert(d: Draw, kind: str) -> Spec:
    """`cast`: any of `CASTS`; `scaled`: into a floating type, scaled; `rounded`: floating to integer, rounded."""
    casts = {"cast": CASTS, "scaled": [c for c in CASTS if c[1] in vocab.FLOATS],
             "rounded": [c for c in CASTS if c[0] in vocab.FLOATS and c[1] not in vocab.FLOATS]}[kind]
    src_t, dst_t = d.choice(casts)
    n, i = d.size(), d.var()
    src, dst = d.array(src_t, vocab.INPUTS, "in"), d.array(dst_t, vocab.OUTPUTS, "out")
    x = f"{src.name}[{i}]"
    if kind == "cast":
        options = [f"({dst_t}){x}", f"({dst_t})({x})"]
    elif kind == "scaled":
        options = [f"({dst_t}){x} * {vocab.literal(dst_t, d.choice(('0.5', '0.25', '2')))}",
                   f"({dst_t}){x} / {vocab.literal(dst_t, d.choice(('255', '256', '1000')))}"]
    else:
        options = [f"({dst_t})({x} + {vocab.literal(src_t, '0.5')})",
                   f"({dst_t}){vocab.math_fn(src_t, 'floor')}({x} + {vocab.literal(src_t, '0.5')})"]
    widen = "widen" if dst_t == "double" else "narrow"
    verb = d.choice(("convert", "cast", "to_" + dst_t.split()[-1], "copy_as", widen))
    return d.spec_1d(d.fname((verb,), NOUNS), d.choice(([src, dst, n], [dst, src, n], [n, src, dst])), i, n.name,
                     [f"{dst.name}[{i}] = {d.choice(options)};"])


FAMILIES = (
    Family("select", {"threshold": threshold, "clamp": clamp, "relu": relu, "replace": replace_value, "sign": sign,
                      "masked": masked},
           "conditional assignments: thresholds, clamps, relu, sign, masks, replacing a value"),
    Family("fill_index", {kind: partial(fill_index, kind=kind) for kind in FILLS},
           "fills computed from the index: a[i] = i * k, o + i * k, i % m"),
    Family("strided", {"read": strided_read, "write": strided_write, "interleave": interleave},
           "strided or offset access: out[i] = in[i * s + o], out[i * 2 + 1] = in[i], (de)interleaving"),
    Family("convert", {kind: partial(convert, kind=kind) for kind in ("cast", "scaled", "rounded")},
           "copies between arrays of different types"),
)

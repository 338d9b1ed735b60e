"""Families over row-major matrices: 2-D nested loops (biases per row or column, row scaling, transposes into a
second array, elementwise operations, outer products, pitched copies, index fills), matrix-vector products and
row reductions where each thread computes one output with an inner loop, matrix products with one thread per
output element, and flat loops whose bound is a product (`rows * cols`, `w * h * c`).

2-D kernels put rows on `.y` and columns on `.x`, so consecutive threads touch consecutive elements of a row.
"""

from __future__ import annotations

from dataclasses import replace
from functools import partial

from . import names as vocab
from .kit import Draw, Family
from .spec import For, If, Spec

NOUNS = ("matrix", "grid", "image", "mat", "table", "tile", "plane", "frame", "field2d", "block")


def _matrix(d: Draw, t: str):
    rows, cols = d.rows_cols()
    r, c = d.row_col_vars()
    return rows, cols, r, c, f"{r} * {cols.name} + {c}"


def bias(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    per_col = d.chance(0.5)
    b = d.array(t, ("bias", "offsets", "rowBias", "colBias", "shiftBy", "b_vec"), "in")
    bi = f"{b.name}[{c if per_col else r}]"
    if d.chance(0.5):
        m = d.array(t, NOUNS + vocab.OUTPUTS, "inout")
        body, params = [d.choice((f"{m.name}[{at}] += {bi};", f"{m.name}[{at}] = {m.name}[{at}] + {bi};"))], [m, b]
    else:
        src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
        body, params = [f"{dst.name}[{at}] = {src.name}[{at}] + {bi};"], [src, b, dst]
    name = d.fname(("add_bias", "apply_bias", "shift", "offset"), ("rows", "columns", "cols") + NOUNS)
    return d.spec_2d(name, d.choice((params + [rows, cols], [rows, cols] + params)), r, rows.name, c, cols.name,
                     body)


def scale_rows(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    m = d.array(t, NOUNS + vocab.OUTPUTS, "inout")
    per_row = d.chance(0.5)
    s = d.array(t, ("scales", "factors", "norms", "gains", "weights"), "in")
    op = d.choice(("*=", "-=", "+=") + (("/=",) if t in vocab.FLOATS else ()))
    body = [f"{m.name}[{at}] {op} {s.name}[{r if per_row else c}];"]
    name = d.fname(("scale", "normalize", "adjust", "weight"), ("rows", "columns", "by_row", "by_col") + NOUNS)
    return d.spec_2d(name, d.choice(([m, s, rows, cols], [rows, cols, m, s])), r, rows.name, c, cols.name, body)


def transpose(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    value = d.choice((f"{src.name}[{at}]", f"{src.name}[{at}] * {d.lit(t, ('2', '3'))}"))
    body = [f"{dst.name}[{c} * {rows.name} + {r}] = {value};"]
    return d.spec_2d(d.fname(("transpose", "flip", "swap_axes"), NOUNS), d.choice(([src, dst, rows, cols],
                     [dst, src, rows, cols], [rows, cols, src, dst])), r, rows.name, c, cols.name, body)


def elementwise(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    a, b = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.SECOND, "in")
    out = d.array(t, vocab.OUTPUTS, "out")
    verbs, op = d.choice(((("add", "sum"), "+"), (("subtract", "diff"), "-"), (("multiply", "hadamard"), "*")))
    pre: list[str] = []
    if d.chance(0.4):
        at_name = d.names.take(("idx", "off", "lin", "flat", "id"))
        body = [f"int {at_name} = {at};", f"{out.name}[{at_name}] = {a.name}[{at_name}] {op} {b.name}[{at_name}];"]
    else:
        body = [f"{out.name}[{at}] = {a.name}[{at}] {op} {b.name}[{at}];"]
    return d.spec_2d(d.fname(verbs, ("matrices", "mats") + NOUNS), d.choice(([a, b, out, rows, cols],
                     [rows, cols, a, b, out])), r, rows.name, c, cols.name, body, pre=pre)


def outer(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    u, v = d.array(t, ("u", "left", "colVec", "a"), "in"), d.array(t, ("v", "right", "rowVec", "b"), "in")
    out = d.array(t, vocab.OUTPUTS + NOUNS, "out")
    verbs, op = d.choice(((("outer", "outer_product"), "*"), (("outer_sum", "broadcast_add"), "+")))
    return d.spec_2d(d.fname(verbs, ("vectors", "grid", "table")), [u, v, out, rows, cols], r, rows.name, c,
                     cols.name, [f"{out.name}[{at}] = {u.name}[{r}] {op} {v.name}[{c}];"])


def pitched(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    pitch = d.scalar(rows.type, ("pitch", "ld", "srcStride", "lda", "rowStride"), "stride")
    body = [f"{dst.name}[{at}] = {src.name}[{r} * {pitch.name} + {c}];"]
    return d.spec_2d(d.fname(("copy", "unpad", "compact", "extract"), ("rows", "region", "submatrix") + NOUNS),
                     [src, pitch, dst, rows, cols], r, rows.name, c, cols.name, body)


def index_fill(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols, r, c, at = _matrix(d, t)
    m = d.array(t, NOUNS + vocab.OUTPUTS, "out")
    one, zero = vocab.literal(t, "1"), vocab.literal(t, "0")
    verbs, expr = d.choice(((("identity", "eye", "set_identity"), f"{r} == {c} ? {one} : {zero}"),
                            (("fill_linear", "enumerate"), at), (("fill_sum", "coords"), f"{r} + {c}"),
                            (("lower_mask", "tril"), f"{c} <= {r} ? {one} : {zero}")))
    return d.spec_2d(d.fname(verbs, NOUNS), d.choice(([m, rows, cols], [rows, cols, m])), r, rows.name, c,
                     cols.name, [f"{m.name}[{at}] = {expr};"])


def matvec(d: Draw) -> Spec:
    t = d.choice(("float", "double", "int", "long"))
    rows, cols = d.rows_cols()
    r, k = d.var(), d.inner_var()
    a = d.array(t, ("A", "mat", "M_in", "weights", "W", "matrix"), "in")
    x, y = d.array(t, ("x", "vec", "v", "input"), "in"), d.array(t, ("y", "out", "result", "dst"), "out")
    transposed = d.chance(0.3)
    elem = f"{a.name}[{k} * {cols.name} + {r}]" if transposed else f"{a.name}[{r} * {cols.name} + {k}]"
    outer, inner = (cols, rows) if transposed else (rows, cols)
    acc = d.names.take(("acc", "sum", "dot", "total", "s"))
    zero = vocab.literal(t, "0")
    if d.chance(0.3):
        body = [f"{y.name}[{r}] = {zero};", For(k, inner.name, (f"{y.name}[{r}] += {elem} * {x.name}[{k}];",))]
    else:
        final = f"{y.name}[{r}] = {acc};"
        params_extra = []
        if t in vocab.FLOATS and d.chance(0.3):
            alpha, beta = d.scalar(t, ("alpha",)), d.scalar(t, ("beta",))
            final, params_extra = f"{y.name}[{r}] = {alpha.name} * {acc} + {beta.name} * {y.name}[{r}];", [alpha, beta]
        body = [f"{t} {acc} = {zero};", For(k, inner.name, (f"{acc} += {elem} * {x.name}[{k}];",)), final]
        if params_extra:
            y = replace(y, role="inout")
            return d.spec_1d(d.fname(("gemv", "matvec_update"), NOUNS), [a, x, y] + params_extra + [rows, cols], r,
                             outer.name, body)
    name = d.fname(("matvec", "multiply", "apply", "project") if not transposed else ("matvec_t", "project_cols"),
                   ("vector", "matrix", "rows") + NOUNS)
    return d.spec_1d(name, d.choice(([a, x, y, rows, cols], [rows, cols, a, x, y])), r, outer.name, body)


def row_reduce(d: Draw) -> Spec:
    t = d.choice(("float", "double"))
    rows, cols = d.rows_cols()
    r, k = d.var(), d.inner_var()
    m, out = d.array(t, NOUNS + vocab.INPUTS, "in"), d.array(t, ("out", "sums", "means", "norms", "rowOut"), "out")
    acc, elem = d.names.take(("acc", "sum", "total", "s", "v")), f"{m.name}[{r} * {cols.name} + {k}]"
    zero = vocab.literal(t, "0")
    verbs, update, final = d.choice((
        (("row_sum", "sum_rows"), f"{acc} += {elem};", f"{acc}"),
        (("row_mean", "average_rows"), f"{acc} += {elem};", f"{acc} / {cols.name}"),
        (("row_norm", "norm_rows"), f"{acc} += {elem} * {elem};", f"{vocab.math_fn(t, 'sqrt')}({acc})"),
        (("row_abs_sum", "l1_rows"), f"{acc} += {vocab.math_fn(t, 'fabs')}({elem});", acc)))
    body = [f"{t} {acc} = {zero};", For(k, cols.name, (update,)), f"{out.name}[{r}] = {final};"]
    return d.spec_1d(d.fname(verbs, NOUNS), d.choice(([m, out, rows, cols], [rows, cols, m, out])), r, rows.name,
                     body)


def row_max(d: Draw) -> Spec:
    t = d.choice(("float", "double", "int"))
    rows, cols = d.rows_cols()
    r, k = d.var(), d.inner_var()
    m, out = d.array(t, NOUNS + vocab.INPUTS, "in"), d.array(t, ("out", "maxes", "peaks", "rowMax"), "out")
    best, row = d.names.take(("best", "mx", "top", "m_val")), f"{r} * {cols.name}"
    cmp = d.choice((">", "<"))
    body = [f"{t} {best} = {m.name}[{row}];",
            For(k, cols.name, (If(f"{m.name}[{row} + {k}] {cmp} {best}", (f"{best} = {m.name}[{row} + {k}];",)),),
                start="1"),
            f"{out.name}[{r}] = {best};"]
    return d.spec_1d(d.fname(("row_max", "max_per_row") if cmp == ">" else ("row_min", "min_per_row"), NOUNS),
                     [m, out, rows, cols], r, rows.name, body)


def matmul(d: Draw) -> Spec:
    t = d.choice(("float", "double", "int"))
    m_, n_ = d.rows_cols()
    kdim = d.scalar(m_.type, ("K", "inner", "depth", "kdim", "shared_dim"), "size")
    r, c = d.row_col_vars()
    k = d.inner_var()
    a, b = d.array(t, ("A", "lhs", "left"), "in"), d.array(t, ("B", "rhs", "right"), "in")
    out = d.array(t, ("C", "prod", "out", "res"), "out")
    acc = d.names.take(("acc", "sum", "dot", "total"))
    body = [f"{t} {acc} = {vocab.literal(t, '0')};",
            For(k, kdim.name, (f"{acc} += {a.name}[{r} * {kdim.name} + {k}] * {b.name}[{k} * {n_.name} + {c}];",)),
            f"{out.name}[{r} * {n_.name} + {c}] = {acc};"]
    return d.spec_2d(d.fname(("matmul", "gemm", "multiply", "product"), ("matrices", "mats", "dense")),
                     [a, b, out, m_, n_, kdim], r, m_.name, c, n_.name, body)


def flat_product(d: Draw, kind: str) -> Spec:
    """`product`: `i < rows * cols`; `three_dims`: `i < w * h * c`; `local_total`: the product in a local first;
    `per_column`: a per-column factor read at `i % cols`."""
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols = d.rows_cols()
    i = d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    s = d.scalar(t, vocab.SCALARS)
    dims, params = [rows.name, cols.name], [src, dst, s, rows, cols]
    if kind == "three_dims":
        ch = d.scalar(rows.type, ("channels", "depth", "nc", "planes"), "size")
        dims.append(ch.name)
        params.append(ch)
    product = " * ".join(dims)
    op = d.choice(("*", "+", "-"))
    body = [f"{dst.name}[{i}] = {src.name}[{i}] {op} {s.name};"]
    pre: list[str] = []
    if kind == "local_total" or (kind != "product" and d.chance(0.4)):
        total = d.names.take(("total", "numel", "count_all", "sz", "nTotal"))
        pre, product = [f"int {total} = {product};"], total
    if kind == "per_column":
        col_scale = d.array(t, ("colScale", "perCol", "gain_c"), "in")
        params.insert(2, col_scale)
        body = [f"{dst.name}[{i}] = {src.name}[{i}] * {col_scale.name}[{i} % {cols.name}] + {s.name};"]
    return d.spec_1d(d.fname(("scale", "shift", "process", "update"), ("image", "volume", "tensor") + NOUNS),
                     d.choice((params, params[::-1])), i, product, body, pre=pre)


FAMILIES = (
    Family("grid2d", {"bias": bias, "scale_rows": scale_rows, "transpose": transpose, "elementwise": elementwise,
                      "outer": outer, "pitched": pitched, "index_fill": index_fill, "matmul": matmul},
           "2-D rows x columns: biases, row/column scaling, transposes, outer products, pitched copies, matmul"),
    Family("matvec", {"matvec": matvec, "row_reduce": row_reduce, "row_max": row_max},
           "one thread per output row (or column) with an inner loop: matrix-vector, row sums/means/norms/max"),
    Family("flat2d", {k: partial(flat_product, kind=k) for k in ("product", "three_dims", "local_total",
                                                                 "per_column")},
           "1-D loops whose bound is a product of sizes (rows * cols)"),
)

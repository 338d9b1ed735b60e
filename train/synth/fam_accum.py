"""Families that accumulate or move data through computed indices: reductions into one value (sums, dot
products, counts, integer max/min), per-column sums of a matrix, histograms, gathers and scatter-adds through an
index array.

Where iterations of the C loop update one shared location, the kernel updates it with an atomic (`atomicAdd`,
`atomicMax`, `atomicMin`): the C's `*sum += x[i]` is `atomicAdd(sum, x[i])`. Only types CUDA has those atomics
for are used (int, unsigned int, float, double for adds; int and unsigned int for max/min). Bin and gather
indices are computed or checked so every access is in bounds whatever the input values; the one variant that
trusts its index array (`gather/plain`) says so in its notes.
"""

from __future__ import annotations

from functools import partial

from . import names as vocab
from .kit import Draw, Family
from .spec import If, Spec

NOUNS = ("values", "array", "data", "elements", "samples", "scores", "entries", "buffer", "vector", "items")
ADD_TYPES = ("int", "unsigned int", "float", "double")


def _accumulator(d: Draw, t: str, candidates=vocab.ACCUMULATORS):
    acc = d.array(t, candidates, "acc")
    if d.chance(0.3):
        return acc, f"{acc.name}[0]", f"&{acc.name}[0]"
    return acc, f"*{acc.name}", acc.name


def reduce_sum(d: Draw) -> Spec:
    t = d.choice(ADD_TYPES)
    n, i = d.size(), d.var()
    x = d.array(t, vocab.INPUTS, "in")
    acc, lhs, ptr = _accumulator(d, t)
    xi = f"{x.name}[{i}]"
    params = [x, acc, n]
    options = [(("sum", "total", "reduce"), xi), (("sum_squares", "energy"), f"{xi} * {xi}")]
    if t in vocab.FLOATS:
        options.append((("sum_abs", "l1_norm"), f"{vocab.math_fn(t, 'fabs')}({xi})"))
    verbs, expr = d.choice(options)
    if d.chance(0.3):
        w = d.array(t, vocab.SECOND, "in")
        verbs, expr, params = ("dot", "inner_product", "weighted_sum"), f"{xi} * {w.name}[{i}]", [x, w, acc, n]
    c_body = d.choice((f"{lhs} += {expr};", f"{lhs} = {lhs} + {expr};"))
    return d.spec_1d(d.fname(verbs, NOUNS), d.choice((params, [n] + params[:-1])), i, n.name, [c_body],
                     [f"atomicAdd({ptr}, {expr});"])


def count(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    x = d.array(t, vocab.INPUTS, "in")
    c = d.array(d.choice(("int", "unsigned int")), vocab.COUNTERS, "acc")
    xi = f"{x.name}[{i}]"
    th = d.scalar(t, vocab.THRESHOLDS)
    verbs, cond, params = d.choice(((("count_above", "count_over"), f"{xi} > {th.name}", [x, th, c, n]),
                                    (("count_equal", "count_matches"), f"{xi} == {th.name}", [x, th, c, n]),
                                    (("count_nonzero", "nnz"), f"{xi} != {vocab.literal(t, '0')}", [x, c, n]),
                                    (("count_below", "count_under"), f"{xi} < {th.name}", [x, c, th, n])))
    if th not in params:
        d.names.used.discard(th.name)
    inc = d.choice((f"(*{c.name})++;", f"*{c.name} += 1;", f"{c.name}[0]++;", f"++(*{c.name});",
                    f"{c.name}[0] = {c.name}[0] + 1;"))
    return d.spec_1d(d.fname(verbs, NOUNS), d.choice((params, params[::-1])), i, n.name, [If(cond, (inc,))],
                     [If(cond, (f"atomicAdd({c.name}, 1);",))])


def extremum(d: Draw) -> Spec:
    t = d.choice(("int", "unsigned int"))
    n, i = d.size(), d.var()
    x = d.array(t, vocab.INPUTS, "in")
    best = d.array(t, vocab.EXTREMA, "acc")
    is_max = d.chance(0.5)
    cmp, fn = (">", "atomicMax") if is_max else ("<", "atomicMin")
    xi, b = f"{x.name}[{i}]", f"*{best.name}"
    c_body = d.choice(([If(f"{xi} {cmp} {b}", (f"{b} = {xi};",))], [f"{b} = {xi} {cmp} {b} ? {xi} : {b};"]))
    verbs = ("find_max", "max_of", "track_max", "peak") if is_max else ("find_min", "min_of", "track_min", "floor_of")
    return d.spec_1d(d.fname(verbs, NOUNS), d.choice(([x, best, n], [x, n, best], [n, x, best])), i, n.name, c_body,
                     [f"{fn}({best.name}, {xi});"])


def sum2d(d: Draw) -> Spec:
    t = d.choice(ADD_TYPES)
    rows, cols = d.rows_cols()
    r, c = d.row_col_vars()
    m = d.array(t, ("mat", "grid", "image", "table", "m_in"), "in")
    at = f"{m.name}[{r} * {cols.name} + {c}]"
    if d.chance(0.5):
        out = d.array(t, ("colSums", "sums", "col_total", "acc_cols"), "acc")
        return d.spec_2d(d.fname(("sum_columns", "column_totals", "reduce_cols"), ("matrix", "grid")),
                         [m, out, rows, cols], r, rows.name, c, cols.name, [f"{out.name}[{c}] += {at};"],
                         [f"atomicAdd(&{out.name}[{c}], {at});"])
    acc, lhs, ptr = _accumulator(d, t)
    return d.spec_2d(d.fname(("sum_all", "total", "reduce"), ("matrix", "grid", "image")),
                     [m, acc, rows, cols], r, rows.name, c, cols.name, [f"{lhs} += {at};"],
                     [f"atomicAdd({ptr}, {at});"])


def histogram(d: Draw, kind: str) -> Spec:
    """The bin of an unsigned value modulo the bin count, of a signed one brought into range, or of a float in
    [0, 1) scaled and clamped; a third of them weighted (float counts)."""
    n, i = d.size(), d.var()
    bins = d.scalar("int", vocab.BIN_COUNTS, "bins")
    b = d.names.take(("b", "bin", "slot", "bucket", "which"))
    weighted = d.chance(0.3)
    ht = d.choice(("float", "double")) if weighted else d.choice(("int", "unsigned int"))
    hist = d.array(ht, vocab.HISTOGRAMS, "acc")
    if kind == "unsigned":
        x = d.array("unsigned int", vocab.INPUTS, "in")
        prefix = [f"int {b} = {x.name}[{i}] % {bins.name};"]
    elif kind == "signed":
        x = d.array(d.choice(("int", "long")), vocab.INPUTS, "in")
        prefix = [f"int {b} = {x.name}[{i}] % {bins.name};", If(f"{b} < 0", (f"{b} += {bins.name};",))]
    else:
        x = d.array(d.choice(vocab.FLOATS), vocab.INPUTS, "in")
        prefix = [f"int {b} = (int)({x.name}[{i}] * {bins.name});", If(f"{b} < 0", (f"{b} = 0;",)),
                  If(f"{b} >= {bins.name}", (f"{b} = {bins.name} - 1;",))]
    arrays = [x, hist]
    if weighted:
        w = d.array(ht, ("w", "weights", "mass", "wts"), "in")
        arrays.insert(1, w)
        update, atomic = f"{hist.name}[{b}] += {w.name}[{i}];", f"atomicAdd(&{hist.name}[{b}], {w.name}[{i}]);"
    else:
        update = d.choice((f"{hist.name}[{b}]++;", f"{hist.name}[{b}] += 1;", f"++{hist.name}[{b}];"))
        atomic = f"atomicAdd(&{hist.name}[{b}], 1);"
    verbs = ("weighted_histogram", "accumulate_bins") if weighted else ("histogram", "bin", "bucketize", "tally")
    name = d.fname(verbs, NOUNS)
    params = arrays + [n, bins]
    return d.spec_1d(name, d.choice((params, [n, bins] + arrays, params[::-1])), i, n.name,
                     prefix + [update], prefix + [atomic])


def gather(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS, "out")
    kind = d.choice(("guarded", "guarded", "modulo", "plain"))
    idx = d.array("unsigned int" if kind == "modulo" else "int", vocab.INDEX_ARRAYS, "index")
    if kind == "plain":
        return d.spec_1d(d.fname(("gather", "permute", "lookup", "reorder"), NOUNS), [dst, src, idx, n], i, n.name,
                         [f"{dst.name}[{i}] = {src.name}[{idx.name}[{i}]];"],
                         notes=(f"every {idx.name}[i] indexes {src.name} (0 <= {idx.name}[i] < its length)",))
    m = d.scalar("int", ("m", "srcLen", "tableSize", "nsrc", "limit_n", "capacity"),
                 "divisor" if kind == "modulo" else "size")
    if kind == "modulo":
        body = [f"{dst.name}[{i}] = {src.name}[{idx.name}[{i}] % {m.name}];"]
    else:
        j = d.names.take(("j", "k", "src_i", "from_i", "at"))
        fill = vocab.literal(t, d.choice(("0", "-1"))) if t != "unsigned int" else "0"
        body = [f"int {j} = {idx.name}[{i}];",
                If(f"{j} >= 0 && {j} < {m.name}", (f"{dst.name}[{i}] = {src.name}[{j}];",),
                   (f"{dst.name}[{i}] = {fill};",) if d.chance(0.7) else ())]
    return d.spec_1d(d.fname(("gather", "lookup", "fetch", "select_by_index"), NOUNS),
                     d.choice(([dst, src, idx, n, m], [src, idx, dst, m, n], [n, m, idx, src, dst])), i, n.name, body)


def scatter_add(d: Draw) -> Spec:
    t = d.choice(ADD_TYPES)
    n, i = d.size(), d.var()
    src, dst = d.array(t, vocab.INPUTS, "in"), d.array(t, vocab.OUTPUTS + ("sums", "bucketsum"), "acc")
    idx = d.array("int", vocab.INDEX_ARRAYS + ("labels", "segment", "owner"), "index")
    m = d.scalar("int", ("m", "numSegments", "outLen", "nseg", "k_out"), "size")
    j = d.names.take(("j", "k", "dst_i", "seg", "to_i"))
    c_update = d.choice((f"{dst.name}[{j}] += {src.name}[{i}];",
                         f"{dst.name}[{j}] = {dst.name}[{j}] + {src.name}[{i}];"))
    guard = f"{j} >= 0 && {j} < {m.name}"
    return d.spec_1d(d.fname(("scatter_add", "segment_sum", "accumulate_by_index", "pool"), NOUNS),
                     d.choice(([src, idx, dst, n, m], [dst, src, idx, m, n])), i, n.name,
                     [f"int {j} = {idx.name}[{i}];", If(guard, (c_update,))],
                     [f"int {j} = {idx.name}[{i}];", If(guard, (f"atomicAdd(&{dst.name}[{j}], {src.name}[{i}]);",))])


def lookup_rows(d: Draw) -> Spec:
    t = d.choice(vocab.ELEMENT_TYPES)
    rows, cols = d.rows_cols()
    r, c = d.row_col_vars()
    table, out = d.array(t, ("table", "embed", "dict_vals", "codebook"), "in"), d.array(t, vocab.OUTPUTS, "out")
    ids = d.array("int", ("ids", "tokens", "keys", "rowIds"), "index")
    v = d.scalar("int", ("vocab", "numEntries", "tableRows", "nEntries"), "size")
    row = d.names.take(("src_row", "entry", "t_row", "which"))
    body = [f"int {row} = {ids.name}[{r}];",
            If(f"{row} >= 0 && {row} < {v.name}",
               (f"{out.name}[{r} * {cols.name} + {c}] = {table.name}[{row} * {cols.name} + {c}];",))]
    return d.spec_2d(d.fname(("lookup", "embed", "gather_rows", "fetch_rows"), ("rows", "entries", "table")),
                     [table, ids, out, rows, cols, v], r, rows.name, c, cols.name, body)


FAMILIES = (
    Family("reduce", {"sum": reduce_sum, "count": count, "extremum": extremum, "sum2d": sum2d},
           "reductions with atomics: sums and dot products (atomicAdd), counts, int max/min (atomicMax/Min)"),
    Family("histogram", {k: partial(histogram, kind=k) for k in ("unsigned", "signed", "scaled")},
           "histograms: atomicAdd on a bin computed in range from the value"),
    Family("gather_scatter", {"gather": gather, "scatter_add": scatter_add, "lookup_rows": lookup_rows},
           "gathers through an index array (checked, modulo, or trusted) and guarded scatter-adds"),
)

"""Writes a `Spec` as a C function (in a sampled `Style`) and as its CUDA kernel (in the canonical style).

The kernel is the translation we want the model to learn: the head exactly as `kernelcheck.heads.kernel_head`
gives it for the C function (so it is what a prompt opens the answer with), then one thread per iteration of the
C loop — `int i = blockIdx.x * blockDim.x + threadIdx.x;` with a bounds check (a guarded block or an early
return), `.y` for rows and `.x` for columns in 2-D, or a grid-stride loop — and the C body, with atomics where
the C accumulates (the family gives those statements).
"""

from __future__ import annotations

from kernelcheck.heads import kernel_head

from .spec import For, If, Spec, Stmt, SynthError
from .style import KERNEL_STYLE, Style

_GLOBAL_X = "blockIdx.x * blockDim.x + threadIdx.x"
_GLOBAL_Y = "blockIdx.y * blockDim.y + threadIdx.y"


def _single(stmts: tuple[Stmt, ...]) -> bool:
    """One plain statement: braces may be left out (never around an `if`, which could capture an `else`)."""
    return len(stmts) == 1 and isinstance(stmts[0], str)


def render_stmts(stmts: tuple[Stmt, ...], depth: int, style: Style) -> list[str]:
    """The statements as lines indented `depth` levels."""
    pad = style.indent * depth
    lines: list[str] = []
    for stmt in stmts:
        if isinstance(stmt, str):
            lines.append(pad + stmt)
        elif isinstance(stmt, If):
            lines += _if_chain(stmt, depth, style)
        elif isinstance(stmt, For):
            header = (f"for ({stmt.decl} {stmt.var} = {stmt.start}; {stmt.var} < {stmt.bound}; "
                      f"{style.step(stmt.var)})")
            lines += _block(header, stmt.body, depth, style)
        else:
            raise SynthError(f"unknown statement {stmt!r} (expected str, If or For)")
    return lines


def _if_chain(stmt: If, depth: int, style: Style, keyword: str = "if") -> list[str]:
    """`if (...) ... else if (...) ... else ...`, the `else` on the line of the `}` it follows."""
    lines = _block(f"{keyword} ({stmt.cond})", stmt.then, depth, style, else_follows=bool(stmt.other))
    if not stmt.other:
        return lines
    if len(stmt.other) == 1 and isinstance(stmt.other[0], If):
        rest = _if_chain(stmt.other[0], depth, style, "else if")
    else:
        rest = _block("else", stmt.other, depth, style)
    if lines[-1].strip() == "}":
        return lines[:-1] + [lines[-1] + " " + rest[0].lstrip()] + rest[1:]
    return lines + rest


def _block(header: str, body: tuple[Stmt, ...], depth: int, style: Style, else_follows: bool = False) -> list[str]:
    pad = style.indent * depth
    if not style.braces and _single(body) and not else_follows:
        return [pad + header] + render_stmts(body, depth + 1, style)
    return [pad + header + " {"] + render_stmts(body, depth + 1, style) + [pad + "}"]


def _c_params(spec: Spec, style: Style) -> str:
    consts = style.const_inputs
    return ", ".join(style.param(p.type, p.name, p.pointer, consts and p.pointer and p.role in ("in", "index"))
                     for p in spec.params)


def _bound_type(spec: Spec, bound: str) -> str:
    """The loop variable's type: the size parameter's own when the bound is one (`size_t n` -> `size_t i`)."""
    for p in spec.params:
        if p.name == bound and not p.pointer and p.type in ("long", "unsigned int", "size_t"):
            return p.type
    return "int"


def _c_loop_headers(spec: Spec, style: Style, count_down: bool) -> tuple[list[str], list[str]]:
    """(declarations before the loops, loop headers outermost first) in the C style."""
    loop, decls, headers = spec.loop, [], []
    for var, bound in zip(loop.vars, loop.bounds):
        vtype = _bound_type(spec, bound)
        decl = "" if style.declare_before else vtype + " "
        if style.declare_before:
            decls.append(f"{vtype} {var};")
        if count_down:
            headers.append(f"for ({decl}{var} = {bound} - 1; {var} >= {loop.start}; {var}--)")
            continue
        step = style.step(var) if loop.step == "1" else f"{var} += {loop.step}"
        headers.append(f"for ({decl}{var} = {loop.start}; {var} < {bound}; {step})")
    return decls, headers


def _nest(headers: list[str], body: tuple[Stmt, ...], depth: int, style: Style) -> list[str]:
    if not headers:
        return render_stmts(body, depth, style)
    inner = _nest(headers[1:], body, depth + 1, style)
    pad = style.indent * depth
    if not style.braces and (len(headers) > 1 or _single(body)):
        return [pad + headers[0]] + inner
    return [pad + headers[0] + " {"] + inner + [pad + "}"]


def render_c(spec: Spec, style: Style) -> str:
    """The C function. Counting down only where the family allows it and the loop is a plain signed 1-D loop."""
    loop = spec.loop
    count_down = (style.count_down and spec.reversible and len(loop.vars) == 1 and loop.step == "1"
                  and loop.start == "0" and _bound_type(spec, loop.bounds[0]) in ("int", "long")
                  and all(ch not in loop.bounds[0] for ch in "*+-"))
    decls, headers = _c_loop_headers(spec, style, count_down)
    lines = [style.indent + d for d in decls] + [style.indent + p for p in spec.pre]
    lines += _nest(headers, spec.c_body, 1, style)
    signature = f"void {spec.name}({_c_params(spec, style)})"
    text = "\n".join([signature + ("\n{" if style.allman else " {")] + lines + ["}"])
    return " ".join(text.split()) if style.flat else text


def _index_lines(spec: Spec) -> list[str]:
    """The thread's loop variables, typed as the C loop types them (`size_t i` stays `size_t i`: an index used
    in arithmetic, `a[i] = i * k`, computes in the C's type)."""
    loop = spec.loop
    if len(loop.vars) == 2:
        (row, col), (rows, cols) = loop.vars, loop.bounds
        return [f"{_bound_type(spec, cols)} {col} = {_GLOBAL_X};", f"{_bound_type(spec, rows)} {row} = {_GLOBAL_Y};"]
    (var,), (bound,) = loop.vars, loop.bounds
    vtype = _bound_type(spec, bound)
    thread = _GLOBAL_X if loop.step == "1" else f"({_GLOBAL_X}) * {loop.step}"
    return [f"{vtype} {var} = {thread};" if loop.start == "0" else f"{vtype} {var} = {loop.start} + {thread};"]


def _kernel_body(spec: Spec, form: str) -> list[str]:
    loop, style = spec.loop, KERNEL_STYLE
    checks = [f"{v} < {b}" for v, b in zip(loop.vars, loop.bounds)]
    pre = ["    " + p for p in spec.pre]
    if form == "grid_stride":
        if len(loop.vars) != 1 or (loop.start, loop.step) != ("0", "1"):
            raise SynthError(f"a grid-stride kernel needs a plain 1-D loop, got {loop}")
        (var,) = loop.vars
        header = (f"for ({_bound_type(spec, loop.bounds[0])} {var} = {_GLOBAL_X}; {checks[0]}; "
                  f"{var} += blockDim.x * gridDim.x)")
        return pre + _block(header, spec.cuda_body, 1, style)
    index = ["    " + line for line in _index_lines(spec)]
    if form == "early_return":
        misses = " || ".join(f"{v} >= {b}" for v, b in zip(loop.vars, loop.bounds))
        return index + pre + [f"    if ({misses}) return;"] + render_stmts(spec.cuda_body, 1, style)
    if form == "guard":
        return index + pre + _block(f"if ({' && '.join(checks)})", spec.cuda_body, 1, style)
    raise SynthError(f"unknown kernel form {form!r}")


def render_kernel(spec: Spec, cpp: str, form: str) -> str:
    """The kernel for `spec`, headed exactly as `kernel_head(cpp).text` heads it."""
    if form not in spec.forms:
        raise SynthError(f"kernel form {form!r} is not one {spec.family}/{spec.variant} allows ({spec.forms})")
    head = kernel_head(cpp)
    if not head.complete:
        raise SynthError(f"the head of {spec.name} is not complete ({head.text!r}): a parameter does not map")
    return "\n".join([head.text + " {"] + _kernel_body(spec, form) + ["}"])

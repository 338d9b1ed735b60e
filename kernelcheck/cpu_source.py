"""CUDA source made ready for the CPU backend: what the header cannot express is rewritten, what the backend
cannot run is named.

`prepare_for_cpu(source)` takes a CUDA translation unit (a kernel, or a whole program: kernels, launcher, harness)
and returns `Prepared` (g++-ready source for ``kernelcheck/emulation/cuda_cpu.h``) or `Unsupported` (the
first feature the CPU backend cannot emulate, as "not verifiable on CPU: <reason>"; the feature table is
`kernelcheck.cpu_features`).  Run it on the whole program, host code included: the harness's own launches are
rewritten too.  Rewrites:

* ``extern __shared__ T name[];`` (dynamic shared memory) -> ``T *const name = (T *)mot_cpu::dynamic_shared();``
  and ``__shared__`` declarations are followed by ``MOT_CPU_NAME_SHARED`` (findings then say "partial[3]");
* ``kernel<<<grid, block[, bytes[, 0]]>>>(args)`` -> ``::mot_cpu::launch_named("kernel", kernel, grid, block,
  bytes, args)`` (a launch on a stream other than 0 is unsupported; one inside device code is dynamic
  parallelism: unsupported);
* namespace-scope ``__device__``/``__managed__`` variables get ``MOT_CPU_DEVICE_VAR`` (a section the race checks
  snapshot and restore);
* each non-template ``__global__`` function at global scope is described (``MOT_CPU_DESCRIBE_KERNEL``) so that
  findings name its parameters ("result[3]").

The source is lexed into tokens (comments and string literals are never matched; preprocessor lines are
scanned for features but do not open scopes), not parsed: model output is often incomplete, and this module
stays standard-library only.  Line numbers are kept (``#line 1`` after the include; every rewrite keeps the
newlines it replaces).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from .cpu_features import DYNAMIC_PARALLELISM, STREAMS, UNSUPPORTED_FEATURES, Unsupported, first_unsupported

__all__ = ["Prepared", "Unsupported", "prepare_for_cpu", "UNSUPPORTED_FEATURES"]

HEADER = "cuda_cpu.h"


@dataclass(frozen=True)
class Prepared:
    """Source for g++ with the CPU backend's header: the rewritten text, its kernels, what was rewritten."""

    source: str
    kernels: tuple[str, ...]
    rewrites: tuple[str, ...]


class _Token(NamedTuple):
    kind: str  # ident, number, string, punct
    text: str
    start: int
    end: int
    line: int
    directive: bool  # on a preprocessor line


_TOKEN_RE = re.compile(
    r"""(?P<space>(?:\s|\\\n)+)
      |(?P<comment>//(?:[^\n\\]|\\.)*|/\*.*?(?:\*/|\Z))
      |(?P<string>(?:u8|[uUL])?R"(?P<delim>[^()\\\s]{0,16})\(.*?\)(?P=delim)"
                 |(?:u8|[uUL])?"(?:[^"\\\n]|\\.)*"?|(?:u8|[uUL])?'(?:[^'\\\n]|\\.)*'?)
      |(?P<ident>[A-Za-z_]\w*)
      |(?P<number>\.?\d(?:[eEpP][+-]|[\w.'])*)
      |(?P<punct><<<|>>>|::|->|\.\.\.|[-+*/%&|^!=<>]=|<<|>>|&&|\|\||\+\+|--|\#\#|.)""",
    re.S | re.X,
)


def _tokens(source: str) -> list[_Token]:
    """Tokens without spaces and comments; those of preprocessor lines are marked ``directive``."""
    out: list[_Token] = []
    line, directive_end, line_start = 1, -1, True
    for m in _TOKEN_RE.finditer(source):
        kind, text = m.lastgroup, m.group()
        if kind == "delim":
            kind = "string"
        if kind in ("space", "comment"):
            line += text.count("\n")
            line_start = line_start or "\n" in text
            continue
        if kind == "punct" and text == "#" and line_start:
            directive_end = _directive_end(source, m.start())
        out.append(_Token(kind, text, m.start(), m.end(), line, m.start() < directive_end))
        line += text.count("\n")
        line_start = False
    return out


def _directive_end(source: str, start: int) -> int:
    """End of the preprocessor line starting at ``start`` (continuation lines included)."""
    i = start
    while True:
        newline = source.find("\n", i)
        if newline < 0:
            return len(source)
        if source[newline - 1 : newline] != "\\":
            return newline
        i = newline + 1


# --------------------------------------------------------------------------------------------------------------
# Scopes: which tokens are in device code, which functions and namespace-scope statements there are
# --------------------------------------------------------------------------------------------------------------
_FUNCTION_TAIL = {")", "const", "noexcept", "override", "final", "mutable", "volatile"}


@dataclass
class _Function:
    name: str
    is_global: bool
    device: bool
    template: bool
    top_level: bool  # at global namespace scope
    params: list[_Token]


@dataclass
class _Scopes:
    device: list[bool]                     # per token: inside a __global__/__device__ function body
    functions: list[_Function]
    statements: list[list[_Token]]         # namespace-scope statements ending in ";" (their tokens)


def _matching_open(head: list[_Token], close: int) -> int:
    depth = 0
    for j in range(close, -1, -1):
        depth += {")": 1, "(": -1}.get(head[j].text, 0)
        if depth == 0:
            return j
    return -1


def _function_of(head: list[_Token], top_level: bool) -> _Function | None:
    """The function a declaration head (the tokens before a ``{``) defines, or None when it defines none."""
    texts = [t.text for t in head]
    if not head or head[-1].text not in _FUNCTION_TAIL or "(" not in texts:
        return None
    close = max(j for j, t in enumerate(texts) if t == ")")
    open_ = _matching_open(head, close)
    if open_ <= 0 or head[open_ - 1].kind != "ident":
        return None
    return _Function(name=head[open_ - 1].text, is_global="__global__" in texts,
                     device="__global__" in texts or "__device__" in texts, template="template" in texts,
                     top_level=top_level, params=head[open_ + 1 : close])


def _classify(head: list[_Token], stack: list[tuple[str, bool]]) -> tuple[str, bool, _Function | None]:
    """(scope kind, in device code, function) of a ``{`` after ``head`` inside the scopes of ``stack``."""
    outer_kind, outer_device = stack[-1] if stack else ("namespace", False)
    if outer_kind in ("function", "block"):
        return "block", outer_device, None
    if outer_kind == "init":
        return "init", False, None
    texts = [t.text for t in head]
    if "namespace" in texts or (len(head) >= 2 and texts[0] == "extern" and head[1].kind == "string"):
        return "namespace", False, None
    function = _function_of(head, top_level=not stack)
    if function is not None:
        return "function", function.device, function
    if "=" in texts:
        return "init", False, None
    return ("class" if {"struct", "class", "union", "enum"} & set(texts) else "block"), False, None


def _scopes(tokens: list[_Token]) -> _Scopes:
    result = _Scopes(device=[False] * len(tokens), functions=[], statements=[])
    stack: list[tuple[str, bool]] = []
    head_start = 0
    for i, token in enumerate(tokens):
        result.device[i] = bool(stack) and stack[-1][1]
        if token.directive or token.kind != "punct":
            continue
        at_namespace = not stack or stack[-1][0] == "namespace"
        if token.text == "{":
            head = [t for t in tokens[head_start:i] if not t.directive]
            kind, device, function = _classify(head, stack)
            if function is not None:
                result.functions.append(function)
            stack.append((kind, device))
            if kind not in ("init", "class"):
                head_start = i + 1
        elif token.text == "}":
            kind = stack.pop()[0] if stack else "namespace"
            if kind not in ("init", "class"):  # an initializer or class body is part of its statement
                head_start = i + 1
        elif token.text == ";":
            if at_namespace:
                result.statements.append([t for t in tokens[head_start:i] if not t.directive])
            if not stack or stack[-1][0] not in ("init", "class"):
                head_start = i + 1
    return result


# --------------------------------------------------------------------------------------------------------------
# Rewrites
# --------------------------------------------------------------------------------------------------------------
class _Edit(NamedTuple):
    start: int
    end: int
    text: str


def _skip_group(tokens: list[_Token], i: int, opening: str, closing: str) -> int:
    """Index after the group that opens at ``tokens[i]`` (``opening``); len(tokens) when it never closes."""
    depth = 0
    for j in range(i, len(tokens)):
        depth += (tokens[j].text == opening) - (tokens[j].text == closing)
        if depth == 0:
            return j + 1
    return len(tokens)


_ATTRIBUTE_WORDS = {"__align__", "alignas", "__attribute__", "__declspec"}


def _extern_shared(source: str, tokens: list[_Token], i: int) -> tuple[_Edit, int] | None:
    """``extern __shared__ T name[];`` at ``tokens[i]`` (``extern``) as pointers to the dynamic shared memory."""
    end = i
    while end < len(tokens) and tokens[end].text not in (";", "{", "}"):
        end += 1
    declaration = tokens[i + 1 : end]
    if end == len(tokens) or tokens[end].text != ";" or "__shared__" not in [t.text for t in declaration]:
        return None
    specifiers, declarators, current, j = [], [], [], 0
    while j < len(declaration):
        t = declaration[j]
        if t.text in _ATTRIBUTE_WORDS:  # alignment and attributes: the buffer is 256-byte aligned anyway
            j = _skip_group(declaration, j + 1, "(", ")") if j + 1 < len(declaration) else j + 1
            continue
        if t.text == "__shared__":
            pass
        elif t.text == ",":
            declarators.append(current)
            current = []
        elif t.kind == "ident" and j + 1 < len(declaration) and declaration[j + 1].text == "[":
            current.append(t)
            j = _skip_group(declaration, j + 1, "[", "]")
            continue
        elif declarators or any(x.kind == "ident" for x in current) or t.text in ("*", "&"):
            current.append(t)
        else:
            specifiers.append(t.text)
        j += 1
    declarators.append(current)
    lines = []
    for declarator in declarators:
        names = [t for t in declarator if t.kind == "ident"]
        if not names:
            return None
        pointer = " ".join(t.text for t in declarator if t.text in ("*", "&"))
        element = " ".join(specifiers + ([pointer] if pointer else []))
        name = names[-1].text
        lines.append(f"{element} *const {name} = reinterpret_cast<{element} *>(::mot_cpu::dynamic_shared()); "
                     f"MOT_CPU_NAME_DYNAMIC_SHARED({name})")
    original = source[tokens[i].start : tokens[end].end]
    return _Edit(tokens[i].start, tokens[end].end, " ".join(lines) + "\n" * original.count("\n")), end + 1


_DECLARATION_STOPS = {"(", ")", "=", "{", "}", "<", ">", ":", ";"}


def _shared_names(tokens: list[_Token], i: int) -> _Edit | None:
    """``MOT_CPU_NAME_SHARED(name)`` after a simple ``__shared__`` declaration at ``tokens[i]`` (``__shared__``),
    so that findings name the variable; None for declarations this does not parse (they keep byte offsets)."""
    parts: list[list[_Token]] = [[]]
    depth, j = 0, i + 1
    while j < len(tokens) and not (tokens[j].text == ";" and depth == 0):
        t = tokens[j]
        depth += (t.text == "[") - (t.text == "]")
        if depth == 0 and t.text in _DECLARATION_STOPS or t.directive:
            return None
        if depth == 0 and t.text == ",":
            parts.append([])
        else:
            parts[-1].append(t)
        j += 1
    if j == len(tokens):
        return None
    names = []
    for part in parts:
        bracket = next((k for k, t in enumerate(part) if t.text == "["), len(part))
        idents = [t.text for t in part[:bracket] if t.kind == "ident"]
        if not idents or (len(parts) == 1 and len(idents) < 2):
            return None  # no name, or only a type
        names.append(idents[-1])
    return _Edit(tokens[j].end, tokens[j].end, "".join(f" MOT_CPU_NAME_SHARED({name})" for name in names))


_DEFAULT_STREAMS = {"0", "NULL", "nullptr", "0L", "cudaStreamDefault", "cudaStreamLegacy", "(cudaStream_t)0"}


def _split_top_level(tokens: list[_Token]) -> list[list[_Token]]:
    parts: list[list[_Token]] = [[]]
    depth = 0
    for t in tokens:
        if t.text in ("(", "[", "{"):
            depth += 1
        elif t.text in (")", "]", "}"):
            depth -= 1
        if t.text == "," and depth == 0:
            parts.append([])
        else:
            parts[-1].append(t)
    return parts


def _kernel_start(tokens: list[_Token], launch: int) -> int:
    """Index of the first token of the kernel expression before ``<<<`` (``ns::kernel<T, 4>``)."""
    j = launch - 1
    if j >= 0 and tokens[j].text == ">":  # template arguments
        depth = 0
        while j >= 0:
            depth += (tokens[j].text == ">") - (tokens[j].text == "<")
            if depth == 0:
                break
            j -= 1
        j -= 1
    while j >= 2 and tokens[j - 1].text == "::" and tokens[j - 2].kind == "ident":
        j -= 2
    return j


def _launch(source: str, tokens: list[_Token], i: int, device: bool) -> _Edit | Unsupported | None:
    """``kernel<<<grid, block, bytes, stream>>>(args)`` at ``tokens[i]`` (``<<<``) as a mot_cpu::launch_named call."""
    start = _kernel_start(tokens, i)
    if start < 0 or tokens[start].kind != "ident":
        return None
    kernel = source[tokens[start].start : tokens[i - 1].end]
    if device:
        return Unsupported(DYNAMIC_PARALLELISM, f"{kernel}<<<...>>> in device code", tokens[i].line)
    close, depth = i + 1, 0
    while close < len(tokens) and not (tokens[close].text == ">>>" and depth == 0):
        depth += (tokens[close].text in ("(", "[", "{")) - (tokens[close].text in (")", "]", "}"))
        close += 1
    if close + 1 >= len(tokens) or tokens[close + 1].text != "(":
        return None
    args_end = _skip_group(tokens, close + 1, "(", ")")
    config = [source[p[0].start : p[-1].end] for p in _split_top_level(tokens[i + 1 : close]) if p]
    if len(config) == 4:
        if " ".join(config[3].split()) not in _DEFAULT_STREAMS:
            return Unsupported(STREAMS, f"launch on stream {config[3]}", tokens[i].line)
        config = config[:3]
    if len(config) == 2:
        config.append("0")
    if len(config) != 3:
        return None
    args = source[tokens[close + 1].end : tokens[args_end - 1].start].strip() if args_end <= len(tokens) else ""
    name = " ".join(kernel.split())
    call = f'::mot_cpu::launch_named("{name}", {kernel}, {", ".join(config)}{", " + args if args else ""})'
    original = source[tokens[start].start : tokens[args_end - 1].end]
    return _Edit(tokens[start].start, tokens[args_end - 1].end, call + "\n" * (original.count("\n") - call.count("\n")))


def _device_variable(statement: list[_Token]) -> _Edit | None:
    """``MOT_CPU_DEVICE_VAR`` before the qualifier of a namespace-scope ``__device__``/``__managed__`` variable."""
    texts = [t.text for t in statement]
    marks = [t for t in statement if t.text in ("__device__", "__managed__")]
    if not marks or "__global__" in texts:
        return None
    first = next((t for t in texts if t in ("(", "=", "[", "{")), None)
    if first == "(" or {"const", "constexpr", "typedef", "using"} & set(texts[: texts.index(first)] if first else texts):
        return None  # a function declaration, or a constant no kernel writes
    return _Edit(marks[0].start, marks[0].start, "MOT_CPU_DEVICE_VAR ")


def _parameter_names(params: list[_Token]) -> list[str]:
    names = []
    for part in _split_top_level(params):
        part = part[: next((k for k, t in enumerate(part) if t.text == "="), len(part))]
        idents = [t.text for k, t in enumerate(part) if t.kind == "ident" and not _in_brackets(part, k)]
        names.append(idents[-1] if len(idents) >= 2 or (idents and part[-1].text == "]") else "")
    return [] if names == [""] or [p.text for p in params] == ["void"] else names


def _in_brackets(part: list[_Token], k: int) -> bool:
    depth = 0
    for t in part[:k]:
        depth += (t.text == "[") - (t.text == "]")
    return depth > 0


def _descriptions(functions: list[_Function]) -> list[str]:
    """MOT_CPU_DESCRIBE_KERNEL lines for kernels whose address can be taken by name at the end of the file."""
    counts: dict[str, int] = {}
    for f in functions:
        counts[f.name] = counts.get(f.name, 0) + 1
    lines = []
    for f in functions:
        if f.is_global and f.top_level and not f.template and counts[f.name] == 1:
            lines.append(f'MOT_CPU_DESCRIBE_KERNEL({f.name}, "{",".join(_parameter_names(f.params))}")')
    return lines


def prepare_for_cpu(source: str) -> Prepared | Unsupported:
    """Rewrite CUDA ``source`` for g++ and the CPU backend's header, or say which feature it cannot run."""
    if not isinstance(source, str):
        raise TypeError(f"source must be str, got {type(source).__name__}")
    tokens = _tokens(source)
    unsupported = first_unsupported(source, tokens)
    if unsupported is not None:
        return unsupported
    scopes = _scopes(tokens)
    edits: list[_Edit] = []
    rewrites: list[str] = []
    i = 0
    while i < len(tokens):
        token = tokens[i]
        if token.text == "extern" and not token.directive:
            found = _extern_shared(source, tokens, i)
            if found is not None:
                edits.append(found[0])
                rewrites.append(f"line {token.line}: extern __shared__ array -> mot_cpu::dynamic_shared()")
                i = found[1]
                continue
        if token.text == "__shared__" and not token.directive:
            named = _shared_names(tokens, i)
            if named is not None:
                edits.append(named)
        if token.text == "<<<" and not token.directive:
            launch = _launch(source, tokens, i, scopes.device[i])
            if isinstance(launch, Unsupported):
                return launch
            if launch is not None:
                edits.append(launch)
                rewrites.append(f"line {token.line}: <<<...>>> -> mot_cpu::launch_named")
        i += 1
    for statement in scopes.statements:
        edit = _device_variable(statement)
        if edit is not None:
            edits.append(edit)
            rewrites.append(f"line {statement[0].line}: __device__ variable -> MOT_CPU_DEVICE_VAR")
    text = source
    for edit in sorted(edits, key=lambda e: e.start, reverse=True):
        text = text[: edit.start] + edit.text + text[edit.end :]
    descriptions = _descriptions(scopes.functions)
    kernels = tuple(dict.fromkeys(f.name for f in scopes.functions if f.is_global))
    body = f'#include "{HEADER}"\n#line 1\n{text}\n' + "".join(line + "\n" for line in descriptions)
    return Prepared(source=body, kernels=kernels, rewrites=tuple(rewrites))

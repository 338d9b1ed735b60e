"""C/C++ and CUDA parsing with tree-sitter: function spans for editors and tools, syntax checks of CUDA.

Two jobs (compile checks with nvcc are in `kernelcheck.compile_check`):

1. Find function definitions (`find_functions`, `function_at`, `functions_in_range`) so an editor can
   say "translate the function under the cursor / in the selection". tree-sitter is used because it
   recovers from syntax errors: a half-typed function elsewhere in the file must not hide the others.
2. Check generated CUDA for syntax errors (`check_cuda_syntax`, `is_valid_cuda`) with tree-sitter-cuda:
   fast, needs no toolkit, and gives positions the language server can show as diagnostics.

Positions follow LSP conventions: lines and columns are 0-based. Columns count *characters* (Python
`str` code points) of the line, not bytes and not UTF-16 code units; lines are split at "\\n" only
(as tree-sitter does), so a "\\r" before it is the last character of its line. Byte offsets
(`start_byte`/`end_byte`) index the UTF-8 encoding of the source, like tree-sitter's.

The only kernelcheck module that imports tree-sitter. Written against py-tree-sitter >= 0.25
(`Language(tree_sitter_cpp.language())`, `Parser(language)`, `QueryCursor`); 0.26 is installed here.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal

import tree_sitter
import tree_sitter_cpp
import tree_sitter_cuda

GrammarName = Literal["cpp", "cuda"]

# Languages are immutable and safe to share; build each once at import time.
_LANGUAGES: dict[str, tree_sitter.Language] = {
    "cpp": tree_sitter.Language(tree_sitter_cpp.language()),
    "cuda": tree_sitter.Language(tree_sitter_cuda.language()),
}

# A Parser holds mutable state and must not be used by two threads at once (the language server and
# the daemon may call in from worker threads), so each thread keeps its own cached parsers.
_thread_local = threading.local()


def _parser(grammar: str) -> tree_sitter.Parser:
    if grammar not in _LANGUAGES:
        raise ValueError(f"unknown grammar {grammar!r}; expected one of {sorted(_LANGUAGES)}")
    parsers = getattr(_thread_local, "parsers", None)
    if parsers is None:
        parsers = _thread_local.parsers = {}
    if grammar not in parsers:
        parsers[grammar] = tree_sitter.Parser(_LANGUAGES[grammar])
    return parsers[grammar]


def _parse(source: str, grammar: str) -> tuple[tree_sitter.Tree, bytes]:
    if not isinstance(source, str):
        raise ValueError(f"source must be str, got {type(source).__name__}")
    data = source.encode("utf-8")
    return _parser(grammar).parse(data), data


def syntax_tree(source: str, *, grammar: GrammarName = "cpp") -> tree_sitter.Node:
    """The root node of ``source``'s tree-sitter parse (``grammar`` "cpp" or "cuda").

    For modules that read code structure (`kernelcheck.signatures`, `kernelcheck.cloops`, `kernelcheck.launch`)
    without importing tree-sitter themselves: they only use the nodes' attributes (``type``, ``text``,
    ``children``, ``child_by_field_name``...).  ``node.text`` is UTF-8 bytes of the source.
    """
    tree, _ = _parse(source, grammar)
    return tree.root_node


class _LineIndex:
    """Converts tree-sitter points (row, byte column) into (line, character column)."""

    def __init__(self, data: bytes):
        self.lines = data.split(b"\n")

    def char_col(self, row: int, byte_col: int) -> int:
        if row >= len(self.lines):
            return 0
        return len(self.lines[row][:byte_col].decode("utf-8"))

    def position(self, point: tree_sitter.Point) -> tuple[int, int]:
        return point.row, self.char_col(point.row, point.column)


# ---------------------------------------------------------------------------------------------------
# Functions
# ---------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FunctionSpan:
    """One function definition. Lines/cols are 0-based; cols count characters of the line.

    For templates the span starts at the `template<...>` prefix, so `text` is a self-contained
    definition that can be sent to a translator as is.
    """

    name: str
    start_byte: int
    end_byte: int
    start_line: int
    start_col: int
    end_line: int
    end_col: int
    text: str

    def contains(self, line: int, col: int) -> bool:
        """True when (line, col) lies in the span, both ends included (a cursor just after the
        closing brace still counts as "in" the function, as editors place it there)."""
        return (self.start_line, self.start_col) <= (line, col) <= (self.end_line, self.end_col)


_FUNCTIONS_QUERY: dict[str, tree_sitter.Query] = {
    name: tree_sitter.Query(language, "(function_definition) @function") for name, language in _LANGUAGES.items()
}


def _captures(query: tree_sitter.Query, node: tree_sitter.Node) -> dict[str, list[tree_sitter.Node]]:
    """Query captures as {name: nodes}: QueryCursor since py-tree-sitter 0.25, Query.captures before."""
    if hasattr(tree_sitter, "QueryCursor"):
        return tree_sitter.QueryCursor(query).captures(node)
    return query.captures(node)


# Declarator nodes that wrap the function's name: `float *f()` is pointer_declarator(function_declarator).
_NAME_NODE_TYPES = {
    "identifier",
    "field_identifier",
    "qualified_identifier",
    "destructor_name",
    "operator_name",
    "template_function",
    "template_method",
    "operator_cast",
}


def function_name(definition: tree_sitter.Node) -> str:
    """The declared name (`f`, `S::m`, `~S`, `operator()`), or "" when error recovery left none."""
    node = definition.child_by_field_name("declarator")
    while node is not None:
        if node.type in _NAME_NODE_TYPES:
            return " ".join(node.text.decode("utf-8").split())
        if node.type == "function_declarator":
            inner = node.child_by_field_name("declarator")
            if inner is None:
                return ""
            node = inner
            continue
        # pointer_declarator / reference_declarator / parenthesized_declarator / attributed_declarator
        inner = node.child_by_field_name("declarator")
        if inner is None:
            inner = next((child for child in node.named_children if child.type != "type_qualifier"), None)
        node = inner
    return ""


def find_functions(source: str, *, grammar: GrammarName = "cpp") -> list[FunctionSpan]:
    """Every function definition with a body, in source order (nested ones included).

    Covers free functions, methods defined in classes/structs/namespaces, out-of-line `A::m`
    definitions and templates (span includes the `template<...>` prefix). Declarations without a body
    (`int f();`, `S() = default;`) are skipped. The C++ grammar parses C too and recovers around CUDA
    qualifiers; pass `grammar="cuda"` for `.cu` files to parse `__global__`, `<<<...>>>` natively.
    """
    tree, data = _parse(source, grammar)
    index = _LineIndex(data)
    captures = _captures(_FUNCTIONS_QUERY[grammar], tree.root_node)
    spans = []
    for definition in captures.get("function", []):
        if definition.child_by_field_name("body") is None:
            continue
        outer = definition
        while outer.parent is not None and outer.parent.type == "template_declaration":
            outer = outer.parent
        start_line, start_col = index.position(outer.start_point)
        end_line, end_col = index.position(outer.end_point)
        spans.append(
            FunctionSpan(
                name=function_name(definition),
                start_byte=outer.start_byte,
                end_byte=outer.end_byte,
                start_line=start_line,
                start_col=start_col,
                end_line=end_line,
                end_col=end_col,
                text=data[outer.start_byte : outer.end_byte].decode("utf-8"),
            )
        )
    spans.sort(key=lambda span: (span.start_byte, -span.end_byte))
    return spans


@dataclass(frozen=True)
class Parameter:
    """One parameter of a function signature, as written (`text`) and read: its base type (qualifiers dropped),
    name, how many `*` it has, and its kind: "scalar", "pointer", "array" (`T a[]`), "reference" (`T &r`) or
    "other" (templates such as `std::vector<T>&`, function pointers, structs passed by value...)."""

    text: str
    type: str
    name: str
    pointer_depth: int
    const: bool
    kind: str


@dataclass(frozen=True)
class FunctionSignature:
    name: str
    return_type: str
    parameters: tuple[Parameter, ...]
    text: str  # the whole definition


_BUILTIN_TYPE_NODES = {"primitive_type", "sized_type_specifier"}


def _parameter(node: tree_sitter.Node) -> Parameter:
    type_node = node.child_by_field_name("type")
    const = any(c.type == "type_qualifier" and c.text == b"const" for c in node.children)
    declarator, depth, kind = node.child_by_field_name("declarator"), 0, "scalar"
    while declarator is not None and declarator.type in ("pointer_declarator", "array_declarator",
                                                        "reference_declarator", "abstract_pointer_declarator"):
        if declarator.type == "array_declarator":
            kind = "array"
            depth += 1
        elif declarator.type == "reference_declarator":
            kind = "reference"
        else:
            depth += 1
            const = const or any(c.type == "type_qualifier" and c.text == b"const" for c in declarator.children)
        inner = declarator.child_by_field_name("declarator")
        declarator = inner if inner is not None else next(
            (c for c in declarator.named_children if c.type not in ("type_qualifier",)), None)
    name = declarator.text.decode("utf-8") if declarator is not None and declarator.type == "identifier" else ""
    type_text = " ".join(type_node.text.decode("utf-8").split()) if type_node is not None else ""
    if type_node is None or type_node.type not in _BUILTIN_TYPE_NODES and type_text.removeprefix("std::") \
            not in _TYPEDEF_NAMES:
        kind = "other"
    elif kind == "scalar" and depth:
        kind = "pointer"
    if not name:
        kind = "other"
    return Parameter(text=" ".join(node.text.decode("utf-8").split()), type=type_text, name=name,
                     pointer_depth=depth, const=const, kind=kind)


# Type names that are plain integers or floats although the grammar reads them as type identifiers.
_TYPEDEF_NAMES = {"size_t", "ssize_t", "ptrdiff_t", "int8_t", "int16_t", "int32_t", "int64_t", "uint8_t",
                  "uint16_t", "uint32_t", "uint64_t", "uint", "half", "__half"}


def function_signatures(source: str, *, grammar: GrammarName = "cpp") -> list[FunctionSignature]:
    """The signature of every function definition with a body, in source order (see `Parameter` for how each
    parameter is read). Templates and methods come out too; their parameters of unknown types are "other"."""
    tree, data = _parse(source, grammar)
    out = []
    for definition in _captures(_FUNCTIONS_QUERY[grammar], tree.root_node).get("function", []):
        if definition.child_by_field_name("body") is None:
            continue
        declarator = definition.child_by_field_name("declarator")
        while declarator is not None and declarator.type != "function_declarator":
            declarator = declarator.child_by_field_name("declarator")
        if declarator is None:
            continue
        params = declarator.child_by_field_name("parameters")
        parameters = tuple(_parameter(c) for c in params.named_children if c.type == "parameter_declaration") \
            if params is not None else ()
        type_node = definition.child_by_field_name("type")
        return_type = " ".join(type_node.text.decode("utf-8").split()) if type_node is not None else ""
        out.append(FunctionSignature(name=function_name(definition), return_type=return_type, parameters=parameters,
                                     text=data[definition.start_byte:definition.end_byte].decode("utf-8")))
    return out


def _check_position(line: int, col: int, what: str) -> None:
    if not isinstance(line, int) or not isinstance(col, int) or line < 0 or col < 0:
        raise ValueError(f"{what} must be non-negative integers (0-based line, col), got line={line!r} col={col!r}")


def function_at(source: str, line: int, col: int, *, grammar: GrammarName = "cpp") -> FunctionSpan | None:
    """The innermost function definition containing (line, col), or None.

    Both ends of a span count as inside (see `FunctionSpan.contains`). A position past the end of the
    source is simply outside every function.
    """
    _check_position(line, col, "position")
    containing = [span for span in find_functions(source, grammar=grammar) if span.contains(line, col)]
    if not containing:
        return None
    return min(containing, key=lambda span: span.end_byte - span.start_byte)


def functions_in_range(
    source: str,
    start_line: int,
    start_col: int,
    end_line: int,
    end_col: int,
    *,
    grammar: GrammarName = "cpp",
) -> list[FunctionSpan]:
    """Function definitions that overlap the range [start, end] (e.g. an editor selection), in source order.

    Overlap, not containment: selecting part of a function's body selects that function. An empty
    range (start == end) behaves like `function_at` but returns every enclosing function.
    """
    _check_position(start_line, start_col, "range start")
    _check_position(end_line, end_col, "range end")
    start, end = (start_line, start_col), (end_line, end_col)
    if start > end:
        raise ValueError(f"range start {start} is after range end {end}")
    return [
        span
        for span in find_functions(source, grammar=grammar)
        if (span.start_line, span.start_col) <= end and start <= (span.end_line, span.end_col)
    ]


# ---------------------------------------------------------------------------------------------------
# Syntax check
# ---------------------------------------------------------------------------------------------------


@dataclass
class SyntaxProblem:
    """A syntax or compile error at a 0-based (line, col) .. (end_line, end_col) range.

    `message` repeats the position 1-based ("line 3, col 5"), the way people read it in an editor.
    """

    line: int
    col: int
    end_line: int
    end_col: int
    message: str


def _snippet(text: str, limit: int = 40) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def check_cuda_syntax(code: str) -> list[SyntaxProblem]:
    """Syntax problems tree-sitter-cuda finds: ERROR nodes (unexpected text) and MISSING nodes
    (a token the parser had to invent, such as a ";" or "}"), in source order.

    Only the outermost ERROR of a region is reported; what is nested in it adds no information.
    This is a parse check: undeclared names or type errors need
    `kernelcheck.compile_check.nvcc_compile_check`.
    """
    tree, data = _parse(code, "cuda")
    index = _LineIndex(data)
    problems: list[SyntaxProblem] = []
    pending = [tree.root_node]
    while pending:
        node = pending.pop()
        if node.is_missing or node.is_error:
            line, col = index.position(node.start_point)
            end_line, end_col = index.position(node.end_point)
            where = f"line {line + 1}, col {col + 1}"
            if node.is_missing:
                message = f"{where}: missing {node.type!r}"
            else:
                text = data[node.start_byte : node.end_byte].decode("utf-8")
                message = f"{where}: unexpected {_snippet(text)!r}" if text.strip() else f"{where}: syntax error"
            problems.append(SyntaxProblem(line, col, end_line, end_col, message))
            continue
        # has_error is set on every ancestor of an ERROR/MISSING node: prune clean subtrees.
        pending.extend(child for child in reversed(node.children) if child.has_error or child.is_missing)
    problems.sort(key=lambda problem: (problem.line, problem.col))
    return problems


def is_valid_cuda(code: str) -> bool:
    """True when the code has content and tree-sitter-cuda parses it without ERROR/MISSING nodes.

    Blank code is *not* valid: an empty translation must not count as a syntactically correct one.
    """
    return bool(code.strip()) and not check_cuda_syntax(code)

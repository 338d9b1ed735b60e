"""Incremental tree-sitter parsing per document, and the function under a cursor from the tree.

Why: a code action or hover request right after an edit would otherwise parse the whole file again
(`find_functions`: ~8 ms for 700 lines, ~30 ms for 3000 lines on the 2-core CI machine; the listing target is
20 ms). Here the previous version's tree is edited with the one changed region (common prefix / suffix of the
two texts) and re-parsed incrementally, which costs about the size of the change; the function at the cursor is
then found by walking up from the cursor's node — no query over the whole file.

The answers are those of `kernelcheck.parsing.function_at` (same grammar, same span rules: templates include
their `template<...>` prefix, definitions without a body are skipped, both ends of a span count as inside); a
unit test compares them on random edits. Names come from that module's own naming helper, so the rules stay in
one place.

Not thread-safe: used on the server's event loop only (tree-sitter parsers hold mutable state).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import tree_sitter
import tree_sitter_cpp
import tree_sitter_cuda

# kernelcheck's own naming of a definition node, so names agree with find_functions even in code that only parses
# with error recovery.
from kernelcheck.parsing import FunctionSpan, function_name

_LANGUAGES = {
    "cpp": tree_sitter.Language(tree_sitter_cpp.language()),
    "cuda": tree_sitter.Language(tree_sitter_cuda.language()),
}


@dataclass
class _Parsed:
    version: int | None
    text: str
    data: bytes
    tree: tree_sitter.Tree
    grammar: str
    lines: list[bytes]


def _common_prefix(a: str, b: str) -> int:
    lo, hi = 0, min(len(a), len(b))
    while lo < hi:  # largest p with a[:p] == b[:p]; slices compare in C
        mid = (lo + hi + 1) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _common_suffix(a: str, b: str, limit: int) -> int:
    lo, hi = 0, limit
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if a[len(a) - mid :] == b[len(b) - mid :]:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _point(text: str, offset: int) -> tuple[int, int, int]:
    """(byte offset, row, byte column) of a str offset."""
    row = text.count("\n", 0, offset)
    line_start = text.rfind("\n", 0, offset) + 1
    return len(text[:offset].encode("utf-8")), row, len(text[line_start:offset].encode("utf-8"))


def _templated_definition(template: tree_sitter.Node) -> tree_sitter.Node | None:
    node = template
    while node is not None and node.type == "template_declaration":
        inner = [child for child in node.named_children if child.type in ("function_definition", "template_declaration")]
        node = inner[-1] if inner else None
    return node


class IncrementalTrees:
    """The latest tree per document, re-parsed incrementally from the previous version."""

    def __init__(self, size: int = 32):
        self.size = size
        self._parsers = {name: tree_sitter.Parser(language) for name, language in _LANGUAGES.items()}
        self._docs: OrderedDict[str, _Parsed] = OrderedDict()
        self.full_parses = 0
        self.incremental_parses = 0

    def parsed(self, uri: str, version: int | None, text: str, grammar: str) -> _Parsed:
        entry = self._docs.get(uri)
        if entry is not None and entry.grammar == grammar and entry.text == text:
            entry.version = version
            self._docs.move_to_end(uri)
            return entry
        data = text.encode("utf-8")
        parser = self._parsers[grammar]
        if entry is not None and entry.grammar == grammar:
            old = entry.text
            prefix = _common_prefix(old, text)
            suffix = _common_suffix(old, text, min(len(old), len(text)) - prefix)
            start_byte, start_row, start_col = _point(old, prefix)
            old_end_byte, old_row, old_col = _point(old, len(old) - suffix)
            new_end_byte, new_row, new_col = _point(text, len(text) - suffix)
            entry.tree.edit(
                start_byte=start_byte, old_end_byte=old_end_byte, new_end_byte=new_end_byte,
                start_point=(start_row, start_col), old_end_point=(old_row, old_col),
                new_end_point=(new_row, new_col),
            )
            tree = parser.parse(data, entry.tree)
            self.incremental_parses += 1
        else:
            tree = parser.parse(data)
            self.full_parses += 1
        parsed = _Parsed(version, text, data, tree, grammar, data.split(b"\n"))
        self._docs[uri] = parsed
        self._docs.move_to_end(uri)
        while len(self._docs) > self.size:
            self._docs.popitem(last=False)
        return parsed

    def forget(self, uri: str) -> None:
        self._docs.pop(uri, None)

    def function_at(self, uri: str, version: int | None, text: str, grammar: str, line: int, col: int
                    ) -> FunctionSpan | None:
        """The innermost function definition containing (line, code point col), as in kernelcheck.parsing."""
        parsed = self.parsed(uri, version, text, grammar)
        if line < 0 or line >= len(parsed.lines):
            return None
        line_bytes = parsed.lines[line]
        prefix = line_bytes.decode("utf-8")[:col]
        byte_col = len(prefix.encode("utf-8"))
        if col > len(line_bytes.decode("utf-8")):
            return None  # past the line's end: outside every function, as kernelcheck.parsing.function_at says
        # The node at the cursor, and the one just before it: a cursor right after a closing brace is inside that
        # function too (both ends of a span count), and the smallest containing span wins, as in function_at.
        points = [(line, byte_col)] + ([(line, byte_col - 1)] if byte_col > 0 else [])
        found: dict[int, FunctionSpan] = {}
        for point in points:
            for span in self._enclosing(parsed, point):
                if span.contains(line, col):
                    found[span.start_byte] = span
        if not found:
            return None
        return min(found.values(), key=lambda span: span.end_byte - span.start_byte)

    def _enclosing(self, parsed: _Parsed, point: tuple[int, int]):
        """Every function definition (with a body) around the node at `point`, innermost first."""
        node = parsed.tree.root_node.descendant_for_point_range(point, point)
        while node is not None:
            definition = node if node.type == "function_definition" else None
            if node.type == "template_declaration":  # the cursor is in `template <...>`: its function, if any
                definition = _templated_definition(node)
            if definition is not None and definition.child_by_field_name("body") is not None:
                yield self._span(parsed, definition)
            node = node.parent

    def _span(self, parsed: _Parsed, definition: tree_sitter.Node) -> FunctionSpan:
        outer = definition
        while outer.parent is not None and outer.parent.type == "template_declaration":
            outer = outer.parent
        text = parsed.data[outer.start_byte : outer.end_byte].decode("utf-8")
        name = function_name(definition)
        start_row, start_byte_col = outer.start_point
        end_row, end_byte_col = outer.end_point
        return FunctionSpan(
            name=name,
            start_byte=outer.start_byte,
            end_byte=outer.end_byte,
            start_line=start_row,
            start_col=len(parsed.lines[start_row][:start_byte_col].decode("utf-8")),
            end_line=end_row,
            end_col=len(parsed.lines[end_row][:end_byte_col].decode("utf-8")) if end_row < len(parsed.lines) else 0,
            text=text,
        )

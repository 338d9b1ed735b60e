"""Documents as the features see them: which grammar, where functions are, and LSP <-> source positions.

Positions: LSP counts columns in the negotiated encoding (UTF-16 by default, UTF-8 or UTF-32 when the client
offers them: Neovim does); `kernelcheck.parsing` counts code points of lines split at "\\n" only. `TextView`
converts between the two. pygls' own helpers split lines at every Unicode line break (`str.splitlines`), which
disagrees with tree-sitter for "\\x0c" and friends, so they are not used for positions here.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from kernelcheck.parsing import FunctionSpan, find_functions
from lsprotocol import types
from pygls.uris import from_fs_path, to_fs_path

# languageId -> tree-sitter grammar. VS Code calls CUDA "cuda-cpp"; Neovim's filetype is "cuda".
LANGUAGE_GRAMMARS: dict[str, str] = {"c": "cpp", "cpp": "cpp", "cuda": "cuda", "cuda-cpp": "cuda"}
EXTENSION_GRAMMARS: dict[str, str] = {
    ".c": "cpp", ".h": "cpp", ".cc": "cpp", ".cpp": "cpp", ".cxx": "cpp", ".c++": "cpp", ".hpp": "cpp",
    ".hh": "cpp", ".hxx": "cpp", ".ipp": "cpp", ".cu": "cuda", ".cuh": "cuda",
}


def grammar_for(language_id: str | None, uri: str) -> str | None:
    """"cpp", "cuda" or None (not a document this server handles)."""
    if language_id and language_id in LANGUAGE_GRAMMARS:
        return LANGUAGE_GRAMMARS[language_id]
    if language_id and language_id not in ("", "plaintext"):
        return None  # an editor that says "python" means it
    path = uri_to_path(uri)
    return EXTENSION_GRAMMARS.get(path.suffix.lower()) if path is not None else None


def uri_to_path(uri: str) -> Path | None:
    path = to_fs_path(uri)
    return Path(path) if path else None


def path_to_uri(path: Path) -> str:
    return from_fs_path(str(path)) or path.as_uri()


def uri_key(uri: str) -> str:
    """A key under which two spellings of the same file's URI agree (percent-encoding, drive letter case)."""
    path = uri_to_path(uri)
    return str(path) if path is not None else unquote(uri)


def text_hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=12).hexdigest()


# ---------------------------------------------------------------------------------------------------- positions


def encoding_name(encoding) -> str:
    """"utf-8" | "utf-16" | "utf-32" from an lsprotocol enum or a string (str() of the enum is its *name* in 3.11)."""
    value = getattr(encoding, "value", encoding) or types.PositionEncodingKind.Utf16.value
    return value if value in ("utf-8", "utf-16", "utf-32") else "utf-16"


def _units(encoding: str):
    if encoding == "utf-8":
        return lambda ch: len(ch.encode("utf-8", "surrogatepass"))
    if encoding == "utf-32":
        return lambda ch: 1
    return lambda ch: 2 if ord(ch) > 0xFFFF else 1


class TextView:
    """A document's text with conversions between LSP positions (client units) and (line, code point col)."""

    def __init__(self, text: str, encoding: str = "utf-16"):
        self.text = text
        self.encoding = encoding_name(encoding)
        self.lines = text.split("\n")
        self._unit = _units(self.encoding)
        self._line_starts: list[int] | None = None

    # client units <-> code points
    def to_point(self, position: types.Position) -> tuple[int, int]:
        """(line, code point col), clamped into the text (LSP allows positions past a line's end)."""
        if position.line >= len(self.lines):
            return len(self.lines) - 1, len(self.lines[-1])
        line = self.lines[position.line]
        units, col = 0, 0
        for ch in line:
            if units >= position.character:
                break
            units += self._unit(ch)
            col += 1
        return position.line, col

    def to_position(self, line: int, col: int) -> types.Position:
        if line >= len(self.lines):
            return types.Position(line=len(self.lines) - 1, character=self._width(self.lines[-1]))
        return types.Position(line=line, character=self._width(self.lines[line][:col]))

    def to_range(self, start: tuple[int, int], end: tuple[int, int]) -> types.Range:
        return types.Range(start=self.to_position(*start), end=self.to_position(*end))

    def _width(self, text: str) -> int:
        if self.encoding == "utf-32":
            return len(text)
        return sum(self._unit(ch) for ch in text)

    # code points <-> str offsets
    def offset(self, line: int, col: int) -> int:
        if self._line_starts is None:
            starts, total = [], 0
            for text in self.lines:
                starts.append(total)
                total += len(text) + 1
            self._line_starts = starts
        if line >= len(self.lines):
            return len(self.text)
        return min(self._line_starts[line] + col, len(self.text))

    def point_at(self, offset: int) -> tuple[int, int]:
        before = self.text[:offset]
        line = before.count("\n")
        return line, offset - (before.rfind("\n") + 1)

    def slice(self, start: tuple[int, int], end: tuple[int, int]) -> str:
        return self.text[self.offset(*start) : self.offset(*end)]

    def end_point(self) -> tuple[int, int]:
        return len(self.lines) - 1, len(self.lines[-1])


# ---------------------------------------------------------------------------------------------------- functions


def innermost(spans: list[FunctionSpan], line: int, col: int) -> FunctionSpan | None:
    containing = [span for span in spans if span.contains(line, col)]
    if not containing:
        return None
    return min(containing, key=lambda span: span.end_byte - span.start_byte)


def outermost_only(spans: list[FunctionSpan]) -> list[FunctionSpan]:
    """Drop spans nested in another (functions of local classes): edits to a file must not overlap."""
    kept: list[FunctionSpan] = []
    for span in sorted(spans, key=lambda s: (s.start_byte, -s.end_byte)):
        if kept and span.end_byte <= kept[-1].end_byte:
            continue
        kept.append(span)
    return kept


class FunctionIndex:
    """find_functions per (uri, version), LRU: code actions and hovers on one document version parse it once.

    Thread-safe (hovers may be answered on worker threads); parsing happens outside the lock.
    """

    def __init__(self, size: int = 32):
        self.size = size
        self._lock = threading.Lock()
        self._entries: OrderedDict[tuple[str, int | None, str], tuple[str, list[FunctionSpan]]] = OrderedDict()

    def functions(self, uri: str, version: int | None, text: str, grammar: str) -> list[FunctionSpan]:
        key = (uri, version, grammar)
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and (version is not None or entry[0] == text):
                self._entries.move_to_end(key)
                return entry[1]
        spans = find_functions(text, grammar=grammar)
        with self._lock:
            self._entries[key] = (text, spans)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return spans

    def forget(self, uri: str) -> None:
        with self._lock:
            for key in [key for key in self._entries if key[0] == uri]:
                del self._entries[key]


@dataclass(frozen=True)
class OpenDocument:
    """A snapshot of an open document: what a feature needs, taken at one moment."""

    uri: str
    version: int | None
    text: str
    grammar: str
    view: TextView

    @property
    def path(self) -> Path | None:
        return uri_to_path(self.uri)


@dataclass(frozen=True)
class Source:
    """One piece of code to translate: a function or a selection of a document."""

    name: str  # function name or "selection"
    text: str
    start: tuple[int, int]  # span in the document (line, code point col)
    end: tuple[int, int]

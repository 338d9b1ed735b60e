"""Source helpers on plain text, for code no parser can be trusted with (model output is often broken): the kernels a
program launches, the `__global__` functions it defines, a kernel's body span, balanced brackets, markdown fences."""

from __future__ import annotations

import re

_LAUNCH_RE = re.compile(r"\b([A-Za-z_]\w*)\s*(?:<[^<>;(){}]*>\s*)?<<<")
_GLOBAL_RE = re.compile(r"__global__\b[^;{}()]*?\b([A-Za-z_]\w*)\s*\(")
_FENCE_RE = re.compile(r"```[ \t]*[\w+.-]*[ \t]*\n(.*?)(?:```|\Z)", re.S)


def launch_names(code: str) -> list[str]:
    """Names of the kernels ``code`` launches with ``<<<...>>>``, each once, in order of first launch."""
    names: list[str] = []
    for m in _LAUNCH_RE.finditer(code):
        if m.group(1) not in names:
            names.append(m.group(1))
    return names


def global_functions(code: str) -> list[str]:
    """Names of the ``__global__`` functions ``code`` declares or defines, each once, in source order."""
    names: list[str] = []
    for m in _GLOBAL_RE.finditer(code):
        if m.group(1) not in names and m.group(1) not in ("__launch_bounds__",):
            names.append(m.group(1))
    return names


def strip_code_fences(text: str) -> str:
    """Keep the contents of markdown code blocks when a prediction has any."""
    if "```" not in text:
        return text
    blocks = _FENCE_RE.findall(text)
    return "\n".join(blocks) if blocks else text.replace("```", "")


def match_close(code: str, open_index: int, opening: str, closing: str) -> int:
    """Index of the ``closing`` that balances the ``opening`` at ``open_index`` (-1 when unbalanced)."""
    depth = 0
    for i in range(open_index, len(code)):
        ch = code[i]
        if ch == opening:
            depth += 1
        elif ch == closing:
            depth -= 1
            if depth == 0:
                return i
    return -1


def kernel_span(code: str, name: str | None = None) -> tuple[int, int] | None:
    """(index of the body's ``{``, index of its ``}``) of a ``__global__`` function (the first if no name)."""
    for m in _GLOBAL_RE.finditer(code):
        if name is not None and m.group(1) != name:
            continue
        close_paren = match_close(code, m.end() - 1, "(", ")")
        if close_paren < 0:
            return None
        brace = code.find("{", close_paren)
        if brace < 0:
            return None
        end = match_close(code, brace, "{", "}")
        return (brace, end) if end > 0 else None
    return None


class CodeScanner:
    """Brace depth over C/C++/CUDA text fed piece by piece, with strings, character literals and comments skipped:
    where each top-level `{ ... }` block opens and closes. Used to stop generation where a kernel ends (the decoding
    engine feeds it each token's text) and to cut an answer into its top-level items (`top_level_blocks`)."""

    def __init__(self) -> None:
        self.depth = 0
        self.offset = 0  # characters fed so far
        self._state = "code"  # code | line_comment | block_comment | string | char
        self._previous = ""  # the last character fed (for `//`, `/*`, `*/` and escapes across pieces)
        self._escaped = False
        self.closed: list[tuple[int, int]] = []  # (open index, close index) of each completed top-level block
        self._open_at = -1

    def feed(self, text: str) -> list[tuple[int, int]]:
        """Scan `text`; returns the top-level blocks it completed, as (open, close) character offsets."""
        done = []
        for ch in text:
            self._step(ch, done)
            self.offset += 1
        return done

    def _step(self, ch: str, done: list) -> None:
        state, prev = self._state, self._previous
        if state == "code":
            if prev == "/" and ch == "/":
                self._state = "line_comment"
            elif prev == "/" and ch == "*":
                self._state, ch = "block_comment", ""  # `/*/` does not close it
            elif ch == '"':
                self._state, self._escaped = "string", False
            elif ch == "'":
                self._state, self._escaped = "char", False
            elif ch == "{":
                if self.depth == 0:
                    self._open_at = self.offset
                self.depth += 1
            elif ch == "}" and self.depth > 0:
                self.depth -= 1
                if self.depth == 0:
                    done.append((self._open_at, self.offset))
                    self.closed.append(done[-1])
        elif state == "line_comment":
            if ch == "\n":
                self._state = "code"
        elif state == "block_comment":
            if prev == "*" and ch == "/":
                self._state, ch = "code", ""  # `*/*` does not open another
        elif self._escaped:
            self._escaped = False
        elif ch == "\\":
            self._escaped = True
        elif (state == "string" and ch == '"') or (state == "char" and ch == "'") or ch == "\n":
            self._state = "code"  # a newline ends an unterminated literal: broken output must not hide braces
        self._previous = ch

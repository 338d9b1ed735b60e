"""BabelTower's space-tokenized C/C++ and CUDA lines turned back into ordinary source, keeping every token.

BabelTower's tokenizer (from TransCoder) writes every C token separated by one space, plus a few conventions of its
own, which `detokenize` and its lexer follow:
  * string / char literals are split into pieces: `" % i ▁ ! = ▁ % i \\n "` is `"%i != %i \\n"`
    (▁ marks a space; runs of letters/digits, escapes and single other characters are the pieces);
  * a minus sign belongs to a number literal where it cannot be binary: `x = -1 ;` vs `n - 1`;
  * `ENDCOM` ends a preprocessor line (`#pragma omp parallel for ENDCOM for ( ...`), and a directive
    may be one token (`#pragma`) or two (`# 16 "file"`);
  * `<unk>` (an unknown character) ends the word it is glued to: `cuda_Cross<unk> py_forward`.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from typing import Literal

SPACE_MARK = "▁"
END_OF_DIRECTIVE = "ENDCOM"

_PUNCTUATORS = sorted(
    """... <<= >>= ->* <=> <<< >>> -> ++ -- << >> <= >= == != && || += -= *= /= %= &= |= ^= :: .* ##
    <: :> <% %> %: [ ] ( ) { } . & * + - ~ ! / % < > ^ | ? : ; = , #""".split(),
    key=len,
    reverse=True,
)
_NUMBER = r"\.?\d(?:[eEpP][+-]|[\w.])*"
_LEXER = re.compile(
    r"(?P<newline>\n)"
    r"|(?P<space>[^\S\n]+)"
    r"|(?P<comment>//[^\n]*|/\*(?s:.*?)\*/)"
    r"|(?P<literal>\"(?:\\.|[^\"\\\n])*\"|'(?:\\.|[^'\\\n])*')"
    r"|(?P<directive>\#[^\W\d]\w*)"
    r"|(?P<word>[^\W\d]\w*(?:<unk>)?|<unk>)"
    rf"|(?P<signed>-{_NUMBER})"
    rf"|(?P<number>{_NUMBER})"
    r"|(?P<punct>" + "|".join(re.escape(p) for p in _PUNCTUATORS) + r")"
    r"|(?P<other>.)"
)
_LITERAL_PIECES = re.compile(r"\\.|[A-Za-z0-9]+(?:<unk>)?|<unk>|.", re.S)

# Words after which an expression starts (so `-1` there is a signed number and `*` is unary).
_TYPE_WORDS = frozenset(
    """void char short int long float double signed unsigned bool const volatile auto size_t ssize_t
    ptrdiff_t uint wchar_t char16_t char32_t int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t
    uint64_t half __half dim3 float2 float3 float4 double2 double3 double4 int2 int3 int4 uint2 uint3
    uint4 struct __restrict__ restrict""".split()
)
_EXPRESSION_KEYWORDS = frozenset("return case else do throw new delete co_return co_yield co_await".split())
_NON_OPERAND_WORDS = _TYPE_WORDS | _EXPRESSION_KEYWORDS | frozenset("if for while switch".split())
_SPACE_BEFORE_PAREN = frozenset("if for while switch return catch else do case throw".split()) | _TYPE_WORDS - {
    "__restrict__",
    "restrict",
}
_NO_SPACE_BEFORE = frozenset(", ; ) ] . -> :: .* ->* >>>".split())
_NO_SPACE_AFTER = frozenset("( [ . -> :: .* ->* ! ~ <<<".split())


def _is_wordlike(token: str) -> bool:
    return bool(re.match(r"[\w\"'.]|<unk>|-[\d.]|#\w", token)) and token not in (".", "...", ".*")


def _ends_operand(token: str | None) -> bool:
    """Could `token` end an operand, making a following `-` / `*` / `&` binary?"""
    if token is None:
        return False
    if token in (")", "]", "++", "--"):
        return True
    return _is_wordlike(token) and not token.startswith("#") and token not in _NON_OPERAND_WORDS


def _lex(code: str) -> list[str]:
    """C tokens of `code` in BabelTower's conventions (see above), string literals whole.

    The newline that ends a preprocessor line is returned as "\\n"; other whitespace is dropped;
    comments are returned as tokens so that gluing `/` to `/` shows up as a change.
    """
    tokens: list[str] = []
    at_line_start, in_directive = True, False
    position = 0
    while position < len(code):
        match = _LEXER.match(code, position)
        kind, text = match.lastgroup, match.group()
        position = match.end()
        if kind == "newline":
            if in_directive:
                tokens.append("\n")
            at_line_start, in_directive = True, False
            continue
        if kind == "space":
            continue
        if kind == "signed" and _ends_operand(tokens[-1] if tokens else None):
            text, position = "-", match.start() + 1
        if at_line_start and text.startswith("#"):
            in_directive = True
        at_line_start = False
        tokens.append(text)
    return tokens


def _decode_literal(pieces: list[str]) -> str | None:
    """`" % d ▁ \\n "` pieces -> `"%d \\n"`; None when the decoded literal would split differently
    (then the pieces are kept as they are rather than changing a token)."""
    quote, content = pieces[0], pieces[1:-1]
    decoded = "".join(" " if piece == SPACE_MARK else piece for piece in content)
    again = [SPACE_MARK if piece == " " else piece for piece in _LITERAL_PIECES.findall(decoded)]
    return quote + decoded + quote if again == content else None


@dataclass
class _Unit:
    """One rendered element: a token, a whole literal, or the newline that ends a directive."""

    text: str
    kind: Literal["token", "literal", "newline"]


def _units(tokens: list[str]) -> list[_Unit]:
    units: list[_Unit] = []
    in_directive = False
    index = 0
    while index < len(tokens):
        token = tokens[index]
        if token in ('"', "'"):
            close = next((j for j in range(index + 1, len(tokens)) if tokens[j] == token), None)
            if close is not None:
                pieces = tokens[index : close + 1]
                decoded = _decode_literal(pieces)
                units.append(_Unit(decoded if decoded is not None else " ".join(pieces), "literal"))
                index = close + 1
                continue
        if token.startswith("#") and not in_directive:
            in_directive = True
        elif token == END_OF_DIRECTIVE and in_directive:
            units.append(_Unit("\n", "newline"))
            in_directive = False
            index += 1
            continue
        units.append(_Unit(token, "token"))
        index += 1
    return units


@functools.lru_cache(maxsize=65536)
def _glue_is_safe(context: str, left: str, right: str) -> bool:
    """Does `context + left + right` (left and right without a space) still lex as the same tokens?"""
    expected = _lex(context) + [left, right] if context else [left, right]
    return _lex(f"{context} {left}{right}" if context else left + right) == expected


def _render(units: list[_Unit], glue: bool) -> str:
    """Join units with the spacing people write; with glue=False every pair gets one space."""
    out: list[str] = []
    previous: str | None = None  # text of the previous unit ("\n" after a directive)
    before_previous: str | None = None
    previous_role = ""  # "unary" | "declarator" | "postfix" | ""
    ternary_depth = 0
    in_directive = False
    for unit in units:
        text, role = unit.text, ""
        is_token = unit.kind == "token"
        if unit.kind == "newline":
            out.append("\n")
            before_previous, previous, previous_role, in_directive = None, None, "", False
            continue
        starts_directive = is_token and text.startswith("#") and not in_directive
        if starts_directive:
            in_directive = True
            if previous is not None:
                out.append("\n")  # a directive must start its own line
                before_previous, previous, previous_role = None, None, ""
        if is_token and text in ("++", "--"):
            role = "postfix" if _ends_operand(previous) and previous_role != "unary" else "unary"
        elif is_token and text in ("-", "+", "*", "&", "&&"):
            if text in ("*", "&", "&&") and previous in _TYPE_WORDS:
                role = "declarator"
            elif not _ends_operand(previous) or previous_role == "unary":
                role = "unary" if text != "&&" else ""
        elif is_token and text in ("!", "~"):
            role = "unary"
        space = _wants_space(previous, previous_role, unit, role, ternary_depth) if glue else True
        if previous is not None and not space:
            context = before_previous if before_previous is not None else ""
            space = not _glue_is_safe(context, previous, text)
        if previous is not None:
            out.append(" " if space else "")
        out.append(text)
        if is_token and text == "?":
            ternary_depth += 1
        elif is_token and text == ":" and ternary_depth:
            ternary_depth -= 1
        elif is_token and text in (";", "{", "}"):
            ternary_depth = 0
        before_previous, previous, previous_role = previous, text, role
    return "".join(out)


def _wants_space(previous: str | None, previous_role: str, unit: _Unit, role: str, ternary_depth: int) -> bool:
    text = unit.text
    if previous is None:
        return False
    if unit.kind == "literal":
        return previous not in _NO_SPACE_AFTER and previous_role not in ("unary", "declarator")
    if text in _NO_SPACE_BEFORE or previous in _NO_SPACE_AFTER or previous_role in ("unary", "declarator"):
        return False
    if role == "postfix":
        return False
    if text == "(":
        if previous in (")", "]", ">>>"):
            return False
        return not (_is_wordlike(previous) and previous not in _SPACE_BEFORE_PAREN)
    if text == "[":
        return not (_is_wordlike(previous) or previous in (")", "]"))
    if text == ":":
        return ternary_depth > 0  # `a ? b : c`, but `case 1:`, `public:`
    if text == "<<<":
        return False
    return True


def detokenize(text: str) -> str:
    """Turn one space-tokenized line (BabelTower style) back into ordinary source, keeping its tokens.

    `void add ( int n , float * x ) { a [ i ] ++ ; }` -> `void add(int n, float *x) { a[i]++; }`.
    Spaces go where people write them (none before `, ; ) ] .` or after `( [ .`, around binary
    operators, `x++`, `-y`, `float *p`, `f(x)`, `if (x)`); a space is kept wherever gluing two tokens
    would lex differently (`- -x`, `a - -1`, `# include`). String/char literals are reassembled
    (`" a ▁ b "` -> `"a b"`) when that is lossless, kept as they are otherwise. A preprocessor directive
    starts its own line and ends at `ENDCOM` (rendered as a newline); without `ENDCOM` its end is
    unknown and it runs to the end of the text, as stored.

    The result is checked by lexing it again; ValueError when no spacing keeps the tokens (e.g. `) -1`,
    where a signed literal follows an operand: no rendering can tell it from `) - 1`).
    """
    tokens = text.split()
    units = _units(tokens)
    expected = [unit.text for unit in units]
    for glue in (True, False):
        rendered = _render(units, glue)
        relexed = _lex(rendered)
        if relexed == expected:
            return rendered
    mismatch = next((i for i, (a, b) in enumerate(zip(relexed, expected)) if a != b), min(len(relexed), len(expected)))
    raise ValueError(
        f"cannot detokenize without changing tokens: near token {mismatch} "
        f"{expected[max(mismatch - 2, 0) : mismatch + 3]} re-lexes as {relexed[max(mismatch - 2, 0) : mismatch + 3]}"
    )


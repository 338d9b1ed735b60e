"""Training data: C/C++ -> CUDA pairs, their loaders, the train/val/test split and the length policy.

Two on-disk formats are read:

* JSON Lines, one object per line: `{"cpp": "...", "generated_cuda": "..."}` (field names configurable).
* BabelTower's paired `.tok` files (`cpp.<split>.tok` + `cuda.<split>.tok`): one function per line,
  space-tokenized, line i of one file pairing with line i of the other. `detokenize` turns a line back
  into ordinary source without changing its tokens; the original line is kept in `Pair.*_raw`.

Nothing is dropped silently: every malformed line is recorded in a `DataReport` (kind, file, line
number, detail) and every over-long pair in a `LengthReport`.
"""

from __future__ import annotations

import functools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Literal, Sequence

# ---------------------------------------------------------------------------------------------------
# Pairs and the load report
# ---------------------------------------------------------------------------------------------------


@dataclass
class Pair:
    """One C/C++ source and its CUDA translation. `origin` says where it came from (`file:line`).

    `source_raw` / `target_raw` hold the text as stored when it was rewritten on loading (BabelTower's
    space-tokenized lines); they are None when `source` / `target` are the stored text itself.
    """

    source: str
    target: str
    origin: str
    source_raw: str | None = None
    target_raw: str | None = None


@dataclass
class DataProblem:
    """One line that did not become a pair. `line` is 1-based, as editors and `sed -n` count."""

    kind: str
    file: str
    line: int
    detail: str


# Kinds of DataProblem, in the order summaries list them.
PROBLEM_KINDS = (
    "bad_utf8",
    "bad_json",
    "not_object",
    "missing_field",
    "non_string_field",
    "empty_code",
    "blank_line",
    "detokenize_failed",
)


@dataclass
class DataReport:
    """What a loader did: every line read either became a pair (`loaded`) or is one of `problems`."""

    sources: list[str] = field(default_factory=list)
    lines_read: int = 0
    loaded: int = 0
    problems: list[DataProblem] = field(default_factory=list)

    def add(self, kind: str, file: str, line: int, detail: str) -> None:
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; expected one of {PROBLEM_KINDS}")
        self.problems.append(DataProblem(kind, file, line, detail))

    @property
    def skipped(self) -> int:
        return len(self.problems)

    def counts(self) -> dict[str, int]:
        """Number of problems of each kind that occurred (kinds with none are left out)."""
        counts: dict[str, int] = {}
        for problem in self.problems:
            counts[problem.kind] = counts.get(problem.kind, 0) + 1
        return {kind: counts[kind] for kind in PROBLEM_KINDS if kind in counts}

    def lines(self, kind: str) -> list[int]:
        """1-based line numbers of the problems of one kind, in file order."""
        if kind not in PROBLEM_KINDS:
            raise ValueError(f"unknown problem kind {kind!r}; expected one of {PROBLEM_KINDS}")
        return [problem.line for problem in self.problems if problem.kind == kind]

    def merge(self, other: DataReport) -> DataReport:
        return DataReport(
            sources=self.sources + other.sources,
            lines_read=self.lines_read + other.lines_read,
            loaded=self.loaded + other.loaded,
            problems=self.problems + other.problems,
        )

    def summary(self, max_lines: int = 5) -> str:
        """One human line per fact, e.g.
        `loaded 120 of 125 lines from a.jsonl; skipped 5` / `  bad_json: 2 (a.jsonl:3, a.jsonl:7)`."""
        head = f"loaded {self.loaded} of {self.lines_read} lines from {', '.join(self.sources) or '(nothing)'}"
        if not self.problems:
            return head + "; nothing skipped"
        parts = [f"{head}; skipped {self.skipped}"]
        for kind, count in self.counts().items():
            of_kind = [problem for problem in self.problems if problem.kind == kind]
            shown = ", ".join(f"{problem.file}:{problem.line}" for problem in of_kind[:max_lines])
            more = f", ... {count - max_lines} more" if count > max_lines else ""
            parts.append(f"  {kind}: {count} ({shown}{more}) first: {of_kind[0].detail}")
        return "\n".join(parts)


def _read_lines(path: Path) -> list[bytes]:
    """The file's lines as bytes, split at b"\\n" only (str.splitlines would also split at form feeds
    and U+2028, shifting line numbers). A final newline does not start another line."""
    data = path.read_bytes()
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return [line[:-1] if line.endswith(b"\r") else line for line in lines]


# ---------------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------------


def load_jsonl(
    path: str | Path,
    *,
    source_field: str = "cpp",
    target_field: str = "generated_cuda",
    detokenize_text: bool = False,
) -> tuple[list[Pair], DataReport]:
    """Pairs from a JSON Lines file; malformed lines are reported, not fatal.

    A line becomes a pair when it is a JSON object whose two fields are strings with non-blank code.
    Otherwise it is recorded once, under the first kind that applies: bad_utf8, bad_json, not_object,
    missing_field, non_string_field, empty_code (blank lines: blank_line). `detokenize_text=True` runs
    `detokenize` on both fields (for space-tokenized data such as BabelTower's exec_dev.jsonl).
    """
    path = Path(path)
    report = DataReport(sources=[path.name])
    pairs = []
    for line_number, raw in enumerate(_read_lines(path), start=1):
        report.lines_read += 1
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            report.add("bad_utf8", path.name, line_number, str(error))
            continue
        if not text.strip():
            report.add("blank_line", path.name, line_number, "blank line")
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as error:
            report.add("bad_json", path.name, line_number, f"{error.msg} at column {error.colno}")
            continue
        if not isinstance(record, dict):
            report.add("not_object", path.name, line_number, f"a JSON {type(record).__name__}, not an object")
            continue
        missing = [name for name in (source_field, target_field) if name not in record]
        if missing:
            report.add("missing_field", path.name, line_number, f"missing {missing}; has {sorted(record)}")
            continue
        wrong = [f"{name!r} is {type(record[name]).__name__}" for name in (source_field, target_field) if not isinstance(record[name], str)]
        if wrong:
            report.add("non_string_field", path.name, line_number, ", ".join(wrong) + " (expected a string)")
            continue
        blank = [name for name in (source_field, target_field) if not record[name].strip()]
        if blank:
            report.add("empty_code", path.name, line_number, f"blank {blank}")
            continue
        origin = f"{path.name}:{line_number}"
        source, target = record[source_field], record[target_field]
        if detokenize_text:
            try:
                pair = Pair(detokenize(source), detokenize(target), origin, source_raw=source, target_raw=target)
            except ValueError as error:
                report.add("detokenize_failed", path.name, line_number, str(error))
                continue
        else:
            pair = Pair(source, target, origin)
        pairs.append(pair)
        report.loaded += 1
    return pairs, report


# ---------------------------------------------------------------------------------------------------
# BabelTower .tok files
# ---------------------------------------------------------------------------------------------------


def load_babeltower(cpp_tok_path: str | Path, cuda_tok_path: str | Path) -> tuple[list[Pair], DataReport]:
    """Pairs from BabelTower's paired, space-tokenized files (line i of one pairs with line i of the other).

    Each side is detokenized into ordinary source; the stored line is kept in `source_raw`/`target_raw`.
    Different line counts mean the files are not a pair: ValueError naming both counts.
    """
    cpp_path, cuda_path = Path(cpp_tok_path), Path(cuda_tok_path)
    cpp_lines, cuda_lines = _read_lines(cpp_path), _read_lines(cuda_path)
    if len(cpp_lines) != len(cuda_lines):
        raise ValueError(
            f"paired files differ in length: {cpp_path} has {len(cpp_lines)} lines, {cuda_path} has {len(cuda_lines)}"
        )
    report = DataReport(sources=[f"{cpp_path.name} + {cuda_path.name}"])
    pairs = []
    for line_number, (cpp_raw, cuda_raw) in enumerate(zip(cpp_lines, cuda_lines), start=1):
        report.lines_read += 1
        texts = []
        for name, raw in ((cpp_path.name, cpp_raw), (cuda_path.name, cuda_raw)):
            try:
                texts.append(raw.decode("utf-8"))
            except UnicodeDecodeError as error:
                report.add("bad_utf8", name, line_number, str(error))
                break
        if len(texts) != 2:
            continue
        cpp_text, cuda_text = texts
        blank = [name for name, text in ((cpp_path.name, cpp_text), (cuda_path.name, cuda_text)) if not text.strip()]
        if blank:
            report.add("empty_code", blank[0], line_number, f"blank line in {blank}")
            continue
        try:
            source, target = detokenize(cpp_text), detokenize(cuda_text)
        except ValueError as error:
            report.add("detokenize_failed", cpp_path.name, line_number, str(error))
            continue
        pairs.append(Pair(source, target, f"{cpp_path.name}:{line_number}", source_raw=cpp_text, target_raw=cuda_text))
        report.loaded += 1
    return pairs, report


def _tok_partner(path: Path) -> tuple[Path, Path]:
    """(cpp file, cuda file) for a path naming either side of a `.tok` pair."""
    name = path.name
    if name.startswith("cpp."):
        return path, path.with_name("cuda." + name[len("cpp.") :])
    if name.startswith("cuda."):
        return path.with_name("cpp." + name[len("cuda.") :]), path
    raise ValueError(f"{path}: a .tok file must be named cpp.<split>.tok or cuda.<split>.tok to find its partner")


def _load_tok_pair(cpp_path: Path, cuda_path: Path) -> tuple[list[Pair], DataReport]:
    missing = [str(p) for p in (cpp_path, cuda_path) if not p.is_file()]
    if missing:
        raise ValueError(f"incomplete .tok pair: {cpp_path.name} needs {cuda_path.name}; missing {missing}")
    return load_babeltower(cpp_path, cuda_path)


def load_pairs(path_or_dir: str | Path, **jsonl_options) -> tuple[list[Pair], DataReport]:
    """Load pairs from any supported location:

    * `x.jsonl` -> `load_jsonl` (keyword options such as `source_field` go to it);
    * `dir/cpp.S.tok` or `dir/cuda.S.tok` -> that pair of files;
    * a directory -> every `cpp.*.tok` with its `cuda.*.tok` (sorted by name, reports merged);
    * a prefix `dir/S` (or `dir/S.tok`) -> `dir/cpp.S.tok` + `dir/cuda.S.tok`.
    """
    path = Path(path_or_dir)
    if path.is_file() and path.suffix == ".jsonl":
        return load_jsonl(path, **jsonl_options)
    if jsonl_options:
        raise ValueError(f"{path}: options {sorted(jsonl_options)} apply to .jsonl files only")
    if path.is_file():
        if path.suffix == ".tok":
            return _load_tok_pair(*_tok_partner(path))
        raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected .jsonl or a cpp./cuda. .tok file")
    if path.is_dir():
        cpp_files = sorted(path.glob("cpp.*.tok"))
        cuda_files = sorted(path.glob("cuda.*.tok"))
        orphans = sorted({_tok_partner(p)[0].name for p in cuda_files} - {p.name for p in cpp_files})
        if orphans:
            raise ValueError(f"{path}: CUDA .tok files without their C side: missing {orphans}")
        if not cpp_files:
            raise ValueError(f"{path}: no cpp.*.tok + cuda.*.tok pairs in this directory")
        pairs: list[Pair] = []
        report = DataReport()
        for cpp_path in cpp_files:
            more_pairs, more_report = _load_tok_pair(*_tok_partner(cpp_path))
            pairs += more_pairs
            report = report.merge(more_report)
        return pairs, report
    prefix = path.name[: -len(".tok")] if path.name.endswith(".tok") else path.name
    cpp_path, cuda_path = path.with_name(f"cpp.{prefix}.tok"), path.with_name(f"cuda.{prefix}.tok")
    if cpp_path.is_file() or cuda_path.is_file():
        return _load_tok_pair(cpp_path, cuda_path)
    raise FileNotFoundError(
        f"{path}: no such file or directory, and not a prefix of {cpp_path.name} + {cuda_path.name}"
    )


# ---------------------------------------------------------------------------------------------------
# Detokenizer
# ---------------------------------------------------------------------------------------------------
#
# BabelTower's tokenizer (from TransCoder) writes every C token separated by one space, plus a few
# conventions of its own, which the detokenizer and its lexer follow:
#   * string / char literals are split into pieces: `" % i ▁ ! = ▁ % i \n "` is `"%i != %i \n"`
#     (▁ marks a space; runs of letters/digits, escapes and single other characters are the pieces);
#   * a minus sign belongs to a number literal where it cannot be binary: `x = -1 ;` vs `n - 1`;
#   * `ENDCOM` ends a preprocessor line (`#pragma omp parallel for ENDCOM for ( ...`), and a directive
#     may be one token (`#pragma`) or two (`# 16 "file"`);
#   * `<unk>` (an unknown character) ends the word it is glued to: `cuda_Cross<unk> py_forward`.

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


# ---------------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------------


def split_pairs(
    pairs: Sequence[Pair], train_ratio: float = 0.8, test_ratio: float = 0.1, seed: int = 42
) -> tuple[list[Pair], list[Pair], list[Pair]]:
    """Shuffle with `random.Random(seed)` and cut into (train, val, test).

    train gets round(n * train_ratio) pairs, test round(n * test_ratio) (capped to what is left), val
    the remainder. `random.Random` with an int seed does not depend on PYTHONHASHSEED, so the same
    pairs and seed give the same split on every run. Each split keeps the pairs' original order.
    """
    for name, ratio in (("train_ratio", train_ratio), ("test_ratio", test_ratio)):
        if not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise ValueError(f"{name} must be in [0, 1], got {ratio!r}")
    if train_ratio + test_ratio > 1.0 + 1e-9:
        raise ValueError(f"train_ratio + test_ratio must be <= 1, got {train_ratio} + {test_ratio} = {train_ratio + test_ratio}")
    if not isinstance(seed, int):
        raise ValueError(f"seed must be an int, got {seed!r}")
    count = len(pairs)
    order = list(range(count))
    random.Random(seed).shuffle(order)
    train_count = round(count * train_ratio)
    test_count = min(round(count * test_ratio), count - train_count)
    train_indices = sorted(order[:train_count])
    test_indices = sorted(order[train_count : train_count + test_count])
    val_indices = sorted(order[train_count + test_count :])
    return ([pairs[i] for i in train_indices], [pairs[i] for i in val_indices], [pairs[i] for i in test_indices])


# ---------------------------------------------------------------------------------------------------
# Length policy
# ---------------------------------------------------------------------------------------------------


@dataclass
class LengthReport:
    """What `apply_length_policy` did. Origins identify the pairs; `truncated` lists (origin, number of
    prompt tokens the tokenization step must cut from the end of the source)."""

    max_length: int
    policy: str
    total: int = 0
    kept: int = 0
    skipped: list[str] = field(default_factory=list)
    truncated: list[tuple[str, int]] = field(default_factory=list)
    target_too_long: int = 0  # skipped pairs whose target alone leaves no room for a prompt
    longest: int = 0  # longest prompt + target seen, in tokens

    def summary(self, max_origins: int = 5) -> str:
        text = f"length policy {self.policy!r} at max_length={self.max_length}: kept {self.kept} of {self.total}"
        if self.truncated:
            text += f"; {len(self.truncated)} kept with the source cut"
        if self.skipped:
            shown = ", ".join(self.skipped[:max_origins]) + (", ..." if len(self.skipped) > max_origins else "")
            text += f"; skipped {len(self.skipped)} ({shown}), {self.target_too_long} with a target too long by itself"
        return text + f"; longest pair {self.longest} tokens"


def apply_length_policy(
    pairs: Sequence[Pair],
    count_tokens: Callable[[Pair], tuple[int, int]],
    max_length: int,
    policy: Literal["skip", "truncate_source"] = "skip",
    *,
    min_prompt_tokens: int = 1,
) -> tuple[list[Pair], LengthReport]:
    """Decide what happens to pairs whose prompt + target exceed `max_length` tokens.

    `count_tokens(pair)` returns (prompt tokens, target tokens) as the trainer will tokenize them.
    The target is never truncated: a model trained on cut-off kernels learns to stop mid-kernel.

    * "skip" (default): over-long pairs are left out and listed in the report.
    * "truncate_source": an over-long pair is kept when cutting the source is enough, i.e. when the
      target plus `min_prompt_tokens` (the prompt template and what must remain of the source) fits;
      the pair is returned unchanged and `report.truncated` says how many prompt tokens the
      tokenization step must cut. Pairs whose target alone does not leave that room are skipped.
    """
    if policy not in ("skip", "truncate_source"):
        raise ValueError(f"policy must be 'skip' or 'truncate_source', got {policy!r}")
    if not isinstance(max_length, int) or max_length <= 0:
        raise ValueError(f"max_length must be a positive int, got {max_length!r}")
    if not isinstance(min_prompt_tokens, int) or not 0 < min_prompt_tokens < max_length:
        raise ValueError(f"min_prompt_tokens must be an int in (0, max_length={max_length}), got {min_prompt_tokens!r}")
    report = LengthReport(max_length=max_length, policy=policy)
    kept = []
    for pair in pairs:
        counts = count_tokens(pair)
        if (
            not isinstance(counts, tuple)
            or len(counts) != 2
            or not all(isinstance(c, int) and c >= 0 for c in counts)
        ):
            raise ValueError(f"count_tokens must return (prompt_tokens, target_tokens) >= 0, got {counts!r} for {pair.origin}")
        prompt_tokens, target_tokens = counts
        report.total += 1
        report.longest = max(report.longest, prompt_tokens + target_tokens)
        if prompt_tokens + target_tokens <= max_length:
            kept.append(pair)
            continue
        source_can_be_cut = target_tokens + min_prompt_tokens <= max_length
        if policy == "truncate_source" and source_can_be_cut:
            report.truncated.append((pair.origin, prompt_tokens + target_tokens - max_length))
            kept.append(pair)
            continue
        report.skipped.append(pair.origin)
        report.target_too_long += not source_can_be_cut
    report.kept = len(kept)
    return kept, report

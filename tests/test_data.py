"""train.data: loaders and their reports, the BabelTower detokenizer, the split and the length policy."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from train.data import load_babeltower, load_jsonl, load_pairs
from train.detokenize import detokenize
from train.pairs import Pair
from train.splits import apply_length_policy, split_pairs

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------
# JSON Lines
# ---------------------------------------------------------------------------------------------------


def _write_lines(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _record(cpp, cuda) -> bytes:
    return json.dumps({"cpp": cpp, "generated_cuda": cuda}).encode()


def test_load_jsonl_reports_every_malformed_line(tmp_path):
    path = _write_lines(
        tmp_path / "mixed.jsonl",
        [
            _record("void f() {}", "__global__ void f() {}"),  # 1 ok
            b'{"cpp": "void g() {}", ',  # 2 bad json
            b'["not", "an", "object"]',  # 3 not an object
            json.dumps({"cpp": "void h() {}"}).encode(),  # 4 missing generated_cuda
            json.dumps({"cpp": 7, "generated_cuda": "x"}).encode(),  # 5 non-string
            _record("void e() {}", "   \n"),  # 6 empty code
            b"",  # 7 blank line
            _record("void z() {}", "__global__ void z() {}"),  # 8 ok
            b'{"cpp": "\xff\xfe", "generated_cuda": "x"}',  # 9 bad utf-8
            b'{"cpp": "a", ',  # 10 bad json again
        ],
    )
    pairs, report = load_jsonl(path)
    assert [pair.origin for pair in pairs] == ["mixed.jsonl:1", "mixed.jsonl:8"]
    assert pairs[1] == Pair("void z() {}", "__global__ void z() {}", "mixed.jsonl:8")
    assert report.lines_read == 10 and report.loaded == 2 and report.skipped == 8
    assert report.lines("bad_json") == [2, 10]
    assert report.lines("not_object") == [3]
    assert report.lines("missing_field") == [4]
    assert report.lines("non_string_field") == [5]
    assert report.lines("empty_code") == [6]
    assert report.lines("blank_line") == [7]
    assert report.lines("bad_utf8") == [9]
    summary = report.summary()
    assert "loaded 2 of 10" in summary
    assert "bad_json: 2 (mixed.jsonl:2, mixed.jsonl:10)" in summary
    assert "missing_field: 1 (mixed.jsonl:4)" in summary and "generated_cuda" in summary


def test_load_jsonl_custom_fields_and_detokenize(tmp_path):
    path = _write_lines(tmp_path / "tok.jsonl", [json.dumps({"c": "a [ i ] ++ ;", "k": "b = - 1 ;"}).encode()])
    (pair,), report = load_jsonl(path, source_field="c", target_field="k", detokenize_text=True)
    assert (pair.source, pair.target) == ("a[i]++;", "b = - 1;")
    assert (pair.source_raw, pair.target_raw) == ("a [ i ] ++ ;", "b = - 1 ;")
    assert "nothing skipped" in report.summary()


# ---------------------------------------------------------------------------------------------------
# BabelTower files and load_pairs
# ---------------------------------------------------------------------------------------------------


def _tok_pair(directory: Path, split: str, cpp_lines: list[str], cuda_lines: list[str]) -> tuple[Path, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    cpp, cuda = directory / f"cpp.{split}.tok", directory / f"cuda.{split}.tok"
    cpp.write_text("".join(line + "\n" for line in cpp_lines))
    cuda.write_text("".join(line + "\n" for line in cuda_lines))
    return cpp, cuda


def test_load_babeltower_detokenizes_and_keeps_raw(tmp_path):
    cpp, cuda = _tok_pair(
        tmp_path,
        "valid",
        ["void add ( int n , float * x ) { x [ 0 ] ++ ; }", "   ", "int g ( ) { return -1 ; }"],
        ["__global__ void add ( float * x ) { x [ threadIdx . x ] ++ ; }", "__global__ void e ( ) { }", "x"],
    )
    pairs, report = load_babeltower(cpp, cuda)
    assert [pair.origin for pair in pairs] == ["cpp.valid.tok:1", "cpp.valid.tok:3"]
    assert pairs[0].source == "void add(int n, float *x) { x[0]++; }"
    assert pairs[0].target == "__global__ void add(float *x) { x[threadIdx.x]++; }"
    assert pairs[0].source_raw == "void add ( int n , float * x ) { x [ 0 ] ++ ; }"
    assert pairs[1].source == "int g() { return -1; }"
    assert report.lines("empty_code") == [2]


def test_load_babeltower_rejects_mismatched_files(tmp_path):
    cpp, cuda = _tok_pair(tmp_path, "valid", ["a ;", "b ;", "c ;"], ["a ;", "b ;"])
    with pytest.raises(ValueError, match=r"3 lines.* 2"):
        load_babeltower(cpp, cuda)


def test_load_pairs_dispatch(tmp_path):
    data = tmp_path / "data"
    _tok_pair(data, "train", ["a ;", "b ;"], ["c ;", "d ;"])
    _tok_pair(data, "valid", ["e ;"], ["f ;"])
    jsonl = _write_lines(tmp_path / "x.jsonl", [_record("void f() {}", "__global__ void f() {}")])

    pairs, report = load_pairs(data)  # directory: every split, sorted by name
    assert [pair.origin for pair in pairs] == ["cpp.train.tok:1", "cpp.train.tok:2", "cpp.valid.tok:1"]
    assert report.loaded == 3 and len(report.sources) == 2
    assert [p.target for p in load_pairs(data / "cuda.valid.tok")[0]] == ["f;"]  # either side names the pair
    assert [p.source for p in load_pairs(data / "train")[0]] == ["a;", "b;"]  # a prefix
    assert load_pairs(jsonl)[0][0].origin == "x.jsonl:1"

    with pytest.raises(ValueError, match="source_field"):
        load_pairs(data, source_field="cpp_code")
    with pytest.raises(FileNotFoundError, match="nope"):
        load_pairs(data / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no cpp"):
        load_pairs(tmp_path / "empty")
    (data / "cuda.orphan.tok").write_text("x ;\n")
    with pytest.raises(ValueError, match="cpp.orphan.tok"):
        load_pairs(data)


# ---------------------------------------------------------------------------------------------------
# Detokenizer
# ---------------------------------------------------------------------------------------------------


def test_detokenize_examples():
    assert detokenize("void add ( int n , float * x ) { a [ i ] ++ ; }") == "void add(int n, float *x) { a[i]++; }"
    assert detokenize("if ( p -> next != NULL ) return * p ;") == "if (p->next != NULL) return *p;"
    assert detokenize("x = - y ; z = a - b ; w = ! c ;") == "x = -y; z = a - b; w = !c;"
    assert detokenize("printf ( \" % d ▁ items ▁ \\n \" , n ) ;") == 'printf("%d items \\n", n);'
    assert detokenize("k <<< grid , block >>> ( a ) ;") == "k<<<grid, block>>>(a);"
    assert detokenize("y = c ? 1 : -1 ; case 2 : break ;") == "y = c ? 1 : -1; case 2: break;"


@pytest.mark.parametrize(
    "tokens",
    [
        "a = - - b ;",  # `--b` would be one token
        "a = b - -1 ;",  # `-` then the signed literal -1
        "c = + + d ;",
        "e = f / * g ;",  # `/*` would open a comment
        "# include < stdio . h >",  # `#include` would be one token
        "a = - 1 ;",  # unary minus then 1: not the literal -1
        "p = & & q ;",
        "x = y . 5 ;",
    ],
)
def test_detokenize_never_merges_tokens(tokens):
    assert _test_tokens(detokenize(tokens)) == tokens.split()


def test_detokenize_puts_directives_on_their_own_line():
    text = detokenize("int i ; #pragma omp parallel for ENDCOM for ( i = 0 ; i < n ; i ++ ) { }")
    assert text == "int i;\n#pragma omp parallel for\nfor (i = 0; i < n; i++) { }"


def test_detokenize_rejects_unrepresentable_tokens():
    with pytest.raises(ValueError, match="cannot detokenize"):
        detokenize("( a ) -1 ;")  # a signed literal right after an operand lexes as a binary minus


# An independent lexer for the round-trip property, following the conventions of BabelTower's files:
# string/char literals are split into pieces (escapes, letter/digit runs, single characters, ▁ for a
# space), `-` glued to a number after an operator is one literal, `#pragma` is one token, the newline
# ending a preprocessor line is ENDCOM, and `<unk>` ends the word it is glued to.
_THREE = ("<<=", ">>=", "...", "->*")
_TWO = ("->", "++", "--", "<<", ">>", "<=", ">=", "==", "!=", "&&", "||", "+=", "-=", "*=", "/=", "%=", "&=", "|=", "^=", "::", "##")
_KEYWORDS = {"return", "case", "else", "do", "throw", "int", "float", "double", "long", "char", "const", "unsigned", "void"}


def _literal_pieces(body: str) -> list[str]:
    return ["▁" if piece == " " else piece for piece in re.findall(r"\\.|[A-Za-z0-9]+(?:<unk>)?|<unk>|.", body)]


def _operand_before(tokens: list[str]) -> bool:
    if not tokens:
        return False
    last = tokens[-1]
    if last in (")", "]", "++", "--", '"', "'"):
        return True
    return bool(re.fullmatch(r"[A-Za-z_]\w*(<unk>)?|-?\.?\d[\w.+-]*", last)) and last not in _KEYWORDS


def _test_tokens(code: str) -> list[str]:
    tokens: list[str] = []
    i, line_start, directive = 0, True, False
    while i < len(code):
        ch = code[i]
        if ch == "\n":
            if directive:
                tokens.append("ENDCOM")
            i, line_start, directive = i + 1, True, False
            continue
        if ch in " \t\r":
            i += 1
            continue
        if line_start and ch == "#":
            directive = True
        line_start = False
        if ch in "\"'":
            end = i + 1
            while code[end] != ch:
                end += 2 if code[end] == "\\" else 1
            tokens += [ch, *_literal_pieces(code[i + 1 : end]), ch]
            i = end + 1
            continue
        word = re.compile(r"#[A-Za-z_]\w*|[A-Za-z_]\w*(?:<unk>)?|<unk>").match(code, i)
        number = re.compile(r"-?\.?\d(?:[eE][+-]|[\w.])*").match(code, i)
        if word:
            tokens.append(word.group())
            i = word.end()
        elif number and (ch != "-" or not _operand_before(tokens)):
            tokens.append(number.group())
            i = number.end()
        else:
            op = next((code[i : i + n] for n in (3, 2) if code[i : i + n] in (_THREE if n == 3 else _TWO)), ch)
            if op in ("/", "/*") and code[i : i + 2] in ("//", "/*"):
                op = code[i : i + 2]  # a comment opener is a change of tokens too
            tokens.append(op)
            i += len(op)
    return tokens


def test_test_lexer_knows_the_conventions():
    # the property below is only as good as this lexer: check it splits what must be split
    assert _test_tokens('a-1 = -1; x = - 1; s = "a b\\n";') == ["a", "-", "1", "=", "-1", ";", "x", "=", "-", "1", ";", "s", "=", '"', "a", "▁", "b", "\\n", '"', ";"]
    assert _test_tokens("#pragma once\nx++ + ++y") == ["#pragma", "once", "ENDCOM", "x", "++", "+", "++", "y"]


def test_detokenize_round_trips_every_babeltower_line(shared_data):
    folder = shared_data / "babeltower"
    files = [folder / "cpp.para.valid.tok", folder / "cuda.para.valid.tok"]
    if not all(path.is_file() for path in files):
        pytest.skip(f"BabelTower .tok files are absent from {folder}")
    checked = 0
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
            if not line.strip():
                continue
            text = detokenize(line)
            assert _test_tokens(text) == line.split(), f"{path.name}:{number}: {text}"
            assert len(text) < len(line), f"{path.name}:{number} was not compacted"
            checked += 1
    assert checked == 2 * 184


def test_detokenize_round_trips_exec_dev(shared_data):
    path = shared_data / "babeltower" / "exec_dev.jsonl"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    pairs, report = load_jsonl(path, source_field="cpp_code", target_field="cuda_code", detokenize_text=True)
    assert report.loaded == report.lines_read > 0, report.summary()
    for pair in pairs:
        assert _test_tokens(pair.source) == pair.source_raw.split(), pair.origin
        assert _test_tokens(pair.target) == pair.target_raw.split(), pair.origin


def test_babeltower_detokenized_code_parses(shared_data):
    """Detokenized lines are ordinary source: each C line is one function, each CUDA line parses."""
    from kernelcheck.parsing import check_cuda_syntax, find_functions

    pairs, report = load_pairs(shared_data / "babeltower")
    assert report.loaded == 184, report.summary()
    # lines carrying BabelTower artefacts (<unk>, a `# 16 "file"` line marker with no ENDCOM) are excluded
    clean = [pair for pair in pairs if "<unk>" not in pair.source_raw + pair.target_raw]
    assert len(clean) >= 180
    for pair in clean:
        assert len(find_functions(pair.source)) == 1, pair.origin
        assert check_cuda_syntax(pair.target) == [], pair.origin


# ---------------------------------------------------------------------------------------------------
# Split
# ---------------------------------------------------------------------------------------------------


def _pairs(count: int) -> list[Pair]:
    return [Pair(f"void f{i}() {{}}", f"__global__ void f{i}() {{}}", f"x.jsonl:{i + 1}") for i in range(count)]


def test_split_is_a_reproducible_partition():
    pairs = _pairs(103)
    train, val, test = split_pairs(pairs, 0.8, 0.1, seed=7)
    assert (len(train), len(val), len(test)) == (82, 11, 10)
    origins = [p.origin for p in train + val + test]
    assert sorted(origins) == sorted(p.origin for p in pairs) and len(set(origins)) == len(pairs)
    assert split_pairs(pairs, 0.8, 0.1, seed=7) == (train, val, test)
    assert split_pairs(pairs, 0.8, 0.1, seed=8) != (train, val, test)
    assert split_pairs(pairs, 1.0, 0.0) == (pairs, [], [])
    assert split_pairs([], 0.8, 0.1) == ([], [], [])


def test_split_does_not_depend_on_hash_seed():
    script = (
        "from train.pairs import Pair\nfrom train.splits import split_pairs\n"
        "pairs = [Pair(str(i), str(i), str(i)) for i in range(50)]\n"
        "print([[p.origin for p in part] for part in split_pairs(pairs, 0.6, 0.2, seed=3)])\n"
    )
    outputs = set()
    for hash_seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        run = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True, check=True)
        outputs.add(run.stdout)
    assert len(outputs) == 1


@pytest.mark.parametrize("train_ratio, test_ratio", [(-0.1, 0.1), (1.5, 0.0), (0.8, 0.3), (0.5, float("nan"))])
def test_split_rejects_bad_ratios(train_ratio, test_ratio):
    with pytest.raises(ValueError, match="ratio"):
        split_pairs(_pairs(10), train_ratio, test_ratio)


# ---------------------------------------------------------------------------------------------------
# Length policy
# ---------------------------------------------------------------------------------------------------


def _lengths(table: dict[str, tuple[int, int]]):
    return lambda pair: table[pair.origin]


def test_length_policy_skip_counts_over_long_pairs():
    pairs = _pairs(4)
    table = {"x.jsonl:1": (10, 10), "x.jsonl:2": (30, 5), "x.jsonl:3": (2, 40), "x.jsonl:4": (15, 17)}
    kept, report = apply_length_policy(pairs, _lengths(table), max_length=32)
    assert [p.origin for p in kept] == ["x.jsonl:1", "x.jsonl:4"]
    assert report.skipped == ["x.jsonl:2", "x.jsonl:3"]
    assert (report.total, report.kept, report.target_too_long, report.longest) == (4, 2, 1, 42)
    assert kept[0] is pairs[0]  # nothing rewritten
    assert "kept 2 of 4" in report.summary()


def test_length_policy_truncate_source_never_cuts_target():
    pairs = _pairs(3)
    table = {"x.jsonl:1": (10, 10), "x.jsonl:2": (30, 5), "x.jsonl:3": (2, 40)}
    kept, report = apply_length_policy(pairs, _lengths(table), max_length=32, policy="truncate_source", min_prompt_tokens=8)
    assert [p.origin for p in kept] == ["x.jsonl:1", "x.jsonl:2"]
    assert report.truncated == [("x.jsonl:2", 3)]  # 30 + 5 - 32 prompt tokens to cut
    assert report.skipped == ["x.jsonl:3"] and report.target_too_long == 1
    assert kept[1].source == pairs[1].source and kept[1].target == pairs[1].target


def test_length_policy_validates_arguments():
    with pytest.raises(ValueError, match="policy"):
        apply_length_policy(_pairs(1), lambda p: (1, 1), 10, policy="truncate_target")
    with pytest.raises(ValueError, match="max_length"):
        apply_length_policy(_pairs(1), lambda p: (1, 1), 0)
    with pytest.raises(ValueError, match="x.jsonl:1"):
        apply_length_policy(_pairs(1), lambda p: (1, -1), 10)

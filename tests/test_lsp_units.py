"""Unit tests of the language server's pure parts: settings, positions, function lookup, kernel cleaning, edit
building for every placement, routing rendering, kernel checks. No processes, no daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon import protocol as P
from lsp_server.documents import OpenDocument, TextView, grammar_for, innermost, outermost_only, path_to_uri
from lsp_server.features.diagnostics import check_kernel
from lsp_server.features.edits import Kernel, build_edit, clean_kernel, target_for
from lsp_server.features.hover import bar, render_routing
from lsp_server.settings import Settings, changed_keys, parse_settings, section_of
from kernelcheck.parsing import find_functions
from lsprotocol import types

# ---------------------------------------------------------------------------------------------- settings


def test_settings_defaults_and_both_shapes():
    defaults, problems = parse_settings(None)
    assert defaults == Settings() and problems == []
    assert (defaults.placement, defaults.mode, defaults.autostart, defaults.endpoint) == ("newFile", "full", True, None)
    raw = {"endpoint": "ipc:///tmp/x.sock", "maxNewTokens": 64, "temperature": 0.5, "placement": "belowFunction",
           "mode": "full", "autostart": False, "preset": "tiny", "checkpoint": "/ckpt"}
    for shape in ({"mot": raw}, raw):
        settings, problems = parse_settings(shape)
        assert problems == []
        assert settings.to_editor_dict() | raw == settings.to_editor_dict()
    assert section_of({"other": 1}) is None
    # What VS Code sends: the whole section, with the client's own keys (ignored without a warning).
    settings, problems = parse_settings({"mot": {**raw, "server": {"command": ["mot-lsp"]}, "trace": {"server": "off"}}})
    assert problems == [] and settings.placement == "belowFunction"


def test_bad_settings_are_reported_and_keep_the_previous_value():
    base = Settings(placement="replaceSelection", max_new_tokens=99)
    settings, problems = parse_settings(
        {"mot": {"placement": "sideways", "maxNewTokens": 0, "temperature": "hot", "mode": "full", "typo": 1}}, base
    )
    assert settings.placement == "replaceSelection" and settings.max_new_tokens == 99 and settings.mode == "full"
    assert len(problems) == 4
    assert any("mot.placement" in p and "newFile" in p for p in problems)
    assert any("unknown setting mot.typo" in p for p in problems)
    # null means "the default" for non-nullable keys, "unset" for nullable ones
    settings, problems = parse_settings({"mot": {"placement": None, "endpoint": None}}, base)
    assert settings.placement == "newFile" and settings.endpoint is None and problems == []
    assert changed_keys(base, settings) == {"placement"}


def test_translate_options_follow_the_settings():
    settings, _ = parse_settings({"mot": {"maxNewTokens": 7, "mode": "full", "temperature": 0.2, "requestTimeout": 9,
                                          "candidates": 2, "verify": "off"}})
    assert settings.translate_options() == {
        "mode": "full", "max_new_tokens": 7, "temperature": 0.2, "ignore_eos": False, "timeout_s": 9.0,
        "candidates": 2, "verify": "off",
    }


def test_bad_candidates_and_verify_settings_are_reported_and_keep_their_values():
    settings, problems = parse_settings({"mot": {"candidates": 0, "verify": "sometimes"}})
    assert (settings.candidates, settings.verify) == (4, "auto")
    assert problems == ["mot.candidates must be between 1 (greedy only) and 16, got 0",
                        "mot.verify must be one of auto, off; got 'sometimes'"]
    settings, problems = parse_settings({"mot": {"candidates": 2.5}})
    assert problems == ["mot.candidates must be a whole number, got 2.5"] and settings.candidates == 4


# ---------------------------------------------------------------------------------------------- positions


@pytest.mark.parametrize(
    "encoding, character",
    [(types.PositionEncodingKind.Utf16, 7), (types.PositionEncodingKind.Utf8, 10), (types.PositionEncodingKind.Utf32, 6)],
)
def test_text_view_converts_client_units(encoding, character):
    text = "int x;\n/* é😀 */ int y;\n"
    view = TextView(text, encoding)
    # "/* é😀 */": the position right after the emoji is code point 5... in client units: see `character`
    point = view.to_point(types.Position(line=1, character=character - 1))
    assert point == (1, 5)
    assert view.to_position(1, 5) == types.Position(line=1, character=character - 1)
    assert view.slice((1, 3), (1, 5)) == "é😀"
    assert view.to_point(types.Position(line=9, character=0)) == view.end_point() == (2, 0)
    assert view.to_point(types.Position(line=0, character=99)) == (0, 6)  # clamped to the line


def test_grammar_for_language_ids_and_extensions():
    assert grammar_for("cpp", "file:///a.cpp") == "cpp"
    assert grammar_for("c", "file:///a.c") == "cpp"
    assert grammar_for("cuda", "file:///a.cu") == "cuda"
    assert grammar_for("cuda-cpp", "file:///a.cu") == "cuda"  # VS Code's id
    assert grammar_for("python", "file:///a.cpp") is None
    assert grammar_for(None, "file:///a.cuh") == "cuda"
    assert grammar_for("", "file:///notes.txt") is None


def test_function_lookup_innermost_and_outermost():
    text = "struct S {\n  int f() { return 1; }\n};\nint g() {\n  struct L { int h() { return 2; } };\n  return 3;\n}\n"
    spans = find_functions(text)
    assert [s.name for s in spans] == ["f", "g", "h"]
    assert innermost(spans, 4, 20).name == "h"
    assert innermost(spans, 5, 2).name == "g"
    assert innermost(spans, 2, 0) is None
    assert [s.name for s in outermost_only(spans)] == ["f", "g"]


# ---------------------------------------------------------------------------------------------- kernels and edits


def test_clean_kernel():
    assert clean_kernel("```cuda\n__global__ void k() {}\n```") == "__global__ void k() {}"
    assert clean_kernel("\n\n  a\x00b\x7f\r\nc  \n\n") == "  ab\nc"
    assert clean_kernel("\x01\x02 \n\t\n") == ""


SOURCE = "#include <cstdio>\n\nvoid f(int* a) {\n  a[0] = 1;\n}\n\nint g() { return 2; }\n"


def _document(tmp_path: Path, text: str = SOURCE, version: int = 3, encoding=types.PositionEncodingKind.Utf16):
    path = tmp_path / "main.cpp"
    path.write_text(text)
    return OpenDocument(path_to_uri(path), version, text, "cpp", TextView(text, encoding))


def _kernel(text="__global__ void f(int* a) { a[0] = 1; }", name="f", start=(2, 0), end=(4, 1)):
    return Kernel(text, name, start, end, "tiny-qwen2")


def _parts(edit: types.WorkspaceEdit):
    creates = [c for c in edit.document_changes if isinstance(c, types.CreateFile)]
    texts = [c for c in edit.document_changes if isinstance(c, types.TextDocumentEdit)]
    return creates, texts


def test_new_file_is_created_then_appended(tmp_path):
    document = _document(tmp_path)
    target = target_for(document, None)
    assert target.path == tmp_path / "main.cu" and not target.exists
    edit, placed = build_edit(placement="newFile", source=document, kernels=[_kernel()], target=target)
    creates, texts = _parts(edit)
    assert creates[0].uri == target.uri and creates[0].options.ignore_if_exists
    (text_edit,) = texts
    assert text_edit.text_document.version is None
    new_text = text_edit.edits[0].new_text
    assert new_text == ("// MoT: CUDA translation of `f` (main.cpp:3), primary expert tiny-qwen2\n" + _kernel().text
                        + "\n// MoT: end of the translation of `f`\n")
    assert placed[0].line == 1 and placed[0].uri == target.uri

    (tmp_path / "main.cu").write_text("// mine\nint x;")  # no trailing newline
    target = target_for(document, None)
    edit, placed = build_edit(placement="newFile", source=document, kernels=[_kernel(), _kernel("k2();", "g")],
                              target=target)
    creates, (text_edit,) = _parts(edit)
    assert creates == []
    (insert,) = text_edit.edits
    assert insert.range.start == types.Position(line=1, character=6)
    result = "// mine\nint x;" + insert.new_text
    assert result.split("\n")[placed[0].line] == _kernel().text
    assert result.split("\n")[placed[1].line] == "k2();"
    assert "int x;\n\n// MoT" in result  # a blank line before each translation

    # The .cu file is open in the editor: its text and version are used.
    open_cu = OpenDocument(target.uri, 8, "// open\n", "cuda", TextView("// open\n"))
    target = target_for(document, open_cu)
    edit, _ = build_edit(placement="newFile", source=document, kernels=[_kernel()], target=target)
    (_, (text_edit,)) = _parts(edit)
    assert text_edit.text_document.version == 8
    assert text_edit.edits[0].range.start == types.Position(line=1, character=0)
    assert text_edit.edits[0].new_text.startswith("\n// MoT")


def test_translating_a_function_again_replaces_its_block_and_nothing_else(tmp_path):
    document = _document(tmp_path)
    first = build_edit(placement="newFile", source=document, kernels=[_kernel(), _kernel("k_g();", "g")],
                       target=target_for(document, None))[0]
    text = "// mine\n\n" + _parts(first)[1][0].edits[0].new_text + "int user_code;\n"
    (tmp_path / "main.cu").write_text(text)

    # g again, with f2 (a new function): g's block is replaced where it is, f2 is appended, the rest is kept.
    kernels = [_kernel("k_g2();", "g"), _kernel("k_f2();", "f2")]
    edit, placed = build_edit(placement="newFile", source=document, kernels=kernels,
                              target=target_for(document, None))
    (_, (text_edit,)) = _parts(edit)
    after = _apply(text, text_edit.edits)
    assert after.count("translation of `g`") == 2 and "k_g();" not in after  # its header and end line, once
    assert after.index("k_g2();") < after.index("int user_code;") < after.index("k_f2();")
    assert "// mine\n" in after and _kernel().text in after and "int user_code;\n" in after
    lines = after.split("\n")
    assert [lines[p.line] for p in placed] == ["k_g2();", "k_f2();"]

    # A block without its end line (edited away, or written by an older version) is left alone: append.
    damaged = text.replace("// MoT: end of the translation of `g`\n", "")
    (tmp_path / "main.cu").write_text(damaged)
    edit, _ = build_edit(placement="newFile", source=document, kernels=kernels[:1], target=target_for(document, None))
    (_, (text_edit,)) = _parts(edit)
    after = _apply(damaged, text_edit.edits)
    assert after.startswith(damaged) and after.endswith("k_g2();\n// MoT: end of the translation of `g`\n")
    # A selection has no name to match: always appended.
    selection = _kernel("k_s();", "selection")
    (tmp_path / "main.cu").write_text(text)
    once = _apply(text, _parts(build_edit(placement="newFile", source=document, kernels=[selection],
                                           target=target_for(document, None))[0])[1][0].edits)
    (tmp_path / "main.cu").write_text(once)
    twice = _apply(once, _parts(build_edit(placement="newFile", source=document, kernels=[selection],
                                            target=target_for(document, None))[0])[1][0].edits)
    assert twice.count("k_s();") == 2


def test_below_function_and_replace_selection(tmp_path):
    document = _document(tmp_path)
    kernels = [_kernel(), _kernel("k_g();", "g", (6, 0), (6, 21))]
    edit, placed = build_edit(placement="belowFunction", source=document, kernels=kernels, target=None)
    creates, (text_edit,) = _parts(edit)
    assert creates == [] and text_edit.text_document.uri == document.uri and text_edit.text_document.version == 3
    assert [e.range.start for e in text_edit.edits] == [types.Position(line=4, character=1), types.Position(line=6, character=21)]
    after = _apply(SOURCE, text_edit.edits)
    lines = after.split("\n")
    assert lines[placed[0].line] == kernels[0].text and lines[placed[1].line] == "k_g();"
    assert after.startswith(SOURCE[: SOURCE.index("}\n") + 1] + "\n\n// MoT: CUDA translation of `f`")

    edit, placed = build_edit(placement="replaceSelection", source=document, kernels=kernels[:1], target=None)
    (_, (text_edit,)) = _parts(edit)
    (replace,) = text_edit.edits
    assert replace.range == types.Range(start=types.Position(line=2, character=0), end=types.Position(line=4, character=1))
    after = _apply(SOURCE, [replace])
    assert "  a[0] = 1;" not in after and after.split("\n")[placed[0].line] == kernels[0].text

    # Clients without documentChanges get `changes` (and no create).
    edit, _ = build_edit(placement="replaceSelection", source=document, kernels=kernels[:1], target=None,
                         document_changes=False)
    assert edit.document_changes is None and list(edit.changes) == [document.uri]


def test_edits_count_columns_in_the_client_encoding(tmp_path):
    text = "// é😀\nvoid f() { int é = 1; }\n"
    for encoding, column in ((types.PositionEncodingKind.Utf16, 23), (types.PositionEncodingKind.Utf8, 24), ("utf-32", 23)):
        document = _document(tmp_path, text, encoding=encoding)
        span = find_functions(text)[0]
        kernel = _kernel(start=(span.start_line, span.start_col), end=(span.end_line, span.end_col))
        edit, _ = build_edit(placement="belowFunction", source=document, kernels=[kernel], target=None)
        assert _parts(edit)[1][0].edits[0].range.start == types.Position(line=1, character=column)


def _apply(text: str, edits: list[types.TextEdit]) -> str:
    lines = text.split("\n")

    def offset(p):
        return sum(len(line) + 1 for line in lines[: p.line]) + p.character

    for e in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[: offset(e.range.start)] + e.new_text + text[offset(e.range.end) :]
    return text


def test_target_file_beside_a_cu_source_is_the_source_itself(tmp_path):
    path = tmp_path / "k.cu"
    text = "__global__ void k() {}\n"
    path.write_text(text)
    document = OpenDocument(path_to_uri(path), 2, text, "cuda", TextView(text))
    target = target_for(document, None)
    edit, _ = build_edit(placement="newFile", source=document, kernels=[_kernel()], target=target)
    (_, (text_edit,)) = _parts(edit)
    assert text_edit.text_document.uri == document.uri and text_edit.text_document.version == 2


# ---------------------------------------------------------------------------------------------- hover, checks


def test_render_routing_table():
    routing = P.RouteResult(
        id="r", primary_expert=1, primary_expert_name="b", active_experts=[1, 2], expert_names=["a", "b", "c"],
        routing_probs=[0.1, 0.6, 0.3],
    )
    text = render_routing("saxpy", routing)
    lines = text.splitlines()
    assert lines[0] == "**MoT routing** for `saxpy`: primary **b**"
    rows = lines[4:]
    assert rows[0].startswith("| **b** | primary | 0.600 |")
    assert rows[1].startswith("| c | active | 0.300 |")
    assert rows[2].startswith("| a |  | 0.100 |")
    assert bar(0.6) == "█" * 12 + "░" * 8 and bar(0.0) == "░" * 20 and bar(1.0) == "█" * 20
    assert "Fast mode" not in text  # no alone head: fast mode runs the primary
    routing.alone_expert = 2
    assert render_routing("saxpy", routing).splitlines()[-1] == "Fast mode runs **c** alone."


def test_check_kernel_syntax_and_off():
    good = check_kernel("__global__ void k(float* a) { a[threadIdx.x] = 1.0f; }", "syntax")
    assert good.checker == "tree-sitter-cuda" and good.problems == []
    bad = check_kernel("__global__ void k(float* a) { a[threadIdx.x] = ; \n", "syntax")
    assert bad.problems and all(p.line in (0, 1) for p in bad.problems)
    assert check_kernel("anything", "off").problems == []


# ---------------------------------------------------------------------------------------------- incremental parsing


EDIT_SOURCE = """\
#include <vector>

template <typename T>
T clamp(T x, T lo, T hi) {
    return x < lo ? lo : (x > hi ? hi : x);
}

struct Grid {
    int w = 0;
    int at(int x, int y) const { return y * w + x; }
    Grid() = default;
};

int Grid_sum(const std::vector<int>& v) {
    int s = 0;
    for (int x : v) { s += x; }  // é, 😀
    struct Local { int twice(int a) { return 2 * a; } };
    return s;
}

void last(float* a) { a[0] = 1.0f; }
"""


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return (a.name, a.start_line, a.start_col, a.end_line, a.end_col, a.text) == (
        b.name, b.start_line, b.start_col, b.end_line, b.end_col, b.text)


@pytest.mark.parametrize("grammar, seed", [("cpp", 7), ("cuda", 4)])
def test_incremental_trees_answer_like_a_full_parse_through_random_edits(grammar, seed):
    import random

    from lsp_server.parsing import IncrementalTrees
    from kernelcheck.parsing import function_at

    rng = random.Random(seed)
    trees = IncrementalTrees()
    text = EDIT_SOURCE
    pieces = ["x", "\n", "}", "{", " int q() { return 1; }\n", "é", "😀", "//", "/*", "*/", "template <int N>\n", "",
              "__global__ void k() {}\n", "<<<1, 1>>>"]
    for version in range(1, 100):
        if version > 1:  # an edit: replace a random range by a random piece (sometimes a deletion)
            start = rng.randrange(len(text) + 1)
            end = min(len(text), start + rng.choice([0, 0, 1, 3, 12]))
            text = text[:start] + rng.choice(pieces) + text[end:]
        lines = text.split("\n")
        for _ in range(12):
            line = rng.randrange(len(lines))
            col = rng.randrange(len(lines[line]) + 1)
            expected = function_at(text, line, col, grammar=grammar)
            got = trees.function_at("file:///a.cpp", version, text, grammar, line, col)
            assert _same(got, expected), (version, line, col, got, expected, text)
    assert trees.incremental_parses > 90 and trees.full_parses == 1


def test_features_see_the_server_only_through_the_host_protocol():
    """Features depend on features.host.ServerHost, never on lsp_server.server; the server offers every member."""
    import ast
    from pathlib import Path

    from lsp_server.features import host
    from lsp_server.server import MotLanguageServer

    features = Path(host.__file__).parent
    for path in features.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom):
                module = "." * node.level + (node.module or "")
                assert module not in ("..server", "lsp_server.server"), f"{path.name} imports the server module"
    members = set(host.ServerHost.__annotations__) | {
        name for name in vars(host.ServerHost) if not name.startswith("_")
    }
    server = MotLanguageServer()
    try:
        # methods and properties on the class (a property may need an initialized session), the rest on the object
        missing = sorted(name for name in members if not hasattr(type(server), name) and name not in vars(server))
    finally:
        server.close()
    assert not missing, f"MotLanguageServer lacks {missing} of ServerHost"


def test_the_header_says_the_check_and_the_extractions_notes():
    from kernelcheck.extract import SERIAL_NOTE

    check = P.Verification(status="verified", backend="cpu", inputs=21)
    kernel = Kernel("__global__ void k() {}", "saxpy", (3, 0), (7, 1), "smollm2", check, (SERIAL_NOTE,))
    assert kernel.header("main.cpp") == ("// MoT: CUDA translation of `saxpy` (main.cpp:4), primary expert smollm2; "
                                         f"verified on 21 generated inputs (CPU); {SERIAL_NOTE}")
    assert Kernel("k", "selection", (0, 0), (1, 0), "smollm2").header("a.cpp") == (
        "// MoT: CUDA translation of the selection (a.cpp:1), primary expert smollm2")

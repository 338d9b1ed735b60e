"""`MotLanguageServer`: the state of one editor session, and the registration of one handler per LSP method.

State lives on the server object (pygls style): settings, the daemon link, the translation runner, the kernel
diagnostics, caches (functions per document version, routing per function text, the last translation per
function). Features live in `features/` and see this server through `features.host.ServerHost` (a Protocol this
class implements), never through this module; this module only wires them to LSP methods.

Threads: the asyncio loop answers LSP messages; blocking daemon calls run on `quick_pool` (status, route,
cancel) or the runner's pool (translations), checks of produced kernels on `check_pool`. pygls' own thread pool
is left alone: it reads stdin.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote

from daemon import protocol as P
from kernelcheck.candidates import SKIPPED
from lsprotocol import types
from pygls.lsp.server import LanguageServer
from pygls.protocol import LanguageServerProtocol

from . import __version__
from .daemon_link import DaemonLink, LinkState
from .documents import (
    FunctionIndex,
    OpenDocument,
    Source,
    TextView,
    encoding_name,
    grammar_for,
    text_hash,
    uri_key,
)
from .features import code_actions, commands, hover
from .features.diagnostics import KernelDiagnostics
from .features.edits import check_words
from .features.host import EditCapabilities, LastTranslation, RouteCache
from .features.translate import TranslationRunner
from .parsing import IncrementalTrees
from .settings import DAEMON_KEYS, SECTION, Settings, changed_keys, parse_settings, section_of

log = logging.getLogger(__name__)


class MotProtocol(LanguageServerProtocol):
    """pygls' protocol, plus: a $/cancelRequest also reaches translations run by nested handlers
    (workspace/executeCommand runs its command as a separate task that pygls' cancel does not reach)."""

    def _handle_cancel_notification(self, msg_id):
        server = self._server
        if isinstance(server, MotLanguageServer):
            try:
                server.runner.cancel_request(msg_id)
            except Exception:
                log.exception("cancelling the translation of request %s failed", msg_id)
        super()._handle_cancel_notification(msg_id)


class MotLanguageServer(LanguageServer):
    def __init__(self) -> None:
        super().__init__("mot-lsp", __version__, protocol_cls=MotProtocol)
        self.settings = Settings()
        self.link = DaemonLink(self.settings, tell=self.tell, on_change=self._on_link_change)
        self.runner = TranslationRunner(self)
        self.diagnostics = KernelDiagnostics(self)
        self.index = FunctionIndex()  # every function of a document version (whole-file translation)
        self.trees = IncrementalTrees()  # the function under a cursor, re-parsed incrementally after edits
        self.routes = RouteCache()
        self._translations: OrderedDict[tuple[str, str], LastTranslation] = OrderedDict()
        self.quick_pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="mot-quick")
        self.check_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mot-check")
        self.loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    # ------------------------------------------------------------------------------------------ messages

    def tell(self, kind: types.MessageType, message: str) -> None:
        """window/showMessage, from any thread (logged too)."""
        level = {types.MessageType.Error: logging.ERROR, types.MessageType.Warning: logging.WARNING}.get(
            kind, logging.INFO
        )
        log.log(level, "tell the user: %s", message)
        params = types.ShowMessageParams(type=kind, message=message)
        loop = self.loop
        if loop is not None and not loop.is_closed():
            try:
                running = asyncio.get_running_loop()
            except RuntimeError:
                running = None
            if running is not loop:
                loop.call_soon_threadsafe(self._show, params)
                return
        self._show(params)

    def _show(self, params: types.ShowMessageParams) -> None:
        try:
            self.window_show_message(params)
        except Exception:
            log.exception("could not send window/showMessage")

    def _on_link_change(self, state: LinkState) -> None:
        self.routes.clear()  # another daemon (or a restarted one) may route differently

    # ------------------------------------------------------------------------------------------ documents

    @property
    def position_encoding(self) -> str:
        return encoding_name(self.workspace.position_encoding)

    def open_document(self, uri: str, *, any_language: bool = False) -> OpenDocument | None:
        """A snapshot of an open C/C++/CUDA document (any open document with any_language), or None."""
        document = self.workspace.text_documents.get(unquote(uri))
        if document is None:
            return None
        grammar = grammar_for(document.language_id, document.uri)
        if grammar is None:
            if not any_language:
                return None
            grammar = "cuda"
        text = document.source
        return OpenDocument(document.uri, document.version, text, grammar, TextView(text, self.position_encoding))

    def open_document_by_key(self, key: str) -> OpenDocument | None:
        """The open document of a file (whatever its language: a .cu file may be open as plain text)."""
        for uri in list(self.workspace.text_documents):
            if uri_key(uri) == key:
                return self.open_document(uri, any_language=True)
        return None

    def functions(self, document: OpenDocument):
        return self.index.functions(document.uri, document.version, document.text, document.grammar)

    def function_at(self, document: OpenDocument, line: int, col: int):
        """The innermost function around (line, code point col) (event loop only: incremental parser state)."""
        return self.trees.function_at(document.uri, document.version, document.text, document.grammar, line, col)

    def remember_translation(self, document: OpenDocument, source: Source, kernel: str, result: P.TranslateResult):
        key = (uri_key(document.uri), source.name)
        checked = "" if result.check.status == SKIPPED else check_words(result.check)
        self._translations[key] = LastTranslation(
            kernel, text_hash(source.text), result.primary_expert_name, result.num_generated_tokens, time.time(),
            checked,
        )
        self._translations.move_to_end(key)
        while len(self._translations) > 1000:
            self._translations.popitem(last=False)

    def last_translation(self, uri: str, name: str) -> LastTranslation | None:
        return self._translations.get((uri_key(uri), name))

    def workspace_edit_capabilities(self) -> EditCapabilities:
        capabilities = self.client_capabilities
        edit = capabilities.workspace.workspace_edit if capabilities and capabilities.workspace else None
        if edit is None:
            return EditCapabilities(False, False)
        operations = edit.resource_operations or []
        # Resource operations exist only inside documentChanges: a client offering them (Neovim 0.11 does, without
        # setting documentChanges) takes documentChanges.
        document_changes = bool(edit.document_changes) or bool(operations)
        return EditCapabilities(document_changes, document_changes and types.ResourceOperationKind.Create in operations)

    async def in_quick_thread(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.quick_pool, fn, *args)

    # ------------------------------------------------------------------------------------------ settings

    def apply_settings(self, raw: Any, origin: str) -> None:
        new, problems = parse_settings(raw, self.settings)
        for problem in problems:
            self.tell(types.MessageType.Warning, f"MoT settings ({origin}): {problem}")
        changed = changed_keys(self.settings, new)
        if not changed:
            return
        log.info("settings from %s: %s", origin, {key: new.to_editor_dict()[key] for key in sorted(changed)})
        self.settings = new
        self.link.update_settings(new)
        if changed & DAEMON_KEYS - {"endpoint"} and self.link.owns_daemon:
            self.tell(
                types.MessageType.Info,
                "MoT: the new preset/checkpoint applies when the daemon restarts (command “MoT: Restart daemon”).",
            )

    async def pull_settings(self) -> None:
        """workspace/configuration for section `mot`, when the client offers it."""
        capabilities = self.client_capabilities
        if not (capabilities and capabilities.workspace and capabilities.workspace.configuration):
            return
        try:
            result = await self.workspace_configuration_async(
                types.ConfigurationParams(items=[types.ConfigurationItem(section=SECTION)])
            )
        except Exception as e:
            log.warning("workspace/configuration failed: %s", e)
            return
        if result and isinstance(result[0], dict):
            self.apply_settings({SECTION: result[0]}, "workspace/configuration")

    # ------------------------------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Stop a daemon we started, the link and the pools (blocking; idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self.link.close()
        finally:
            self.runner.close()
            self.quick_pool.shutdown(wait=False, cancel_futures=True)
            self.check_pool.shutdown(wait=False, cancel_futures=True)

    def shutdown(self):
        """pygls calls this when the IO loop ends (exit, or the client vanished)."""
        try:
            self.close()
        except Exception:
            log.exception("closing the language server failed")
        super().shutdown()


def create_server() -> MotLanguageServer:
    """A server with every handler registered (one per LSP method)."""
    server = MotLanguageServer()

    @server.feature(types.INITIALIZE)
    def initialize(ls: MotLanguageServer, params: types.InitializeParams) -> None:
        if params.initialization_options is not None:
            ls.apply_settings(params.initialization_options, "initializationOptions")

    @server.feature(types.INITIALIZED)
    async def initialized(ls: MotLanguageServer, params: types.InitializedParams) -> None:
        ls.loop = asyncio.get_running_loop()
        try:
            await asyncio.wait_for(ls.pull_settings(), 10)
        except asyncio.TimeoutError:
            log.warning("the client did not answer workspace/configuration within 10 s; using the settings so far")
        ls.link.start()

    @server.feature(types.WORKSPACE_DID_CHANGE_CONFIGURATION)
    async def did_change_configuration(ls: MotLanguageServer, params: types.DidChangeConfigurationParams) -> None:
        if section_of(params.settings) is not None:
            ls.apply_settings(params.settings, "workspace/didChangeConfiguration")
        else:  # the pull model: the notification only says "something changed"
            await ls.pull_settings()

    @server.feature(types.TEXT_DOCUMENT_DID_OPEN)
    def did_open(ls: MotLanguageServer, params: types.DidOpenTextDocumentParams) -> None:
        ls.diagnostics.on_document(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CHANGE)
    def did_change(ls: MotLanguageServer, params: types.DidChangeTextDocumentParams) -> None:
        ls.diagnostics.on_document(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_SAVE)
    def did_save(ls: MotLanguageServer, params: types.DidSaveTextDocumentParams) -> None:
        ls.diagnostics.on_document(params.text_document.uri)

    @server.feature(types.TEXT_DOCUMENT_DID_CLOSE)
    def did_close(ls: MotLanguageServer, params: types.DidCloseTextDocumentParams) -> None:
        ls.index.forget(params.text_document.uri)
        ls.trees.forget(params.text_document.uri)

    @server.feature(
        types.TEXT_DOCUMENT_CODE_ACTION,
        types.CodeActionOptions(code_action_kinds=[code_actions.KIND], resolve_provider=True),
    )
    def code_action(ls: MotLanguageServer, params: types.CodeActionParams):
        return code_actions.code_actions(ls, params)

    @server.feature(types.CODE_ACTION_RESOLVE)
    async def code_action_resolve(ls: MotLanguageServer, params: types.CodeAction) -> types.CodeAction:
        return await code_actions.resolve_code_action(ls, params)

    @server.feature(types.TEXT_DOCUMENT_HOVER)
    async def text_document_hover(ls: MotLanguageServer, params: types.HoverParams):
        return await hover.hover(ls, params)

    @server.feature(types.WINDOW_WORK_DONE_PROGRESS_CANCEL)
    def work_done_progress_cancel(ls: MotLanguageServer, params: types.WorkDoneProgressCancelParams) -> None:
        if not ls.runner.cancel_progress(params.token):
            log.info("progress cancel for %s, which is not a running translation", params.token)

    @server.feature(types.SHUTDOWN)
    async def shutdown(ls: MotLanguageServer, params: None) -> None:
        await asyncio.get_running_loop().run_in_executor(None, ls.close)

    server.command(commands.TRANSLATE)(commands.translate)
    server.command(commands.TRANSLATE_FILE)(commands.translate_file)
    server.command(commands.DAEMON_STATUS)(commands.daemon_status)
    server.command(commands.RESTART_DAEMON)(commands.restart_daemon)
    return server

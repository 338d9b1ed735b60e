"""What the features use of the language server, as a `typing.Protocol` (`ServerHost`): its settings, the daemon
link, the translation runner, the kernel checks, the routing cache, its thread pools, the open documents and the
few pygls calls they make. Features depend on this, never on the server module (lsp_server/server.py implements it).

Also here: the small values the host hands to features (LastTranslation, EditCapabilities) and the routing cache.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Protocol

from daemon import protocol as P
from lsprotocol import types
from pygls.progress import Progress
from pygls.protocol import LanguageServerProtocol

from ..daemon_link import DaemonLink
from ..documents import FunctionSpan, OpenDocument, Source
from ..settings import Settings
from .edits import PlacedKernel


@dataclass(frozen=True)
class LastTranslation:
    kernel: str
    source_hash: str
    primary_expert: str
    num_generated_tokens: int
    when: float  # time.time()
    check: str = ""  # what the daemon's check of the kernel found, in words ("" where none ran)


@dataclass(frozen=True)
class EditCapabilities:
    document_changes: bool
    create_files: bool


class RouteCache:
    """Routing per function text (routing is deterministic for a given router). Cleared when the daemon changes."""

    def __init__(self, size: int = 512, ttl_s: float = 600.0):
        self.size, self.ttl_s = size, ttl_s
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, tuple[float, P.RouteResult]] = OrderedDict()

    def get(self, key: str) -> P.RouteResult | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or time.monotonic() - entry[0] > self.ttl_s:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: str, value: P.RouteResult) -> None:
        with self._lock:
            self._entries[key] = (time.monotonic(), value)
            self._entries.move_to_end(key)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class TranslationRuns(Protocol):
    """What features ask of the translation runner (features/translate.py's TranslationRunner)."""

    async def run(self, sources: list[Source], settings: Settings, title: str) -> list[P.TranslateResult]: ...


class KernelChecks(Protocol):
    """What features ask of the kernel diagnostics (features/diagnostics.py's KernelDiagnostics)."""

    def add(self, placed: list[PlacedKernel], mode: str) -> None: ...


class ServerHost(Protocol):
    """The language server as the features see it (implemented by lsp_server.server.MotLanguageServer)."""

    settings: Settings
    link: DaemonLink
    runner: TranslationRuns
    diagnostics: KernelChecks
    routes: RouteCache
    quick_pool: ThreadPoolExecutor  # status, route, cancel
    check_pool: ThreadPoolExecutor  # checks of produced kernels

    # ---- pygls
    protocol: LanguageServerProtocol

    @property
    def client_capabilities(self) -> types.ClientCapabilities: ...

    @property
    def work_done_progress(self) -> Progress: ...

    async def workspace_apply_edit_async(
        self, params: types.ApplyWorkspaceEditParams
    ) -> types.ApplyWorkspaceEditResult: ...

    def text_document_publish_diagnostics(self, params: types.PublishDiagnosticsParams) -> None: ...

    # ---- the server's own
    @property
    def position_encoding(self) -> str: ...

    def tell(self, kind: types.MessageType, message: str) -> None: ...

    def open_document(self, uri: str, *, any_language: bool = False) -> OpenDocument | None: ...

    def open_document_by_key(self, key: str) -> OpenDocument | None: ...

    def functions(self, document: OpenDocument) -> list[FunctionSpan]: ...

    def function_at(self, document: OpenDocument, line: int, col: int) -> FunctionSpan | None: ...

    def remember_translation(
        self, document: OpenDocument, source: Source, kernel: str, result: P.TranslateResult
    ) -> None: ...

    def last_translation(self, uri: str, name: str) -> LastTranslation | None: ...

    def workspace_edit_capabilities(self) -> EditCapabilities: ...

    async def in_quick_thread(self, fn: Callable[..., Any], *args: Any) -> Any: ...

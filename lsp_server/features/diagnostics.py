"""Diagnostics on produced kernels: nvcc where present, else tree-sitter-cuda syntax; and what the daemon's
verification of the kernel found (on its first line: information when verified, or not checkable; a warning for a
mismatch, a compile or syntax error); published on the target file.

A kernel's problems are computed on the kernel alone (positions relative to its first line) and placed where the
kernel's text is found in the target document *now*: the open document's text, else the file on disk. So the
problems follow the kernel when lines are added above it, appear once the editor has applied the edit (didOpen /
didChange), and disappear when the kernel's text is edited (it is no longer found: the problems would be stale).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from dataclasses import dataclass, field

from kernelcheck.candidates import SKIPPED
from kernelcheck.compile_check import nvcc_compile_check
from kernelcheck.parsing import SyntaxProblem, check_cuda_syntax
from kernelcheck.toolchain import find_nvcc
from lsprotocol import types

from ..documents import TextView, uri_key, uri_to_path
from .edits import Kernel, PlacedKernel, check_words
from .host import ServerHost

log = logging.getLogger(__name__)

SOURCE = "mot-cuda"
NVCC_TIMEOUT_S = 60.0
_POSITION_PREFIX = re.compile(r"^line \d+(?:, col \d+)?: ")
# A kernel whose text was never seen in its document is forgotten after this long (the edit was not applied).
UNSEEN_TTL_S = 120.0
# The verification's finding as a diagnostic: a kernel shown to be wrong warns; the others inform.
VERIFICATION_SEVERITY = {"verified": types.DiagnosticSeverity.Information,
                         "mismatch": types.DiagnosticSeverity.Warning,
                         "compile_error": types.DiagnosticSeverity.Warning,
                         "syntax_error": types.DiagnosticSeverity.Warning,
                         "not_verifiable": types.DiagnosticSeverity.Information,
                         "unavailable": types.DiagnosticSeverity.Information}


@dataclass
class KernelCheck:
    """The problems of one kernel, relative to its own first line."""

    checker: str  # "nvcc" | "tree-sitter-cuda" | "off"
    problems: list[SyntaxProblem]
    note: str = ""  # e.g. why nvcc was not used


def check_kernel(code: str, mode: str) -> KernelCheck:
    """Check one kernel (blocking: nvcc may take seconds). mode: auto | syntax | off."""
    if mode == "off":
        return KernelCheck("off", [])
    note = ""
    if mode == "auto":
        nvcc = find_nvcc()
        if nvcc is not None:
            result = nvcc_compile_check(code, NVCC_TIMEOUT_S, nvcc=nvcc)
            if result.status == "ok":
                return KernelCheck("nvcc", [])
            if result.status == "error":
                problems = result.diagnostics
                if not problems:  # nvcc failed without an error we can place: show its first lines on line 1
                    first = code.split("\n", 1)[0]
                    summary = "\n".join(result.message.splitlines()[:5])
                    problems = [SyntaxProblem(0, 0, 0, len(first), f"nvcc: {summary}")]
                return KernelCheck("nvcc", problems)
            note = f"nvcc {result.status}: {result.message}"
            log.warning("falling back to the syntax check: %s", note)
        else:
            note = "nvcc not found"
    return KernelCheck("tree-sitter-cuda", check_cuda_syntax(code), note)


@dataclass
class TrackedKernel:
    placed: PlacedKernel
    check: KernelCheck | None = None  # None until checked
    seen: bool = False  # its text was found in the document at least once
    created: float = field(default_factory=time.monotonic)


class KernelDiagnostics:
    """Problems of produced kernels per target document. Methods run on the server's event loop."""

    def __init__(self, server: ServerHost):
        self.server = server
        self._tracked: dict[str, list[TrackedKernel]] = {}  # uri_key -> kernels
        self._uris: dict[str, str] = {}  # uri_key -> the uri to publish on
        self._published: set[str] = set()
        self._tasks: set[asyncio.Task] = set()

    def kernels(self, uri: str) -> list[TrackedKernel]:
        return list(self._tracked.get(uri_key(uri), []))

    def add(self, placed: list[PlacedKernel], mode: str) -> None:
        """Track placed kernels and check them in the background (publishing when done)."""
        for item in placed:
            tracked = TrackedKernel(item)
            key = uri_key(item.uri)
            self._tracked.setdefault(key, []).append(tracked)
            self._uris.setdefault(key, item.uri)
            task = asyncio.ensure_future(self._check(tracked, mode))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _check(self, tracked: TrackedKernel, mode: str) -> None:
        loop = asyncio.get_running_loop()
        try:
            tracked.check = await loop.run_in_executor(
                self.server.check_pool, check_kernel, tracked.placed.kernel.text, mode
            )
        except Exception as e:  # a broken toolchain must not take the server down; say what happened
            log.exception("checking a kernel failed")
            self.server.tell(types.MessageType.Warning, f"MoT: could not check the produced kernel: {e}")
            return
        self.publish(tracked.placed.uri)
        # The editor may apply the edit without telling us (a file it does not open): look at the disk later.
        for delay in (0.5, 2.0, 5.0):
            if tracked.seen:
                break
            await asyncio.sleep(delay)
            self.publish(tracked.placed.uri)

    def _current_text(self, key: str) -> str | None:
        document = self.server.open_document_by_key(key)
        if document is not None:
            return document.text
        path = uri_to_path(self._uris.get(key, ""))
        if path is not None and path.is_file():
            try:
                return path.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as e:
                log.warning("cannot read %s for diagnostics: %s", path, e)
        return None

    def publish(self, uri: str) -> None:
        """Place the tracked kernels' problems where their text is now and publish them for this document."""
        key = uri_key(uri)
        tracked = self._tracked.get(key)
        if not tracked:
            return
        text = self._current_text(key)
        document = self.server.open_document_by_key(key)
        publish_uri = document.uri if document is not None else self._uris.get(key, uri)
        diagnostics: list[types.Diagnostic] = []
        keep: list[TrackedKernel] = []
        now = time.monotonic()
        cursor_by_text: dict[str, int] = {}
        for item in tracked:
            kernel_text = item.placed.kernel.text
            at = -1
            if text is not None:
                at = text.find(kernel_text, cursor_by_text.get(kernel_text, 0))
            if at < 0:
                if item.seen:
                    log.info("a kernel's text changed in %s; dropping its diagnostics", uri)
                    continue
                if now - item.created < UNSEEN_TTL_S:
                    keep.append(item)
                continue
            cursor_by_text[kernel_text] = at + len(kernel_text)
            item.seen = True
            keep.append(item)
            if item.check is None:
                continue
            first_line = text.count("\n", 0, at)
            first_col = at - (text.rfind("\n", 0, at) + 1)
            diagnostics.extend(self._diagnostics(item.check, first_line, first_col, text))
            verification = self._verification(item.placed.kernel, first_line, first_col, text)
            if verification is not None:
                diagnostics.append(verification)
        self._tracked[key] = keep
        if not keep:
            del self._tracked[key]
        if any(item.seen and item.check is None for item in keep):
            return  # a check still runs: publish once it ends (an early, empty list would read as "no problems")
        if any(item.seen for item in keep) or key in self._published:
            self._published.add(key)
            self.server.text_document_publish_diagnostics(
                types.PublishDiagnosticsParams(
                    uri=publish_uri,
                    diagnostics=diagnostics,
                    version=document.version if document is not None else None,
                )
            )

    def _diagnostics(self, check: KernelCheck, line0: int, col0: int, text: str) -> list[types.Diagnostic]:
        view = TextView(text, self.server.position_encoding)
        out = []
        for problem in check.problems:
            start = (line0 + problem.line, problem.col + (col0 if problem.line == 0 else 0))
            end = (line0 + problem.end_line, problem.end_col + (col0 if problem.end_line == 0 else 0))
            out.append(
                types.Diagnostic(
                    range=view.to_range(start, end),
                    message=_POSITION_PREFIX.sub("", problem.message),
                    severity=types.DiagnosticSeverity.Error,
                    source=f"{SOURCE} ({check.checker})",
                )
            )
        return out

    def _verification(self, kernel: Kernel, line0: int, col0: int, text: str) -> types.Diagnostic | None:
        """What the daemon's check found, on the kernel's first line; None where no check ran."""
        if kernel.check.status == SKIPPED:
            return None
        view = TextView(text, self.server.position_encoding)
        first = kernel.text.split("\n", 1)[0]
        return types.Diagnostic(
            range=view.to_range((line0, col0), (line0, col0 + len(first))), message=check_words(kernel.check),
            severity=VERIFICATION_SEVERITY[kernel.check.status], source=f"{SOURCE} (verification)",
        )

    def on_document(self, uri: str) -> None:
        """A document opened or changed: re-place its kernels' problems."""
        if uri_key(uri) in self._tracked:
            self.publish(uri)

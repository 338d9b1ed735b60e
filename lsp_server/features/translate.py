"""Running translations: work-done progress, cancellation, and the mapping of daemon errors to user messages.

One `run()` translates one or more sources (a function, a selection, every function of a file) concurrently, so
the daemon batches them, and returns only when all of them finished: the caller builds one edit from complete
results or none at all.

Cancellation reaches the daemon from both directions:
- `$/cancelRequest` of the LSP request that runs the translation: the awaiting coroutine is cancelled (resolve), or
  the server's protocol tells us the request id (executeCommand, which pygls runs as a nested task);
- `window/workDoneProgress/cancel` of the progress token.
Either one marks the job cancelled and sends `cancel` for each of its daemon requests (on a worker thread). A
translation that is not submitted yet is never submitted.

Progress: begin (title, cancellable), reports with the number of tokens generated (at most every
REPORT_INTERVAL_S, first one at once), then, where the daemon verifies the candidates, "checking N candidates",
and the end with the outcome (tokens, and what the check of the delivered kernel found).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from daemon import protocol as P
from daemon.client import Cancelled, DaemonClient, DaemonError, DaemonUnavailable
from kernelcheck.candidates import SKIPPED
from lsprotocol import types

from ..daemon_link import DaemonDown, DaemonLink
from ..documents import Source
from ..settings import Settings
from .edits import check_words
from .host import ServerHost

log = logging.getLogger(__name__)

REPORT_INTERVAL_S = 0.1


class TranslationCancelled(Exception):
    """The user cancelled the translation (progress cancel or request cancel)."""


class TranslationFailed(Exception):
    """The translation could not be done; the message is for the user."""


class TranslationJob:
    """The daemon requests of one run. Thread-safe: workers submit, the event loop cancels."""

    def __init__(self, link: DaemonLink, label: str):
        self.link = link
        self.label = label
        self._lock = threading.Lock()
        self.cancelled = False
        self._requests: list[tuple[DaemonClient, Any]] = []  # (client, stream)
        self.tokens: dict[int, int] = {}
        self.checking: dict[int, P.Checking] = {}  # sources whose candidates are being verified

    def translate(self, index: int, source: str, options: dict, on_progress: Callable[[], None]) -> P.TranslateResult:
        """Blocking: submit one translation and wait for its result, counting generated tokens."""
        client = self.link.work_client()
        with self._lock:
            if self.cancelled:
                raise Cancelled("cancelled before it was sent")
            stream = client.stream_translate(source, stream=True, **options)
            self._requests.append((client, stream))

        def checking(message: P.Checking) -> None:
            self.checking[index] = message
            on_progress()

        stream.on_checking = checking
        for part in stream:
            self.tokens[index] = part.num_generated_tokens
            on_progress()
        result = stream.result
        self.tokens[index] = result.num_generated_tokens
        self.checking.pop(index, None)
        on_progress()
        return result

    def cancel(self) -> None:
        """Blocking: mark cancelled and ask the daemon to stop every request still running."""
        with self._lock:
            self.cancelled = True
            requests = list(self._requests)
        for client, stream in requests:
            if not stream.done:
                found = self.link.cancel(client, stream.request_id)
                log.info("cancel %s (%s): %s", stream.request_id, self.label, "sent" if found else "already finished")

    @property
    def total_tokens(self) -> int:
        return sum(self.tokens.values())


class WorkProgress:
    """Server-initiated work-done progress for one run (a no-op when the client does not support it)."""

    def __init__(self, server: ServerHost, title: str):
        self.server = server
        self.title = title
        self.token: str | None = None
        self._last_report = 0.0
        self._pending: asyncio.TimerHandle | None = None
        self._message = ""
        self._percentage: int | None = None
        self._ended = False

    async def begin(self, message: str) -> None:
        capabilities = self.server.client_capabilities
        if not (capabilities and capabilities.window and capabilities.window.work_done_progress):
            return
        token = f"mot-translate-{uuid.uuid4().hex[:12]}"
        try:
            await self.server.work_done_progress.create_async(token)
        except Exception as e:  # the client refused: translate without a progress bar
            log.warning("the client did not create progress %s: %s", token, e)
            return
        self.token = token
        self.server.work_done_progress.begin(
            token, types.WorkDoneProgressBegin(title=self.title, message=message, cancellable=True, percentage=0)
        )

    def report(self, message: str, percentage: int | None = None, *, force: bool = False) -> None:
        """Event-loop thread only. Throttled to one notification per REPORT_INTERVAL_S (the first goes at once)."""
        if self.token is None or self._ended:
            return
        self._message, self._percentage = message, percentage
        now = time.monotonic()
        if force or now - self._last_report >= REPORT_INTERVAL_S:
            self._send()
        elif self._pending is None:
            self._pending = asyncio.get_running_loop().call_later(
                REPORT_INTERVAL_S - (now - self._last_report), self._send
            )

    def _send(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
            self._pending = None
        if self.token is None or self._ended:
            return
        self._last_report = time.monotonic()
        self.server.work_done_progress.report(
            self.token, types.WorkDoneProgressReport(message=self._message, percentage=self._percentage)
        )

    def end(self, message: str) -> None:
        if self.token is None or self._ended:
            return
        if self._pending is not None:
            self._send()
        self._ended = True
        self.server.work_done_progress.end(self.token, types.WorkDoneProgressEnd(message=message))
        self.server.work_done_progress.tokens.pop(self.token, None)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def checking_message(checking: list[P.Checking], sources: int) -> str:
    """The progress while candidates are verified: "checking 4 candidates (2 distinct kernels)" for one source,
    "checking the candidates of 2 of 3 functions" for several."""
    if sources == 1:
        message = checking[0]
        return (f"checking {_plural(message.candidates, 'candidate')} "
                f"({_plural(message.kernels, 'distinct kernel')})")
    return f"checking the candidates of {len(checking)} of {sources} functions"


def outcome_message(results: list[P.TranslateResult], tokens: int) -> str:
    """The progress's end: the tokens, and what the check of the delivered kernels found (where one ran)."""
    done = f"done: {_plural(tokens, 'token')} generated"
    checked = [r.check for r in results if r.check.status != SKIPPED]
    if not checked:
        return done
    if len(results) == 1:
        return f"{done}; {check_words(checked[0], 200)}"
    counts: dict[str, int] = {}
    for check in checked:
        counts[check.status] = counts.get(check.status, 0) + 1
    return f"{done}; " + ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items())


class TranslationRunner:
    """Runs translations for the features; keeps the jobs in flight so cancellations can find them."""

    def __init__(self, server: ServerHost):
        self.server = server
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="mot-translate")
        self._by_token: dict[str, TranslationJob] = {}
        self._by_request: dict[Any, TranslationJob] = {}
        self._background: set[asyncio.Future] = set()

    @property
    def link(self) -> DaemonLink:
        return self.server.link

    def _cancel_in_background(self, job: TranslationJob) -> None:
        future = asyncio.get_running_loop().run_in_executor(self.server.quick_pool, job.cancel)
        self._background.add(future)
        future.add_done_callback(self._background.discard)

    def cancel_progress(self, token: types.ProgressToken) -> bool:
        """window/workDoneProgress/cancel. True when the token belonged to a running translation."""
        job = self._by_token.get(str(token))
        if job is None:
            return False
        log.info("progress %s cancelled by the client", token)
        self._cancel_in_background(job)
        return True

    def cancel_request(self, msg_id: Any) -> bool:
        """$/cancelRequest for an LSP request that runs a translation."""
        job = self._by_request.get(msg_id)
        if job is None:
            return False
        log.info("request %s cancelled by the client", msg_id)
        self._cancel_in_background(job)
        return True

    async def run(self, sources: list[Source], settings: Settings, title: str) -> list[P.TranslateResult]:
        """Translate every source; all results or an exception (TranslationCancelled, TranslationFailed,
        asyncio.CancelledError). Progress is shown for the whole run."""
        loop = asyncio.get_running_loop()
        progress = WorkProgress(self.server, title)
        await progress.begin("contacting the MoT daemon")
        job = TranslationJob(self.link, title)
        msg_id = self.server.protocol.msg_id
        if progress.token is not None:
            self._by_token[progress.token] = job
        if msg_id is not None:
            self._by_request[msg_id] = job
        budget = max(1, len(sources) * settings.max_new_tokens)
        outcome = "failed"

        def tick() -> None:  # event loop
            done = job.total_tokens
            checking = list(job.checking.values())  # a snapshot: workers change it meanwhile
            if checking:
                progress.report(checking_message(checking, len(sources)), 99, force=True)
            else:
                progress.report(f"{_plural(done, 'token')} generated", min(99, 100 * done // budget))

        def on_progress() -> None:  # worker threads
            loop.call_soon_threadsafe(tick)

        try:
            if job.cancelled:
                raise Cancelled("cancelled")
            await self.link.wait_ready(on_wait=lambda message: progress.report(message, 0, force=True))
            what = _plural(len(sources), "function") if len(sources) > 1 else sources[0].name
            progress.report(f"translating {what}", 0, force=True)
            options = settings.translate_options()
            futures = [
                loop.run_in_executor(self.pool, job.translate, i, source.text, options, on_progress)
                for i, source in enumerate(sources)
            ]
            done, pending = await asyncio.wait(futures, return_when=asyncio.FIRST_EXCEPTION)
            errors = [f.exception() for f in futures if f.done() and f.exception() is not None]
            if errors:
                if pending:  # all or nothing: stop the others
                    await loop.run_in_executor(self.server.quick_pool, job.cancel)
                    await asyncio.wait(pending)
                raise errors[0]
            results = [f.result() for f in futures]
            outcome = outcome_message(results, job.total_tokens)
            return results
        except asyncio.CancelledError:
            outcome = "cancelled"
            self._cancel_in_background(job)
            raise
        except Cancelled as e:
            if job.cancelled:
                outcome = "cancelled"
                raise TranslationCancelled("the translation was cancelled") from None
            self.link.wake(probe=True)  # e.g. the daemon is shutting down
            raise TranslationFailed(f"the daemon cancelled the translation: {e.message}") from None
        except DaemonDown as e:
            raise TranslationFailed(str(e)) from None
        except DaemonUnavailable as e:
            self.link.translation_failed(e)
            raise TranslationFailed(f"lost the MoT daemon during the translation: {e}") from None
        except DaemonError as e:
            raise TranslationFailed(f"the daemon refused the translation: {e.message}") from None
        finally:
            progress.end(outcome)
            if progress.token is not None:
                self._by_token.pop(progress.token, None)
            if msg_id is not None:
                self._by_request.pop(msg_id, None)

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)

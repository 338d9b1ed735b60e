"""What both clients of the daemon share: request/reply bookkeeping, the client API (translate, stream_translate,
route, status, cancel, reload, shutdown, wait_until_ready) and the stream of one translation. Subclasses move the
frames: `daemon.client.DaemonClient` over ZeroMQ, `daemon.inprocess.InProcessClient` to an engine in this process.
"""

from __future__ import annotations

import abc
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from mot_engine.defaults import CANDIDATES, MAX_NEW_TOKENS, MODE, TEMPERATURE, TOP_P, VERIFY

from . import protocol as P
from .errors import DaemonUnavailable, InternalError, error_from_reply

log = logging.getLogger(__name__)


class BrokenTransport:
    """Put into a waiting request's queue when the transport fails; carries the exception to raise."""

    def __init__(self, error: Exception):
        self.error = error


class TranslateStream:
    """The replies of one translation: iterate to get `Partial`s as they arrive; `result` when done.

    Iteration ends after the final reply; an error reply raises its DaemonError from the iteration (and from
    `result`). `cancel()` asks the daemon to stop it (the iteration then raises Cancelled). A `checking` reply (the
    candidates are being verified) is not yielded: it is kept in `checking` and passed to `on_checking`, if set.
    """

    def __init__(self, client: "ClientBase", request_id: str, replies: queue.SimpleQueue, t_sent: float):
        self._client = client
        self.request_id = request_id
        self._replies = replies
        self._t_sent = t_sent
        self._result: P.TranslateResult | None = None
        self._error: BaseException | None = None
        self.partials_received = 0
        self.checking: P.Checking | None = None
        self.on_checking: Callable[[P.Checking], None] | None = None

    def __iter__(self) -> Iterator[P.Partial]:
        return self

    def __next__(self) -> P.Partial:
        if self._result is not None or self._error is not None:
            raise StopIteration
        try:
            reply = self._client._next_reply(self._replies, self._t_sent)
            while isinstance(reply, P.Checking):
                self.checking = reply
                if self.on_checking is not None:
                    self.on_checking(reply)
                reply = self._client._next_reply(self._replies, self._t_sent)
        except BaseException as e:
            self._finish(e)
            raise
        if isinstance(reply, P.Partial):
            self.partials_received += 1
            return reply
        if isinstance(reply, P.TranslateResult):
            self._result = reply
            self._client._unregister(self.request_id)
            raise StopIteration
        if isinstance(reply, P.Error):
            error = error_from_reply(reply)
            self._finish(error)
            raise error
        error = InternalError(f"unexpected {type(reply).__name__} reply to a translate request", request_id=self.request_id)
        self._finish(error)
        raise error

    def _finish(self, error: BaseException) -> None:
        self._error = error
        self._client._unregister(self.request_id)

    @property
    def done(self) -> bool:
        return self._result is not None or self._error is not None

    @property
    def result(self) -> P.TranslateResult:
        """Wait for the end (dropping remaining partials) and return the result, or raise its error."""
        for _ in self:
            pass
        if self._error is not None:
            raise self._error
        return self._result

    def cancel(self) -> bool:
        """Ask the daemon to cancel this translation. False if it already finished."""
        if self.done:
            return False
        return self._client.cancel(self.request_id)


# ---------------------------------------------------------------------------------------------- the shared part


class ClientBase(abc.ABC):
    """Request/reply bookkeeping shared by both clients; subclasses move frames (`_submit`) and say whether
    the daemon is still alive (`_liveness`)."""

    def __init__(self, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        self.timeout_s = float(timeout_s)
        self._pending: dict[str, queue.SimpleQueue] = {}
        self._pending_lock = threading.Lock()
        self._closed = False
        self._max_message_bytes: int | None = None  # learned from the daemon's status

    # --- subclass hooks
    @abc.abstractmethod
    def _submit(self, request: P.Request) -> None:
        """Send one request to the daemon (socket) or the engine (in process)."""

    @abc.abstractmethod
    def _liveness(self, t_sent: float) -> Exception | None:
        """An exception if the daemon should be considered gone for a request sent at t_sent, else None."""

    # --- plumbing
    def _register(self, request_id: str) -> queue.SimpleQueue:
        q: queue.SimpleQueue = queue.SimpleQueue()
        with self._pending_lock:
            if request_id in self._pending:
                raise ValueError(f"request id {request_id!r} is already in flight on this client")
            self._pending[request_id] = q
        return q

    def _unregister(self, request_id: str) -> None:
        with self._pending_lock:
            self._pending.pop(request_id, None)

    def _deliver(self, reply: P.Reply) -> None:
        if isinstance(reply, P.StatusResult):
            limit = reply.limits.get("max_message_bytes")
            self._max_message_bytes = int(limit) if isinstance(limit, (int, float)) else None
        with self._pending_lock:
            q = self._pending.get(reply.id)
        if q is not None:
            q.put(reply)
        elif not isinstance(reply, P.Heartbeat):
            log.debug("dropping a %s reply for request %r that nobody waits for", type(reply).__name__, reply.id)

    def _fail_pending(self, error: Exception) -> None:
        with self._pending_lock:
            queues = list(self._pending.values())
        for q in queues:
            q.put(BrokenTransport(error))

    def _next_reply(self, q: queue.SimpleQueue, t_sent: float) -> P.Reply:
        while True:
            try:
                item = q.get(timeout=0.2)
            except queue.Empty:
                problem = self._liveness(t_sent)
                if problem is not None:
                    raise problem
                continue
            if isinstance(item, BrokenTransport):
                raise item.error
            return item

    def _start(self, request: P.Request) -> tuple[queue.SimpleQueue, float]:
        if self._closed:
            raise DaemonUnavailable("this client is closed")
        q = self._register(request.id)
        t_sent = time.monotonic()
        try:
            self._submit(request)
        except BaseException:
            self._unregister(request.id)
            raise
        return q, t_sent

    def _call(self, request: P.Request, expect: type) -> Any:
        q, t_sent = self._start(request)
        try:
            reply = self._next_reply(q, t_sent)
        finally:
            self._unregister(request.id)
        if isinstance(reply, P.Error):
            raise error_from_reply(reply)
        if not isinstance(reply, expect):
            raise InternalError(f"expected {expect.__name__}, got {type(reply).__name__}", request_id=request.id)
        return reply

    @staticmethod
    def new_request_id() -> str:
        return uuid.uuid4().hex

    # --- the API
    def stream_translate(
        self, source: str, *, mode: str = MODE, max_new_tokens: int = MAX_NEW_TOKENS, temperature: float = TEMPERATURE,
        top_p: float = TOP_P, seed: int | None = None, timeout_s: float | None = None, stream: bool = True,
        ignore_eos: bool = False, candidates: int = CANDIDATES, verify: str = VERIFY, request_id: str | None = None,
    ) -> TranslateStream:
        """Send a translation and return its stream at once (iterate it for partials; `.result` at the end).
        `candidates` and `verify`: see `protocol.TranslateOptions`; the daemon validates every option (a bad value
        is answered `bad_request` naming the field)."""
        options = P.TranslateOptions(
            mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            timeout_s=timeout_s, stream=stream, ignore_eos=ignore_eos, candidates=candidates, verify=verify,
        )
        request = P.Translate(id=request_id or self.new_request_id(), source=source, options=options)
        q, t_sent = self._start(request)
        return TranslateStream(self, request.id, q, t_sent)

    def translate(self, source: str, *, on_partial: Callable[[P.Partial], None] | None = None, **options) -> P.TranslateResult:
        """Translate one source and wait for the result; `on_partial(partial)` is called for each piece of text
        as it arrives (on this thread). Options: see `stream_translate`."""
        options.setdefault("stream", on_partial is not None)
        stream = self.stream_translate(source, **options)
        for part in stream:
            if on_partial is not None:
                on_partial(part)
        return stream.result

    def route(self, source: str) -> P.RouteResult:
        return self._call(P.Route(id=self.new_request_id(), source=source), P.RouteResult)

    def status(self) -> P.StatusResult:
        return self._call(P.Status(id=self.new_request_id()), P.StatusResult)

    def cancel(self, request_id: str) -> bool:
        """Cancel one of this client's translations; True if it was in flight. Its stream raises Cancelled."""
        return self._call(P.Cancel(id=self.new_request_id(), target_id=request_id), P.CancelResult).found

    def reload(self, checkpoint: str | os.PathLike | None = None) -> P.ReloadResult:
        """Load another router/interaction checkpoint once running translations finish (None: re-read the
        current one). A checkpoint for other experts raises BadRequest and the old weights stay."""
        path = None if checkpoint is None else os.fspath(checkpoint)
        return self._call(P.Reload(id=self.new_request_id(), checkpoint=path), P.ReloadResult)

    def shutdown(self) -> None:
        """Ask the daemon to exit (translations in flight end with Cancelled)."""
        self._call(P.Shutdown(id=self.new_request_id()), P.ShutdownResult)

    def wait_until_ready(self, timeout_s: float = 300.0, poll_s: float = 0.2) -> P.StatusResult:
        """Poll `status` until the model is loaded. Raises DaemonUnavailable on timeout or a failed load."""
        deadline = time.monotonic() + timeout_s
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                status = self.status()
            except DaemonUnavailable as e:
                last = e
            else:
                if status.state == "ready":
                    return status
                if status.state in ("failed", "stopping"):
                    raise DaemonUnavailable(f"the daemon is {status.state}: {status.error or ''}".strip())
            time.sleep(poll_s)
        raise DaemonUnavailable(f"the daemon was not ready within {timeout_s:g} s" + (f" ({last})" if last else ""))

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection; pending calls fail with DaemonUnavailable."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

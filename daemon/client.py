"""Clients of the daemon: `DaemonClient` over ZeroMQ, and `InProcessClient` driving an EngineCore in this process.

Both have the same API and return the protocol's reply types (daemon/protocol.py)::

    with DaemonClient() as client:                     # default endpoint, or DaemonClient("tcp://127.0.0.1:5555")
        result = client.translate(source, max_new_tokens=256, on_partial=lambda p: print(p.text, end=""))
        print(result.primary_expert_name, result.routing_probs, result.timings)

        stream = client.stream_translate(source)       # iterate partials as they arrive
        for part in stream:
            ...
        stream.result                                  # the TranslateResult (raises the DaemonError if it failed)

        client.route(source); client.status(); client.cancel(stream.request_id); client.reload(path)

Errors: a reply of type `error` raises the DaemonError subclass of its code (BadRequest, TooLarge, Overloaded,
Cancelled, RequestTimeout, InternalError); no daemon, a lost connection, or silence for `timeout_s` raise
DaemonUnavailable; a daemon that rejects our CURVE key raises DaemonAuthError.

Threading: a client may be shared by threads (the language server translates while it routes). DaemonClient owns
one DEALER socket in a background IO thread; callers hand it frames over an inproc socket and wait on their own
queue, so `on_partial` callbacks run on the caller's thread, never on the IO thread.

This module imports neither torch nor the engine (an editor plugin starts fast); InProcessClient imports the
engine only when used.
"""

from __future__ import annotations

import abc
import itertools
import logging
import os
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from . import protocol as P
from .endpoints import CurveClientKeys, parse_endpoint

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------- errors


class DaemonError(Exception):
    """The daemon answered with an error reply. `code` is one of protocol.ERROR_CODES."""

    code = "internal"

    def __init__(self, message: str, *, request_id: str = "", details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.details = details or {}


class BadRequest(DaemonError):
    code = "bad_request"


class TooLarge(DaemonError):
    code = "too_large"


class Overloaded(DaemonError):
    code = "overloaded"


class Cancelled(DaemonError):
    code = "cancelled"


class RequestTimeout(DaemonError):
    code = "timeout"


class InternalError(DaemonError):
    code = "internal"


ERRORS_BY_CODE: dict[str, type[DaemonError]] = {
    cls.code: cls for cls in (BadRequest, TooLarge, Overloaded, Cancelled, RequestTimeout, InternalError)
}


class DaemonUnavailable(ConnectionError):
    """No daemon answers at the endpoint, the connection was lost, or it stayed silent too long."""


class DaemonAuthError(DaemonUnavailable):
    """The daemon rejected this client's CURVE key (or the server key is wrong)."""


def error_from_reply(reply: P.Error) -> DaemonError:
    cls = ERRORS_BY_CODE.get(reply.code, InternalError)
    return cls(f"{reply.code}: {reply.message}", request_id=reply.id, details=dict(reply.details))


class _Broken:
    """Put into a waiting request's queue when the transport fails; carries the exception to raise."""

    def __init__(self, error: Exception):
        self.error = error


# ---------------------------------------------------------------------------------------------- streams


class TranslateStream:
    """The replies of one translation: iterate to get `Partial`s as they arrive; `result` when done.

    Iteration ends after the final reply; an error reply raises its DaemonError from the iteration (and from
    `result`). `cancel()` asks the daemon to stop it (the iteration then raises Cancelled).
    """

    def __init__(self, client: "_ClientBase", request_id: str, replies: queue.SimpleQueue, t_sent: float):
        self._client = client
        self.request_id = request_id
        self._replies = replies
        self._t_sent = t_sent
        self._result: P.TranslateResult | None = None
        self._error: BaseException | None = None
        self.partials_received = 0

    def __iter__(self) -> Iterator[P.Partial]:
        return self

    def __next__(self) -> P.Partial:
        if self._result is not None or self._error is not None:
            raise StopIteration
        try:
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


class _ClientBase(abc.ABC):
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
            q.put(_Broken(error))

    def _next_reply(self, q: queue.SimpleQueue, t_sent: float) -> P.Reply:
        while True:
            try:
                item = q.get(timeout=0.2)
            except queue.Empty:
                problem = self._liveness(t_sent)
                if problem is not None:
                    raise problem
                continue
            if isinstance(item, _Broken):
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
        self, source: str, *, mode: str = "fast", max_new_tokens: int = 256, temperature: float = 0.0,
        top_p: float = 1.0, seed: int | None = None, timeout_s: float | None = None, stream: bool = True,
        ignore_eos: bool = False, request_id: str | None = None,
    ) -> TranslateStream:
        """Send a translation and return its stream at once (iterate it for partials; `.result` at the end)."""
        options = P.TranslateOptions(
            mode=mode, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed,
            timeout_s=timeout_s, stream=stream, ignore_eos=ignore_eos,
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


# ---------------------------------------------------------------------------------------------- over ZeroMQ


_client_numbers = itertools.count()
_SMALL_FRAME_BYTES = 64 * 1024  # frames up to this size are sent without checking the daemon's limit first


class DaemonClient(_ClientBase):
    """A connection to a daemon over ZeroMQ (DEALER socket).

    endpoint: ipc://... or tcp://host:port (None: $MOT_DAEMON_ENDPOINT or the default ipc socket).
    timeout_s: how long a request may wait without any sign of life from the daemon (the daemon sends
        heartbeats while it holds our work, so a long queue does not trip it) before DaemonUnavailable.
    curve: keys for a daemon that requires CURVE (see endpoints.load_client_keys).
    """

    def __init__(self, endpoint: str | None = None, *, timeout_s: float = 30.0, curve: CurveClientKeys | None = None):
        super().__init__(timeout_s)
        import zmq

        self.endpoint = parse_endpoint(endpoint)
        self._zmq = zmq
        self._ctx = zmq.Context()
        self._last_heard = 0.0  # monotonic time of the last frame from the daemon
        self._connected = False
        self._auth_failed: str | None = None
        dealer = self._ctx.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.setsockopt(zmq.SNDHWM, 10_000)
        dealer.setsockopt(zmq.RCVHWM, 0)  # we always read; never make the daemon drop our replies
        dealer.setsockopt(zmq.RECONNECT_IVL, 100)
        dealer.setsockopt(zmq.RECONNECT_IVL_MAX, 2000)
        dealer.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        dealer.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10_000)
        dealer.setsockopt(zmq.MAXMSGSIZE, 1 << 30)
        if curve is not None:
            dealer.curve_serverkey = curve.server_public
            dealer.curve_publickey = curve.public
            dealer.curve_secretkey = curve.secret
        events = (
            zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
            | zmq.EVENT_HANDSHAKE_FAILED_AUTH | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
        )
        self._monitor = dealer.get_monitor_socket(events)
        dealer.connect(self.endpoint.address)
        self._dealer = dealer
        inproc = f"inproc://mot-client-{os.getpid()}-{next(_client_numbers)}"
        self._pull = self._ctx.socket(zmq.PULL)
        self._pull.bind(inproc)
        self._push = self._ctx.socket(zmq.PUSH)
        self._push.setsockopt(zmq.SNDHWM, 0)
        self._push.connect(inproc)
        self._push_lock = threading.Lock()
        self._io = threading.Thread(target=self._io_loop, name=f"mot-client-io-{self.endpoint.address}", daemon=True)
        self._io.start()

    def __repr__(self) -> str:
        return f"DaemonClient({self.endpoint.address!r})"

    # --- frames out
    def _submit(self, request: P.Request) -> None:
        payload = P.encode(request)
        if self._max_message_bytes is None and len(payload) > _SMALL_FRAME_BYTES:
            self.status()  # learn the daemon's frame limit before sending something that might exceed it
        limit = self._max_message_bytes
        if limit is not None and len(payload) > limit:
            # ZeroMQ would drop the whole connection on such a frame (ZMQ_MAXMSGSIZE); say why instead
            raise TooLarge(
                f"too_large: the request is {len(payload)} bytes; the daemon accepts at most {limit} bytes per message",
                request_id=request.id, details={"limit": limit, "actual": len(payload), "what": "message_bytes"},
            )
        with self._push_lock:
            if self._closed:
                raise DaemonUnavailable("this client is closed")
            self._push.send_multipart([request.id.encode(), payload])

    def _liveness(self, t_sent: float) -> Exception | None:
        if self._auth_failed:
            return DaemonAuthError(self._auth_failed)
        if not self._io.is_alive():
            return DaemonUnavailable("the client's IO thread has stopped (the client was closed)")
        silent_since = max(t_sent, self._last_heard)
        if time.monotonic() - silent_since > self.timeout_s:
            return DaemonUnavailable(self._unavailable_message(f"no answer within {self.timeout_s:g} s"))
        return None

    def _unavailable_message(self, what: str) -> str:
        ep = self.endpoint
        hint = ""
        if ep.ipc_path is not None and not ep.ipc_path.exists():
            hint = f"; there is no socket file at {ep.ipc_path}, so no daemon is running there"
        elif not self._connected:
            hint = "; the connection was never established"
        return f"no mot-daemon answers at {ep.address}: {what}{hint}. Start one with `mot-daemon serve`"

    # --- the IO thread
    def _io_loop(self) -> None:
        zmq = self._zmq
        from zmq.utils.monitor import recv_monitor_message

        poller = zmq.Poller()
        poller.register(self._dealer, zmq.POLLIN)
        poller.register(self._pull, zmq.POLLIN)
        poller.register(self._monitor, zmq.POLLIN)
        try:
            while True:
                events = dict(poller.poll(200))
                if self._pull in events and self._send_queued():
                    return
                if self._dealer in events:
                    self._read_replies()
                if self._monitor in events:
                    while True:
                        try:
                            event = recv_monitor_message(self._monitor, zmq.NOBLOCK)
                        except zmq.Again:
                            break
                        self._on_monitor_event(event)
        except zmq.ContextTerminated:
            return
        except Exception as e:  # report to every waiter instead of leaving them hanging
            log.exception("the client IO thread failed")
            self._fail_pending(DaemonUnavailable(f"the client's IO thread failed: {type(e).__name__}: {e}"))
        finally:
            self._dealer.disable_monitor()
            for sock in (self._dealer, self._pull, self._monitor):
                sock.close(linger=0)

    def _send_queued(self) -> bool:
        """Forward frames from callers to the daemon; True when asked to stop."""
        zmq = self._zmq
        while True:
            try:
                request_id, payload = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return False
            if not request_id:  # close()
                return True
            try:
                self._dealer.send(payload, zmq.NOBLOCK)
            except zmq.Again:
                with self._pending_lock:
                    q = self._pending.get(request_id.decode())
                if q is not None:
                    q.put(_Broken(DaemonUnavailable(self._unavailable_message("the send queue is full"))))

    def _read_replies(self) -> None:
        zmq = self._zmq
        while True:
            try:
                frame = self._dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._last_heard = time.monotonic()
            try:
                reply = P.decode_reply(frame)
            except P.ProtocolError as e:
                log.warning("unreadable reply from the daemon at %s: %s", self.endpoint.address, e)
                if e.request_id:
                    self._deliver(P.Error(id=e.request_id, code="internal", message=str(e)))
                continue
            self._deliver(reply)

    def _on_monitor_event(self, event: dict) -> None:
        zmq = self._zmq
        kind = event["event"]
        if kind in (zmq.EVENT_CONNECTED, zmq.EVENT_HANDSHAKE_SUCCEEDED):
            self._connected = True
            self._last_heard = time.monotonic()
            if kind == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._auth_failed = None
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
            self._auth_failed = (
                f"the daemon at {self.endpoint.address} rejected this client's CURVE key (status {event['value']}); "
                "ask its operator to add your public key to its authorized_clients folder"
            )
            self._fail_pending(DaemonAuthError(self._auth_failed))
        elif kind == zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL:
            self._auth_failed = (
                f"the CURVE handshake with {self.endpoint.address} failed (wrong server key, or the daemon does "
                "not use CURVE)"
            )
            self._fail_pending(DaemonAuthError(self._auth_failed))
        elif kind == zmq.EVENT_DISCONNECTED and self._connected:
            self._connected = False
            self._read_replies()  # whatever arrived before the connection closed is still good
            self._fail_pending(DaemonUnavailable(
                f"lost the connection to the daemon at {self.endpoint.address} (it exited or was killed); "
                "requests in flight are lost"
            ))

    def close(self) -> None:
        with self._push_lock:
            if self._closed:
                return
            self._closed = True
            self._push.send_multipart([b"", b""])
        self._io.join(5)
        self._push.close(linger=0)
        self._fail_pending(DaemonUnavailable("the client was closed"))
        if not self._io.is_alive():
            self._ctx.term()


# ---------------------------------------------------------------------------------------------- in process


class InProcessEngine:
    """An EngineCore in this process plus the dispatch of its replies to InProcessClients.

    Used by tests (the same engine logic as the daemon, no sockets) and by the batch CLI when no daemon runs.
    """

    def __init__(self, config=None, *, model=None, load_model=None):
        from .engine import EngineConfig, EngineCore

        self.engine = EngineCore(config or EngineConfig(), model=model, load_model=load_model)
        self._clients: dict[str, InProcessClient] = {}
        self._lock = threading.Lock()
        self.engine.start(self._dispatch)

    def _dispatch(self, items: list) -> None:
        for key, reply in items:
            with self._lock:
                client = self._clients.get(key)
            if client is not None:
                client._deliver(reply)

    def client(self, timeout_s: float = 30.0) -> "InProcessClient":
        """A new client connection (its own request-id namespace, like a socket connection)."""
        return InProcessClient(self, timeout_s=timeout_s)

    def _attach(self, client: "InProcessClient") -> None:
        with self._lock:
            self._clients[client.key] = client

    def _detach(self, client: "InProcessClient") -> None:
        with self._lock:
            self._clients.pop(client.key, None)
        self.engine.client_gone(client.key)

    def close(self, timeout_s: float = 30.0) -> None:
        self.engine.stop()
        self.engine.join(timeout_s)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessClient(_ClientBase):
    """The DaemonClient API over an InProcessEngine: the same messages, the same engine, no sockets."""

    def __init__(self, hub: InProcessEngine, *, timeout_s: float = 30.0):
        super().__init__(timeout_s)
        self.hub = hub
        self.key = f"in-process-{next(_client_numbers)}"
        self.endpoint = "in-process"
        hub._attach(self)

    def __repr__(self) -> str:
        return f"InProcessClient({self.key!r})"

    def _submit(self, request: P.Request) -> None:
        reply = self.hub.engine.submit(self.key, request)
        if reply is not None:
            self._deliver(reply)

    def _liveness(self, t_sent: float) -> Exception | None:
        engine = self.hub.engine
        if engine.stopped.is_set():
            return DaemonUnavailable(f"the in-process engine has stopped (state {engine.state})")
        return None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.hub._detach(self)
        self._fail_pending(DaemonUnavailable("the client was closed"))

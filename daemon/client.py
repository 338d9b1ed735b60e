"""The client of the daemon over ZeroMQ: `DaemonClient`. (`daemon.inprocess.InProcessClient` has the same API over an
engine in this process.) Both return the protocol's reply types (daemon/protocol.py)::

    with DaemonClient() as client:                     # default endpoint, or DaemonClient("tcp://127.0.0.1:5555")
        result = client.translate(source, max_new_tokens=256, on_partial=lambda p: print(p.text, end=""))
        print(result.primary_expert_name, result.routing_probs, result.timings)

        stream = client.stream_translate(source)       # iterate partials as they arrive
        for part in stream:
            ...
        stream.result                                  # the TranslateResult (raises the DaemonError if it failed)

        client.route(source); client.status(); client.cancel(stream.request_id); client.reload(path)

Errors (daemon/errors.py, importable from here too): a reply of type `error` raises the DaemonError subclass of its
code (BadRequest, TooLarge, Overloaded, Cancelled, RequestTimeout, InternalError); no daemon, a lost connection, or
silence for `timeout_s` raise DaemonUnavailable; a daemon that rejects our CURVE key raises DaemonAuthError.

Threading: a client may be shared by threads (the language server translates while it routes). DaemonClient owns
one DEALER socket in a background IO thread; callers hand it frames over an inproc socket and wait on their own
queue, so `on_partial` callbacks run on the caller's thread, never on the IO thread.

This module imports neither torch nor the engine (an editor plugin starts fast).
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import threading
import time

import zmq
from zmq.utils.monitor import recv_monitor_message

from . import protocol as P
from .client_base import BrokenTransport, ClientBase, TranslateStream
from .endpoints import CurveClientKeys, parse_endpoint
from .errors import (
    BadRequest,
    Cancelled,
    DaemonAuthError,
    DaemonError,
    DaemonUnavailable,
    InternalError,
    Overloaded,
    RequestTimeout,
    TooLarge,
)

# The errors a client raises and the stream it returns are part of this module's API (callers import them from here).
__all__ = [
    "BadRequest", "Cancelled", "DaemonAuthError", "DaemonClient", "DaemonError", "DaemonUnavailable", "InternalError",
    "Overloaded", "RequestTimeout", "TooLarge", "TranslateStream",
]

log = logging.getLogger(__name__)


_client_numbers = itertools.count()
_SMALL_FRAME_BYTES = 64 * 1024  # frames up to this size are sent without checking the daemon's limit first


class DaemonClient(ClientBase):
    """A connection to a daemon over ZeroMQ (DEALER socket).

    endpoint: ipc://... or tcp://host:port (None: $MOT_DAEMON_ENDPOINT or the default ipc socket).
    timeout_s: how long a request may wait without any sign of life from the daemon (the daemon sends
        heartbeats while it holds our work, so a long queue does not trip it) before DaemonUnavailable.
    curve: keys for a daemon that requires CURVE (see endpoints.load_client_keys).
    """

    def __init__(self, endpoint: str | None = None, *, timeout_s: float = 30.0, curve: CurveClientKeys | None = None):
        super().__init__(timeout_s)
        self.endpoint = parse_endpoint(endpoint)
        self._ctx = zmq.Context()
        self._last_heard = 0.0  # monotonic time of the last frame from the daemon
        self._connected = False
        self._auth_failed: str | None = None
        # frames callers queued that the DEALER has not taken yet (IO thread only): `_flush_unsent`
        self._unsent: collections.deque[tuple[bytes, bytes]] = collections.deque()
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
                if self._unsent:
                    self._flush_unsent()
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
        while True:
            try:
                request_id, payload = self._pull.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if not request_id:  # close()
                return True
            self._unsent.append((request_id, payload))
        self._flush_unsent()
        return False

    def _flush_unsent(self) -> None:
        """Send the frames callers queued, in order. A DEALER with no daemon connected (not yet, or reconnecting
        after a drop or a rejected key) takes nothing: the frames wait here, retried each loop, until it does or
        their callers give up (`_liveness`: timeout_s, or the key's rejection), whose frames are then dropped."""
        while self._unsent:
            request_id, payload = self._unsent[0]
            with self._pending_lock:
                waited_for = request_id.decode() in self._pending
            if waited_for:
                try:
                    self._dealer.send(payload, zmq.NOBLOCK)
                except zmq.Again:
                    return
            self._unsent.popleft()

    def _read_replies(self) -> None:
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

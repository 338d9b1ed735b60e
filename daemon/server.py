"""The daemon process: a ZeroMQ ROUTER socket in front of an EngineCore.

Threads:
- main: binds, installs SIGTERM/SIGINT handlers, waits, shuts down in order.
- mot-io: owns the ROUTER socket. Decodes and validates frames, answers what needs no model (status, malformed
  frames, overloaded) itself, hands the rest to the engine, forwards the engine's replies, and probes clients
  with work in flight (a heartbeat) so that a vanished client's work is dropped.
- mot-engine (engine.py): the model, never blocked by a socket.

The engine hands replies over an inproc PUSH/PULL pair: one multipart message per loop iteration holding
[identity, payload, identity, payload, ...], so a decoding step of 16 requests costs one hop.

How a vanished client is noticed: the ROUTER is ROUTER_MANDATORY, so sending to a peer whose connection is gone
fails with EHOSTUNREACH instead of being dropped silently. Streaming partials hit that within one step; for
queued or non-streaming work the IO thread sends a heartbeat to every client with work in flight every
`heartbeat_s`. ZMTP heartbeats (ZMQ_HEARTBEAT_*) close TCP connections whose peer host died without a FIN.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from pathlib import Path

import zmq
from zmq.auth.thread import ThreadAuthenticator

from . import protocol as P
from .endpoints import (
    CurveServerKeys,
    Endpoint,
    EndpointLock,
    check_server_security,
    load_server_keys,
    parse_endpoint,
    prepare_ipc_directory,
)
from .engine import EngineCore
from .engine_config import EngineConfig

log = logging.getLogger(__name__)

DEFAULT_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_HEARTBEAT = P.encode(P.Heartbeat(id=""))


class DaemonServer:
    """Socket IO around an EngineCore. `start()` binds and starts both threads; `close()` stops them in order."""

    def __init__(
        self, engine: EngineCore, endpoint: Endpoint, *, curve: CurveServerKeys | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, heartbeat_s: float = 1.0,
    ):
        if max_message_bytes < 1024:
            raise ValueError(f"max_message_bytes must be >= 1024, got {max_message_bytes}")
        check_server_security(endpoint, curve is not None)
        self.engine = engine
        self.endpoint = endpoint
        self.curve = curve
        self.max_message_bytes = max_message_bytes
        self.heartbeat_s = heartbeat_s
        self._ctx = zmq.Context()
        self._auth = None
        self._router: zmq.Socket | None = None
        self._pull: zmq.Socket | None = None
        self._inproc = f"inproc://mot-engine-out-{id(self):x}"
        self._push_sockets: list[zmq.Socket] = []
        self._local = threading.local()
        self._io_thread: threading.Thread | None = None
        self._io_stop = threading.Event()
        self._bad_frames = 0
        self._dropped_replies = 0
        self._last_report = time.monotonic()

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Bind (in the calling thread, so errors surface to the caller), then start the IO and engine threads."""
        ctx = self._ctx
        router = ctx.socket(zmq.ROUTER)
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.LINGER, 1000)
        router.setsockopt(zmq.MAXMSGSIZE, self.max_message_bytes)
        router.setsockopt(zmq.SNDHWM, 100_000)
        router.setsockopt(zmq.RCVHWM, 100_000)
        router.setsockopt(zmq.HEARTBEAT_IVL, 2000)
        router.setsockopt(zmq.HEARTBEAT_TIMEOUT, 10_000)
        router.setsockopt(zmq.HEARTBEAT_TTL, 10_000)
        if self.curve is not None:
            self._auth = ThreadAuthenticator(ctx, log=logging.getLogger("daemon.auth"))
            self._auth.start()
            self._auth.configure_curve(domain="*", location=str(self.curve.authorized_clients_dir))
            router.curve_secretkey = self.curve.secret
            router.curve_publickey = self.curve.public
            router.curve_server = True
        try:
            if self.endpoint.ipc_path is not None:
                self._bind_ipc(router, self.endpoint.ipc_path)
            else:
                router.bind(self.endpoint.address)
        except Exception:
            router.close(linger=0)
            raise
        self._router = router
        self._pull = ctx.socket(zmq.PULL)
        self._pull.setsockopt(zmq.RCVHWM, 0)
        self._pull.bind(self._inproc)
        self._io_thread = threading.Thread(target=self._io_loop, name="mot-io", daemon=True)
        self._io_thread.start()
        self.engine.start(self._emit)

    def _bind_ipc(self, router: zmq.Socket, path: Path) -> None:
        # We hold the endpoint's lock, so an existing socket file is a leftover of a daemon that was killed.
        if path.exists() or path.is_symlink():
            log.info("removing the stale socket %s of a daemon that did not exit cleanly", path)
            path.unlink()
        old = os.umask(0o177)  # the socket is born 0600: no window in which others could connect
        try:
            router.bind(f"ipc://{path}")
        finally:
            os.umask(old)
        os.chmod(path, 0o600)

    def close(self, timeout_s: float = 10.0) -> None:
        """Stop the engine (answering what is in flight with `cancelled`), flush replies, close sockets."""
        self.engine.stop()
        if not self.engine.join(timeout_s):
            log.warning("the engine did not stop within %.0f s (still loading?); exiting without it", timeout_s)
        self._io_stop.set()
        if self._io_thread is not None:
            self._io_thread.join(timeout_s)
        for sock in self._push_sockets:
            sock.close(linger=0)
        if self._auth is not None:
            self._auth.stop()
        if self._io_thread is None or not self._io_thread.is_alive():
            self._ctx.term()
        else:
            log.warning("the IO thread did not stop within %.0f s; leaving its socket to the process exit", timeout_s)
        if self.endpoint.ipc_path is not None:
            try:
                self.endpoint.ipc_path.unlink()
            except FileNotFoundError:
                pass

    # ------------------------------------------------------------------------------------------ engine -> IO

    def _emit(self, items: list) -> None:
        """Called on the engine thread: one multipart message per call, forwarded by the IO thread."""
        sock = getattr(self._local, "push", None)
        if sock is None:
            sock = self._ctx.socket(zmq.PUSH)
            sock.setsockopt(zmq.SNDHWM, 0)  # the IO thread always drains it; never block the engine
            sock.connect(self._inproc)
            self._local.push = sock
            self._push_sockets.append(sock)
        frames: list[bytes] = []
        for client, reply in items:
            frames.append(client)
            frames.append(P.encode(reply))
        sock.send_multipart(frames, copy=False)

    # ------------------------------------------------------------------------------------------ the IO thread

    def _io_loop(self) -> None:
        router, pull = self._router, self._pull
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(pull, zmq.POLLIN)
        next_probe = time.monotonic() + self.heartbeat_s
        try:
            while True:
                try:
                    events = dict(poller.poll(100))
                    if pull in events:
                        self._forward_replies()
                    if router in events:
                        self._read_requests()
                    now = time.monotonic()
                    if now >= next_probe:
                        next_probe = now + self.heartbeat_s
                        for client in self.engine.active_clients():
                            self._send(client, _HEARTBEAT)
                        self._report_noise(now)
                    if self._io_stop.is_set():
                        self._forward_replies()
                        break
                except zmq.ContextTerminated:
                    break
                except Exception:  # never let the IO thread die: a dead IO thread is a daemon that hangs
                    log.exception("unexpected error in the IO loop; continuing")
        finally:
            router.close(linger=1000)
            pull.close(linger=0)
            log.info("IO thread ended")

    def _forward_replies(self) -> None:
        while True:
            try:
                frames = self._pull.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            for i in range(0, len(frames) - 1, 2):
                self._send(frames[i].bytes, frames[i + 1])

    def _read_requests(self) -> None:
        for _ in range(1000):  # bounded, so replies are forwarded even under a flood of requests
            try:
                frames = self._router.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            identity, body = frames[0], frames[1:]
            try:
                reply = self._handle(identity, body)
            except Exception as e:
                log.exception("failed to handle a request from %s", identity.hex())
                reply = P.Error(id="", code="internal", message=f"the daemon failed to handle the request: {type(e).__name__}")
            if reply is not None:
                self._send(identity, P.encode(reply))

    def _handle(self, identity: bytes, body: list[bytes]) -> P.Reply | None:
        if len(body) != 1:
            self._bad_frames += 1
            return P.Error(
                id="", code="bad_request",
                message=f"expected one frame holding a msgpack request, got {len(body)} frames",
            )
        try:
            request = P.decode_request(body[0])
        except P.ProtocolError as e:
            self._bad_frames += 1
            log.debug("malformed request from %s: %s", identity.hex(), e)
            return e.to_reply()
        return self.engine.submit(identity, request)

    def _send(self, identity: bytes, payload) -> None:
        try:
            self._router.send_multipart([identity, payload], zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self._dropped_replies += 1  # the client does not read its socket; reported by _report_noise
        except zmq.ZMQError as e:
            if e.errno == zmq.EHOSTUNREACH:
                self.engine.client_gone(identity)
            else:
                log.warning("could not send a reply to %s: %s", identity.hex(), e)

    def _report_noise(self, now: float) -> None:
        """Malformed frames and dropped replies are counted, then logged at most every 10 s (never silent,
        never a log line per frame of a fuzzer)."""
        if now - self._last_report < 10 or not (self._bad_frames or self._dropped_replies):
            return
        log.warning(
            "in the last %.0f s: %d malformed frames answered with bad_request, %d replies dropped because their "
            "client did not read them", now - self._last_report, self._bad_frames, self._dropped_replies,
        )
        self._bad_frames = self._dropped_replies = 0
        self._last_report = now


# ---------------------------------------------------------------------------------------------- the process


def serve(
    config: EngineConfig, endpoint: str | None = None, *, curve_dir: str | Path | None = None,
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES, install_signal_handlers: bool = True,
) -> int:
    """Run a daemon until SIGTERM/SIGINT or a `shutdown` request. Returns the process exit code.

    Order matters: the endpoint is checked and locked before anything slow, so a refused endpoint or a second
    daemon fails in a fraction of a second; the socket is bound before the model loads, so clients can ask
    `status` (state "loading") at once.
    """
    ep = parse_endpoint(endpoint)
    curve = load_server_keys(curve_dir) if curve_dir is not None else None
    check_server_security(ep, curve is not None)
    prepare_ipc_directory(ep)
    if config.max_source_chars * 4 + 1024 > max_message_bytes:
        log.warning(
            "sources of up to %d characters may need up to %d bytes in UTF-8, more than --max-message-bytes %d: "
            "such requests will be refused by size", config.max_source_chars, config.max_source_chars * 4,
            max_message_bytes,
        )
    lock = EndpointLock(ep).acquire()
    try:
        config.extra_limits = {**config.extra_limits, "max_message_bytes": max_message_bytes}
        engine = EngineCore(config)
        server = DaemonServer(engine, ep, curve=curve, max_message_bytes=max_message_bytes)
        server.start()
        log.info(
            "mot-daemon (pid %d) listening on %s%s; loading preset %s", os.getpid(), ep.address,
            " with CURVE" if curve else "", config.preset or "(default)",
        )
        stop = threading.Event()
        if install_signal_handlers:
            def on_signal(signum, frame):
                if stop.is_set():
                    log.warning("second %s: exiting now", signal.Signals(signum).name)
                    os._exit(128 + signum)
                log.info("%s received: shutting down", signal.Signals(signum).name)
                stop.set()

            signal.signal(signal.SIGTERM, on_signal)
            signal.signal(signal.SIGINT, on_signal)
        while not stop.is_set() and not engine.stopped.is_set():
            stop.wait(0.2)
        failed = engine.state == "failed"
        server.close()
        log.info("mot-daemon stopped%s", " (the model failed to load)" if failed else "")
        return 1 if failed else 0
    finally:
        lock.release()

"""The daemon's engine in this process: `InProcessEngine` (an EngineCore plus the dispatch of its replies) and its
`InProcessClient`s, with DaemonClient's API and messages but no sockets.

Used by tests (the same engine logic as the daemon) and by the batch CLI when no daemon runs. Importing it loads
the engine module (torch-free itself; the model loads on the engine thread).
"""

from __future__ import annotations

import itertools
import threading

from . import protocol as P
from .client_base import ClientBase
from .engine import EngineCore
from .engine_config import EngineConfig
from .errors import DaemonUnavailable

_client_numbers = itertools.count()


class InProcessEngine:
    """An EngineCore in this process plus the dispatch of its replies to InProcessClients.

    Used by tests (the same engine logic as the daemon, no sockets) and by the batch CLI when no daemon runs.
    """

    def __init__(self, config=None, *, model=None, load_model=None):
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


class InProcessClient(ClientBase):
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

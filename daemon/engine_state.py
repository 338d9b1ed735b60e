"""What the daemon's engine thread shares with the threads that submit requests and ask for status, under one lock:
the engine's state (and why it failed), the counts that bound admission (translations in flight, routes waiting),
the clients with work in flight, and the snapshot and model description `status` is built from."""

from __future__ import annotations

import collections
import threading
from collections.abc import Hashable
from typing import Any

from .engine_config import EngineConfig

ClientKey = Hashable
# The engine's states, as `status_result.state` reports them.
STATES = ("loading", "ready", "reloading", "failed", "stopping")


class SharedState:
    """Thread-safe: every method takes the lock. The engine thread writes the state, the snapshot and the model
    description; any thread may admit (or refuse) work, and the engine thread releases it."""

    def __init__(self, config: EngineConfig):
        self._lock = threading.Lock()
        self._state = "loading"
        self._error: str | None = None
        self._outstanding = 0  # translations accepted and not yet answered
        self._pending_routes = 0
        self._active_clients: collections.Counter = collections.Counter()
        self._snapshot: dict[str, Any] = {"queue_depth": 0, "running": 0, "verifying": 0, "steps": 0,
                                          "requests_served": 0}
        self._info: dict[str, Any] = {
            "preset": config.preset, "checkpoint": config.checkpoint, "device": config.device, "dtype": config.dtype,
            "expert_names": [], "expert_ids": [], "encoder": None, "max_source_tokens": None,
        }

    # ------------------------------------------------------------------------------------------ state

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def state_and_error(self) -> tuple[str, str | None]:
        with self._lock:
            return self._state, self._error

    def set_state(self, state: str, *, error: str | None = None) -> None:
        """Enter `state`; `error` (why it "failed") replaces the previous one only when given."""
        if state not in STATES:
            raise ValueError(f"unknown engine state {state!r}; expected one of {STATES}")
        with self._lock:
            self._state = state
            if error is not None:
                self._error = error

    # ------------------------------------------------------------------------------------------ admission

    def try_accept_translation(self, client: ClientKey, capacity: int) -> int | None:
        """Count a new translation in flight, or refuse it: None when accepted, else the number in flight."""
        with self._lock:
            if self._outstanding >= capacity:
                return self._outstanding
            self._outstanding += 1
            self._active_clients[client] += 1
            return None

    def release_translation(self, client: ClientKey) -> None:
        """A translation was answered (or dropped): it no longer counts."""
        with self._lock:
            self._outstanding -= 1
            self._active_clients[client] -= 1
            if self._active_clients[client] <= 0:
                del self._active_clients[client]

    def try_accept_route(self, limit: int) -> int | None:
        """Count a new route request waiting, or refuse it: None when accepted, else the number waiting."""
        with self._lock:
            if self._pending_routes >= limit:
                return self._pending_routes
            self._pending_routes += 1
            return None

    def release_routes(self, count: int) -> None:
        with self._lock:
            self._pending_routes -= count

    def active_clients(self) -> list[ClientKey]:
        with self._lock:
            return list(self._active_clients)

    # ------------------------------------------------------------------------------------------ status

    def publish(self, snapshot: dict[str, Any]) -> None:
        """The engine loop's numbers for `status` (queue_depth, running, verifying, steps, requests_served)."""
        with self._lock:
            self._snapshot = snapshot

    def update_info(self, **fields: Any) -> None:
        """The served model's description for `status` (preset, checkpoint, device, dtype, experts...)."""
        unknown = set(fields) - set(self._info)
        if unknown:
            raise ValueError(f"unknown status fields {sorted(unknown)}; known: {sorted(self._info)}")
        with self._lock:
            self._info.update(fields)

    def info(self, name: str) -> Any:
        with self._lock:
            return self._info[name]

    def status_view(self) -> tuple[dict[str, Any], dict[str, Any], str, str | None, int]:
        """(snapshot, model description, state, error, queue depth), read together."""
        with self._lock:
            snap, info, state, error = dict(self._snapshot), dict(self._info), self._state, self._error
            # Accepted but not decoding (nor verified) yet, including what the engine thread has not picked up yet.
            queue_depth = max(0, self._outstanding - snap["running"] - snap["verifying"])
        return snap, info, state, error, queue_depth

"""EngineCore: the daemon's engine loop, with no socket in sight (the split of vLLM v1's EngineCore).

One thread (the engine thread) owns the MixtureOfThoughts and its `Generator` and is the only one that touches
the model. Other threads talk to it through two thread-safe calls:

    reply = engine.submit(client, request)   # a protocol request; a reply now (status, overloaded...) or None
    engine.client_gone(client)               # that client vanished: drop its work

and receive everything else through the `emit(list[(client, reply)])` callback, called on the engine thread
once per loop iteration (so a socket thread can forward a whole decoding step's partials in one hop).

Why this shape:
- The engine thread never waits on a socket: while anything is decoding it drains its inbox without blocking
  and steps again at once; every waiting translation is handed to the Generator, which batches all of them.
- The queue is bounded where requests enter (`submit`), under a lock, so a full daemon answers `overloaded`
  immediately from the caller's thread instead of letting a request hang.
- `route` uses the model's encoder and router, so it is served here too, batched between decoding steps (within
  one step's time); `status` never waits: it is built from a snapshot the loop publishes.
- Cancel, timeout and vanished clients all go through `Generator.abort`, which frees the slot at the next step.
- Errors of one request are replies (bad_request, too_large...); an exception inside a decoding step fails the
  requests of that step with `internal` and the engine continues with a fresh Generator; only a model that
  cannot be loaded is fatal.
- A translation's candidates decode as rows of the batch; their kernels are verified on the verifier's own threads
  (verification.py), whose results come back through the inbox: g++ never holds up a decoding step, and a check
  that fails is that request's "unavailable" check.

This module holds the thread-safe API; what runs on the engine thread is `EngineLoop` (engine_loop.py). Around
them: EngineConfig (engine_config.py), the state shared between the threads (engine_state.py), the replies with
limits and values (replies.py), a translation's candidates and checks (translation.py), the verifier
(verification.py), and the model side (served_model.py: torch and mot_engine's compute, imported on the
engine thread, so that importing the engine loads neither).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from typing import Any

from . import protocol as P
from . import replies
from .engine_config import EngineConfig
from .engine_loop import CANCEL, GONE, RELOAD, ROUTE, SHUTDOWN, STOP, TRANSLATE, EmitFn, EngineLoop
from .engine_state import ClientKey
from .memory import device_memory


class EngineCore(EngineLoop):
    """Drives one MixtureOfThoughts for many clients. Start it with `start(emit)`; stop it with `stop()`."""

    def __init__(self, config: EngineConfig, *, model=None, load_model: Callable[[], Any] | None = None):
        """`model`: an already built MixtureOfThoughts (tests); else `load_model()` (default: build_mot from the
        config) runs on the engine thread, so the daemon answers `status` ("loading") while it loads."""
        super().__init__(config, model=model, load_model=load_model)
        self._thread: threading.Thread | None = None
        self._t_start = time.monotonic()

    # ------------------------------------------------------------------------------------------ thread-safe API

    def start(self, emit: EmitFn) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._emit = emit
        self._thread = threading.Thread(target=self._run, name="mot-engine", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "the daemon is shutting down") -> None:
        """Ask the loop to answer everything in flight with `cancelled` (reason) and end."""
        self._inbox.put((STOP, None, reason, time.monotonic()))

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def state(self) -> str:
        return self._shared.state

    def submit(self, client: ClientKey, request: P.Request) -> P.Reply | None:
        """Hand a decoded request to the engine. Returns a reply to send now, or None if the engine will answer.

        Cheap checks (limits, queue capacity) happen here, on the caller's thread, so that an overloaded or
        oversized request is answered at once whatever the engine is doing.
        """
        now = time.monotonic()
        if isinstance(request, P.Status):
            return self.status_reply(request.id)
        state, error = self._shared.state_and_error()
        if state == "failed":
            return P.Error(id=request.id, code="internal", message=f"the daemon's model failed to load: {error}")
        if state == "stopping" or self.stopped.is_set():
            return P.Error(id=request.id, code="cancelled", message="the daemon is shutting down")
        if isinstance(request, (P.Translate, P.Route)):
            problem = replies.source_problem(request, self.config.max_source_chars)
            if problem is not None:
                return problem
        if isinstance(request, P.Translate):
            problem = replies.new_tokens_over_limit(request, self.config.max_new_tokens)
            if problem is not None:
                return problem
            in_flight = self._shared.try_accept_translation(client, self.config.capacity)
            if in_flight is not None:
                return replies.translations_overloaded(request.id, in_flight, self.config)
            self._inbox.put((TRANSLATE, client, request, now))
            return None
        if isinstance(request, P.Route):
            waiting = self._shared.try_accept_route(self.config.max_pending_routes)
            if waiting is not None:
                return replies.routes_overloaded(request.id, waiting, self.config.max_pending_routes)
            self._inbox.put((ROUTE, client, request, now))
            return None
        kind = {P.Cancel: CANCEL, P.Reload: RELOAD, P.Shutdown: SHUTDOWN}.get(type(request))
        if kind is None:
            raise TypeError(f"submit() takes a protocol request, got {type(request).__name__}")
        self._inbox.put((kind, client, request, now))
        return None

    def client_gone(self, client: ClientKey) -> None:
        """The client disconnected or stopped answering: abort its translations (no replies are sent)."""
        self._inbox.put((GONE, client, None, time.monotonic()))

    def active_clients(self) -> list[ClientKey]:
        """Clients with translations in flight (the server probes them to notice vanished ones)."""
        return self._shared.active_clients()

    def verification_summary(self) -> str:
        """Whether translations asking for verification ("auto") are verified here, in words."""
        plan = self._verifier.plan("auto")
        if plan.choose:
            return f"on: candidates are verified (C++ compiler {self._verifier.gxx})"
        return f"{'syntax only' if plan.check else 'off'}: {plan.reason}"

    def status_reply(self, request_id: str) -> P.StatusResult:
        snap, info, state, error, queue_depth = self._shared.status_view()
        limits: dict[str, int | float] = {
            "max_source_chars": self.config.max_source_chars,
            "max_new_tokens": self.config.max_new_tokens,
            "default_timeout_s": self.config.default_timeout_s,
            "verify_timeout_s": self.config.verify_timeout_s,
        }
        if info["max_source_tokens"] is not None:
            limits["max_source_tokens"] = info["max_source_tokens"]
        limits.update(self.config.extra_limits)
        return P.StatusResult(
            id=request_id, state=state, protocol_version=P.PROTOCOL_VERSION, pid=os.getpid(),
            uptime_s=round(time.monotonic() - self._t_start, 3), preset=info["preset"], checkpoint=info["checkpoint"],
            device=info["device"], dtype=info["dtype"], expert_names=info["expert_names"], expert_ids=info["expert_ids"],
            encoder=info["encoder"], max_batch_size=self.config.max_batch_size, max_queue=self.config.max_queue,
            queue_depth=queue_depth, running=snap["running"], steps=snap["steps"],
            requests_served=snap["requests_served"], device_memory=device_memory(info["device"]), limits=limits,
            error=error, verifying=snap["verifying"], verification=self.verification_summary(),
        )


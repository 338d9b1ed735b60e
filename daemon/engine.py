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
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

from . import protocol as P

log = logging.getLogger(__name__)

ClientKey = Hashable
EmitFn = Callable[[list[tuple[ClientKey, P.Reply]]], None]


@dataclass
class EngineConfig:
    """What the daemon serves and its limits. Validated by `validate()` (ValueError naming the field)."""

    preset: str | None = None
    checkpoint: str | None = None
    device: str | None = None  # None: cuda if available else cpu
    dtype: str | None = None  # None: the engine's default (bf16 on GPU, fp32 on CPU)
    max_batch_size: int = 16  # sequences decoded together
    max_queue: int = 64  # translations accepted beyond the running batch; more -> overloaded
    max_source_chars: int = 200_000
    max_new_tokens: int = 4096
    default_timeout_s: float = 600.0
    batch_wait_s: float = 0.005  # when idle, gather requests arriving less than this apart into one batch...
    batch_wait_max_s: float = 0.05  # ...for at most this long
    max_pending_routes: int = 256
    route_batch_size: int = 64
    extra_limits: dict[str, Any] = field(default_factory=dict)  # shown in status (e.g. the server's frame limit)
    # Seed of torch's RNG before the model is built: without a checkpoint the router and interaction layers are
    # random, and this makes their routing the same on every start (and benchmarks repeatable). None: unseeded.
    init_seed: int | None = 0

    def validate(self) -> None:
        for name in ("max_batch_size", "max_new_tokens", "max_source_chars", "max_pending_routes", "route_batch_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue must be an integer >= 0, got {self.max_queue!r}")
        if not self.default_timeout_s > 0:
            raise ValueError(f"default_timeout_s must be > 0, got {self.default_timeout_s!r}")
        if not self.batch_wait_s >= 0:
            raise ValueError(f"batch_wait_s must be >= 0, got {self.batch_wait_s!r}")
        if not self.batch_wait_max_s >= 0:
            raise ValueError(f"batch_wait_max_s must be >= 0, got {self.batch_wait_max_s!r}")

    @property
    def capacity(self) -> int:
        """Translations in flight at most: the running batch plus the queue."""
        return self.max_batch_size + self.max_queue


@dataclass
class _Tracked:
    """The engine's bookkeeping of one translation, from acceptance to its final reply."""

    client: ClientKey
    request: P.Translate
    gen_id: str
    t_received: float
    deadline: float
    in_generator: bool = False
    t_admitted: float | None = None
    abort_reason: str | None = None  # "cancelled" | "timeout" | "gone" | "shutdown"
    cancel_step: int | None = None
    partial_index: int = 0
    num_tokens: int = 0

    @property
    def key(self) -> tuple[ClientKey, str]:
        return (self.client, self.request.id)


class _Stop(Exception):
    pass


_TRANSLATE, _ROUTE, _CANCEL, _RELOAD, _SHUTDOWN, _GONE, _STOP = range(7)


class EngineCore:
    """Drives one MixtureOfThoughts for many clients. Start it with `start(emit)`; stop it with `stop()`."""

    def __init__(self, config: EngineConfig, *, model=None, load_model: Callable[[], Any] | None = None):
        """`model`: an already built MixtureOfThoughts (tests); else `load_model()` (default: build_mot from the
        config) runs on the engine thread, so the daemon answers `status` ("loading") while it loads."""
        config.validate()
        self.config = config
        self._model = model
        self._load_model = load_model
        self._gen = None
        self._emit: EmitFn | None = None
        self._thread: threading.Thread | None = None
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._lock = threading.Lock()
        # --- shared with other threads (under _lock)
        self._state = "loading"
        self._error: str | None = None
        self._outstanding = 0  # translations accepted and not yet answered
        self._pending_routes = 0
        self._active_clients: collections.Counter = collections.Counter()
        self._snapshot: dict[str, Any] = {"queue_depth": 0, "running": 0, "steps": 0, "requests_served": 0}
        self._info: dict[str, Any] = {
            "preset": config.preset, "checkpoint": config.checkpoint, "device": config.device, "dtype": config.dtype,
            "expert_names": [], "expert_ids": [], "encoder": None, "max_source_tokens": None,
        }
        self._t_start = time.monotonic()
        self.stopped = threading.Event()  # set when the loop has ended (after a shutdown request or stop())
        self.shutdown_requested = threading.Event()  # set when a client asked the daemon to shut down
        # --- engine thread only
        self._by_key: dict[tuple[ClientKey, str], _Tracked] = {}
        self._by_gen: dict[str, _Tracked] = {}
        self._backlog: collections.deque[_Tracked] = collections.deque()
        self._routes: list[tuple[ClientKey, P.Route]] = []
        self._reload: tuple[ClientKey, P.Reload] | None = None
        self._out: list[tuple[ClientKey, P.Reply]] = []
        self._next_gen = 0
        self._steps = 0
        self._served = 0
        self._stopping: str | None = None

    # ------------------------------------------------------------------------------------------ thread-safe API

    def start(self, emit: EmitFn) -> None:
        if self._thread is not None:
            raise RuntimeError("the engine is already started")
        self._emit = emit
        self._thread = threading.Thread(target=self._run, name="mot-engine", daemon=True)
        self._thread.start()

    def stop(self, reason: str = "the daemon is shutting down") -> None:
        """Ask the loop to answer everything in flight with `cancelled` (reason) and end."""
        self._inbox.put((_STOP, None, reason, time.monotonic()))

    def join(self, timeout: float | None = None) -> bool:
        if self._thread is not None:
            self._thread.join(timeout)
            return not self._thread.is_alive()
        return True

    @property
    def state(self) -> str:
        with self._lock:
            return self._state

    def submit(self, client: ClientKey, request: P.Request) -> P.Reply | None:
        """Hand a decoded request to the engine. Returns a reply to send now, or None if the engine will answer.

        Cheap checks (limits, queue capacity) happen here, on the caller's thread, so that an overloaded or
        oversized request is answered at once whatever the engine is doing.
        """
        now = time.monotonic()
        if isinstance(request, P.Status):
            return self.status_reply(request.id)
        with self._lock:
            state, error = self._state, self._error
        if state == "failed":
            return P.Error(id=request.id, code="internal", message=f"the daemon's model failed to load: {error}")
        if state == "stopping" or self.stopped.is_set():
            return P.Error(id=request.id, code="cancelled", message="the daemon is shutting down")
        if isinstance(request, (P.Translate, P.Route)):
            problem = self._check_source(request)
            if problem is not None:
                return problem
        if isinstance(request, P.Translate):
            limit = self.config.max_new_tokens
            if request.options.max_new_tokens > limit:
                return P.Error(
                    id=request.id, code="too_large",
                    message=f"max_new_tokens={request.options.max_new_tokens} is above this daemon's limit of {limit}",
                    details={"limit": limit, "actual": request.options.max_new_tokens, "what": "max_new_tokens"},
                )
            with self._lock:
                if self._outstanding >= self.config.capacity:
                    return P.Error(
                        id=request.id, code="overloaded",
                        message=(
                            f"the daemon is busy: {self._outstanding} translations are running or queued, the limit "
                            f"is {self.config.capacity} ({self.config.max_batch_size} running + "
                            f"{self.config.max_queue} queued); retry later"
                        ),
                        details={"in_flight": self._outstanding, "limit": self.config.capacity},
                    )
                self._outstanding += 1
                self._active_clients[client] += 1
            self._inbox.put((_TRANSLATE, client, request, now))
            return None
        if isinstance(request, P.Route):
            with self._lock:
                if self._pending_routes >= self.config.max_pending_routes:
                    return P.Error(
                        id=request.id, code="overloaded",
                        message=f"{self._pending_routes} route requests are already waiting (limit "
                        f"{self.config.max_pending_routes}); retry later",
                        details={"in_flight": self._pending_routes, "limit": self.config.max_pending_routes},
                    )
                self._pending_routes += 1
            self._inbox.put((_ROUTE, client, request, now))
            return None
        kind = {P.Cancel: _CANCEL, P.Reload: _RELOAD, P.Shutdown: _SHUTDOWN}.get(type(request))
        if kind is None:
            raise TypeError(f"submit() takes a protocol request, got {type(request).__name__}")
        self._inbox.put((kind, client, request, now))
        return None

    def client_gone(self, client: ClientKey) -> None:
        """The client disconnected or stopped answering: abort its translations (no replies are sent)."""
        self._inbox.put((_GONE, client, None, time.monotonic()))

    def active_clients(self) -> list[ClientKey]:
        """Clients with translations in flight (the server probes them to notice vanished ones)."""
        with self._lock:
            return list(self._active_clients)

    def status_reply(self, request_id: str) -> P.StatusResult:
        with self._lock:
            snap, info, state, error = dict(self._snapshot), dict(self._info), self._state, self._error
            # Accepted but not decoding yet, including what the engine thread has not picked up yet.
            queue_depth = max(0, self._outstanding - snap["running"])
        limits: dict[str, int | float] = {
            "max_source_chars": self.config.max_source_chars,
            "max_new_tokens": self.config.max_new_tokens,
            "default_timeout_s": self.config.default_timeout_s,
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
            error=error,
        )

    def _check_source(self, request: P.Translate | P.Route) -> P.Error | None:
        source = request.source
        if len(source) > self.config.max_source_chars:
            return P.Error(
                id=request.id, code="too_large",
                message=f"the source is {len(source)} characters long; this daemon's limit is "
                f"{self.config.max_source_chars} characters",
                details={"limit": self.config.max_source_chars, "actual": len(source), "what": "source_chars"},
            )
        if not source.strip():
            return P.Error(id=request.id, code="bad_request", message="the source is empty")
        return None

    # ------------------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as e:  # noqa: BLE001 - a model that cannot load is the one fatal error: report it
            log.exception("the model failed to load")
            with self._lock:
                self._state, self._error = "failed", f"{type(e).__name__}: {e}"
            self._fail_inbox_after_load_failure()
            self.stopped.set()
            return
        try:
            while True:
                try:
                    self._iteration()
                except _Stop:
                    break
                except Exception:  # a bug in the loop itself: say so loudly, fail what is in flight, go on
                    log.exception("unexpected error in the engine loop; failing the requests in flight")
                    self._fail_all("internal", "the daemon hit an internal error while serving this request")
                    self._reset_generator()
                    self._flush()
            self._cancel_everything(self._stopping or "the daemon is shutting down")
            self._flush()
        finally:
            with self._lock:
                self._state = "stopping"
            self.stopped.set()
            log.info("engine loop ended")

    def _load(self) -> None:
        import torch

        t0 = time.perf_counter()
        if self._model is None:
            if self._load_model is not None:
                self._model = self._load_model()
            else:
                from mot_engine import build_mot

                cfg = self.config
                if cfg.init_seed is not None:
                    torch.manual_seed(cfg.init_seed)
                self._model = build_mot(cfg.preset, cfg.checkpoint, device=resolve_device(cfg.device), dtype=cfg.dtype)
        mot = self._model
        self._reset_generator()
        log.info("decoding: %s", self._gen.decoding)
        warm = self._gen.warm_up()  # GPU: graph capture (+ torch.compile) now, not on the first user's request
        if warm:
            log.info("captured the routing graphs%s in %.1f s (once per process)",
                     " and compiled the decode paths" if self._gen.compile_layers else "", warm)
        broken = getattr(mot.encoder.captured, "broken", None)
        log.info("routing: %s", f"eager (the encoder's CUDA graph capture failed: {broken})" if broken
                 else "CUDA graphs" if mot.encoder.captured is not None else "eager")
        dtype = str(next(mot.experts[0].parameters()).dtype).replace("torch.", "")
        with self._lock:
            self._info.update(
                preset=getattr(mot, "preset", self.config.preset), checkpoint=getattr(mot, "checkpoint", None),
                device=str(mot.device), dtype=dtype, expert_names=list(mot.expert_names),
                expert_ids=[e.model_id for e in mot.config.experts] or list(mot.expert_names),
                encoder=mot.config.encoder, max_source_tokens=mot.config.max_source_tokens,
            )
            self._state = "ready"
        torch.set_grad_enabled(False)  # this thread only runs inference
        log.info(
            "model ready in %.1f s: preset %s, experts %s, device %s, dtype %s, checkpoint %s",
            time.perf_counter() - t0, self._info["preset"], ", ".join(mot.expert_names), mot.device, dtype,
            self._info["checkpoint"],
        )

    def _reset_generator(self) -> None:
        from mot_engine import Generator

        self._gen = Generator(self._model, max_batch_size=self.config.max_batch_size)

    def _iteration(self) -> None:
        gen = self._gen
        busy = gen.has_unfinished() or (self._backlog and self._reload is None) or self._routes
        self._drain(block=not busy)
        if self._stopping is not None:
            raise _Stop
        self._expire()
        if self._reload is not None and not self._gen.has_unfinished():
            self._do_reload()
        if self._reload is None:
            self._admit()
        if self._routes:
            self._serve_routes()
        if self._gen.has_unfinished():
            self._step()
        self._publish()  # before the replies go out: a client that reads a reply and then asks status sees it
        self._flush()

    def _drain(self, block: bool) -> None:
        """Take everything from the inbox; when idle, wait for work (and briefly for more work to batch with it)."""
        if block:
            try:
                item = self._inbox.get(timeout=0.25)  # wake up now and then to expire timeouts
            except queue.Empty:
                return
            self._handle(item)
            if item[0] == _TRANSLATE and self.config.batch_wait_s > 0:
                # Requests that arrive together (clients resubmitting after a batch ended) should start together:
                # a request admitted one step later starts a separate cohort, decoded by a separate forward pass
                # for the rest of its life. Keep collecting while arrivals are less than batch_wait_s apart, up to
                # batch_wait_max_s in all or until the batch is full.
                cap = time.monotonic() + max(self.config.batch_wait_max_s, self.config.batch_wait_s)
                while len(self._backlog) < self.config.max_batch_size - self._gen.num_running:
                    left = min(self.config.batch_wait_s, cap - time.monotonic())
                    if left <= 0:
                        break
                    try:
                        self._handle(self._inbox.get(timeout=left))
                    except queue.Empty:
                        break
        while True:
            try:
                item = self._inbox.get_nowait()
            except queue.Empty:
                return
            self._handle(item)

    def _handle(self, item) -> None:
        kind, client, request, t_received = item
        if kind == _TRANSLATE:
            key = (client, request.id)
            if key in self._by_key:
                self._release(client)
                self._send(client, P.Error(
                    id=request.id, code="bad_request",
                    message=f"request id {request.id!r} is already in flight on this connection; use a fresh id",
                ))
                return
            timeout = request.options.timeout_s or self.config.default_timeout_s
            self._next_gen += 1
            t = _Tracked(client, request, f"g{self._next_gen}", t_received, t_received + timeout)
            self._by_key[key] = t
            self._by_gen[t.gen_id] = t
            self._backlog.append(t)
        elif kind == _ROUTE:
            self._routes.append((client, request))
        elif kind == _CANCEL:
            self._cancel(client, request)
        elif kind == _RELOAD:
            if self._reload is not None:
                self._send(client, P.Error(id=request.id, code="bad_request",
                                           message="a reload is already pending; wait for its reply"))
            else:
                self._reload = (client, request)
                with self._lock:
                    self._state = "reloading"
        elif kind == _SHUTDOWN:
            log.info("shutdown requested by a client")
            self._send(client, P.ShutdownResult(id=request.id))
            self.shutdown_requested.set()
            self._stopping = "the daemon is shutting down (a client asked it to)"
        elif kind == _GONE:
            self._drop_client(client)
        elif kind == _STOP:
            self._stopping = request

    # ------------------------------------------------------------------------------------------ requests

    def _cancel(self, client: ClientKey, request: P.Cancel) -> None:
        t = self._by_key.get((client, request.target_id))
        if t is None:
            self._send(client, P.CancelResult(id=request.id, target_id=request.target_id, found=False))
            return
        self._send(client, P.CancelResult(id=request.id, target_id=request.target_id, found=True))
        if t.abort_reason is not None:
            return
        if t.in_generator:
            t.abort_reason, t.cancel_step = "cancelled", self._steps
            self._gen.abort(t.gen_id)
        else:
            self._backlog.remove(t)
            self._send(client, P.Error(
                id=t.request.id, code="cancelled", message="the request was cancelled before it started",
                details={"freed_after_steps": 0, "num_generated_tokens": 0},
            ))
            self._forget(t)

    def _drop_client(self, client: ClientKey) -> None:
        mine = [t for t in self._by_key.values() if t.client == client]
        if mine:
            log.info("client %s vanished; dropping its %d translation(s)", _show(client), len(mine))
        for t in mine:
            if t.in_generator:
                if t.abort_reason is None:
                    t.abort_reason = "gone"
                    self._gen.abort(t.gen_id)
                else:
                    t.abort_reason = "gone"  # whatever it was, nobody is left to tell
            else:
                self._backlog.remove(t)
                self._forget(t)
        self._routes = [(c, r) for c, r in self._routes if c != client]

    def _expire(self) -> None:
        now = time.monotonic()
        for t in [t for t in self._by_key.values() if t.deadline <= now and t.abort_reason is None]:
            if t.in_generator:
                t.abort_reason = "timeout"
                self._gen.abort(t.gen_id)
            else:
                self._backlog.remove(t)
                self._send(t.client, self._timeout_error(t))
                self._forget(t)

    def _timeout_error(self, t: _Tracked) -> P.Error:
        limit = t.request.options.timeout_s or self.config.default_timeout_s
        return P.Error(
            id=t.request.id, code="timeout",
            message=f"the translation did not finish within its timeout of {limit:g} s "
            f"({t.num_tokens} tokens were generated); raise timeout_s or lower max_new_tokens",
            details={"timeout_s": limit, "num_generated_tokens": t.num_tokens},
        )

    def _admit(self) -> None:
        from mot_engine import GenerationRequest, SourceTooLong

        while self._backlog:
            t = self._backlog.popleft()
            o = t.request.options
            req = GenerationRequest(
                source=t.request.source, mode=o.mode, max_new_tokens=o.max_new_tokens, temperature=o.temperature,
                top_p=o.top_p, seed=o.seed, stop_at_eos=not o.ignore_eos,
            )
            try:
                self._gen.add_request(t.gen_id, req)
            except SourceTooLong as e:
                self._send(t.client, P.Error(
                    id=t.request.id, code="too_large", message=str(e),
                    details={"limit": e.limit, "actual": e.actual, "expert": e.expert, "what": "source_tokens"},
                ))
                self._forget(t)
                continue
            except ValueError as e:
                self._send(t.client, P.Error(id=t.request.id, code="bad_request", message=str(e)))
                self._forget(t)
                continue
            except Exception as e:
                log.exception("could not queue translation %s", t.request.id)
                self._send(t.client, P.Error(id=t.request.id, code="internal", message=f"{type(e).__name__}: {e}"))
                self._forget(t)
                continue
            t.in_generator, t.t_admitted = True, time.monotonic()

    def _serve_routes(self) -> None:
        import torch

        batch, self._routes = self._routes[: self.config.route_batch_size], self._routes[self.config.route_batch_size :]
        with self._lock:
            self._pending_routes -= len(batch)
        mot = self._model
        try:
            with torch.no_grad():
                routing = mot.route([r.source for _, r in batch], noise=False)
            infos = [routing.info(b, mot.expert_names) for b in range(len(batch))]
        except Exception:
            log.exception("batched routing of %d sources failed; retrying one by one", len(batch))
            infos = []
            for client, r in batch:
                try:
                    infos.append(mot.get_routing_info(r.source))
                except Exception as e:  # this source alone breaks the encoder: tell its sender
                    log.exception("routing of request %s failed", r.id)
                    infos.append(e)
        for (client, r), info in zip(batch, infos):
            if isinstance(info, Exception):
                self._send(client, P.Error(id=r.id, code="internal", message=f"routing failed: {type(info).__name__}: {info}"))
            else:
                self._send(client, P.RouteResult(id=r.id, **_routing_fields(info, mot.expert_names)))

    def _do_reload(self) -> None:
        from mot_engine import CheckpointMismatch, load_checkpoint

        client, request = self._reload
        self._reload = None
        mot = self._model
        path = request.checkpoint or getattr(mot, "checkpoint", None)
        t0 = time.perf_counter()
        try:
            if path is None:
                raise ValueError("no checkpoint given and the daemon runs without one; pass the checkpoint folder")
            before = {k: v.detach().clone() for k, v in mot.trainable_state_dict().items()}
            try:
                load_checkpoint(mot, path)
            except BaseException:
                _restore_trainable(mot, before)
                raise
        except (FileNotFoundError, CheckpointMismatch, ValueError) as e:
            log.warning("reload of %s refused: %s", path, e)
            self._send(client, P.Error(id=request.id, code="bad_request", message=f"cannot reload {path}: {e}"))
        except Exception as e:
            log.exception("reload of %s failed; the previous weights are kept", path)
            self._send(client, P.Error(id=request.id, code="internal", message=f"reload of {path} failed: {type(e).__name__}: {e}"))
        else:
            mot.checkpoint = str(path)
            took = time.perf_counter() - t0
            log.info("reloaded checkpoint %s in %.2f s", path, took)
            with self._lock:
                self._info["checkpoint"] = str(path)
            self._send(client, P.ReloadResult(id=request.id, checkpoint=str(path), took_s=round(took, 4)))
        with self._lock:
            self._state = "ready"

    # ------------------------------------------------------------------------------------------ stepping

    def _step(self) -> None:
        try:
            outputs = self._gen.step()
        except Exception as e:
            log.exception("a decoding step failed; failing the %d requests it held", self._gen.num_running + self._gen.num_waiting)
            self._fail_generator(f"a decoding step failed: {type(e).__name__}: {e}")
            return
        self._steps += 1
        for out in outputs:
            self._on_output(out)

    def _on_output(self, out) -> None:
        t = self._by_gen.get(out.request_id)
        result = self._gen.results.pop(out.request_id, None) if out.finished else None
        if t is None:  # dropped already (its client vanished before a step ended it): nothing to tell
            return
        t.num_tokens += len(out.new_token_ids)
        stream = t.request.options.stream
        if not out.finished:
            if stream and t.abort_reason is None and (out.text_delta or out.new_token_ids):
                self._partial(t, out.text_delta)
            return
        if out.finish_reason in ("eos", "length") and result is not None:
            if stream and out.text_delta:
                self._partial(t, out.text_delta)
            self._send(t.client, self._result(t, result))
            self._served += 1
        elif out.finish_reason == "aborted":
            reply = self._abort_reply(t)
            if reply is not None:
                self._send(t.client, reply)
        else:
            message = (result.error if result is not None else None) or out.error or f"generation ended with {out.finish_reason}"
            self._send(t.client, P.Error(id=t.request.id, code="internal", message=message))
        self._forget(t)

    def _partial(self, t: _Tracked, text: str) -> None:
        self._send(t.client, P.Partial(id=t.request.id, index=t.partial_index, text=text, num_generated_tokens=t.num_tokens))
        t.partial_index += 1

    def _abort_reply(self, t: _Tracked) -> P.Error | None:
        if t.abort_reason == "cancelled":
            return P.Error(
                id=t.request.id, code="cancelled", message="the request was cancelled",
                details={"freed_after_steps": self._steps - (t.cancel_step or 0), "num_generated_tokens": t.num_tokens},
            )
        if t.abort_reason == "timeout":
            return self._timeout_error(t)
        if t.abort_reason == "gone":
            return None
        return P.Error(id=t.request.id, code="cancelled", message=self._stopping or "the request was aborted")

    def _result(self, t: _Tracked, result) -> P.TranslateResult:
        now = time.monotonic()
        timings = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.timings.items()}
        timings["daemon_queue_s"] = round((t.t_admitted or now) - t.t_received, 6)
        timings["daemon_total_s"] = round(now - t.t_received, 6)
        return P.TranslateResult(
            id=t.request.id, text=result.text, num_prompt_tokens=result.num_prompt_tokens,
            num_generated_tokens=result.num_generated_tokens, finish_reason=result.finish_reason, timings=timings,
            **_routing_fields(result.routing, self._model.expert_names),
        )

    # ------------------------------------------------------------------------------------------ bookkeeping

    def _send(self, client: ClientKey, reply: P.Reply) -> None:
        self._out.append((client, reply))

    def _flush(self) -> None:
        if not self._out:
            return
        out, self._out = self._out, []
        try:
            self._emit(out)
        except Exception:  # the transport failed; the replies are lost but the engine must keep serving
            log.exception("could not hand %d replies to the transport", len(out))

    def _release(self, client: ClientKey) -> None:
        with self._lock:
            self._outstanding -= 1
            self._active_clients[client] -= 1
            if self._active_clients[client] <= 0:
                del self._active_clients[client]

    def _forget(self, t: _Tracked) -> None:
        self._by_key.pop(t.key, None)
        self._by_gen.pop(t.gen_id, None)
        self._release(t.client)

    def _publish(self) -> None:
        gen = self._gen
        with self._lock:
            self._snapshot = {
                "queue_depth": len(self._backlog) + gen.num_waiting, "running": gen.num_running,
                "steps": self._steps, "requests_served": self._served,
            }

    def _fail_generator(self, message: str) -> None:
        for t in [t for t in self._by_key.values() if t.in_generator]:
            if t.abort_reason != "gone":
                self._send(t.client, P.Error(id=t.request.id, code="internal", message=message))
            self._forget(t)
        self._reset_generator()

    def _fail_all(self, code: str, message: str) -> None:
        for t in list(self._by_key.values()):
            if t.abort_reason != "gone":
                self._send(t.client, P.Error(id=t.request.id, code=code, message=message))
            self._forget(t)
        self._backlog.clear()
        self._fail_routes(code, message)

    def _fail_routes(self, code: str, message: str) -> None:
        for client, r in self._routes:
            self._send(client, P.Error(id=r.id, code=code, message=message))
        with self._lock:
            self._pending_routes -= len(self._routes)
        self._routes = []

    def _cancel_everything(self, message: str) -> None:
        self._fail_all("cancelled", message)
        if self._reload is not None:
            client, request = self._reload
            self._send(client, P.Error(id=request.id, code="cancelled", message=message))
            self._reload = None
        # Requests that arrived while stopping (submit raced with stop) are answered too.
        while True:
            try:
                kind, client, request, _ = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind == _TRANSLATE:
                self._release(client)
            elif kind == _ROUTE:
                with self._lock:
                    self._pending_routes -= 1
            if kind in (_TRANSLATE, _ROUTE, _CANCEL, _RELOAD, _SHUTDOWN):
                self._send(client, P.Error(id=request.id, code="cancelled", message=message))
        with self._lock:
            self._state = "stopping"

    def _fail_inbox_after_load_failure(self) -> None:
        """Answer what queued up while loading; later requests are refused by submit() (state "failed")."""
        while True:
            try:
                kind, client, request, _ = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind in (_TRANSLATE, _ROUTE, _CANCEL, _RELOAD, _SHUTDOWN):
                self._send(client, P.Error(id=request.id, code="internal",
                                           message=f"the daemon's model failed to load: {self._error}"))
        self._flush()


# ---------------------------------------------------------------------------------------------- helpers


def _routing_fields(info: dict, expert_names: list[str]) -> dict:
    primary = int(info["primary_expert"])
    return {
        "primary_expert": primary,
        "primary_expert_name": expert_names[primary],
        "active_experts": [int(e) for e in info["active_experts"]],
        "expert_names": list(expert_names),
        "routing_probs": [float(p) for p in info["all_expert_probs"]],
    }


def _restore_trainable(mot, state: dict) -> None:
    """Put back trainable weights saved before a reload that failed half way."""
    import torch

    params = dict(mot.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target = params[name] if name in params else mot.router.selection_ema
            target.copy_(value)


def _show(client: ClientKey) -> str:
    return client.hex() if isinstance(client, bytes) else repr(client)


def resolve_device(device: str | None) -> str:
    """The device to build on, with an explicit index for CUDA ("cuda" -> "cuda:0").

    Why the index: the engine compares its device with its parameters' devices to decide whether one CUDA graph
    can hold a decoding step, and torch.device("cuda") != torch.device("cuda:0"); an index-less device silently
    turned the graph path off.
    """
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return str(dev)


def device_memory(device: str | None) -> dict[str, Any]:
    """Memory of the serving device: CUDA allocator numbers on a GPU, the process's resident set on CPU."""
    if device and device.startswith("cuda"):
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return {
            "kind": "cuda", "device": f"cuda:{index}",
            "allocated_bytes": int(torch.cuda.memory_allocated(index)),
            "reserved_bytes": int(torch.cuda.memory_reserved(index)),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(index)),
            "total_bytes": int(torch.cuda.get_device_properties(index).total_memory),
        }
    return {"kind": "cpu", "rss_bytes": process_rss_bytes()}


def process_rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of a process (Linux /proc; None where unavailable)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None

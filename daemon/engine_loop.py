"""`EngineLoop`: what runs on the daemon's engine thread (see engine.py for the design): take requests from the
inbox, admit translations (each one's candidates together) into the Generator, serve routes between steps, reload
checkpoints, decode one step, turn its outputs into partials, hand finished translations' kernels to the verifier
(daemon/verification.py, worker threads) and their verifications into results, and answer cancels, timeouts,
vanished clients and shutdown.

Nothing here is called from another thread: the thread-safe API (`EngineCore`, engine.py) only puts requests into
`_inbox` and reads the `SharedState`.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from mot_engine import CheckpointMismatch

from . import protocol as P
from . import replies
from .engine_config import EngineConfig
from .engine_state import ClientKey, SharedState
from .translation import Translation, count_translations
from .verification import Verifier

log = logging.getLogger("daemon.engine")  # one logger for the engine, whichever of its modules logs

EmitFn = Callable[[list[tuple[ClientKey, P.Reply]]], None]
# What the inbox carries: (kind, client, request or reason, time received); VERIFIED: (kind, None, (translation,
# its kernels' verifications), time), put by a verifier's worker thread
TRANSLATE, ROUTE, CANCEL, RELOAD, SHUTDOWN, GONE, STOP, VERIFIED = range(8)


class _StopLoop(Exception):
    """Raised inside the loop to end it (a shutdown request or stop())."""


class EngineLoop:
    """The engine thread's side of EngineCore. State below `# --- engine thread only` is never touched elsewhere."""

    def __init__(self, config: EngineConfig, *, model=None, load_model: Callable[[], Any] | None = None):
        config.validate()
        self.config = config
        self._model = model
        self._load_model = load_model
        self._served_model = None  # served_model.ServedModel, once loaded
        self._gen = None
        self._emit: EmitFn | None = None
        # --- shared with the threads of the API (EngineCore)
        self._inbox: queue.SimpleQueue = queue.SimpleQueue()
        self._shared = SharedState(config)  # what other threads see, under its lock
        self.stopped = threading.Event()  # set when the loop has ended (after a shutdown request or stop())
        self.shutdown_requested = threading.Event()  # set when a client asked the daemon to shut down
        self._verifier = Verifier(enabled=config.verify, workers=config.verify_workers)
        # --- engine thread only
        self._by_key: dict[tuple[ClientKey, str], Translation] = {}
        self._by_gen: dict[str, tuple[Translation, int]] = {}  # a candidate's Generator id -> (its translation, index)
        self._backlog: collections.deque[Translation] = collections.deque()
        self._routes: list[tuple[ClientKey, P.Route]] = []
        self._reload: tuple[ClientKey, P.Reload] | None = None
        self._out: list[tuple[ClientKey, P.Reply]] = []
        self._next_gen = 0
        self._steps = 0
        self._served = 0
        self._stopping: str | None = None

    # ------------------------------------------------------------------------------------------ the loop

    def _run(self) -> None:
        try:
            self._load()
        except BaseException as e:  # noqa: BLE001 - a model that cannot load is the one fatal error: report it
            log.exception("the model failed to load")
            self._shared.set_state("failed", error=f"{type(e).__name__}: {e}")
            self._fail_inbox_after_load_failure()
            self.stopped.set()
            return
        try:
            while True:
                try:
                    self._iteration()
                except _StopLoop:
                    break
                except Exception:  # a bug in the loop itself: say so loudly, fail what is in flight, go on
                    log.exception("unexpected error in the engine loop; failing the requests in flight")
                    self._fail_all("internal", "the daemon hit an internal error while serving this request")
                    self._reset_generator()
                    self._flush()
            self._cancel_everything(self._stopping or "the daemon is shutting down")
            self._flush()
        finally:
            self._verifier.close()
            self._shared.set_state("stopping")
            self.stopped.set()
            log.info("engine loop ended")

    def _load(self) -> None:
        # The model side (torch, mot_engine's compute) is imported here, on the engine thread: importing this module
        # stays light, and the daemon answers `status` ("loading") while torch and the model load.
        from .served_model import ServedModel

        t0 = time.perf_counter()
        served = ServedModel.load(self.config, model=self._model, load_model=self._load_model)
        self._served_model, self._model = served, served.mot
        self._reset_generator()
        served.prepare(self._gen)
        info = served.describe(self.config.preset)
        self._shared.update_info(**info)
        self._shared.set_state("ready")
        served.inference_only()  # this thread only runs inference
        log.info(
            "model ready in %.1f s: preset %s, experts %s, device %s, dtype %s, checkpoint %s",
            time.perf_counter() - t0, info["preset"], ", ".join(info["expert_names"]), info["device"], info["dtype"],
            info["checkpoint"],
        )

    def _reset_generator(self) -> None:
        self._gen = self._served_model.new_generator(self.config.max_batch_size)

    def _iteration(self) -> None:
        gen = self._gen
        busy = gen.has_unfinished() or (self._backlog and self._reload is None) or self._routes
        self._drain(block=not busy)
        if self._stopping is not None:
            raise _StopLoop
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
            if item[0] == TRANSLATE and self.config.batch_wait_s > 0:
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
        if kind == TRANSLATE:
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
            t = Translation(client, request, f"g{self._next_gen}", t_received, t_received + timeout)
            self._by_key[key] = t
            self._backlog.append(t)
        elif kind == ROUTE:
            self._routes.append((client, request))
        elif kind == CANCEL:
            self._cancel(client, request)
        elif kind == RELOAD:
            if self._reload is not None:
                self._send(client, P.Error(id=request.id, code="bad_request",
                                           message="a reload is already pending; wait for its reply"))
            else:
                self._reload = (client, request)
                self._shared.set_state("reloading")
        elif kind == SHUTDOWN:
            log.info("shutdown requested by a client")
            self._send(client, P.ShutdownResult(id=request.id))
            self.shutdown_requested.set()
            self._stopping = "the daemon is shutting down (a client asked it to)"
        elif kind == GONE:
            self._drop_client(client)
        elif kind == STOP:
            self._stopping = request
        elif kind == VERIFIED:
            t, checks = request
            if self._by_key.get(t.key) is t and t.verifying:  # else cancelled, gone or out of time meanwhile
                self._deliver(t, checks)

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
            self._abort_candidates(t)
        elif t.verifying:  # its verification goes on in the sandbox; its result will reach nobody
            self._send(client, P.Error(
                id=t.request.id, code="cancelled", message="the request was cancelled while its kernels were being "
                "verified", details={"num_generated_tokens": t.num_tokens},
            ))
            self._forget(t)
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
                    self._abort_candidates(t)
                else:
                    t.abort_reason = "gone"  # whatever it was, nobody is left to tell
            elif t.verifying:
                self._forget(t)
            else:
                self._backlog.remove(t)
                self._forget(t)
        self._routes = [(c, r) for c, r in self._routes if c != client]

    def _expire(self) -> None:
        now = time.monotonic()
        for t in [t for t in self._by_key.values() if t.verifying and t.verify_deadline <= now]:
            # the kernels are there: deliver them, saying that their check ran out of time
            late = P.Verification(status="unavailable",
                                  reason=f"verification took longer than {t.verify_budget_s:.3g} s")
            self._deliver(t, [late] * len(t.kernels))
        for t in [t for t in self._by_key.values() if t.deadline <= now and t.abort_reason is None]:
            if t.in_generator:
                t.abort_reason = "timeout"
                self._abort_candidates(t)
            else:
                self._backlog.remove(t)
                self._send(t.client, self._timeout_error(t))
                self._forget(t)

    def _timeout_error(self, t: Translation) -> P.Error:
        return replies.timeout_error(t.request, t.num_tokens, self.config.default_timeout_s)

    def _admit(self) -> None:
        while self._backlog:
            t = self._backlog.popleft()
            added: list[str] = []
            try:
                t.start(self._verifier.plan(t.request.options.verify), self._served_model.top_k)
                for sampling in t.samplings:  # added together: those of one primary share one prefill
                    self._gen.add_request(t.gen_id(sampling.index),
                                          self._served_model.generation_request(t.request, sampling))
                    added.append(t.gen_id(sampling.index))
            except Exception as e:
                for gen_id in added:  # none of its candidates decodes for a refused translation
                    self._gen.abort(gen_id)
                self._refuse(t, e)
                continue
            for sampling in t.samplings:
                self._by_gen[t.gen_id(sampling.index)] = (t, sampling.index)
            t.in_generator, t.t_admitted = True, time.monotonic()

    def _refuse(self, t: Translation, e: Exception) -> None:
        """A translation the Generator does not take: its error reply."""
        if not isinstance(e, ValueError):  # SourceTooLong is one: a request's fault, not ours
            log.error("could not queue translation %s", t.request.id, exc_info=e)
        self._send(t.client, replies.refusal(t.request, e))
        self._forget(t)

    def _serve_routes(self) -> None:
        batch, self._routes = self._routes[: self.config.route_batch_size], self._routes[self.config.route_batch_size :]
        self._shared.release_routes(len(batch))
        infos = self._served_model.route([r for _, r in batch])
        for (client, r), info in zip(batch, infos):
            if isinstance(info, Exception):
                self._send(client, P.Error(id=r.id, code="internal", message=f"routing failed: {type(info).__name__}: {info}"))
            else:
                self._send(client, P.RouteResult(id=r.id, **replies.routing_fields(info, self._model.expert_names),
                                                 alone_expert=replies.alone_expert(info)))

    def _do_reload(self) -> None:
        client, request = self._reload
        self._reload = None
        path = request.checkpoint or self._served_model.checkpoint
        t0 = time.perf_counter()
        try:
            if path is None:
                raise ValueError("no checkpoint given and the daemon runs without one; pass the checkpoint folder")
            self._served_model.reload(path)
        except (FileNotFoundError, CheckpointMismatch, ValueError) as e:
            log.warning("reload of %s refused: %s", path, e)
            self._send(client, P.Error(id=request.id, code="bad_request", message=f"cannot reload {path}: {e}"))
        except Exception as e:
            log.exception("reload of %s failed; the previous weights are kept", path)
            self._send(client, P.Error(id=request.id, code="internal", message=f"reload of {path} failed: {type(e).__name__}: {e}"))
        else:
            took = time.perf_counter() - t0
            log.info("reloaded checkpoint %s in %.2f s", path, took)
            self._shared.update_info(checkpoint=str(path))
            self._send(client, P.ReloadResult(id=request.id, checkpoint=str(path), took_s=round(took, 4)))
        self._shared.set_state("ready")

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
        found = self._by_gen.get(out.request_id)
        result = self._gen.results.pop(out.request_id, None) if out.finished else None
        if found is None:  # dropped already (its client vanished, or a sibling candidate failed): nothing to tell
            return
        t, index = found
        stream = t.request.options.stream and index == 0  # candidate 0's text streams
        if index == 0:
            t.num_tokens += len(out.new_token_ids)
        if not out.finished:
            if stream and t.abort_reason is None and (out.text_delta or out.new_token_ids):
                self._partial(t, out.text_delta)
            return
        if out.finish_reason in ("eos", "stop", "length") and result is not None:
            if stream and out.text_delta:
                self._partial(t, out.text_delta)
            t.results[index] = result
            if t.generated:
                self._generated(t)
            return
        if out.finish_reason == "aborted":
            reply = self._abort_reply(t)
            if reply is not None:
                self._send(t.client, reply)
        else:
            message = (result.error if result is not None else None) or out.error or f"generation ended with {out.finish_reason}"
            self._send(t.client, P.Error(id=t.request.id, code="internal", message=message))
        self._abort_candidates(t)  # one reply per translation: its other candidates stop and are not heard of
        self._forget(t)

    def _abort_candidates(self, t: Translation) -> None:
        for gen_id in t.unfinished_gen_ids():
            self._gen.abort(gen_id)

    def _generated(self, t: Translation) -> None:
        """Every candidate ended: verify their kernels off this thread, or deliver at once when none is checked."""
        t.in_generator, t.t_generated = False, time.monotonic()
        for gen_id in [t.gen_id(s.index) for s in t.samplings]:
            self._by_gen.pop(gen_id, None)
        if t.abort_reason is not None:  # cancelled (timed out, gone) as its last candidate ended: no check for it
            reply = self._abort_reply(t)
            if reply is not None:
                self._send(t.client, reply)
            self._forget(t)
            return
        t.kernels = t.extract()
        if not t.kernels:
            self._deliver(t, None)
            return
        t.verify_budget_s = max(0.0, min(self.config.verify_timeout_s, t.deadline - t.t_generated))
        t.verify_deadline = t.t_generated + t.verify_budget_s
        inbox = self._inbox

        def done(key, checks) -> None:  # on a verifier's worker thread
            inbox.put((VERIFIED, None, (key, checks), time.monotonic()))

        try:
            self._verifier.submit(t, t.request.source, t.kernels, compile_timeout_s=max(1.0, t.verify_budget_s),
                                  done=done)
        except Exception as e:  # a verifier that cannot take work: the check is unavailable, the kernels still go
            log.exception("could not hand translation %s to the verifier", t.request.id)
            failed = P.Verification(status="unavailable", reason=f"the check could not start: {type(e).__name__}: {e}")
            self._deliver(t, [failed] * len(t.kernels))
            return
        if t.request.options.stream:
            self._send(t.client, P.Checking(id=t.request.id, candidates=len(t.samplings),
                                            kernels=len(set(t.kernels))))

    def _deliver(self, t: Translation, kernel_checks: list[P.Verification] | None) -> None:
        """The result: the chosen candidate with every candidate's check (kernel_checks: one per kernel to verify,
        in order; None where nothing was verified)."""
        checks = t.checks(kernel_checks)
        self._send(t.client, replies.translate_result(t, checks, expert_names=self._model.expert_names))
        self._served += 1
        self._forget(t)

    def _partial(self, t: Translation, text: str) -> None:
        self._send(t.client, P.Partial(id=t.request.id, index=t.partial_index, text=text, num_generated_tokens=t.num_tokens))
        t.partial_index += 1

    def _abort_reply(self, t: Translation) -> P.Error | None:
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
        self._shared.release_translation(client)

    def _forget(self, t: Translation) -> None:
        self._by_key.pop(t.key, None)
        for s in t.samplings:
            self._by_gen.pop(t.gen_id(s.index), None)
        t.verify_deadline = None  # a verification still running is no longer waited for
        self._release(t.client)

    def _publish(self) -> None:
        counts = count_translations(self._by_key.values(), {seq.request_id for seq in self._gen.waiting})
        self._shared.publish({
            "queue_depth": len(self._backlog) + counts["waiting"], "running": counts["running"],
            "verifying": counts["verifying"], "steps": self._steps, "requests_served": self._served,
        })

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
        self._shared.release_routes(len(self._routes))
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
            if kind == TRANSLATE:
                self._release(client)
            elif kind == ROUTE:
                self._shared.release_routes(1)
            if kind in (TRANSLATE, ROUTE, CANCEL, RELOAD, SHUTDOWN):
                self._send(client, P.Error(id=request.id, code="cancelled", message=message))
        self._shared.set_state("stopping")

    def _fail_inbox_after_load_failure(self) -> None:
        """Answer what queued up while loading; later requests are refused by submit() (state "failed")."""
        error = self._shared.state_and_error()[1]
        while True:
            try:
                kind, client, request, _ = self._inbox.get_nowait()
            except queue.Empty:
                break
            if kind in (TRANSLATE, ROUTE, CANCEL, RELOAD, SHUTDOWN):
                self._send(client, P.Error(id=request.id, code="internal",
                                           message=f"the daemon's model failed to load: {error}"))
        self._flush()


def _show(client: ClientKey) -> str:
    return client.hex() if isinstance(client, bytes) else repr(client)

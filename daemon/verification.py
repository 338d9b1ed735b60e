"""Verification of a translation's candidates, off the engine thread.

`Verifier.plan(option)` says, at admission, whether a translation's kernels will be checked and whether candidates
beyond the first are worth generating (only where a differential test can choose among them: a C++ compiler for
the reference). `Verifier.submit` runs `kernelcheck.verify.verify_many` over the distinct kernels of one
translation on a worker thread and hands one `P.Verification` per kernel to a callback; the engine thread turns
them into the result (engine_loop.py) and enforces the time budget.

Why worker threads of our own (daemon threads) rather than a ThreadPoolExecutor: a verification may take a minute
of builds and runs, and an executor's threads are joined when the interpreter exits, so a daemon asked to stop
would wait for it. Every build and run goes through kernelcheck.sandbox with its own time limits, so a
verification the engine stopped waiting for ends by itself (its result is dropped).

Why the engine never waits for it: other requests keep decoding while g++ builds; a verification that raises is
that request's "unavailable" check (with the exception named), never the daemon's failure.
"""

from __future__ import annotations

import logging
import queue
import threading
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from kernelcheck.sandbox import DEFAULT_COMPILE_TIMEOUT_S
from kernelcheck.toolchain import detect_toolchain, find_gxx

from . import protocol as P

if TYPE_CHECKING:
    from kernelcheck.verdict import Verdict

log = logging.getLogger("daemon.verification")

MAX_REASON_CHARS = 2000  # a compiler's errors can be long; the wire carries the start


@dataclass(frozen=True)
class VerifyPlan:
    """What a translation's check will be. `check`: its kernels are verified; `choose`: several candidates are
    worth generating (a differential test can tell them apart). `reason`: why not, where not."""

    check: bool
    choose: bool
    reason: str = ""


DoneFn = Callable[[object, list[P.Verification]], None]


@dataclass(frozen=True)
class _Job:
    key: object  # the caller's handle, passed back to `done`
    source: str  # the C/C++ function
    kernels: tuple[str, ...]  # the candidates' kernels (repeats allowed: each distinct one is checked once)
    compile_timeout_s: float
    done: DoneFn


def verification_of(verdict: Verdict) -> P.Verification:
    """A kernelcheck verdict as the wire carries it."""
    reason = verdict.reason if len(verdict.reason) <= MAX_REASON_CHARS else verdict.reason[:MAX_REASON_CHARS] + " …"
    return P.Verification(status=verdict.status, reason=reason, backend=verdict.backend, inputs=verdict.inputs,
                          mismatch=verdict.mismatch.describe() if verdict.mismatch is not None else None)


def check_kernels(source: str, kernels: list[str], *, compile_timeout_s: float = DEFAULT_COMPILE_TIMEOUT_S
                  ) -> list[P.Verification]:
    """Verify each kernel against the C/C++ function `source` (one reference build, one build of the distinct
    kernels: candidates are often the same text). One verification per kernel, in order."""
    # tree-sitter and the checker load with the first check, not whenever the daemon's modules are imported
    from kernelcheck.verify import verify_many

    distinct = list(dict.fromkeys(kernels))
    verdicts = verify_many(source, distinct, toolchain=detect_toolchain(), compile_timeout_s=compile_timeout_s)
    by_text = {text: verification_of(v) for text, v in zip(distinct, verdicts)}
    return [by_text[text] for text in kernels]


class Verifier:
    """Runs verifications on `workers` daemon threads (started on first use). Thread-safe."""

    def __init__(self, *, enabled: bool = True, workers: int = 2):
        if workers < 1:
            raise ValueError(f"a verifier needs at least one worker, got {workers!r}")
        self.enabled = enabled
        self.workers = workers
        # g++ decides whether a differential test can run at all (the C/C++ reference is built with it); the rest
        # of the toolchain (nvcc, a GPU) only picks the backend, on the worker thread (detecting a GPU takes seconds).
        self.gxx = find_gxx() if enabled else None
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._closed = False

    def plan(self, option: str) -> VerifyPlan:
        """How a translation asking for `verify=option` ("auto" | "off") is checked on this daemon."""
        if option == "off":
            return VerifyPlan(False, False, 'verification is off (the request asked for verify "off")')
        if option != "auto":
            raise ValueError(f"unknown verify option {option!r}; expected one of {typing.get_args(P.VerifyChoice)}")
        if not self.enabled:
            return VerifyPlan(False, False, "this daemon does not verify kernels (it was started with --no-verify)")
        if self.gxx is None:  # the syntax check still runs; kernelcheck says why the rest cannot
            return VerifyPlan(True, False, "no C++ compiler (g++) found: the C/C++ reference cannot be built")
        return VerifyPlan(True, True)

    def submit(self, key: object, source: str, kernels: list[str], *, compile_timeout_s: float,
               done: DoneFn) -> None:
        """Check `kernels` against `source` on a worker; `done(key, verifications)` is called on that worker
        (with "unavailable" verifications naming the exception if the check raised)."""
        if not kernels:
            raise ValueError("nothing to verify: no kernels given")
        with self._lock:
            if self._closed:
                raise RuntimeError("the verifier is closed")
            if len(self._threads) < self.workers:
                thread = threading.Thread(target=self._work, name=f"mot-verify-{len(self._threads)}", daemon=True)
                self._threads.append(thread)
                thread.start()
        self._jobs.put(_Job(key, source, tuple(kernels), compile_timeout_s, done))

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                checks = check_kernels(job.source, list(job.kernels), compile_timeout_s=job.compile_timeout_s)
            except Exception as e:  # this request's check failed; the daemon goes on
                log.exception("verifying %d kernel(s) failed", len(job.kernels))
                failed = P.Verification(status="unavailable", reason=f"the check failed: {type(e).__name__}: {e}")
                checks = [failed] * len(job.kernels)
            try:
                job.done(job.key, checks)
            except Exception:  # the engine's callback only queues; a failure here is a bug to see in the log
                log.exception("could not hand a verification back to the engine")

    def close(self) -> None:
        """Stop the workers once they finish the jobs queued so far (their results then reach nobody)."""
        with self._lock:
            self._closed = True
            threads = list(self._threads)
        for _ in threads:
            self._jobs.put(None)

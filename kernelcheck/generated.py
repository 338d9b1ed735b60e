"""Generated-input checks of a data set's candidates: the functional harness strengthened with differential testing.

EvalPlus strengthened HumanEval's few hand-written tests with generated ones; BabelTower's executable cases have
the same weakness (three or four tests of a handful of elements, often only positive values), so a kernel can pass
them and still be wrong.  For every case (`kernelcheck.cases.ExecCase`) and each distinct sample of it,
`check_generated` runs the differential check of `kernelcheck.verify.verify_many` against the case's own
``cpp_code`` (generated inputs, the C reference as the oracle; one reference and one kernel build per case), and
asks whether that reference is vacuous (`kernelcheck.vacuity.is_vacuous`: it changes no argument and returns
nothing, so a kernel that does nothing passes the case's tests).

The verification backend (`VERIFY_BACKENDS`): ``gpu`` (nvcc and a GPU), ``cpu`` (g++ and the CPU emulation),
``auto`` (gpu where it can run, else cpu: `kernelcheck.verify.choose_backend`), ``off`` (no generated checks and
no vacuity checks: the harness as it was).  Where the chosen backend cannot run (no g++, no GPU for ``gpu``, the
checker's own packages missing) nothing is checked and `GeneratedChecks.why_not` says why.

Importing this module loads only the standard library (the harness's command must start where tree-sitter is not
installed, and then reports the column unavailable); the checker is imported when a check runs.
How the checks combine with the data's own tests: `kernelcheck.side_by_side`.
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Mapping, Sequence

from .cases import ExecCase
from .functional import sample_jobs
from .sourcetext import strip_code_fences
from .toolchain import Toolchain, detect_toolchain

__all__ = ["VERIFY_BACKENDS", "DEFAULT_VERIFY_BACKEND", "FAILING_STATUSES", "SampleCheck", "CaseVacuity",
           "GeneratedChecks", "UnknownVerifyBackend", "check_generated"]

VERIFY_BACKENDS = ("auto", "gpu", "cpu", "off")
DEFAULT_VERIFY_BACKEND = "auto"
# Verdicts that fail a sample: the kernel is wrong (or does not build) on some generated input.  The other
# non-verified statuses say the check could not judge, never that the kernel is wrong: not_verifiable, and
# unavailable (here only a check that raised: the daemon's word for it too, with the exception named).
FAILING_STATUSES = ("mismatch", "compile_error", "syntax_error")


class UnknownVerifyBackend(ValueError):
    """A verification backend outside `VERIFY_BACKENDS`."""

    def __init__(self, backend: str) -> None:
        super().__init__(f"unknown verification backend {backend!r}; expected one of {VERIFY_BACKENDS}")
        self.backend = backend


@dataclass(frozen=True)
class SampleCheck:
    """The generated-input verdict of one sample (`kernelcheck.verdict.Verdict`, reduced to what a report keeps)."""

    status: str  # a verdict status (kernelcheck.verdict.STATUSES)
    reason: str
    backend: str | None = None
    inputs: int = 0
    seconds: float = 0.0  # the check of the case's samples (one reference and one kernel build for all of them)

    @property
    def failed(self) -> bool:
        return self.status in FAILING_STATUSES

    def to_dict(self) -> dict:
        return {"status": self.status, "reason": self.reason, "backend": self.backend, "inputs": self.inputs,
                "seconds": round(self.seconds, 3)}


@dataclass(frozen=True)
class CaseVacuity:
    """Whether a case's C reference is vacuous: True, False, or None (could not tell: ``reason`` says why)."""

    vacuous: bool | None
    reason: str


@dataclass
class GeneratedChecks:
    """The generated-input checks of one evaluation: per (case id, sample index) and, per case, its vacuity."""

    requested: str  # the backend asked for (VERIFY_BACKENDS)
    backend: str | None  # the backend the checks ran on; None when they did not run
    why_not: str = ""  # why they did not run ("" when they ran)
    samples: dict[tuple[str, int], SampleCheck] = field(default_factory=dict)
    vacuity: dict[str, CaseVacuity] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def ran(self) -> bool:
        return self.backend is not None

    def status_line(self) -> str:
        """``ran (cpu)``, ``off`` or ``unavailable: <why>``: for tables and JSON."""
        if self.ran:
            return f"ran ({self.backend})"
        return "off" if self.requested == "off" else f"unavailable: {self.why_not}"


def _checker():
    """(verify_many, is_vacuous, choose_backend), or the ImportError of a missing package (tree-sitter)."""
    from .vacuity import is_vacuous
    from .verify import choose_backend, verify_many

    return verify_many, is_vacuous, choose_backend


def _check_case(case: ExecCase, codes: list[str], backend: str, tc: Toolchain, verify_kwargs: dict,
                verify_many, is_vacuous) -> tuple[list[SampleCheck], CaseVacuity | None]:
    """The verdicts of a case's distinct samples (in order) and the vacuity of its reference (None: not asked)."""
    kernels = [strip_code_fences(code) for code in codes]
    start = time.monotonic()
    try:
        verdicts = verify_many(case.cpp_code, kernels, backend=backend, toolchain=tc, **verify_kwargs)
        seconds = time.monotonic() - start
        checks = [SampleCheck(v.status, v.reason, v.backend, v.inputs, seconds) for v in verdicts]
    except Exception as exc:  # noqa: BLE001 - one case's checker bug must not lose a whole evaluation: listed
        checks = [SampleCheck("unavailable", f"the check failed: {type(exc).__name__}: {exc}", backend,
                              seconds=time.monotonic() - start) for _ in kernels]
    if is_vacuous is None:
        return checks, None
    try:
        found = is_vacuous(case.cpp_code, toolchain=tc, **{k: v for k, v in verify_kwargs.items() if k == "seeds"})
        vacuity = CaseVacuity(found.vacuous, found.reason)
    except Exception as exc:  # noqa: BLE001 - as above: "could not tell", with the error
        vacuity = CaseVacuity(None, f"the vacuity check failed: {type(exc).__name__}: {exc}")
    return checks, vacuity


def check_generated(cases: Sequence[ExecCase], predictions: Mapping[str, Sequence[str]], *,
                    backend: str = DEFAULT_VERIFY_BACKEND, toolchain: Toolchain | None = None,
                    workers: int | None = None, samples: int | None = None, seeds: int | None = None,
                    compile_timeout_s: float | None = None, check_vacuity: bool = True,
                    progress: Callable[[int, int], None] | None = None) -> GeneratedChecks:
    """Verify every sample of every case against the case's ``cpp_code`` on generated inputs (see the module
    docstring).  Samples are picked as `kernelcheck.functional.evaluate_functional` picks them (the first
    ``samples`` of each id; a case without a prediction gets one empty sample); identical samples of a case are
    checked once.  ``workers`` cases are checked at a time (default: half the CPU count, as each check runs two builds
    at once).
    ``seeds`` and ``compile_timeout_s`` go to `kernelcheck.verify.verify_many` (default: its own).
    ``check_vacuity=False`` leaves the vacuity checks out (``vacuity`` stays empty): two builds a case saved where
    only the verdicts are wanted (a benchmark choosing among candidates)."""
    if backend not in VERIFY_BACKENDS:
        raise UnknownVerifyBackend(backend)
    if backend == "off":
        return GeneratedChecks(requested=backend, backend=None, why_not="--verify-backend off")
    start = time.monotonic()
    try:
        verify_many, is_vacuous, choose_backend = _checker()
    except ImportError as exc:
        missing = exc.name or str(exc)
        return GeneratedChecks(requested=backend, backend=None,
                               why_not=f"the differential check needs the package {missing!r}, not installed here")
    tc = toolchain or detect_toolchain()
    chosen, why = choose_backend(backend, tc)
    if chosen is None:
        return GeneratedChecks(requested=backend, backend=None, why_not=why)
    jobs, _ = sample_jobs(cases, predictions, samples)
    codes: dict[str, list[str]] = {}
    for case, _, code in jobs:
        distinct = codes.setdefault(case.id, [])
        if code not in distinct:
            distinct.append(code)
    verify_kwargs = {k: v for k, v in (("seeds", seeds), ("compile_timeout_s", compile_timeout_s)) if v is not None}
    done, lock = [0], threading.Lock()

    def run(case: ExecCase) -> tuple[list[SampleCheck], CaseVacuity | None]:
        try:
            return _check_case(case, codes[case.id], chosen, tc, verify_kwargs, verify_many,
                               is_vacuous if check_vacuity else None)
        finally:
            if progress is not None:
                with lock:
                    done[0] += 1
                    progress(done[0], len(cases))

    # Each check builds its reference and its kernels at once (two processes): half the cores' worth of cases.
    with ThreadPoolExecutor(max_workers=workers or max(1, (os.cpu_count() or 2) // 2)) as pool:
        per_case = dict(zip((c.id for c in cases), pool.map(run, cases)))
    result = GeneratedChecks(requested=backend, backend=chosen)
    for case, i, code in jobs:
        checks, vacuity = per_case[case.id]
        result.samples[(case.id, i)] = checks[codes[case.id].index(code)]
        if vacuity is not None:
            result.vacuity[case.id] = vacuity
    result.seconds = time.monotonic() - start
    return result

"""The C/C++ reference of a check, built and run once per (source, function, inputs) in the process.

Checking many kernels against one function — a translator's samples, the mutant suite — builds and runs the
reference once: `reference_run` keeps the last 64 runs (`kernelcheck.runner.ReferenceRun`: records, surviving
inputs with their regrown extents, discarded inputs) keyed by the source, the function, the plan and the compiler.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections import OrderedDict
from dataclasses import replace

from .builds import build_reference
from .harness import plan_text, reference_program
from .pairing import Pair
from .runner import ReferenceRun, run_reference
from .toolchain import Toolchain

__all__ = ["reference_run", "clear"]

_SIZE = 64
_RUNS: OrderedDict[str, tuple[ReferenceRun | None, str, float]] = OrderedDict()
_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


def _key(source: str, pair: Pair, tc: Toolchain, per_input_s: int) -> str:
    text = "\0".join([source, pair.c.name, plan_text(pair.inputs, pair.c), tc.gxx or "", str(per_input_s)])
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def clear() -> None:
    with _GUARD:
        _RUNS.clear()


def reference_run(cpp_source: str, pair: Pair, tc: Toolchain, timeout_s: float,
                  per_input_s: int) -> tuple[ReferenceRun | None, str, float]:
    """(the reference's run or None, its build error or "", build seconds) for ``pair``'s function and inputs."""
    key = _key(cpp_source, pair, tc, per_input_s)
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:  # two checks of one function at once build its reference once
        with _GUARD:
            if key in _RUNS:
                _RUNS.move_to_end(key)
                return _RUNS[key]
        with tempfile.TemporaryDirectory(prefix="mot-verify-ref-") as tmp:
            ok, message, seconds, sanitised = build_reference(reference_program(cpp_source, pair.c), tc, tmp,
                                                              timeout_s)
            if not ok:
                result: tuple[ReferenceRun | None, str, float] = (None, message, seconds)
            else:
                fresh = [replace(case, extents=dict(case.extents)) for case in pair.inputs]
                run = run_reference(tmp, fresh, pair.c, per_input_s=per_input_s, sanitised=sanitised)
                result = (run, "", seconds)
        with _GUARD:
            _RUNS[key] = result
            while len(_RUNS) > _SIZE:
                _RUNS.popitem(last=False)
        return result

"""Vacuous references: a C/C++ function that, on every generated input, leaves every argument as it was and
returns nothing — a data set's case whose expected outputs are its inputs (a kernel that does nothing passes it).

`is_vacuous(cpp_source)` builds the reference (`kernelcheck.harness.reference_program`) and the same program
without the call, runs both on the inputs of a differential check (`kernelcheck.inputs`; the reference's
undefined inputs discarded as in a check) and compares what they recorded, input by input.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from .builds import build_reference
from .harness import reference_program
from .inputs import make_inputs
from .loopnest import shape_of
from .runner import run_plain, run_reference
from .signatures import SignatureError, read_c_function
from .toolchain import Toolchain, detect_toolchain

__all__ = ["Vacuity", "is_vacuous"]


@dataclass(frozen=True)
class Vacuity:
    """``vacuous``: True (nothing changes on any input that ran), False (something does: ``reason`` says on which
    input and argument), None (could not tell: ``reason`` says why)."""

    vacuous: bool | None
    inputs: int
    reason: str


def is_vacuous(cpp_source: str, function: str | None = None, *, seeds: int = 3, toolchain: Toolchain | None = None,
               compile_timeout_s: float = 180.0, per_input_s: int = 10) -> Vacuity:
    """Whether the C/C++ function leaves every argument unchanged and returns nothing on all generated inputs."""
    try:
        c = read_c_function(cpp_source, function)
    except SignatureError as exc:
        return Vacuity(None, 0, str(exc))
    if c.returns_value:
        return Vacuity(False, 0, f"{c.name} returns {c.return_text}")
    if any(p.unsupported for p in c.params):
        bad = next(p for p in c.params if p.unsupported)
        return Vacuity(None, 0, f"parameter {bad.name!r}: {bad.unsupported}")
    tc = toolchain or detect_toolchain()
    if not tc.gxx:
        return Vacuity(None, 0, "no C++ compiler (g++) found")
    inputs, _ = make_inputs(c, shape_of(c), seeds=seeds)
    with tempfile.TemporaryDirectory(prefix="mot-vacuity-") as tmp:
        idle_dir = Path(tmp, "idle")
        idle_dir.mkdir()
        ok, message, _, sanitised = build_reference(reference_program(cpp_source, c), tc, tmp, compile_timeout_s)
        if ok:
            ok, message, _, _ = build_reference(reference_program(cpp_source, c, call=False), tc, str(idle_dir),
                                                compile_timeout_s)
        if not ok:
            return Vacuity(None, 0, f"the reference does not build: {message[:500]}")
        ref = run_reference(tmp, inputs, c, per_input_s=per_input_s, sanitised=sanitised)
        idle, failures = run_plain(str(idle_dir), ref.inputs, c, "prog", per_input_s=per_input_s)
    for case in ref.inputs:
        if case.index in failures:
            return Vacuity(None, len(ref.inputs), f"the program without the call failed on {case.describe()}")
        if idle.get(case.index) != ref.records[case.index]:
            pairs = zip(ref.records[case.index], idle[case.index])
            changed = next((c.params[item.param].name for item, before in pairs if item.data != before.data),
                           "an argument")
            return Vacuity(False, len(ref.inputs), f"{changed} changes on {case.describe()}")
    if not ref.inputs:
        return Vacuity(None, 0, "every input was discarded by the reference")
    return Vacuity(True, len(ref.inputs), f"no argument changes on any of {len(ref.inputs)} inputs")


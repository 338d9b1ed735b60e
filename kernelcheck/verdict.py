"""The verdict of a differential check: its status, what it ran, the first mismatch, and the exit code.

Statuses (`STATUSES`) and what ``mot-check`` exits with:

========================  ====  ===========================================================================
status                    exit  meaning
========================  ====  ===========================================================================
``verified``              0     the kernel matched the C/C++ function on every input that ran (at least one
                                non-trivial input, launched); evidence, not a proof
``mismatch``              1     a difference, a crash, a hang, a CUDA error, an out-of-bounds write or a race
                                on some input (the first one is reported)
``compile_error``         1     the kernel does not compile
``syntax_error``          1     the kernel does not parse (and does not compile)
``not_verifiable``        2     the pair cannot be checked (reason given): an unsupported parameter, no launch,
                                every input discarded, a reference that does not build...
``unavailable``           2     a tool is missing (g++, nvcc, a GPU, the CPU backend)
========================  ====  ===========================================================================
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the statuses are read by light surfaces (the daemon's CLI): no tree-sitter for them
    from .compare import Mismatch

__all__ = ["STATUSES", "EXIT_CODES", "Verdict"]

STATUSES = ("verified", "mismatch", "compile_error", "syntax_error", "not_verifiable", "unavailable")
EXIT_CODES = {"verified": 0, "mismatch": 1, "compile_error": 1, "syntax_error": 1, "not_verifiable": 2,
              "unavailable": 2}


@dataclass
class Verdict:
    """What `kernelcheck.verify.verify` concluded.  ``inputs``: inputs compared (reference and kernel both ran);
    ``discarded``: inputs the reference itself could not run (with ``discard_reasons``), never used to blame
    the kernel; ``skipped``: inputs not run at all (too large, no launch)."""

    status: str
    reason: str
    backend: str | None = None
    inputs: int = 0
    mismatch: Mismatch | None = None
    launch: str = ""
    function: str = ""
    kernel: str = ""
    mapping: str = ""
    discarded: int = 0
    discard_reasons: dict[str, int] = field(default_factory=dict)
    skipped: int = 0
    launched: int = 0
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    # The kernel program's raw records by input index (kernelcheck.runner.Item lists): to compare two kernels
    # on the same inputs (the mutant suite's equivalence check).  Not part of the JSON.
    records: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ValueError(f"unknown verdict status {self.status!r}; expected one of {STATUSES}")
        if self.status == "verified" and (self.inputs < 1 or self.mismatch is not None):
            raise ValueError(f"a verdict cannot be 'verified' with {self.inputs} inputs and mismatch "
                             f"{self.mismatch!r}")

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.status]

    def to_json(self) -> dict:
        return {"status": self.status, "backend": self.backend, "inputs": self.inputs,
                "mismatch": self.mismatch.to_json() if self.mismatch else None, "reason": self.reason,
                "launch": self.launch, "function": self.function, "kernel": self.kernel, "mapping": self.mapping,
                "discarded": self.discarded, "discard_reasons": dict(self.discard_reasons), "skipped": self.skipped,
                "launched": self.launched, "notes": list(self.notes),
                "timings": {k: round(v, 3) for k, v in self.timings.items()}}

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, allow_nan=False)

    def summary(self) -> str:
        """A few lines for people: the status and reason, the first mismatch, the launch."""
        lines = [f"{self.status}: {self.reason}"]
        if self.mismatch is not None:
            values = ", ".join(f"{k}={v}" for k, v in self.mismatch.input.get("values", {}).items())
            lines.append(f"  input: {values or 'no scalars'}; seed {self.mismatch.input.get('seed')}, "
                         f"{self.mismatch.input.get('profile')} values; arrays "
                         f"{self.mismatch.input.get('extents')}; launch {self.mismatch.input.get('launch')}")
        if self.launch:
            lines.append(f"  launch: {self.launch}")
        if self.mapping:
            lines.append(f"  arguments: {self.mapping}")
        for note in self.notes:
            lines.append(f"  note: {note}")
        return "\n".join(lines)

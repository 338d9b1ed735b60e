"""Running the programs of a differential check (built by `kernelcheck.builds`) through `kernelcheck.sandbox`.

**Reference** (`run_reference`): all inputs run in one process, each under a per-input ``alarm``; records are flushed
per input, so when the reference dies on an input the runner knows which one it was:

* it overran an array by a few elements (``MOT_REF_OOB`` past the end): the array is regrown to what the reference
  touched and the input re-run (up to `MAX_REGROWTHS` times, never past `MAX_ELEMENTS`) — the static extents of
  `kernelcheck.loopnest` are a first guess, the reference's own accesses are the truth;
* anything else — an access before the array, undefined behaviour (NaN to int, signed overflow, division by
  zero, misaligned access...), a crash, a timeout, a canary overwritten, a ``std::vector`` resized — discards
  the input with the reason; the run then resumes at the next input (appending to the same ``out.bin``);
* the kept inputs run again in a twin build whose uninitialised locals are zeroed instead of patterned
  (``-ftrivial-auto-var-init``): an input whose results change read an uninitialised variable, and is
  discarded.

**Kernel** (`run_kernel`): its inputs are the reference's surviving inputs; the first failure (crash, CUDA error, timeout, guard zone written,
a race / out-of-bounds / fault / barrier report of the CPU backend's emulation) is attributed to the input it
happened on — that input is a mismatch, never discarded.
"""

from __future__ import annotations

import re
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .builds import OUTPUT_FILE_LIMIT, reference_env, reference_rlimits
from .harness import plan_text
from .harness_runtime import RECORD_MAGIC
from .inputs import MAX_ELEMENTS, InputCase
from .launch_config import Launch
from .sandbox import clip_text, decode_output, describe_exit, run_rlimits, run_sandboxed, scrubbed_env
from .signatures import FunctionInfo

__all__ = ["Item", "ReferenceRun", "KernelRun", "Failure", "parse_records", "run_reference", "run_kernel", "run_plain",
           "MAX_REGROWTHS", "EMULATION_FAILURES"]

MAX_REGROWTHS = 6


@dataclass(frozen=True)
class Item:
    """One recorded value: the return value (``param`` -1) or an array, as raw bytes."""

    kind: int
    elem_kind: str
    elem_size: int
    param: int
    data: bytes


def parse_records(data: bytes) -> dict[int, list[Item]]:
    """The complete records of ``out.bin`` by input index (a record cut short by a crash is dropped)."""
    records: dict[int, list[Item]] = {}
    pos = 0
    while pos + 12 <= len(data) and data[pos:pos + 4] == RECORD_MAGIC:
        index, count = struct.unpack_from("<II", data, pos + 4)
        pos += 12
        items = []
        for _ in range(count):
            if pos + 15 > len(data):
                return records
            kind, elem_kind, elem_size = data[pos], chr(data[pos + 1]), data[pos + 2]
            param, nbytes = struct.unpack_from("<iQ", data, pos + 3)
            pos += 15
            if pos + nbytes > len(data):
                return records
            items.append(Item(kind, elem_kind, elem_size, param, data[pos:pos + nbytes]))
            pos += nbytes
        records[index] = items
    return records


_LINE = re.compile(r"^(MOT_[A-Z_]+) (.*)$", re.M)
_UB = re.compile(r"runtime error: ([^\n]*)")
_ASAN = re.compile(r"ERROR: AddressSanitizer: ([^\n]*)")


@dataclass
class _Pass:
    records: dict[int, list[Item]]
    markers: list[tuple[str, list[str]]]
    stderr: str
    returncode: int | None
    timed_out: bool
    exit_text: str
    seconds: float


def _run_pass(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, launches: dict[int, Launch] | None,
              append: bool, per_input_s: int, timeout_s: float, env: dict[str, str], rlimits: dict[str, int],
              binary: str = "prog", which: int = 0) -> _Pass:
    Path(workdir, "plan.txt").write_text(plan_text(inputs, c, launches), encoding="utf-8")
    if not append:
        Path(workdir, "out.bin").unlink(missing_ok=True)
    result = run_sandboxed([f"./{binary}", str(per_input_s), "1" if append else "0", str(which)], cwd=workdir,
                           env=env, timeout_s=timeout_s, rlimits=rlimits)
    out = Path(workdir, "out.bin")
    records = parse_records(out.read_bytes()) if out.exists() else {}
    err = decode_output(result.stderr)
    markers = [(m.group(1), m.group(2).split()) for m in _LINE.finditer(err)]
    return _Pass(records, markers, err, result.returncode, result.timed_out, describe_exit(result), result.seconds)


def _culprit_reason(run: _Pass, per_input_s: int) -> str:
    """Why a program stopped before finishing its inputs, in words."""
    ub = _UB.search(run.stderr)
    if ub:
        return f"undefined behaviour: {ub.group(1).strip()}"
    for name, args in run.markers:
        if name == "MOT_CUDA_ERROR":
            return "CUDA error: " + " ".join(args[1:])
    asan = _ASAN.search(run.stderr)
    if asan:
        return f"AddressSanitizer: {asan.group(1).strip()}"
    if run.timed_out or "SIGALRM" in run.exit_text:
        return f"did not finish within {per_input_s} s"
    tail = [line for line in run.stderr.splitlines() if line.strip() and not line.startswith("MOT_BEGIN")]
    detail = f": {clip_text(tail[-1].strip(), 300)}" if tail else ""
    return f"{run.exit_text}{detail}"


@dataclass
class ReferenceRun:
    """The reference's records of the inputs it ran, those inputs (extents possibly regrown), the discarded."""

    records: dict[int, list[Item]]
    inputs: list[InputCase]
    discarded: dict[int, str] = field(default_factory=dict)
    regrown: int = 0
    seconds: float = 0.0
    sanitised: bool = True


def _regrow(case: InputCase, c: FunctionInfo, args: list[str], grown: dict[int, int]) -> bool:
    """Grow the array an ``MOT_REF_OOB`` past-the-end report names; False when it cannot (or may not) grow."""
    param, offset = int(args[1]), int(args[2])
    if param < 0 or param >= len(c.params) or offset < 0:
        return False
    p = c.params[param]
    if p.vector or p.is_scalar_ref or grown.get(case.index, 0) >= MAX_REGROWTHS:
        return False
    current = case.extents.get(p.name, 0)
    needed = offset // p.scalar.size + 1
    if needed <= current:
        return False
    new = max(needed, current + current // 4 + 1)
    if new > MAX_ELEMENTS:
        return False
    case.extents[p.name] = new
    grown[case.index] = grown.get(case.index, 0) + 1
    return True


def run_reference(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, *, per_input_s: int = 10,
                  budget_s: float = 120.0, sanitised: bool = True) -> ReferenceRun:
    """Run the built reference over ``inputs`` (see the module docstring)."""
    start = time.monotonic()
    remaining = list(inputs)
    run = ReferenceRun(records={}, inputs=[], sanitised=sanitised)
    grown: dict[int, int] = {}
    append = False
    env, rlimits = reference_env(workdir), reference_rlimits(per_input_s)
    while remaining:
        left = budget_s - (time.monotonic() - start)
        if left <= 1:
            for case in remaining:
                run.discarded[case.index] = f"the reference's time budget ({budget_s:g} s) ran out"
            break
        p = _run_pass(workdir, remaining, c, None, append, per_input_s, left, env, rlimits)
        append = True
        guards = {int(args[0]) for name, args in p.markers if name == "MOT_GUARD"}
        resized = {int(args[0]) for name, args in p.markers if name == "MOT_RESIZED"}
        for case in remaining:
            if case.index in p.records:
                if case.index in guards:
                    run.discarded[case.index] = "the reference wrote out of bounds (a guard zone changed)"
                elif case.index in resized:
                    run.discarded[case.index] = "the reference resized a std::vector (a kernel cannot)"
                else:
                    run.records[case.index] = p.records[case.index]
        done = set(p.records)
        remaining = [case for case in remaining if case.index not in done]
        if not remaining:
            break
        culprit = remaining[0]
        oob = next((args for name, args in p.markers if name == "MOT_REF_OOB" and int(args[0]) == culprit.index), None)
        if oob is not None and _regrow(culprit, c, oob, grown):
            run.regrown += 1
            continue
        if oob is not None:
            name = c.params[int(oob[1])].name if 0 <= int(oob[1]) < len(c.params) else "memory"
            where = "before the start" if int(oob[2]) < 0 else "past the end"
            run.discarded[culprit.index] = f"the reference {oob[3]}s {name} {where} (out of bounds)"
        else:
            run.discarded[culprit.index] = "the reference " + _culprit_reason(p, per_input_s)
        remaining = remaining[1:]
    if Path(workdir, "prog_zero").exists():
        _discard_uninitialised(workdir, inputs, c, run, per_input_s, budget_s - (time.monotonic() - start))
    run.inputs = [case for case in inputs if case.index in run.records]
    run.seconds = time.monotonic() - start
    return run


def run_plain(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, binary: str, *, per_input_s: int = 10,
              budget_s: float = 120.0) -> tuple[dict[int, list[Item]], dict[int, str]]:
    """Run a reference-like ``binary`` over ``inputs`` as they are (no regrowth) -> (records, failures by input);
    after a failure the run resumes at the next input."""
    env, rlimits = reference_env(workdir), reference_rlimits(per_input_s)
    records: dict[int, list[Item]] = {}
    failures: dict[int, str] = {}
    remaining, append, start = list(inputs), False, time.monotonic()
    while remaining:
        left = budget_s - (time.monotonic() - start)
        if left <= 1:
            failures.update({case.index: f"time budget ({budget_s:g} s) ran out" for case in remaining})
            break
        p = _run_pass(workdir, remaining, c, None, append, per_input_s, left, env, rlimits, binary=binary)
        append = True
        records.update({case.index: p.records[case.index] for case in remaining if case.index in p.records})
        missing = [case for case in remaining if case.index not in p.records]
        if missing:
            failures[missing[0].index] = _culprit_reason(p, per_input_s)
        remaining = missing[1:]
    return records, failures


def _discard_uninitialised(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, run: ReferenceRun,
                           per_input_s: int, budget_s: float) -> None:
    """Re-run the kept inputs with zeroed locals (``prog_zero``); an input whose records change read an
    uninitialised variable of the C code, and is discarded."""
    kept = [case for case in inputs if case.index in run.records]
    records, failures = run_plain(workdir, kept, c, "prog_zero", per_input_s=per_input_s, budget_s=budget_s)
    for case in kept:
        if case.index in failures:
            why = f"it fails with zeroed locals: {failures[case.index]}"
        elif records.get(case.index) != run.records[case.index]:
            why = "its result changes with what the stack held"
        else:
            continue
        del run.records[case.index]
        run.discarded[case.index] = f"the reference reads an uninitialised variable ({why})"


# Lines of the CPU backend's emulation that fail the input they appear under (MOT_NOTE lines are only notes).
EMULATION_FAILURES = ("MOT_RACE", "MOT_OOB", "MOT_FAULT", "MOT_BARRIER", "MOT_ERROR")
_FINDING = re.compile(r"^(MOT_[A-Z]+): (.*)$")


def _emulation_findings(stderr: str) -> tuple[list[tuple[int, str]], list[str]]:
    """(failures as (input, text), notes) of the emulation's ``MOT_X: text`` lines, each attributed to the input
    whose ``MOT_BEGIN`` came last before it."""
    current, failures, notes = -1, [], []
    for line in stderr.splitlines():
        if line.startswith("MOT_BEGIN "):
            current = int(line.split()[1])
            continue
        found = _FINDING.match(line)
        if found is None:
            continue
        if found.group(1) in EMULATION_FAILURES:
            text = f"{found.group(1)[4:].lower()}: {found.group(2).strip()}"
            if "at address (nil)" in text:  # the harness passes null only for arrays of size 0
                text += " (a null pointer: an array of size 0 on this input, so an out-of-bounds access)"
            failures.append((current, text))
        elif found.group(1) == "MOT_NOTE":
            notes.append(found.group(2).strip())
    return failures, notes


@dataclass(frozen=True)
class Failure:
    """An input on which the kernel program failed: what happened, and the argument it concerns (if known)."""

    input: int
    reason: str
    argument: str = ""


@dataclass
class KernelRun:
    """The kernel program's records, its first failure (in input order; None if none), its notes."""

    records: dict[int, list[Item]]
    failure: Failure | None = None
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0


def run_kernel(workdir: str, inputs: Sequence[InputCase], c: FunctionInfo, launches: dict[int, Launch], *,
               cuda: bool, per_input_s: int = 20, budget_s: float = 300.0, which: int = 0) -> KernelRun:
    """Run kernel number ``which`` of the built kernel program over ``inputs``; its first failure, in input order,
    is the one reported."""
    env = scrubbed_env(workdir, cuda=cuda)
    rlimits = run_rlimits(per_input_s, cuda=True)
    rlimits["RLIMIT_FSIZE"] = OUTPUT_FILE_LIMIT
    p = _run_pass(workdir, inputs, c, launches, False, per_input_s, budget_s, env, rlimits, which=which)
    found, notes = _emulation_findings(p.stderr)
    failures = [Failure(index, text) for index, text in found]
    run = KernelRun(records=dict(p.records), notes=notes, seconds=p.seconds)
    for name, args in p.markers:
        if name == "MOT_GUARD":
            param = int(args[1])
            what = c.params[param].name if 0 <= param < len(c.params) else "the return-value slot"
            side = "before its start" if args[2] == "before" else "past its end"
            failures.append(Failure(int(args[0]), f"the kernel wrote out of bounds of {what} ({side}, byte "
                                                  f"{args[3]} of the guard zone)", what))
    missing = [case.index for case in inputs if case.index not in p.records]
    if missing and not any(f.input == missing[0] for f in failures):
        failures.append(Failure(missing[0], "the kernel program " + _culprit_reason(p, per_input_s)))
    if failures:
        order = {case.index: i for i, case in enumerate(inputs)}
        run.failure = min(failures, key=lambda f: order.get(f.input, len(order)))
    return run

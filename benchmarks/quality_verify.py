"""bench_quality's candidates and verification: rows ``ROW+verify@N``, the answers file, which candidate is delivered.

A ``ROW+verify@N`` row (``ROW`` any row of bench_quality, e.g. ``trained-fast@fewshot-head-v1+verify@4``) generates
N candidates per function as the daemon does (`mot_engine.decoding.candidates`): greedy first, then greedy with
each other active expert as the primary, then sampled with `mot_engine.defaults`' ``CANDIDATE_TEMPERATURE`` and
``CANDIDATE_TOP_P``, candidate i with seed i (answers files written before 2026-12-07 23:00 UTC hold sampled
candidates from index 1).  It checks every
candidate's kernel against the function's C code on generated inputs (`kernelcheck.generated.check_generated`: one
reference and one kernel build per function for all of them) and delivers what the daemon delivers
(`kernelcheck.candidates.choose`): the first verified candidate, else the one whose check got furthest.  Plain rows
deliver their one (greedy) candidate; with ``--verify-backend`` on, its kernel is checked the same way (the
``verified`` column).

The answers file (``DIR/answers.jsonl``, written by every generating run, read by ``--predictions FILE``) has one
line per (row, function, candidate): ``{"row", "id", "candidate", "answer", "tokens", "seconds", "finish_reason",
"primary"}``.  ``answer`` is the whole answer (its kernel is extracted by `kernelcheck.extract`; ``prediction``,
``cuda`` or ``generated_cuda`` are read in its place); ``seconds`` is the generation time of the function's
candidates, on each of its lines.  A GPU machine's answers can so be scored anywhere.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kernelcheck import candidates
from kernelcheck.cases import PREDICTION_FIELDS, ExecCase
from kernelcheck.extract import KERNEL, extract_kernel
from kernelcheck.generated import GeneratedChecks, check_generated
from kernelcheck.toolchain import Toolchain

__all__ = ["CANDIDATE_ROWS_OF", "RowError", "Function", "split_row", "expand_rows", "write_answers", "load_answers",
           "answers_for", "verify_functions", "choose"]

# The rows `--candidates N` adds a `+verify@N` row to: the MoT's (an expert-alone row is a baseline).
CANDIDATE_ROWS_OF = ("mot-fast", "mot-full", "trained-fast", "trained-full")
_VERIFY_ROW = re.compile(r"^(?P<base>.+)\+verify@(?P<n>\d+)$")


class RowError(ValueError):
    """A row name or an answers file that cannot be used."""


def split_row(row: str) -> tuple[str, int | None]:
    """``"trained-fast@fmt+verify@4"`` -> ``("trained-fast@fmt", 4)``; a plain row -> ``(row, None)``."""
    match = _VERIFY_ROW.match(row)
    if match is None:
        if "+verify" in row:
            raise RowError(f"row {row!r}: a verifying row is written ROW+verify@N (N >= 1)")
        return row, None
    n = int(match["n"])
    if n < 1:
        raise RowError(f"row {row!r}: +verify@{n} needs N >= 1")
    return match["base"], n


def expand_rows(rows: Sequence[str], candidates: Sequence[int]) -> list[str]:
    """``rows`` and, for each N of ``candidates``, ``ROW+verify@N`` of each plain MoT row (`CANDIDATE_ROWS_OF`)."""
    bad = [k for k in candidates if k < 1]
    if bad:
        raise RowError(f"--candidates takes N >= 1, got {bad}")
    out = list(rows)
    for row in rows:
        base, n = split_row(row)
        if n is None and base.partition("@")[0] in CANDIDATE_ROWS_OF:
            out.extend(f"{row}+verify@{k}" for k in candidates if f"{row}+verify@{k}" not in out)
    return out


@dataclass
class Function:
    """One function's answers in a row: its candidates (dicts with ``answer``, ``tokens``...) in order."""

    id: str
    seconds: float
    candidates: list[dict] = field(default_factory=list)


def write_answers(path: Path, row: str, functions: Sequence[Function]) -> None:
    """Append ``row``'s candidates to the answers file (the format of the module docstring)."""
    with open(path, "a", encoding="utf-8") as fh:
        for f in functions:
            for i, candidate in enumerate(f.candidates):
                fh.write(json.dumps({"row": row, "id": f.id, "candidate": i, "seconds": f.seconds, **candidate}) + "\n")


def load_answers(path: str | Path) -> dict[str, list[Function]]:
    """The answers file -> {row: [Function, ...]} (rows and functions in file order, candidates by index)."""
    rows: dict[str, dict[str, Function]] = {}
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = [k for k in ("row", "id") if k not in record]
        if missing:
            raise RowError(f"{path}:{lineno}: no {missing} field")
        answer = next((record[k] for k in ("answer", *PREDICTION_FIELDS) if k in record), None)
        if answer is None:
            raise RowError(f"{path}:{lineno}: none of the fields {('answer', *PREDICTION_FIELDS)}")
        split_row(record["row"])
        fid = str(record["id"])
        function = rows.setdefault(record["row"], {}).setdefault(fid, Function(fid, float(record.get("seconds", 0))))
        candidate = {"answer": str(answer), "tokens": int(record.get("tokens", 0)),
                     "finish_reason": record.get("finish_reason"), "primary": record.get("primary"),
                     "index": int(record.get("candidate", len(function.candidates)))}
        function.candidates.append(candidate)
    out = {}
    for row, functions in rows.items():
        for f in functions.values():
            f.candidates.sort(key=lambda c: c.pop("index"))
        out[row] = list(functions.values())
    return out


def answers_for(row: str, answers: Mapping[str, list[Function]]) -> list[Function]:
    """``row``'s functions from an answers file: its own lines, else the first candidates of a row of the same base
    with more of them (``ROW`` and ``ROW+verify@M`` are the first 1 and M candidates of ``ROW+verify@N``, N >= M:
    candidates are generated greedy first, then in a fixed order (seeded), so one N-candidate generation scores
    every smaller N the daemon could have used)."""
    if row in answers:
        return answers[row]
    base, n = split_row(row)
    wanted = n or 1
    donors = sorted((k, name) for name in answers for b, k in [split_row(name)] if b == base and k and k >= wanted)
    if not donors:
        raise RowError(f"row {row!r}: not in the answers file, and no row {base}+verify@N with N >= {wanted} in it "
                       f"(rows: {sorted(answers)})")
    return [Function(f.id, f.seconds, f.candidates[:wanted]) for f in answers[donors[0][1]]]


def verify_functions(functions: Sequence[Function], cases: Mapping[str, ExecCase], backend: str,
                     toolchain: Toolchain | None = None, seeds: int | None = None) -> GeneratedChecks:
    """Every candidate's kernel checked against its function's C code (a candidate without a kernel is checked as
    empty: a syntax error, no build).  Vacuity is not asked: only the verdicts choose."""
    predictions = {f.id: [extract_kernel(c["answer"]).code or "" for c in f.candidates] for f in functions}
    return check_generated([cases[f.id] for f in functions], predictions, backend=backend, toolchain=toolchain,
                           seeds=seeds, check_vacuity=False)


def choose(statuses: Sequence[tuple[str, str | None]], parallel: Sequence[bool] | None = None) -> int:
    """The candidate to deliver, from (extraction status, verdict status) of each candidate in order: the daemon's
    choice (`kernelcheck.candidates.choose`, the first verified parallel kernel before a verified serial one), a
    candidate without a kernel being ``skipped`` (nothing checked)."""
    return candidates.choose([verdict if extracted == KERNEL and verdict else candidates.SKIPPED
                              for extracted, verdict in statuses], parallel)

"""The mutant suite: how well does the differential check tell a wrong kernel from a right one?

For a C/C++ function and its reference kernel, `run_case` verifies the kernel and each of its mutants
(`kernelcheck.mutants`) against the function, and classifies every mutant verdict (`classify`):

* ``caught`` — mismatch, compile or syntax error;
* ``verified_equivalent`` — verified, and its outputs equal the reference kernel's (within the comparison's
  tolerance) on every input both ran: a mutant that computes the same thing on these inputs (an off-by-one in a
  loop that cannot run, a bounds check the exact launch of an unchecked kernel never needs);
* ``verified_different`` — verified although its outputs differ from the reference kernel's on some input: a
  blind spot of the check (must never happen);
* ``not_verifiable`` (or ``unavailable``) — the check declined, with its reason.

`summarize` counts them per mutant kind, over the cases whose reference kernel is itself verified (mutants of a
kernel that already disagrees with its C function say nothing about the check) and over all cases.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Sequence

from .compare import compare_item
from .mutants import MUTANT_KINDS, make_mutants
from .verdict import Verdict
from .verify import verify_many

__all__ = ["MutantResult", "CaseResult", "classify", "run_case", "summarize", "OUTCOMES"]

OUTCOMES = ("caught", "verified_equivalent", "verified_different", "not_verifiable")


@dataclass
class MutantResult:
    kind: str
    description: str
    status: str
    outcome: str
    reason: str


@dataclass
class CaseResult:
    case_id: str
    reference: Verdict
    mutants: list[MutantResult] = field(default_factory=list)


def _same_outputs(base: Verdict, other: Verdict) -> bool:
    """Equal records (within tolerance) on every input both kernels ran."""
    common = set(base.records) & set(other.records)
    for index in common:
        mine = {item.param: item for item in base.records[index]}
        for item in other.records[index]:
            if item.param not in mine or compare_item(mine[item.param], item) is not None:
                return False
    return bool(common)


def classify(base: Verdict, mutant: Verdict) -> str:
    """The outcome (one of `OUTCOMES`) of a mutant's verdict next to its reference kernel's."""
    if mutant.status in ("mismatch", "compile_error", "syntax_error"):
        return "caught"
    if mutant.status == "verified":
        return "verified_equivalent" if _same_outputs(base, mutant) else "verified_different"
    return "not_verifiable"


def run_case(case_id: str, cpp_source: str, kernel_source: str, *, backend: str = "cpu", seeds: int = 3,
             kinds: Sequence[str] = MUTANT_KINDS) -> CaseResult:
    """Verify the reference kernel and its mutants of ``kinds`` against the C/C++ function (one reference run and
    one kernel build for all of them: `kernelcheck.verify.verify_many`)."""
    mutants = [m for m in make_mutants(kernel_source) if m.kind in kinds]
    verdicts = verify_many(cpp_source, [kernel_source] + [m.source for m in mutants], backend=backend, seeds=seeds)
    base = verdicts[0]
    result = CaseResult(case_id, base)
    for mutant, verdict in zip(mutants, verdicts[1:]):
        result.mutants.append(MutantResult(mutant.kind, mutant.description, verdict.status, classify(base, verdict),
                                           verdict.reason))
    return result


def _score(caught: int, catchable: int) -> float | None:
    return round(caught / catchable, 4) if catchable else None


def summarize(results: Sequence[CaseResult]) -> dict:
    """Per mutant kind: outcome counts over cases whose reference is verified, and over all cases."""
    verified_cases = [r for r in results if r.reference.status == "verified"]
    out: dict = {"cases": len(results), "references_verified": len(verified_cases), "kinds": {}}
    for kind in MUTANT_KINDS:
        mine = [m for r in verified_cases for m in r.mutants if m.kind == kind]
        every = [m for r in results for m in r.mutants if m.kind == kind]
        counts = Counter(m.outcome for m in mine)
        out["kinds"][kind] = {
            "mutants": len(mine), **{o: counts.get(o, 0) for o in OUTCOMES},
            "caught_rate": round(counts.get("caught", 0) / len(mine), 4) if mine else None,
            # The mutation score: equivalent mutants (outputs equal to the reference kernel's on every input, e.g.
            # an emptied body whose only effect was printing) cannot be caught and leave the denominator.
            "score": _score(counts.get("caught", 0), len(mine) - counts.get("verified_equivalent", 0)),
            "all_cases": dict(Counter(m.outcome for m in every)),
        }
    return out

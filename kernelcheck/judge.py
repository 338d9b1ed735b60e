"""From runs to a verdict: the comparison in input order, the launch text, the verdict's counts and notes.

`judge` compares the kernel program's records with the reference's for the inputs this kernel was launched on,
in input order; the first difference or failure (`kernelcheck.runner.Failure`: crash, race, out-of-bounds
write...) is the mismatch.  Without one the verdict is ``verified`` only when at least one compared input is
non-trivial (some size non-zero, or a function without sizes) and launched the kernel; else ``not_verifiable``.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from .compare import Mismatch, first_mismatch
from .inputs import InputCase
from .pairing import Pair
from .runner import KernelRun, ReferenceRun
from .verdict import Verdict

__all__ = ["judge", "launch_text"]


def launch_text(pair: Pair, cases: list[InputCase]) -> str:
    """The launch rule and a few of the launches it gave (the smallest, a middle and the largest input)."""
    sized = sorted((c for c in cases if c.index in pair.launches and not pair.launches[c.index].empty),
                   key=lambda c: math.prod(pair.launches[c.index].grid) * math.prod(pair.launches[c.index].block))
    picks = [sized[i] for i in sorted({0, len(sized) // 2, len(sized) - 1})] if sized else []
    examples = [f"{', '.join(f'{k}={v}' for k, v in c.sizes.items()) or 'input'}: {pair.launches[c.index].describe()}"
                for c in picks]
    return pair.rule.describe() + (f"; e.g. {'; '.join(dict.fromkeys(examples))}" if examples else "")


def _first_mismatch(pair: Pair, ref: ReferenceRun, cases: list[InputCase],
                    kernel_run: KernelRun) -> tuple[Mismatch | None, int]:
    """The first mismatch (or failure) in input order, and how many inputs compared equal before it."""
    compared = 0
    for case in cases:
        failure = kernel_run.failure
        if failure is not None and failure.input == case.index:
            found = Mismatch(case.to_json(), failure.argument, None, None, None, failure.reason)
        elif case.index not in kernel_run.records:
            break  # after a failure the program stopped: nothing more to compare
        else:
            found = first_mismatch(case, pair.c, ref.records[case.index], kernel_run.records[case.index])
        if found is not None:
            found.input["launch"] = pair.launches[case.index].describe()
            return found, compared
        compared += 1
    return None, compared


_PRINTS_RE = re.compile(r"\b(?:printf|fprintf|puts|std::cout|cout)\b")


def _notes(pair: Pair, ref: ReferenceRun, kernel_run: KernelRun) -> list[str]:
    notes = list(pair.mapping.notes)
    if any(_PRINTS_RE.search(f.source or "") for f in (pair.c, pair.k)):
        notes.append("printed output is not compared (only arrays, references and the return value are)")
    if ref.regrown:
        notes.append(f"{ref.regrown} array(s) regrown where the C reference read past the extent the analysis gave")
    if not ref.sanitised:
        notes.append("the reference ran without sanitizers (reads out of bounds and undefined behaviour in it are "
                     "not detected)")
    return notes + [f"CPU backend: {note}" for note in list(dict.fromkeys(kernel_run.notes))[:3]]


def judge(pair: Pair, ref: ReferenceRun, kernel_run: KernelRun, backend: str, timings: dict) -> Verdict:
    """The verdict of one kernel's run against the reference's (see the module docstring)."""
    cases = [case for case in ref.inputs if case.index in pair.launches]
    mismatch, compared = _first_mismatch(pair, ref, cases, kernel_run)
    launched = sum(1 for case in cases[:compared] if not pair.launches[case.index].empty)
    common = dict(backend=backend, launch=launch_text(pair, cases), mapping=pair.mapping.describe(),
                  discarded=len(ref.discarded), discard_reasons=dict(Counter(ref.discarded.values())),
                  skipped=sum(pair.skipped.values()), launched=launched, notes=_notes(pair, ref, kernel_run),
                  timings=timings, **pair.names)
    if mismatch is not None:
        return Verdict("mismatch", f"{mismatch.describe()} on {mismatch.input['describe']}, launched "
                       f"{mismatch.input['launch']}", inputs=compared, mismatch=mismatch, **common)
    nontrivial = [case for case in cases[:compared] if not pair.launches[case.index].empty
                  and (not case.sizes or any(v > 0 for v in case.sizes.values()))]
    if not nontrivial:
        return Verdict("not_verifiable", f"no non-trivial input ran the kernel ({compared} compared, "
                       f"{len(ref.discarded)} discarded by the reference)", inputs=compared, **common)
    discards = f"; {len(ref.discarded)} discarded where the C reference is undefined" if ref.discarded else ""
    return Verdict("verified", f"the kernel matched the C function on {compared} inputs ({len(nontrivial)} "
                   f"non-trivial){discards}; evidence on these inputs, not a proof", inputs=compared, **common)

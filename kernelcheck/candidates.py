"""Choosing among a function's candidate kernels by what their checks found, and saying it in words.

A translator makes several candidates of one function (the greedy one, then sampled ones); `kernelcheck.verify`
checks each one (syntax, compile, differential test). The one delivered is the first verified candidate (the first
verified *parallel* one where the kernels' shapes are given); when none is verified, the one whose check got
furthest, ties going to the earlier candidate (the greedy one first):

====  ==================  ===========================================================================
rank  check status        how far the check got
====  ==================  ===========================================================================
5     ``verified``        parsed, compiled, ran and matched the C/C++ function on every compared input
4     ``mismatch``        parsed, compiled and ran, and differed (or crashed, raced...) on some input
3     ``not_verifiable``  parsed, but the check could not be finished (a feature the CPU backend lacks,
                          a reference that does not build, every input discarded): nothing says it is wrong
2     ``compile_error``   parsed, did not compile
1     ``syntax_error``    did not parse
0     ``unavailable``     not checked (no compiler, the time budget spent, the checker failed)
-1    ``skipped``         no kernel to check (no kernel came out of the answer, or checks are off)
====  ==================  ===========================================================================

Why a mismatch outranks "not verifiable": it is the furthest a check gets short of "verified" — the kernel
compiles, launches and runs — and its first mismatch is something to act on. Torch-free, like the package.
"""

from __future__ import annotations

from collections.abc import Sequence

from .verdict import STATUSES

__all__ = ["CHECK_STATUSES", "SKIPPED", "RANK", "rank", "choose", "describe_check"]

SKIPPED = "skipped"  # no check ran: no kernel came out, or verification is off
CHECK_STATUSES = (*STATUSES, SKIPPED)
RANK = {"verified": 5, "mismatch": 4, "not_verifiable": 3, "compile_error": 2, "syntax_error": 1, "unavailable": 0,
        SKIPPED: -1}
# The words a status opens with where people read it (the batch CLI's `.cu` comment, the editor's header line)
_LEAD = {"mismatch": "mismatch", "compile_error": "does not compile", "syntax_error": "syntax error",
         "not_verifiable": "not verifiable", "unavailable": "not verified", SKIPPED: "not checked"}


def rank(status: str) -> int:
    """How far a check with this status got (the table above). Raises ValueError for an unknown status."""
    try:
        return RANK[status]
    except KeyError:
        raise ValueError(f"unknown check status {status!r}; expected one of {CHECK_STATUSES}") from None


def choose(statuses: Sequence[str], parallel: Sequence[bool] | None = None) -> int:
    """The index of the candidate to deliver: the first verified one, else the first of those whose check got
    furthest. ``statuses``: each candidate's check status, in candidate order (the greedy candidate first).
    ``parallel`` (optional, one per candidate): among verified candidates the first parallel one wins — a serial
    kernel (the C loop whole in every thread, `kernelcheck.kernel_shape`) is right but not what a user wants."""
    if not statuses:
        raise ValueError("there is no candidate to choose from")
    ranks = [rank(s) for s in statuses]
    best = [i for i, r in enumerate(ranks) if r == max(ranks)]
    if parallel is not None and ranks[best[0]] == RANK["verified"]:
        return next((i for i in best if parallel[i]), best[0])
    return best[0]


def _first_line(text: str, limit: int) -> str:
    line = " ".join(text.strip().splitlines()[0].split()) if text.strip() else ""
    return line if len(line) <= limit else line[: limit - 1] + "…"


def describe_check(status: str, *, backend: str | None = None, inputs: int = 0, reason: str = "",
                   limit: int = 300) -> str:
    """One line for people: "verified on 21 generated inputs (CPU)", "mismatch: y[1]: expected 3, got 0 (...) on
    input #2 (...)", "does not compile: ...", "not verifiable: ...", "not verified: ...", "not checked: ...".
    Clipped to ``limit`` characters (the first line of the reason only)."""
    rank(status)  # an unknown status is a bug of the caller: say so
    if status == "verified":
        where = f" ({backend.upper()})" if backend else ""
        return f"verified on {inputs} generated input{'' if inputs == 1 else 's'}{where}"
    text = _LEAD[status]
    detail = _first_line(reason, limit)
    return _first_line(f"{text}: {detail}" if detail else text, limit)

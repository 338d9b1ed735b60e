"""The differential-verification gate: the C function and the kernel must compute the same outputs on inputs
the verifier generates (`kernelcheck.verify`, CPU backend; built on branch s20-verify).

Until that module is importable the gate is *not run* — reported as such, never counted as passed: a pair's
`verified` is then None. Any other import failure inside the verifier is an error, not "not run".
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Sequence

try:
    from kernelcheck.verify import verify as _verify
except ModuleNotFoundError as error:  # only the module itself missing means "not merged yet"
    if error.name != "kernelcheck.verify":
        raise
    _verify = None

NOT_AVAILABLE = "kernelcheck.verify is not importable (branch s20-verify not merged here)"
VERIFIED = "verified"


@dataclass(frozen=True)
class VerifyOutcome:
    status: str  # the verdict's status ("verified", or what the verifier says instead)
    detail: str = ""

    @property
    def verified(self) -> bool:
        return self.status == VERIFIED


def available() -> bool:
    return _verify is not None


def verify_one(cpp: str, cuda: str) -> VerifyOutcome:
    """The verifier's verdict on one pair (RuntimeError when the verifier is not available: check `available`)."""
    if _verify is None:
        raise RuntimeError(NOT_AVAILABLE)
    verdict = _verify(cpp, cuda, backend="cpu")
    return VerifyOutcome(verdict.status, verdict.reason)


def verify_all(pairs: Sequence[tuple[str, str]], workers: int = 1) -> list[VerifyOutcome]:
    """Verdicts for (cpp, cuda) pairs, `workers` at a time (each verification builds and runs in the sandbox)."""
    if workers < 1:
        raise ValueError(f"workers must be at least 1, got {workers}")
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda pair: verify_one(*pair), pairs))

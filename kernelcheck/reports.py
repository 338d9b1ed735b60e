"""Results of the functional check: per test, per (case, sample), per C++ reference, and the whole report.

Outcome of each (case, sample) (`OUTCOMES`)::

    pass            every test printed the expected output
    wrong_output    a test printed something else (a unified diff is kept)
    runtime_error   non-zero exit / signal / output over the size limit / a CUDA error after the call
                    (launch failure, illegal address) with a wrong output (with any output under
                    --strict_cuda_errors; a matching output passes and the error is listed, see
                    kernelcheck.functional.run_tests)
    timeout         a test ran past the time limit (its process group is killed)
    compile_error   nvcc rejected the candidate (the message is kept); also an empty prediction
    skipped         it compiled, but there is no GPU, so it was NOT run (never counted as a pass)
    unavailable     there is no nvcc, nothing was built

Without a GPU (CI, laptops) the build stage still runs, since nvcc builds device code without a GPU; the run
stage is then reported as ``skipped (no GPU)`` and pass@k is ``null``.  Without nvcc the run stage is
``unavailable (no nvcc)`` (`kernelcheck.toolchain.Toolchain.run_stage`).

Several samples per case give pass@k with the unbiased estimator of Chen et al. (2021),
``1 - C(n-c, k) / C(n, k)`` computed as a stable product (`pass_at_k`).  `FunctionalReport.summary` is the
``functional_results.json`` dict: counts, compile_rate, pass@k, run_stage, the C++ reference check.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .toolchain import RUN_STAGE_RAN, Toolchain

__all__ = ["OUTCOMES", "TestRun", "SampleResult", "ReferenceCheck", "FunctionalReport", "pass_at_k", "id_key",
           "standard_ks"]

OUTCOMES = ("pass", "wrong_output", "runtime_error", "timeout", "compile_error", "skipped", "unavailable")


@dataclass
class TestRun:
    """One test of one binary (one process)."""

    index: int
    status: str  # pass | wrong_output | runtime_error | timeout
    seconds: float
    stdout: str = ""
    stderr: str = ""
    message: str = ""
    diff: str = ""
    cuda_error: str = ""  # CUDA error pending after the call (launch failure, illegal address...), if any


@dataclass
class SampleResult:
    """The outcome of one sample (candidate) of one case, over its tests."""

    case_id: str
    sample: int
    outcome: str
    message: str = ""
    diff: str = ""
    failed_test: int | None = None
    tests_passed: int = 0
    tests_total: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    kernel_launched: bool = True
    cuda_error: str = ""  # a CUDA error pending after a test whose output nevertheless matched
    note: str = ""
    candidate_sha1: str = ""
    cpp_reference: str | None = None  # outcome of the C++ reference check of this case (None: not checked)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class ReferenceCheck:
    """Whether the C++ reference of a case reproduces ``consistent_outputs`` (g++, CPU)."""

    case_id: str
    outcome: str  # pass | wrong_output | runtime_error | timeout | compile_error | unavailable
    message: str = ""
    diff: str = ""
    failed_test: int | None = None
    tests_passed: int = 0
    tests_total: int = 0
    compile_seconds: float = 0.0
    run_seconds: float = 0.0
    tests: list[TestRun] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("tests")
        return d


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k (Chen et al., 2021): 1 - C(n-c, k) / C(n, k), as a numerically stable product."""
    if n < 1 or k < 1 or k > n or c < 0 or c > n:
        raise ValueError(f"pass@k needs 1 <= k <= n and 0 <= c <= n (n={n}, c={c}, k={k})")
    if n - c < k:
        return 1.0
    return 1.0 - math.prod(1.0 - k / i for i in range(n - c + 1, n + 1))


def id_key(case_id: str) -> tuple:
    """Sort key of case ids: numeric ids in numeric order, then the others."""
    return (0, int(case_id), "") if case_id.isdigit() else (1, 0, case_id)


def standard_ks(max_samples: int) -> list[int]:
    """The k of pass@k reported when the case with the fewest samples has ``max_samples``."""
    return sorted({k for k in (1, 2, 5, 10, 20, 50, 100, max_samples) if 1 <= k <= max_samples})


@dataclass
class FunctionalReport:
    """Every sample's result, the C++ reference checks and the toolchain they ran with; `summary` aggregates."""

    results: list[SampleResult]
    references: list[ReferenceCheck]
    toolchain: Toolchain
    case_ids: list[str]
    missing_predictions: list[str] = field(default_factory=list)
    cases_without_kernel_launch: list[str] = field(default_factory=list)
    wall_seconds: float = 0.0
    reference_checked: bool = True

    @property
    def run_stage(self) -> str:
        return self.toolchain.run_stage

    def counts(self) -> dict[str, int]:
        counts = {o: 0 for o in OUTCOMES}
        for r in self.results:
            counts[r.outcome] = counts.get(r.outcome, 0) + 1
        return counts

    @property
    def compile_rate(self) -> float | None:
        built = [r for r in self.results if r.outcome != "unavailable"]
        if not built:
            return None
        return sum(r.outcome != "compile_error" for r in built) / len(built)

    def samples_per_case(self) -> dict[str, tuple[int, int]]:
        """case id -> (n samples, c passes)."""
        stats = {cid: [0, 0] for cid in self.case_ids}
        for r in self.results:
            s = stats.setdefault(r.case_id, [0, 0])
            s[0] += 1
            s[1] += r.outcome == "pass"
        return {cid: (n, c) for cid, (n, c) in stats.items()}

    def pass_at(self, k: int) -> float | None:
        """Mean pass@k over the cases (None unless the run stage ran, or when a case has fewer than k samples)."""
        if self.run_stage != RUN_STAGE_RAN:
            return None
        stats = [v for v in self.samples_per_case().values() if v[0] > 0]
        if not stats or any(n < k for n, _ in stats):
            return None
        return sum(pass_at_k(n, c, k) for n, c in stats) / len(stats)

    def summary(self) -> dict:
        per_case = self.samples_per_case()
        ns = [n for n, _ in per_case.values()] or [0]
        ks = standard_ks(min(ns)) if min(ns) > 0 else []
        pass_k = {str(k): self.pass_at(k) for k in ks}
        counts = self.counts()
        out: dict = {
            "cases": len(self.case_ids),
            "samples": len(self.results),
            "samples_per_case": {"min": min(ns), "max": max(ns)},
            "run_stage": self.run_stage,
            "counts": counts,
            "compile_rate": self.compile_rate,
            "pass@1": pass_k.get("1"),
            "pass@k": pass_k,
            "cases_passing": sum(1 for n, c in per_case.values() if c > 0) if self.run_stage == RUN_STAGE_RAN else None,
            "toolchain": self.toolchain.to_dict(),
            "missing_predictions": self.missing_predictions,
            "cases_without_kernel_launch": self.cases_without_kernel_launch,
            "passes_with_cuda_error": sorted({r.case_id for r in self.results if r.outcome == "pass" and r.cuda_error},
                                             key=id_key),
            "cpp_reference": self.reference_summary(),
            "wall_seconds": round(self.wall_seconds, 3),
            "compile_seconds_total": round(sum(r.compile_seconds for r in self.results), 3),
            "run_seconds_total": round(sum(r.run_seconds for r in self.results), 3),
        }
        if self.run_stage != RUN_STAGE_RAN:
            out["note"] = (f"run stage {self.run_stage}: pass@k is null; 'skipped' samples compiled but were not "
                           "run, they are not passes")
        return out

    def reference_summary(self) -> dict:
        if not self.reference_checked:
            return {"status": "not checked"}
        if not self.toolchain.gxx:
            return {"status": "unavailable (no g++)"}
        checked = [r for r in self.references]
        ok = [r for r in checked if r.outcome == "pass"]
        return {
            "status": "ran",
            "checked": len(checked),
            "reproduced": len(ok),
            "rate": (len(ok) / len(checked)) if checked else None,
            "not_reproduced": [{"id": r.case_id, "outcome": r.outcome, "failed_test": r.failed_test}
                               for r in checked if r.outcome != "pass"],
        }

    def format_table(self) -> str:
        s = self.summary()
        lines = [f"functional evaluation: {s['cases']} cases, {s['samples']} samples, run stage: {s['run_stage']}"]
        if self.toolchain.gpu_info:
            lines.append(f"  device: {self.toolchain.gpu_info}")
        lines.append(f"  {'outcome':<15}{'count':>7}{'share':>9}")
        total = max(1, s["samples"])
        for outcome, count in s["counts"].items():
            lines.append(f"  {outcome:<15}{count:>7}{count / total:>9.1%}")
        fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
        lines.append(f"  {'compile_rate':<15}{fmt(s['compile_rate']):>16}")
        for k, v in s["pass@k"].items():
            lines.append(f"  {'pass@' + k:<15}{fmt(v):>16}")
        if s["run_stage"] != RUN_STAGE_RAN:
            lines.append(f"  (pass@k n/a: run stage {s['run_stage']})")
        ref = s["cpp_reference"]
        if ref.get("status") == "ran":
            lines.append(f"  C++ references reproducing consistent_outputs: {ref['reproduced']}/{ref['checked']}")
        else:
            lines.append(f"  C++ references: {ref.get('status')}")
        if s["missing_predictions"]:
            lines.append(f"  cases without a prediction (counted as compile_error): {len(s['missing_predictions'])}")
        if s["passes_with_cuda_error"]:
            lines.append("  passes whose wrapper hit a CUDA error (outputs untouched, as expected by the data): "
                         + ", ".join(s["passes_with_cuda_error"]))
        if s["cases_without_kernel_launch"]:
            lines.append("  cases whose wrapper launches no kernel (candidate only compiled): "
                         + ", ".join(s["cases_without_kernel_launch"]))
        lines.append(f"  wall time: {s['wall_seconds']:.1f} s")
        return "\n".join(lines)

"""The data's own tests and the generated-input checks side by side: pass@k per column, vacuous cases, not-verifiable.

Columns (`COLUMNS`), each a pass@k over the same cases (`SideBySideReport.scored_ids`):

* ``data`` — the data set's own tests (`kernelcheck.functional`); needs nvcc and a GPU (run stage ``ran``).
* ``generated`` — verified by the differential check on generated inputs (`kernelcheck.generated`), the C
  reference as the oracle; runs on the CPU backend where there is no GPU.  A not-verifiable sample is no pass here.
* ``data+generated`` — passes the data's tests and no generated check found it wrong (``mismatch``,
  ``compile_error``, ``syntax_error``).  Where the pair is ``not_verifiable`` (a parameter the checker cannot feed,
  a reference that reads uninitialised memory...) the sample falls back to the data's tests alone: a translator
  is not failed for the checker's limits, and the cases where this column rests on the data alone are listed
  (``data_only_passes``) with the not-verifiable counts, so the reader sees how much that is.

**Vacuous** cases — the C reference changes no argument and returns nothing (`kernelcheck.vacuity`), so a kernel
that does nothing passes their tests — are left out of every column and listed by id: a pass there says nothing.
Where vacuity was not checked (``--verify-backend off``, or the checker unavailable) no case is left out, and the
report says so.  A column that could not run is null, with why: the report says which columns were available
(without nvcc the data's tests cannot run but the generated checks can, on the CPU).

`run_side_by_side` runs both halves; ``python -m kernelcheck functional`` (`kernelcheck.cli`) prints
`SideBySideReport.format_table` and writes `SideBySideReport.summary` and `SideBySideReport.case_lines`.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from .cases import ExecCase
from .functional import evaluate_functional
from .generated import DEFAULT_VERIFY_BACKEND, GeneratedChecks, SampleCheck, check_generated
from .reports import FunctionalReport, SampleResult, id_key, pass_at_k, standard_ks
from .toolchain import RUN_STAGE_RAN, Toolchain, detect_toolchain

__all__ = ["COLUMNS", "VACUOUS", "SideBySideReport", "run_side_by_side"]

COLUMNS = ("data", "generated", "data+generated")
VACUOUS = "vacuous"  # what a vacuous case's sample gets in every column, instead of a pass or a failure
_LISTED_IDS = 20  # ids a table line lists before "and N more" (the JSON report lists them all)


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _ids(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:_LISTED_IDS])
    return shown + (f" and {len(ids) - _LISTED_IDS} more" if len(ids) > _LISTED_IDS else "")


@dataclass
class SideBySideReport:
    """One evaluation's data-test results (`FunctionalReport`) and generated checks (`GeneratedChecks`)."""

    functional: FunctionalReport
    generated: GeneratedChecks

    # ---- cases ------------------------------------------------------------------------------------------------
    def vacuous_ids(self) -> list[str]:
        return sorted((cid for cid, v in self.generated.vacuity.items() if v.vacuous), key=id_key)

    def vacuity_unknown_ids(self) -> list[str]:
        if not self.generated.ran:
            return []
        return sorted((cid for cid in self.functional.case_ids
                       if cid not in self.generated.vacuity or self.generated.vacuity[cid].vacuous is None),
                      key=id_key)

    def scored_ids(self) -> list[str]:
        """The cases every column's pass@k is over: all but the vacuous ones."""
        vacuous = set(self.vacuous_ids())
        return [cid for cid in self.functional.case_ids if cid not in vacuous]

    def check_of(self, result: SampleResult) -> SampleCheck | None:
        return self.generated.samples.get((result.case_id, result.sample))

    # ---- columns ----------------------------------------------------------------------------------------------
    def why_unavailable(self, column: str) -> str:
        """"" when ``column`` could be computed, else why not."""
        data = "" if self.functional.run_stage == RUN_STAGE_RAN else \
            f"the data's tests did not run (run stage {self.functional.run_stage})"
        generated = "" if self.generated.ran else f"generated checks {self.generated.status_line()}"
        if column == "data":
            return data
        if column == "generated":
            return generated
        if column == "data+generated":
            return "; ".join(w for w in (data, generated) if w)
        raise ValueError(f"unknown column {column!r}; expected one of {COLUMNS}")

    def passes(self, column: str, result: SampleResult) -> bool:
        """Whether ``result`` passes ``column`` (on a vacuous case too: callers leave those cases out)."""
        check = self.check_of(result)
        if column == "data":
            return result.outcome == "pass"
        if column == "generated":
            return check is not None and check.status == "verified"
        if column == "data+generated":  # a check that could not judge (not verifiable, failed) leaves the data's say
            return result.outcome == "pass" and check is not None and not check.failed
        raise ValueError(f"unknown column {column!r}; expected one of {COLUMNS}")

    def column(self, column: str) -> dict:
        """pass@k (the unbiased estimator) over `scored_ids`, cases passing, and availability."""
        why = self.why_unavailable(column)
        scored = set(self.scored_ids())
        stats = {cid: [0, 0] for cid in scored}
        for r in self.functional.results:
            if r.case_id in scored:
                stats[r.case_id][0] += 1
                stats[r.case_id][1] += self.passes(column, r)
        sampled = [(n, c) for n, c in stats.values() if n > 0]
        ks = standard_ks(min(n for n, _ in sampled)) if sampled else []
        pass_k = {str(k): (None if why else sum(pass_at_k(n, c, k) for n, c in sampled) / len(sampled))
                  for k in ks}
        return {"available": not why, "why": why or None, "pass@1": pass_k.get("1"), "pass@k": pass_k,
                "cases_passing": None if why else sum(1 for n, c in sampled if c > 0)}

    # ---- reports ----------------------------------------------------------------------------------------------
    def _cases_where(self, keep: Callable[[SampleResult, SampleCheck], bool]) -> list[str]:
        vacuous = set(self.vacuous_ids())
        found = {r.case_id for r in self.functional.results
                 if r.case_id not in vacuous and (c := self.check_of(r)) is not None and keep(r, c)}
        return sorted(found, key=id_key)

    def summary(self) -> dict:
        """`FunctionalReport.summary` (unchanged: its pass@k is the data's tests over every case) + the
        ``verification`` and ``side_by_side`` sections."""
        out = self.functional.summary()
        checks = [c for r in self.functional.results if (c := self.check_of(r)) is not None]
        out["verification"] = {"requested": self.generated.requested, "status": self.generated.status_line(),
                               "backend": self.generated.backend, "seconds": round(self.generated.seconds, 3),
                               "counts": dict(Counter(c.status for c in checks))}
        not_verifiable = self._cases_where(lambda r, c: c.status == "not_verifiable")
        out["side_by_side"] = {
            "cases_scored": len(self.scored_ids()),
            "vacuity_checked": self.generated.ran,
            "vacuous": self.vacuous_ids(),
            "vacuity_unknown": self.vacuity_unknown_ids(),
            "columns": {name: self.column(name) for name in COLUMNS},
            "not_verifiable": {"samples": sum(c.status == "not_verifiable" for c in checks),
                               "cases": not_verifiable},
            # Data passes that data+generated keeps on the data's tests alone (the check could not judge them).
            "data_only_passes": self._cases_where(lambda r, c: r.outcome == "pass" and not c.failed and
                                                  c.status != "verified"),
            # The column's point: kernels that pass the data's tests and are wrong on generated inputs.
            "caught_by_generated": self._cases_where(lambda r, c: r.outcome == "pass" and c.failed),
            # Where the check itself failed ("unavailable", the exception named in functional_cases.jsonl).
            "check_failed": self._cases_where(lambda r, c: c.status == "unavailable"),
        }
        if not self.generated.ran:
            out["side_by_side"]["note"] = (f"generated checks {self.generated.status_line()}: vacuity not checked, "
                                           "no case left out")
        return out

    def case_lines(self) -> list[dict]:
        """One dict per (case, sample): the sample's data-test result, its generated check, and per column a pass
        (True/False), null (the column did not run) or "vacuous"."""
        vacuous = set(self.vacuous_ids())
        lines = []
        for r in self.functional.results:
            line = r.to_dict()
            check = self.check_of(r)
            line["generated"] = check.to_dict() if check is not None else None
            vacuity = self.generated.vacuity.get(r.case_id)
            line["vacuous"] = vacuity.vacuous if vacuity is not None else None
            line["columns"] = {name: (VACUOUS if r.case_id in vacuous else
                                      None if self.why_unavailable(name) else self.passes(name, r))
                               for name in COLUMNS}
            lines.append(line)
        return lines

    def format_table(self) -> str:
        """The data-test table (`FunctionalReport.format_table`), then the columns side by side."""
        s = self.summary()
        side = s["side_by_side"]
        ks = list(side["columns"]["data"]["pass@k"])
        lines = [self.functional.format_table(), "",
                 f"side by side: pass@k over {side['cases_scored']} of {s['cases']} cases"
                 + (f" (vacuous, left out of every column: {_ids(side['vacuous'])})" if side["vacuous"] else "")]
        lines.append(f"  {'column':<16}" + "".join(f"{'pass@' + k:>10}" for k in ks) + f"{'passing':>9}  available")
        for name, col in side["columns"].items():
            cells = "".join(f"{_number(col['pass@k'][k]):>10}" for k in ks)
            passing = "n/a" if col["cases_passing"] is None else str(col["cases_passing"])
            lines.append(f"  {name:<16}{cells}{passing:>9}  " + ("yes" if col["available"] else f"no: {col['why']}"))
        v = s["verification"]
        counts = ", ".join(f"{k} {n}" for k, n in sorted(v["counts"].items()))
        lines.append(f"  generated checks: {v['status']}" + (f"; {counts}; {v['seconds']:.0f} s" if counts else ""))
        if "note" in side:
            lines.append(f"  ({side['note']})")
        if side["vacuity_unknown"]:
            lines.append(f"  vacuity unknown (scored): {_ids(side['vacuity_unknown'])}")
        nv = side["not_verifiable"]
        if nv["samples"]:
            lines.append(f"  not verifiable by generated inputs: {nv['samples']} samples in {len(nv['cases'])} "
                         f"cases: {_ids(nv['cases'])}")
        if side["data_only_passes"]:
            lines.append("  data+generated passes resting on the data's tests alone (not verifiable): "
                         + _ids(side["data_only_passes"]))
        if side["caught_by_generated"]:
            lines.append("  passed the data's tests, wrong on generated inputs: " + _ids(side["caught_by_generated"]))
        if side["check_failed"]:
            lines.append("  the generated check failed on (see functional_cases.jsonl): " + _ids(side["check_failed"]))
        return "\n".join(lines)


def run_side_by_side(cases: Sequence[ExecCase], predictions: Mapping[str, Sequence[str]], *,
                     verify_backend: str = DEFAULT_VERIFY_BACKEND, toolchain: Toolchain | None = None,
                     workers: int | None = None, samples: int | None = None, verify_seeds: int | None = None,
                     progress: Callable[[int, int], None] | None = None,
                     verify_progress: Callable[[int, int], None] | None = None,
                     **functional_kwargs) -> SideBySideReport:
    """`kernelcheck.functional.evaluate_functional` (``functional_kwargs``: its timeouts and flags; ``progress``
    counts its builds), then `kernelcheck.generated.check_generated` on the same samples with the same toolchain
    (``verify_progress`` counts its cases; it checks ``workers // 2`` cases at a time, each running two builds)."""
    tc = toolchain or detect_toolchain()
    report = evaluate_functional(cases, predictions, toolchain=tc, workers=workers, samples=samples,
                                 progress=progress, **functional_kwargs)
    generated = check_generated(cases, predictions, backend=verify_backend, toolchain=tc,
                                workers=None if workers is None else max(1, workers // 2), samples=samples,
                                seeds=verify_seeds, compile_timeout_s=functional_kwargs.get("compile_timeout_s"),
                                progress=verify_progress)
    return SideBySideReport(report, generated)

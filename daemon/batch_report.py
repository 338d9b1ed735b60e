"""What `mot-daemon translate` reports: one JSON line per function for `--report` (location, routing, timings,
status, what the check of its kernel found and every candidate), and the summary table and failure lines printed at
the end of a run."""

from __future__ import annotations

import time
from typing import Any

from rich.table import Table

from kernelcheck.candidates import CHECK_STATUSES, describe_check
from kernelcheck.extract import STATUSES

from . import protocol as P

from .batch_files import FunctionJob, SourceFile

MAX_FAILURES_LISTED = 50


def report_line(job: FunctionJob) -> dict[str, Any]:
    """The `--report` line of one function."""
    span, r = job.span, job.result
    line: dict[str, Any] = {
        "file": job.file.rel.as_posix(), "output": str(job.file.out), "function": span.name,
        "location": job.location, "start_line": span.start_line + 1, "start_col": span.start_col + 1,
        "end_line": span.end_line + 1, "end_col": span.end_col + 1, "status": job.status, "error": job.error,
        "endpoint": job.endpoint, "attempts": job.attempts,
    }
    if r is not None:
        line.update(
            routing={
                "primary_expert": r.primary_expert, "primary_expert_name": r.primary_expert_name,
                "active_experts": r.active_experts, "expert_names": r.expert_names, "probs": r.routing_probs,
            },
            num_prompt_tokens=r.num_prompt_tokens, num_generated_tokens=r.num_generated_tokens,
            finish_reason=r.finish_reason, timings=r.timings, notes=r.notes,
            check={**P.to_builtins(r.check), "summary": check_words(r.check)},
            candidates=[P.to_builtins(c) for c in r.candidates], candidate=r.candidate,
        )
    else:
        line.update(routing=None, num_prompt_tokens=None, num_generated_tokens=None, finish_reason=None, timings=None,
                    notes=[], check=None, candidates=[], candidate=None)
    return line


def check_words(check: P.Verification) -> str:
    """What the check of a delivered kernel found, in one line ("verified on 21 generated inputs (CPU)",
    "mismatch: ...", "not verifiable: ..."; kernelcheck.candidates)."""
    return describe_check(check.status, backend=check.backend, inputs=check.inputs, reason=check.reason)


def summary_table(
    files: list[SourceFile], endpoints: list[tuple[str, bool]], *, t_start: float, t_translate: float | None
) -> Table:
    """The end-of-run table: files by outcome, functions, tokens and speed, primary experts, endpoints
    (`endpoints`: (name, still alive)). `t_translate`: seconds spent translating (None: the whole run)."""
    count = lambda pred: sum(1 for x in files if pred(x))  # noqa: E731
    jobs = [j for sf in files for j in sf.jobs]
    ok = [j for j in jobs if j.result is not None]  # translated, whatever came out
    failed = [j for j in jobs if j.status == "failed"]
    elapsed = time.monotonic() - t_start
    tokens = sum(j.result.num_generated_tokens for j in ok)
    t_translate = elapsed if t_translate is None else t_translate
    table = Table(title="mot-daemon translate", show_header=True, header_style="bold")
    table.add_column("")
    table.add_column("count", justify="right")
    table.add_row("source files", str(len(files)))
    table.add_row("  written", str(count(lambda f: f.status == "written")))
    table.add_row("  with failed functions",
                  str(count(lambda f: f.status == "written" and any(j.status == "failed" for j in f.jobs))))
    table.add_row("  skipped (--resume, complete)", str(count(lambda f: f.status == "skipped")))
    table.add_row("  no functions", str(count(lambda f: f.status == "no_functions")))
    table.add_row("  unreadable / unwritable", str(count(lambda f: f.status in ("unreadable", "unwritable"))))
    table.add_row("  not done (run stopped)", str(count(lambda f: f.status == "not_done")))
    table.add_row("functions translated", str(len(ok)))
    for status in STATUSES:  # what came out: a kernel, or what instead
        table.add_row(f"  {status}", str(sum(1 for j in ok if j.status == status)))
    kernels = [j for j in ok if j.result.kernel]
    table.add_row("kernels checked", str(sum(1 for j in kernels if j.result.check.status != "skipped")))
    for status in CHECK_STATUSES:  # what the check of each delivered kernel found
        count_status = sum(1 for j in kernels if j.result.check.status == status)
        if count_status:
            table.add_row(f"  {status}", str(count_status))
    table.add_row("functions failed", str(len(failed)))
    table.add_row("functions skipped", str(sum(1 for j in jobs if j.status == "skipped")))
    table.add_row("generated tokens", str(tokens))
    table.add_row("tokens/s", f"{tokens / t_translate:.1f}" if t_translate > 0 else "-")
    table.add_row("wall time", f"{elapsed:.1f} s")
    experts: dict[str, int] = {}
    for j in ok:
        experts[j.result.primary_expert_name] = experts.get(j.result.primary_expert_name, 0) + 1
    for name, n in sorted(experts.items()):
        table.add_row(f"primary expert {name}", str(n))
    for name, alive in endpoints:
        table.add_row(f"endpoint {name}", "ok" if alive else "lost")
    return table


def check_lines(files: list[SourceFile]) -> list[str]:
    """One line per delivered kernel (the first MAX_FAILURES_LISTED): where it is and what its check found."""
    jobs = [j for sf in files for j in sf.jobs if j.result is not None and j.result.kernel]
    lines = [f"CHECK {j.location} {j.span.name}: {check_words(j.result.check)}" for j in jobs[:MAX_FAILURES_LISTED]]
    if len(jobs) > MAX_FAILURES_LISTED:
        lines.append(f"... and {len(jobs) - MAX_FAILURES_LISTED} more kernels (see --report)")
    return lines


def problem_lines(files: list[SourceFile]) -> list[str]:
    """Unreadable / unwritable sources, then the failed functions (the first MAX_FAILURES_LISTED)."""
    lines = [f"{sf.rel.as_posix()}: {sf.status}: {sf.error}" for sf in files if sf.status in ("unreadable", "unwritable")]
    failed = [j for sf in files for j in sf.jobs if j.status == "failed"]
    for j in failed[:MAX_FAILURES_LISTED]:
        lines.append(f"FAILED {j.location} {j.span.name}: {j.error['code']}: {j.error['message']}")
    if len(failed) > MAX_FAILURES_LISTED:
        lines.append(f"... and {len(failed) - MAX_FAILURES_LISTED} more failures (see --report)")
    return lines

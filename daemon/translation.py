"""One translation's life in the engine: its candidates (how each samples), their answers as the Generator ends
them, what came out of each, their checks, and the one delivered.

A translation asks for `candidates` (protocol v3). How each decodes is mot_engine.decoding.candidates' rule: the
request's own options (greedy by default), then the same options with each other active expert as the primary,
then sampled ones with their own seeds. They are added to the Generator together, so those of one primary share
one prefill (tests/test_candidates.py). Only where their kernels are verified
and a differential test can tell them apart (`VerifyPlan.choose`) are more than one generated: with nothing to
choose by, the greedy candidate alone is the translation.

When every candidate has ended, each answer's kernel is extracted (kernelcheck.extract); the kernels are verified
off the engine thread (daemon/verification.py); then kernelcheck.candidates.choose picks the delivered one: the
first verified, else the one whose check got furthest. Pure bookkeeping, no model, no torch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from kernelcheck.candidates import SKIPPED
from kernelcheck.extract import Extraction, describe, extract_kernel
from mot_engine.decoding.candidates import Sampling, candidate_samplings

from . import protocol as P
from .engine_state import ClientKey
from .verification import VerifyPlan

MAX_CANDIDATE_REASON_CHARS = 200  # a candidate's reason in the result's list: the start of its check's reason


@dataclass
class Translation:
    """The engine's bookkeeping of one translation, from acceptance to its final reply."""

    client: ClientKey
    request: P.Translate
    gen_prefix: str  # its candidates' Generator ids are f"{gen_prefix}.{index}"
    t_received: float
    deadline: float
    plan: VerifyPlan | None = None  # set at admission
    samplings: list[Sampling] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)  # mot_engine GenerationResult per candidate, None until it ends
    in_generator: bool = False
    t_admitted: float | None = None
    abort_reason: str | None = None  # "cancelled" | "timeout" | "gone" | "shutdown"
    cancel_step: int | None = None
    partial_index: int = 0
    num_tokens: int = 0  # candidate 0's tokens (the ones streamed)
    extractions: list[Extraction] = field(default_factory=list)  # once every candidate ended
    kernels: list[str] = field(default_factory=list)  # the kernels being verified, in candidate order
    verify_budget_s: float = 0.0
    verify_deadline: float | None = None  # set while its kernels are being verified
    t_generated: float | None = None

    @property
    def key(self) -> tuple[ClientKey, str]:
        return (self.client, self.request.id)

    @property
    def verifying(self) -> bool:
        return self.verify_deadline is not None

    def gen_id(self, index: int) -> str:
        return f"{self.gen_prefix}.{index}"

    def start(self, plan: VerifyPlan, top_k: int = 1) -> None:
        """Decide the candidates (at admission; `top_k`: how many experts the router activates)."""
        self.plan = plan
        o = self.request.options
        count = o.candidates if plan.choose else 1
        self.samplings = candidate_samplings(o.temperature, o.top_p, o.seed, count, top_k, mode=o.mode)
        self.results = [None] * count

    def unfinished_gen_ids(self) -> list[str]:
        return [self.gen_id(i) for i, r in enumerate(self.results) if r is None]

    @property
    def generated(self) -> bool:
        return bool(self.results) and all(r is not None for r in self.results)

    def extract(self) -> list[str]:
        """Extract every candidate's kernel (all have ended); returns the kernels to verify, in candidate order
        (the candidates with a kernel, where the plan checks; none otherwise)."""
        self.extractions = [extract_kernel(r.answer) for r in self.results]
        if self.plan is None or not self.plan.check:
            return []
        return [e.code for e in self.extractions if e.ok]

    def checks(self, kernel_checks: list[P.Verification] | None) -> list[P.Verification]:
        """Each candidate's check: those with a kernel get `kernel_checks` in order (None: not checked, the
        plan's reason), the others "skipped" with what came out instead."""
        checks, given = [], iter(kernel_checks or [])
        reason = self.plan.reason if self.plan is not None else ""
        for e in self.extractions:
            if not e.ok:
                what = describe(e.status, e.notes)
                checks.append(P.Verification(status=SKIPPED, reason=f"no kernel to check: {what}"))
            elif kernel_checks is None:
                checks.append(P.Verification(status=SKIPPED, reason=reason))
            else:
                checks.append(next(given))
        return checks

    def candidates(self, checks: list[P.Verification], expert_names: list[str]) -> list[P.Candidate]:
        """The result's list of candidates, each naming the expert that wrote it."""
        return [
            P.Candidate(index=s.index, temperature=s.temperature, top_p=s.top_p, seed=s.seed, status=e.status,
                        check=c.status, reason=_short(c.reason), num_generated_tokens=r.num_generated_tokens,
                        primary=expert_names[int(r.routing["primary_expert"])])
            for s, r, e, c in zip(self.samplings, self.results, self.extractions, checks)
        ]


def count_translations(translations, waiting_rows: set[str]) -> dict[str, int]:
    """`status`'s counts in translations, not Generator rows (a translation's candidates are several rows): one
    decodes while any of its candidates decodes, waits while all of them wait (`waiting_rows`: the Generator's
    waiting ids), or is being verified."""
    counts = {"running": 0, "waiting": 0, "verifying": 0}
    for t in translations:
        if t.verifying:
            counts["verifying"] += 1
        elif t.in_generator:
            decoding = any(g not in waiting_rows for g in t.unfinished_gen_ids())
            counts["running" if decoding else "waiting"] += 1
    return counts


def _short(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= MAX_CANDIDATE_REASON_CHARS else line[: MAX_CANDIDATE_REASON_CHARS - 1] + "…"

"""The quality gates a generated pair passes before it is written, in order, each rejection counted by reason:

0. `eval_overlap` — apart from the evaluation set (`train.synth.decontaminate`; reasons eval_name/eval_body/
   eval_shape), when an evaluation file is given;
1. `parse` — tree-sitter (`kernelcheck.parsing`) reads exactly one C function and no syntax error on either side,
   and the kernel opens with `kernel_head(cpp).text` (reasons parse_cpp, parse_cuda, head);
2. `gxx`, `nvcc` — the C compiles with g++, the kernel with `nvcc -c` (`train.synth.compile_gate`);
3. `verify` — the differential check (`train.synth.verify_gate`), when asked for and available.

A gate that cannot run (no nvcc, no verifier) is recorded as "not run: why" and passes nothing: pairs keep going
but the summary never counts them as having passed it. `run` returns the surviving pairs and the `Summary`.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

from kernelcheck.heads import kernel_head
from kernelcheck.parsing import check_cuda_syntax, function_signatures

from . import compile_gate, verify_gate
from .decontaminate import EvalIndex
from .families import FAMILIES
from .generate import SynthPair, generate

GATES = ("eval_overlap", "parse", "gxx", "nvcc", "verify")


@dataclass
class Candidate:
    pair: SynthPair
    rejected: str = ""  # the reason, once a gate rejects it
    detail: str = ""
    verified: bool | None = None
    verify_status: str = ""  # the verifier's status, when it ran


@dataclass
class Summary:
    n: int
    seed: int
    gates: dict[str, str] = field(default_factory=dict)  # gate -> "run" or "not run: why"
    seconds: dict[str, float] = field(default_factory=dict)
    entered: dict[str, Counter] = field(default_factory=dict)  # gate -> family -> pairs that reached it
    passed: dict[str, Counter] = field(default_factory=dict)
    rejected: dict[str, Counter] = field(default_factory=dict)  # family -> reason -> count
    duplicates: Counter = field(default_factory=Counter)
    generated: Counter = field(default_factory=Counter)
    written: Counter = field(default_factory=Counter)
    verify_statuses: dict[str, Counter] = field(default_factory=dict)  # family -> verifier status -> count
    examples: dict[str, str] = field(default_factory=dict)  # reason -> one rejected pair's detail

    def as_dict(self) -> dict:
        families = {}
        for name in sorted(FAMILIES):
            families[name] = {
                "variants": sorted(FAMILIES[name].variants),
                "generated": self.generated[name], "duplicates_skipped": self.duplicates[name],
                "rejected": dict(self.rejected.get(name, Counter())),
                "gates": {g: {"entered": self.entered[g][name], "passed": self.passed[g][name]}
                          for g in GATES if self.gates.get(g) == "run"},
                "verified": (self.verify_statuses.get(name, Counter())["verified"]
                             if self.gates.get("verify") == "run" else None),
                "verify_statuses": dict(self.verify_statuses.get(name, Counter())),
                "written": self.written[name],
            }
        return {"n": self.n, "seed": self.seed, "gates": self.gates, "seconds": self.seconds,
                "generated": sum(self.generated.values()), "written": sum(self.written.values()),
                "families": families, "rejection_examples": self.examples}


def parse_problem(pair: SynthPair) -> tuple[str, str] | None:
    """(reason, detail) when the pair fails the parse gate, else None."""
    signatures = function_signatures(pair.cpp)
    if len(signatures) != 1:
        return "parse_cpp", f"{len(signatures)} function definitions found, expected 1"
    for reason, code in (("parse_cpp", pair.cpp), ("parse_cuda", pair.cuda)):
        problems = check_cuda_syntax(code)
        if problems:
            return reason, problems[0].message
    head = kernel_head(pair.cpp)
    if not head.complete or not pair.cuda.startswith(head.text + " {"):
        return "head", f"kernel does not open with {head.text!r} (complete={head.complete})"
    return None


class Gates:
    """Runs the gates over candidates, keeping the summary's counts."""

    def __init__(self, summary: Summary):
        self.summary = summary

    def apply(self, gate: str, candidates: list[Candidate],
              judge: Callable[[list[Candidate]], list[tuple[str, str] | None]]) -> None:
        """Run `judge` (one (reason, detail) or None per candidate) over the candidates still standing."""
        start = time.perf_counter()
        alive = [c for c in candidates if not c.rejected]
        entered, passed = Counter(), Counter()
        for candidate, verdict in zip(alive, judge(alive), strict=True):
            family = candidate.pair.family
            entered[family] += 1
            if verdict is None:
                passed[family] += 1
                continue
            candidate.rejected, candidate.detail = verdict
            self.summary.rejected.setdefault(family, Counter())[candidate.rejected] += 1
            self.summary.examples.setdefault(candidate.rejected, f"{family}: {candidate.detail}"[:600])
        self.summary.entered[gate], self.summary.passed[gate] = entered, passed
        self.summary.gates[gate] = "run"
        self.summary.seconds[gate] = round(time.perf_counter() - start, 2)

    def not_run(self, gate: str, why: str) -> None:
        self.summary.gates[gate] = f"not run: {why}"


def _overlap_judge(index: EvalIndex):
    def judge(alive: list[Candidate]) -> list[tuple[str, str] | None]:
        reasons = [index.overlap(c.pair.cpp, c.pair.cuda) for c in alive]
        return [(why, f"{c.pair.spec.name} ({index.source})") if why else None for c, why in zip(alive, reasons)]
    return judge


def _compile_judge(compiler: str, side: str, workers: int):
    def judge(alive: list[Candidate]) -> list[tuple[str, str] | None]:
        outcomes = compile_gate.check_batched([getattr(c.pair, side) for c in alive], compiler, workers=workers)
        return [None if o.ok else (compiler, o.message) for o in outcomes]
    return judge


def _verify_judge(workers: int, keep_unverified: bool):
    def judge(alive: list[Candidate]) -> list[tuple[str, str] | None]:
        outcomes = verify_gate.verify_all([(c.pair.cpp, c.pair.cuda) for c in alive], workers=workers)
        verdicts = []
        for candidate, outcome in zip(alive, outcomes):
            candidate.verified, candidate.verify_status = outcome.verified, outcome.status
            failed = not outcome.verified and not keep_unverified
            verdicts.append((f"verify:{outcome.status}", outcome.detail) if failed else None)
        return verdicts
    return judge


def run(n: int, seed: int, *, verify: bool = False, workers: int = 1, eval_index: EvalIndex | None = None,
        keep_unverified: bool = False, families: list[str] | None = None) -> tuple[list[Candidate], Summary]:
    """Generate n pairs from `seed` and pass them through the gates; the candidates (rejected ones marked)."""
    summary = Summary(n, seed)
    start = time.perf_counter()
    pairs = generate(n, seed, families=families, duplicates=summary.duplicates)
    summary.seconds["generate"] = round(time.perf_counter() - start, 2)
    summary.generated.update(p.family for p in pairs)
    candidates = [Candidate(p) for p in pairs]
    gates = Gates(summary)
    if eval_index is None:
        gates.not_run("eval_overlap", "no evaluation file given")
    else:
        gates.apply("eval_overlap", candidates, _overlap_judge(eval_index))
    gates.apply("parse", candidates, lambda alive: [parse_problem(c.pair) for c in alive])
    for compiler, side in (("gxx", "cpp"), ("nvcc", "cuda")):
        try:
            gates.apply(compiler, candidates, _compile_judge(compiler, side, workers))
        except compile_gate.CompilerMissing as missing:
            gates.not_run(compiler, str(missing))
    if not verify:
        gates.not_run("verify", "not asked for (--verify)")
    elif not verify_gate.available():
        gates.not_run("verify", verify_gate.NOT_AVAILABLE)
    else:
        gates.apply("verify", candidates, _verify_judge(workers, keep_unverified))
    for c in candidates:
        if c.verify_status:
            summary.verify_statuses.setdefault(c.pair.family, Counter())[c.verify_status] += 1
    summary.written.update(c.pair.family for c in candidates if not c.rejected)
    summary.seconds["total"] = round(time.perf_counter() - start, 2)
    return candidates, summary

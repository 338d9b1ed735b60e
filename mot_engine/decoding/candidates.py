"""A translation's candidates: how each one decodes. One definition, torch-free, for the daemon
(daemon/translation.py) and bench_quality's `+verify@N` rows.

Candidate 0 decodes with the request's own options (greedy by default). Then, where the router activates more than
one expert (top_k > 1), the same options with each other active expert as the primary, in the router's order
(`GenerationRequest.primary_rank`), alone (fast mode): another expert's own best answer is another guess, where a
sample of the same expert is mostly the same one — on exec_dev the trained pocket MoT's greedy kernels and
Gemma-3-270M's alone (the pocket MoT's second expert) passed the data's tests for 61 and 57 functions, 83 of 122
together (BENCHMARKS.md, "Quality of the pocket preset"). Alone, because a checkpoint's interaction layers are
trained for the router's primary: the pocket checkpoint's gates for Gemma as primary stay near zero (mean |gate|
0.003 against 0.065 for SmolLM2's), and in full mode with Gemma as primary its answers were Gemma's alone, token for
token, at the cost of the secondary's prefill and the interaction. Then sampled candidates (CANDIDATE_TEMPERATURE,
CANDIDATE_TOP_P), each with its own seed: the request's seed + its index, or its index, so the same request gets the
same candidates.

A fast-mode request ranks its experts as fast mode does (the router's alone head where the checkpoint has one:
`MoTConfig.alone_head`), so its candidates are the experts in the order they do best alone; a full-mode request's
candidates that decode alone take the router's order (`rank_by="router"`): its other active experts.
"""

from __future__ import annotations

from dataclasses import dataclass

from mot_engine.defaults import CANDIDATE_TEMPERATURE, CANDIDATE_TOP_P, MODE

SEED_MODULUS = 2**63  # seeds on the daemon's wire are below it


@dataclass(frozen=True)
class Sampling:
    """How one candidate decodes."""

    index: int
    temperature: float  # 0: greedy
    top_p: float
    seed: int | None
    primary_rank: int = 0  # which of the active experts is the primary (0: the first)
    mode: str | None = None  # None: the request's mode; "fast": the primary alone
    rank_by: str = "mode"  # GenerationRequest.rank_by: "router" ranks by the router, not by fast mode's ranking


def candidate_samplings(temperature: float, top_p: float, seed: int | None, count: int,
                        top_k: int = 1, mode: str = MODE) -> list[Sampling]:
    """`count` candidates of a request decoding with (temperature, top_p, seed) in `mode`: its own options, then its
    options with each other of the `top_k` active experts as primary, alone, then sampled ones (module docstring)."""
    if count < 1:
        raise ValueError(f"a translation has at least one candidate, got {count!r}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k!r}")
    rank_by = "mode" if mode == "fast" else "router"
    out = [Sampling(i, temperature, top_p, seed, primary_rank=i, mode=None if i == 0 else "fast",
                    rank_by="mode" if i == 0 else rank_by)
           for i in range(min(count, top_k))]
    base = seed or 0
    out += [Sampling(i, CANDIDATE_TEMPERATURE, CANDIDATE_TOP_P, (base + i) % SEED_MODULUS)
            for i in range(len(out), count)]
    return out

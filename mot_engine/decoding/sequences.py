"""The Generator's per-request state (`Sequence`), a dynamic-cache batch (`Cohort`), and what acts on them:
dropping finished rows, sharing one prefill between a function's candidates, incremental detokenization, EOS
stripping, stacking routings, a graph prefill's cache."""

from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import torch

from mot_engine.decoding.requests import GenerationRequest
from mot_engine.decoding.stopping import KernelEnd
from mot_engine.model.memory import MemoryContext
from mot_engine.model.router import Routing


@dataclass
class Sequence:
    request_id: str
    request: GenerationRequest
    prompt_ids: list[list[int]]  # per expert ([] for experts that don't read this request)
    t_added: float
    routing: dict | None = None
    primary: int = -1
    generated: list[int] = field(default_factory=list)
    emitted: str = ""
    prefix_offset: int = 0  # incremental detokenization (see detokenize_incrementally)
    read_offset: int = 0
    rng: torch.Generator | None = None
    finish_reason: str | None = None
    error: str | None = None
    t_first: float | None = None
    t_done: float | None = None
    answer_prefix: str = ""  # the answer's start, written by the prompt
    stop: KernelEnd | None = None  # the answer's end (decoding/stopping.py); None: EOS and length only
    lookup: object | None = None  # speculation.PromptLookup of the primary's context, made at the first draft
    drafted: int = 0  # draft tokens proposed / kept (prompt-lookup speculation)
    kept: int = 0


@dataclass
class Cohort:
    primary: int
    mode: str
    seqs: list[Sequence]
    cache: object
    attention_mask: torch.Tensor  # (B, L) 1 for real tokens
    positions: torch.Tensor  # (B, 1) position id of the next input token
    next_input: torch.Tensor  # (B, 1) token to feed next
    ctx: MemoryContext | None
    # Requests with the same prompt (a function's candidates) share one prefill: shared[b] is the row of sequence b
    # among the distinct prompts, which alone are prefilled (and whose memory alone is computed); None: one row each.
    shared: list[int] | None = None

    def distinct(self, primary: int) -> list[list[int]]:
        """The prompts the prefill computes: one per distinct prompt, in order of first appearance."""
        if self.shared is None:
            return [s.prompt_ids[primary] for s in self.seqs]
        firsts = {row: b for b, row in reversed(list(enumerate(self.shared)))}
        return [self.seqs[firsts[row]].prompt_ids[primary] for row in range(len(firsts))]

    @property
    def live(self) -> list["Sequence"]:
        return [s for s in self.seqs if s.finish_reason is None]


class PrefilledCache:
    """A graph prefill's cache, cut to the prompt: what `_joiners` reads (per layer (1, Hk, L, D) keys and values)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor]):
        self.layers = [SimpleNamespace(keys=k, values=v) for k, v in zip(keys, values)]

    def batch_select_indices(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) these rows, as transformers' caches do."""
        for layer in self.layers:
            layer.keys, layer.values = layer.keys.index_select(0, rows), layer.values.index_select(0, rows)


def detokenize_incrementally(tok, s: Sequence) -> str:
    """New text since the last call, decoding only a few trailing tokens (O(1) per step, not O(length)).

    Decoding a window [prefix_offset, end) and subtracting the text of [prefix_offset, read_offset) keeps
    context-dependent decoders (leading spaces, byte-level merges) right; half a UTF-8 character waits.
    """
    ids = s.generated
    prefix_text = tok.decode(ids[s.prefix_offset : s.read_offset], skip_special_tokens=True)
    new_text = tok.decode(ids[s.prefix_offset :], skip_special_tokens=True)
    if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
        delta = new_text[len(prefix_text) :]
        s.prefix_offset, s.read_offset = s.read_offset, len(ids)
        s.emitted += delta
        return delta
    return ""


def strip_eos(ids: list[int], eos: set[int]) -> list[int]:
    return ids[:-1] if ids and ids[-1] in eos else ids


def stack_routings(rows):
    """Concatenate single rows of (possibly different) Routing objects into one batch Routing."""
    fields = ("logits", "probs", "noisy_probs", "active", "weights")
    alone = None if any(r.alone_logits is None for r, _ in rows) else torch.cat([r.alone_logits[b : b + 1] for r, b in rows])
    return Routing(*(torch.cat([getattr(r, f)[b : b + 1] for r, b in rows]) for f in fields), alone_logits=alone)


def compact(cohort: Cohort, device) -> None:
    """Drop the cohort's finished rows (cache, mask, positions, next input, memory)."""
    keep = [b for b, s in enumerate(cohort.seqs) if s.finish_reason is None]
    cohort.seqs = [cohort.seqs[b] for b in keep]
    if not keep or cohort.cache is None:
        return
    idx = torch.tensor(keep, device=cohort.attention_mask.device)
    cohort.cache.batch_select_indices(idx)
    cohort.attention_mask = cohort.attention_mask.index_select(0, idx)
    cohort.positions = cohort.positions.index_select(0, idx)
    if cohort.next_input is not None:
        cohort.next_input = cohort.next_input.index_select(0, idx)
    if cohort.ctx is not None:
        cohort.ctx = cohort.ctx.select(idx.to(device))


def same_prompt(members: list, primary: int) -> list[list]:
    """Members grouped by their prompt for `primary` (order of first appearance kept)."""
    units: dict[tuple[int, ...], list] = {}
    for member in members:
        units.setdefault(tuple(member[0].prompt_ids[primary]), []).append(member)
    return list(units.values())


def shared_rows(prompts: list[list[int]]) -> list[int]:
    """Each prompt's row among the distinct prompts, numbered in order of first appearance."""
    rows: dict[tuple[int, ...], int] = {}
    return [rows.setdefault(tuple(p), len(rows)) for p in prompts]


def share_prefill(cohort: Cohort, logits: torch.Tensor) -> torch.Tensor:
    """Repeat the distinct prompts' prefill (cache, mask, positions, memory, last logits) for every sequence that
    shares it: from here on each candidate is a row of its own, sampled with its own generator."""
    rows = torch.tensor(cohort.shared, device=cohort.attention_mask.device)
    cohort.cache.batch_select_indices(rows)
    cohort.attention_mask = cohort.attention_mask.index_select(0, rows)
    cohort.positions = cohort.positions.index_select(0, rows)
    if cohort.ctx is not None:
        flag = cohort.ctx.nonfinite
        cohort.ctx = cohort.ctx.select(rows.to(cohort.ctx.primary_weight.device))
        cohort.ctx.nonfinite = flag
    cohort.shared = None
    return logits.index_select(0, rows.to(logits.device))

"""Prompt-lookup speculative decoding: draft tokens copied from the prompt, verified in one forward of the primary.

Why: a translation copies much of its input — names, loop bodies, expressions come back almost verbatim — and one
decode step of a small expert costs about as much for a few tokens as for one (launches and weight reads bound it,
not FLOPs). So each step drafts up to `LookupSettings.max_draft` tokens from the longest n-gram match of the text's
end in the prompt (source and exemplars) and the text so far, runs the primary once over [next input, draft...],
and keeps the longest prefix that decoding would have produced anyway, plus the token the primary gives after it.

- Greedy: a draft token is kept while it is the argmax at its position, so the tokens are those of plain greedy
  decoding (tests/test_speculation.py holds it, in both modes and in a batch).
- Sampling: the standard speculative rule for a draft of certainty (a point mass q on the drafted token d): keep d
  with probability p(d), else draw from p with d removed (the residual max(0, p - q), renormalised). Every emitted
  token is then distributed exactly as without drafts. The draws differ, so a seed gives other (equally likely)
  tokens than plain sampling.
- Full mode: the forward is the primary's, interaction included (`mot.interacting`): the interaction reads the
  secondaries' memory per token, so a multi-token forward equals that many single steps.
- Rollback (dynamic cache): the forward wrote K+1 columns for every row; columns no row keeps are cropped, and a
  row that kept fewer than the batch's most has its rejected columns masked out (attention mask 0) — its positions
  stay its own, so the holes change nothing it computes.

Where it runs: both decode paths.
- Cohorts (dynamic cache: the CPU, experts on several GPUs, `MOT_CUDA_GRAPHS=0`), for primaries whose cache layers
  can be cropped (full attention; sliding-window layers cannot be rolled back once their window fills).
- Slabs (static cache, CUDA graphs; decoding/slabs.py): every row writes the step's W columns at the shared write
  column; the column then moves back to just after the most any row kept (as the cohort's crop), and a row that
  kept fewer masks the rest — holes in its span that its positions skip, so they change nothing it computes; a row
  that moves to another slab takes only its visible columns. The step of each width is captured
  once. Drafts need every row's latest token, so a slab that speculates reads its tokens at once instead of one
  step late.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.cache_utils import DynamicLayer

from mot_engine.decoding.sampling import probabilities


@dataclass(frozen=True)
class LookupSettings:
    """How drafts are made (defaults chosen by benchmarks/bench_speculation.py: BENCHMARKS.md, "Prompt-lookup
    speculation")."""

    max_draft: int = 12  # drafted tokens per step at most
    max_ngram: int = 3  # the longest suffix matched in the context
    min_ngram: int = 2  # the shortest: shorter matches draft too often wrong to pay for their verification
    # Each request's draft length follows its acceptance: +2 after a draft kept whole, -1 after one cut short (between
    # 1 and max_draft; the heuristic of transformers' assisted generation). Off by default: measured, a forward's
    # extra positions cost less than the kept tokens they win (1.53x against 1.66x fixed, pocket, CPU).
    adaptive: bool = False
    # A slab speculates while at most this many of its rows are live; fuller slabs take plain steps. Every row of a
    # slab's verify step computes all W columns, and a full slab's plain step already keeps the device busy:
    # measured on the CPU (pocket, slabs, fast mode), 1.66x at one row, 0.82x at 16 (BENCHMARKS.md).
    max_slab_rows: int = 4


class PromptLookup:
    """One request's context (prompt, then generated tokens) and an index of its n-grams: `draft(k)` returns the up
    to k tokens that followed the latest earlier occurrence of the longest suffix n-gram (max_ngram..min_ngram)."""

    def __init__(self, prompt: list[int], max_ngram: int = LookupSettings.max_ngram,
                 min_ngram: int = LookupSettings.min_ngram):
        if not 1 <= min_ngram <= max_ngram:
            raise ValueError(f"need 1 <= min_ngram <= max_ngram, got {min_ngram}, {max_ngram}")
        self.max_ngram, self.min_ngram = max_ngram, min_ngram
        self.prompt_length = len(prompt)
        self.budget: int | None = None  # the adaptive draft length (LookupSettings.adaptive); None: not yet set
        self.tokens: list[int] = []
        self._ends: dict[tuple[int, ...], int] = {}  # n-gram -> end index of its latest occurrence with a successor
        self.extend(prompt)

    def extend(self, tokens: list[int]) -> None:
        for t in tokens:
            self.tokens.append(int(t))
            i = len(self.tokens) - 2  # the n-grams ending at i now have a successor
            for n in range(1, self.max_ngram + 1):
                if i - n + 1 >= 0:
                    self._ends[tuple(self.tokens[i - n + 1 : i + 1])] = i

    def sync(self, generated: list[int]) -> None:
        """Take in the generated tokens not seen yet."""
        self.extend(generated[len(self.tokens) - self.prompt_length :])

    def feedback(self, drafted: int, kept: int, max_draft: int) -> None:
        """Adapt the draft length to this request's acceptance (LookupSettings.adaptive)."""
        if drafted:
            budget = self.budget if self.budget is not None else max_draft
            self.budget = min(max_draft, budget + 2) if kept == drafted else max(1, budget - 1)

    def draft(self, k: int) -> list[int]:
        if k <= 0:
            return []
        for n in range(min(self.max_ngram, len(self.tokens)), self.min_ngram - 1, -1):
            end = self._ends.get(tuple(self.tokens[-n:]))
            if end is not None:
                return self.tokens[end + 1 : end + 1 + k]
        return []


def greedy_tokens(draft: list[int], targets: list[int]) -> list[int]:
    """Greedy acceptance: the draft's prefix that equals the argmax at each position (`targets`, one per position of
    [next input, draft...]), then the argmax after it."""
    n = 0
    while n < len(draft) and draft[n] == targets[n]:
        n += 1
    return targets[: n + 1]


def accept(logits: torch.Tensor, draft: list[int], request, rng) -> list[int]:
    """The tokens one row emits this step, from its (k+1, V) logits over [next input, draft...] (k = len(draft)):
    the kept draft prefix, then one token from the primary. Greedy: argmax agreement; sampling: the speculative rule
    (module docstring). A non-finite position stops the row there: its (argmax) token is emitted for the engine to
    finish the request with an error, as plain decoding would at that token."""
    k = len(draft)
    if request.temperature == 0:
        return greedy_tokens(draft, logits.argmax(-1).tolist())
    out = []
    for j, d in enumerate(draft):
        p = probabilities(logits[j], request)  # (V,) the nucleus, not renormalised
        p = p / p.sum()
        if torch.rand((), generator=rng, device=p.device) < p[d]:
            out.append(d)
            continue
        p[d] = 0.0  # the residual max(0, p - q) for q the point mass on d
        if p.sum() <= 0:  # p(d) was 1 and the draw still fell above it: impossible unless p is degenerate
            raise AssertionError(f"speculative residual is empty for token {d}")
        out.append(int(torch.multinomial(p, 1, generator=rng)[0]))
        return out
    out.append(int(torch.multinomial(probabilities(logits[k], request), 1, generator=rng)[0]))
    return out


@dataclass
class Accepted:
    """A speculative step's result per row: the emitted tokens and, per token, whether its logits were finite."""

    tokens: list[list[int]]
    finite: list[list[bool]]

    @property
    def kept(self) -> list[int]:
        """Draft tokens kept per row (the emitted tokens but the last)."""
        return [len(t) - 1 for t in self.tokens]


def speculates_on(device, runtime) -> bool:
    """Does a Generator of a model on `device` speculate by default? Where runtime.prompt_lookup is on: on the CPU,
    and on CUDA only with runtime.prompt_lookup_cuda (envs.py says why)."""
    return runtime.prompt_lookup and (device.type != "cuda" or runtime.prompt_lookup_cuda)


def can_roll_back(cache) -> bool:
    """Only full-attention dynamic layers can drop their last columns at any length."""
    return all(type(layer) is DynamicLayer for layer in getattr(cache, "layers", [None]))


def drafts_for(seqs, primary: int, settings: LookupSettings) -> list[list[int]]:
    """Each sequence's draft (a request near its token limit drafts fewer: no more than it may still emit, less
    the step's own token)."""
    out = []
    for s in seqs:
        if s.lookup is None:
            s.lookup = PromptLookup(s.prompt_ids[primary], settings.max_ngram, settings.min_ngram)
        s.lookup.sync(s.generated)
        room = s.request.max_new_tokens - len(s.generated) - 1
        k = s.lookup.budget if settings.adaptive and s.lookup.budget is not None else settings.max_draft
        out.append(s.lookup.draft(min(k, room)) if s.finish_reason is None else [])
    return out


def accept_drafts(seqs, drafts: list[list[int]], logits: torch.Tensor, flag) -> Accepted:
    """Accept each row's draft against its (B, K+1, V) logits; `flag` is the interaction's non-finite flag."""
    finite = torch.isfinite(logits).all(-1)  # (B, K+1)
    if flag is not None:
        finite[:, 0] &= ~flag
    finite_rows, target_rows = finite.tolist(), logits.argmax(-1).tolist()  # one host sync for the greedy rows
    tokens, finites = [], []
    for b, (s, draft) in enumerate(zip(seqs, drafts)):
        if s.request.temperature == 0:
            row = greedy_tokens(draft, target_rows[b])
        else:
            row = accept(logits[b, : len(draft) + 1], draft, s.request, s.rng)
        cut = next((j for j, ok in enumerate(finite_rows[b][: len(row)]) if not ok), None)
        if cut is not None:
            row = row[: cut + 1]
        tokens.append(row)
        finites.append(finite_rows[b][: len(row)])
    return Accepted(tokens, finites)


def roll_back(cohort, columns_before: int, width: int, kept: list[int]) -> None:
    """After a forward of `width` tokens per row over a cache of `columns_before` columns: crop the columns no row
    keeps, mask each row's rejected ones, advance each row's position by what it kept plus one."""
    most = max(kept)
    cohort.cache.crop(-(width - 1 - most))  # 0: nothing to crop
    mask = cohort.attention_mask[:, : columns_before + most + 1].clone()  # (B, L + most + 1)
    for b, n in enumerate(kept):
        if n < most:
            mask[b, columns_before + n + 1 :] = 0
    cohort.attention_mask = mask
    cohort.positions = cohort.positions + torch.tensor(kept, device=cohort.positions.device).view(-1, 1) + 1


def decode_with_drafts(gen, cohort, drafts: list[list[int]]) -> list:
    """One speculative step of a cohort (the Generator's `_decode` when some row has a draft): one forward over
    [next input, draft..., padding] per row, acceptance, rollback, then every emitted token handed out through the
    engine's own `_emit` (EOS, the answer's end, length, NaN/Inf per token) — one StepOutput per request."""
    seqs, width = cohort.seqs, 1 + max(len(d) for d in drafts)
    dev = cohort.attention_mask.device
    ids = torch.tensor([[s.generated[-1], *d] + [0] * (width - 1 - len(d)) for s, d in zip(seqs, drafts)],
                       device=dev)  # (B, W): the next input is the last generated token
    columns = cohort.attention_mask.shape[1]
    cohort.attention_mask = torch.cat([cohort.attention_mask, cohort.attention_mask.new_ones(len(seqs), width)], 1)
    positions = cohort.positions + torch.arange(width, device=dev)  # (B, W)
    logits = gen._forward(cohort, ids, positions, logits_to_keep=width)  # (B, W, V)
    flag = cohort.ctx.nonfinite if cohort.ctx is not None else None
    if cohort.ctx is not None:
        cohort.ctx.nonfinite = None
    accepted = accept_drafts(seqs, drafts, logits, flag)
    roll_back(cohort, columns, width, accepted.kept)
    outputs = hand_out(gen, cohort.primary, seqs, drafts, accepted)
    cohort.next_input = torch.tensor([t[-1] for t in accepted.tokens], device=dev).view(-1, 1)
    return outputs


def hand_out(gen, primary: int, seqs, drafts: list[list[int]], accepted: Accepted) -> list:
    """Count each row's drafted and kept tokens, then hand every emitted token out through the engine's own `_emit`
    (EOS, the answer's end, length, NaN/Inf per token, so a stop inside a kept draft ends the text where plain
    decoding would): one StepOutput per request, its tokens and text merged."""
    for s, d, n in zip(seqs, drafts, accepted.kept):
        s.drafted, s.kept = s.drafted + len(d), s.kept + n
        if gen.lookup_settings.adaptive and s.lookup is not None:
            s.lookup.feedback(len(d), n, gen.lookup_settings.max_draft)
    merged: dict[str, object] = {}
    for j in range(max(len(t) for t in accepted.tokens)):
        rows = [s if j < len(t) else None for s, t in zip(seqs, accepted.tokens)]
        if not any(rows):
            break
        toks = [t[j] if j < len(t) else 0 for t in accepted.tokens]
        fin = [f[j] if j < len(f) else True for f in accepted.finite]
        for out in gen._emit(primary, rows, toks, fin):
            first = merged.setdefault(out.request_id, out)
            if first is not out:
                first.new_token_ids += out.new_token_ids
                first.text_delta += out.text_delta
                first.finished, first.finish_reason, first.error = out.finished, out.finish_reason, out.error
    return list(merged.values())


def decode_slab_with_drafts(gen, slab, drafts: list[list[int]]) -> list:
    """One verify step of a slab (decoding/slabs.py) whose tokens in flight have landed: each live row's next input
    and its draft (`drafts`, in the order of `slab.live`) at once, acceptance per row, each row's rejected columns
    masked and its next input and position set; rows that finished leave. One StepOutput per request."""
    live = slab.live
    seqs = [slab.rows[r] for r in live]
    width = 1 + max(len(d) for d in drafts)
    ids = [[0] * width for _ in slab.rows]  # (C, W): free rows compute on zeros, ignored
    for r, s, d in zip(live, seqs, drafts):
        ids[r] = [s.generated[-1], *d] + [0] * (width - 1 - len(d))
    logits, flag = slab.decode_wide(ids)  # (C, W, V)
    accepted = accept_drafts(seqs, drafts, logits[live], flag)
    slab.settle(width, {r: (len(tokens) - 1, tokens[-1]) for r, tokens in zip(live, accepted.tokens)})
    outputs = hand_out(gen, slab.shape.primary, seqs, drafts, accepted)
    for r in live:
        if slab.rows[r].finish_reason is not None:
            slab.release_row(r)
    return outputs

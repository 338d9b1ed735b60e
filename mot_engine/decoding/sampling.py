"""Drawing the next token: greedy, or temperature + nucleus (top-p) sampling with each request's own generator."""

from __future__ import annotations

import torch

from mot_engine.decoding.requests import GenerationRequest


def request_rng(seed: int | None, model) -> torch.Generator:
    dev = next(model.parameters()).device
    g = torch.Generator(device=dev)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g


def probabilities(logits: torch.Tensor, req: GenerationRequest) -> torch.Tensor:
    """The (V,) weights a sampling request draws from: softmax at its temperature, cut to its nucleus (top-p) and not
    renormalised (`torch.multinomial` takes weights; divide by the sum for probabilities)."""
    probs = torch.softmax(logits / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        keep = cum - sorted_p < req.top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return probs


def sample_token(logits: torch.Tensor, req: GenerationRequest, rng: torch.Generator) -> torch.Tensor:
    """One token from (V,) logits: greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
    if req.temperature == 0:
        return logits.argmax()
    return torch.multinomial(probabilities(logits, req), 1, generator=rng)[0]


def next_tokens(rows: list, logits: torch.Tensor, flag) -> tuple[torch.Tensor, torch.Tensor]:
    """(next ids (B,), finite (B,)) on the device: greedy, or each live row's own sampler and generator."""
    finite = torch.isfinite(logits).all(-1)  # (B,)
    next_ids = logits.argmax(-1)  # greedy rows (and free rows, ignored)
    sample_live(rows, logits, next_ids)
    if flag is not None:
        finite = finite & ~flag
    return next_ids, finite


def sample_live(rows: list, logits: torch.Tensor, next_ids: torch.Tensor) -> list[int]:
    """Each live sampling row's greedy id in `next_ids` replaced by its own sampler's draw; returns those rows."""
    sampled = []
    for b, s in enumerate(rows):
        if s is not None and s.finish_reason is None and s.request.temperature != 0:
            next_ids[b] = sample_token(logits[b], s.request, s.rng)
            sampled.append(b)
    return sampled

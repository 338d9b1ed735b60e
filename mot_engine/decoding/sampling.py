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


def sample_token(logits: torch.Tensor, req: GenerationRequest, rng: torch.Generator) -> torch.Tensor:
    """One token from (V,) logits: greedy at temperature 0, else temperature + nucleus (top-p) sampling."""
    if req.temperature == 0:
        return logits.argmax()
    probs = torch.softmax(logits / req.temperature, dim=-1)
    if req.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        cum = sorted_p.cumsum(0)
        keep = cum - sorted_p < req.top_p  # always keeps the most likely token
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p)
    return torch.multinomial(probs, 1, generator=rng)[0]

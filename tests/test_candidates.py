"""A function's candidates (one source, greedy first, then sampled) share one prefill and decode as rows of one batch,
each getting exactly what it gets alone."""

from __future__ import annotations

import pytest

from mot_engine import GenerationRequest, Generator

SOURCE = "void axpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] += a * x[i]; }"


def _candidates(mode: str, n: int = 4) -> list[GenerationRequest]:
    greedy = GenerationRequest(SOURCE, mode=mode, max_new_tokens=10, force_active=[0, 1])
    sampled = [GenerationRequest(SOURCE, mode=mode, max_new_tokens=10, temperature=0.8, top_p=0.95, seed=11 + i,
                                 force_active=[0, 1]) for i in range(n - 1)]
    return [greedy, *sampled]


@pytest.mark.parametrize("mode", ["fast", "full"])
@pytest.mark.parametrize("static_cache", [False, True], ids=["dynamic-cohorts", "slab"])
def test_candidates_share_one_prefill_and_get_what_they_get_alone(perturbed_mot, mode, static_cache, monkeypatch):
    gen = Generator(perturbed_mot, static_cache=static_cache, cuda_graphs=False)
    alone = [gen.generate([r])[0].token_ids for r in _candidates(mode)]
    prefills = []
    forward = Generator._forward

    def recording(self, cohort, input_ids, position_ids, logits_to_keep=1):
        if input_ids.shape[1] > 1 and logits_to_keep == 1:  # a prefill (decode steps feed one token a row;
            # a speculative step feeds several and keeps every position's logits)
            prefills.append(input_ids.shape[0])
        return forward(self, cohort, input_ids, position_ids, logits_to_keep)

    monkeypatch.setattr(Generator, "_forward", recording)
    together = [r.token_ids for r in gen.generate(_candidates(mode))]
    assert together == alone
    assert prefills == [1]  # four candidates, one prompt prefilled once
    assert len({tuple(t) for t in together}) > 1  # the sampled candidates differ from the greedy one

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


@pytest.mark.parametrize("mode", ["fast", "full"])
def test_a_candidate_of_another_rank_decodes_with_that_expert_as_primary(perturbed_mot, mode, monkeypatch):
    """`primary_rank` r makes the router's r-th active expert the primary (the others secondaries, in order): the
    same tokens as forcing that order, and a different expert from the router's own choice; the requests admitted
    together are routed as one batch, their sources encoded once."""
    mot = perturbed_mot
    active = mot.route([SOURCE], noise=False).active[0].tolist()
    gen = Generator(mot, cuda_graphs=False)
    encoded = []
    encode = mot.encoder.forward
    monkeypatch.setattr(mot.encoder, "forward", lambda texts: encoded.append(len(texts)) or encode(texts))
    own, other = gen.generate([GenerationRequest(SOURCE, mode=mode, max_new_tokens=10),
                               GenerationRequest(SOURCE, mode=mode, max_new_tokens=10, primary_rank=1)])
    assert encoded == [2]
    monkeypatch.undo()
    forced = gen.generate([GenerationRequest(SOURCE, mode=mode, max_new_tokens=10,
                                             force_active=[active[1], active[0]] + active[2:])])[0]
    assert own.routing["primary_expert"] == active[0] and other.routing["primary_expert"] == active[1]
    assert other.token_ids == forced.token_ids
    with pytest.raises(ValueError, match="primary_rank must be below top_k"):
        gen.add_request("x", GenerationRequest(SOURCE, primary_rank=mot.config.top_k))
    with pytest.raises(ValueError, match="give one"):
        GenerationRequest(SOURCE, primary_rank=1, force_active=active).validate()
    with pytest.raises(ValueError, match="give one"):
        mot.route([SOURCE], force_active=[active], primary_ranks=[1])


def test_candidates_are_greedy_then_each_other_expert_then_sampled():
    from mot_engine import defaults
    from mot_engine.decoding.candidates import candidate_samplings

    t, p = defaults.CANDIDATE_TEMPERATURE, defaults.CANDIDATE_TOP_P
    got = [(s.index, s.temperature, s.top_p, s.seed, s.primary_rank, s.mode)
           for s in candidate_samplings(0.3, 0.9, 40, 4, 2)]
    # the other expert decodes alone (fast mode); the others in the request's mode
    assert got == [(0, 0.3, 0.9, 40, 0, None), (1, 0.3, 0.9, 40, 1, "fast"), (2, t, p, 42, 0, None),
                   (3, t, p, 43, 0, None)]
    assert [s.primary_rank for s in candidate_samplings(0.0, 1.0, None, 1, 3)] == [0]  # one candidate: the router's
    assert [s.primary_rank for s in candidate_samplings(0.0, 1.0, None, 2, 3)] == [0, 1]
    with pytest.raises(ValueError, match="at least one candidate"):
        candidate_samplings(0.0, 1.0, None, 0)

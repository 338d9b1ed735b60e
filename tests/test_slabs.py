"""Continuous batching through slabs (mot_engine/slabs.py) — the CUDA path's bookkeeping, run eagerly on CPU.

Requests that arrive at different steps share one batch per (primary, mode); each must still get exactly the
tokens it gets alone, whatever joined, left, shifted or moved around it.
"""

from __future__ import annotations

import pytest

from mot_engine import GenerationRequest, Generator, RuntimeConfig

UNIT = "void axpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] += a * x[i]; }\n"
SHORT = "int sq(int x) { return x * x; }"


def _alone(mot, reqs):
    gen = Generator(mot, static_cache=False)
    return [gen.generate([r])[0].token_ids for r in reqs]


def _staggered(gen, reqs, gaps, on_step=None):
    """Add request i after gaps[i] steps; run to the end; return token ids in request order."""
    pending = list(zip(range(len(reqs)), reqs, gaps))
    step = 0
    while pending or gen.has_unfinished():
        while pending and pending[0][2] <= step:
            i, r, _ = pending.pop(0)
            gen.add_request(f"r{i}", r)
        gen.step()
        if on_step:
            on_step(gen, step)
        step += 1
    return [gen.results.pop(f"r{i}").token_ids for i in range(len(reqs))]


def test_staggered_requests_share_one_slab_and_get_their_own_tokens(perturbed_mot):
    mot = perturbed_mot
    reqs = [GenerationRequest(UNIT * (1 + i % 3), mode="full", max_new_tokens=6 + 2 * i, stop_at_eos=False,
                              force_active=[0, 1 + i % 2]) for i in range(5)]
    expected = _alone(mot, reqs)
    # plain steps, one token per row each: every request still runs when the last arrives, whatever drafts the
    # weights would have let through (speculation in a slab with staggered arrivals: test_speculation.py)
    gen = Generator(mot, static_cache=True, cuda_graphs=False,
                    runtime=RuntimeConfig(prompt_lookup=False))
    seen = []

    def watch(g, step):
        seen.append({k: (s.shape.rows, len(s.live)) for k, s in g.slabs.items()})

    got = _staggered(gen, reqs, gaps=[0, 1, 2, 3, 4], on_step=watch)
    assert got == expected
    # one slab for (primary 0, full) throughout, grown to hold every running request at once
    assert all(set(s) <= {(0, "full")} for s in seen)
    assert max(live for s in seen for rows, live in s.values()) == 5
    assert max(rows for s in seen for rows, live in s.values()) == 8
    assert not gen.slabs and gen.num_running == 0


def test_a_longer_prompt_shifts_the_slab_and_nobody_notices(perturbed_mot):
    """A newcomer whose prompt is longer than the write column takes a free row by moving every row's columns."""
    mot = perturbed_mot
    reqs = [
        GenerationRequest(SHORT, mode="fast", max_new_tokens=16, stop_at_eos=False, force_active=[0, 1]),
        GenerationRequest(SHORT + " // x", mode="fast", max_new_tokens=2, stop_at_eos=False, force_active=[0, 2]),
        GenerationRequest(UNIT * 4, mode="fast", max_new_tokens=8, stop_at_eos=False, force_active=[0, 2]),
    ]
    expected = _alone(mot, reqs)
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    trace = []
    got = _staggered(gen, reqs, gaps=[0, 0, 3],
                     on_step=lambda g, _: trace.extend((id(s), s.column) for s in g.slabs.values()))
    assert got == expected
    assert len({slab for slab, _ in trace}) == 1, "the newcomer should have taken the free row, not a new slab"
    columns = [c for _, c in trace]
    assert any(b > a + 1 for a, b in zip(columns, columns[1:])), f"no shift seen in write columns {columns}"


def test_rows_are_reused_and_emptied_slabs_keep_their_shape_in_the_pool(perturbed_mot):
    mot = perturbed_mot
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    req = GenerationRequest(SHORT, mode="fast", max_new_tokens=4, stop_at_eos=False, force_active=[0, 1])
    first = gen.generate([req])[0].token_ids
    assert not gen.slabs and len(gen._slab_pool) == 1
    pooled = gen._slab_pool[0]
    assert gen.generate([req])[0].token_ids == first  # a reset slab from the pool decodes the same
    assert gen._slab_pool == [pooled]  # the same object came back: its buffers (and graph, on CUDA) are reused


def test_abort_frees_a_row_that_the_next_request_takes(perturbed_mot):
    mot = perturbed_mot
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    mk = lambda n: GenerationRequest(UNIT, mode="full", max_new_tokens=n, stop_at_eos=False, force_active=[0, 1])  # noqa: E731
    gen.add_request("a", mk(30))
    gen.add_request("b", mk(30))
    gen.step()
    gen.step()
    slab = gen.slabs[(0, "full")]
    assert len(slab.live) == 2 and slab.shape.rows == 2
    assert gen.abort("a")
    gen.step()
    assert gen.results["a"].finish_reason == "aborted" and len(slab.live) == 1
    expected = _alone(mot, [mk(6)])[0]
    gen.add_request("c", mk(6))
    while "c" not in gen.results:
        gen.step()
    assert gen.slabs[(0, "full")] is slab  # joined the free row, no new slab
    assert gen.results["c"].token_ids == expected
    gen.abort("b")
    while gen.has_unfinished():
        gen.step()


def test_sixteen_arrivals_then_drain_shrinks_the_slab(perturbed_mot):
    mot = perturbed_mot
    reqs = [GenerationRequest(UNIT if i % 2 else SHORT, mode="fast", max_new_tokens=3 + (i * 5) % 17,
                              stop_at_eos=False, force_active=[1, 0]) for i in range(16)]
    expected = _alone(mot, reqs)
    gen = Generator(mot, static_cache=True, cuda_graphs=False, max_batch_size=16)
    rows = []
    got = _staggered(gen, reqs, gaps=[i // 2 for i in range(16)],
                     on_step=lambda g, _: rows.extend(s.shape.rows for s in g.slabs.values()))
    assert got == expected
    assert max(rows) == 16
    assert rows[-1] < 16, f"the slab never shrank while draining: {rows[-10:]}"


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_sampling_per_row_is_reproducible_in_a_slab(perturbed_mot, temperature):
    """Per-request seeds: a sampled request gives the same tokens alone and among other requests."""
    mot = perturbed_mot
    reqs = [GenerationRequest(UNIT, mode="fast", max_new_tokens=8, temperature=temperature, seed=7 + i,
                              stop_at_eos=False, force_active=[0, 1]) for i in range(3)]
    expected = [Generator(mot, static_cache=True, cuda_graphs=False).generate([r])[0].token_ids for r in reqs]
    got = _staggered(Generator(mot, static_cache=True, cuda_graphs=False), reqs, gaps=[0, 1, 1])
    assert got == expected


def test_a_sampled_token_is_the_next_input_in_a_slab(perturbed_mot):
    """A slab step feeds its greedy ids back on the device; a sampled row's own draw must replace its greedy id as
    the next input: the slab path gives the tokens of the dynamic-cache path, which feeds what it samples."""
    mot = perturbed_mot
    reqs = [GenerationRequest(UNIT, mode=mode, max_new_tokens=10, temperature=1.5, seed=3, stop_at_eos=False,
                              force_active=[0, 1]) for mode in ("fast", "full")]
    cohorts = [r.token_ids for r in Generator(mot, static_cache=False).generate(reqs)]
    greedy = [r.token_ids for r in Generator(mot, static_cache=False).generate(
        [GenerationRequest(UNIT, mode=r.mode, max_new_tokens=10, stop_at_eos=False, force_active=[0, 1])
         for r in reqs])]
    assert cohorts != greedy  # the draws leave the greedy path
    assert [r.token_ids for r in Generator(mot, static_cache=True, cuda_graphs=False).generate(reqs)] == cohorts


def test_tokens_in_flight_reach_the_right_request_when_rows_end_by_eos_and_are_retaken(perturbed_mot, monkeypatch):
    """The host reads a slab step's tokens one step late (the GPU runs ahead). A request that ends by EOS gets one
    extra row-step, which must be ignored — also when a newcomer takes its row in the same step — and every
    token reaches its request exactly once, in the stream and in the result."""
    mot = perturbed_mot
    a = GenerationRequest(UNIT, mode="full", max_new_tokens=12, stop_at_eos=False, force_active=[0, 1])
    free_run = _alone(mot, [a])[0]
    cut = next(i for i in range(3, len(free_run)) if free_run[i] not in free_run[:i])
    eos = list(mot.eos_token_ids)
    eos[0] = {free_run[cut]}
    monkeypatch.setattr(mot, "eos_token_ids", eos)  # expert 0 now ends a's text at token `cut`
    reqs = [
        GenerationRequest(UNIT, mode="full", max_new_tokens=12, force_active=[0, 1]),  # ends by EOS
        GenerationRequest(UNIT * 2, mode="full", max_new_tokens=10, stop_at_eos=False, force_active=[0, 2]),
        GenerationRequest(SHORT, mode="full", max_new_tokens=7, stop_at_eos=False, force_active=[0, 1]),
    ]
    expected = _alone(mot, reqs)
    assert expected[0] == free_run[: cut + 1]
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    streamed: dict[str, list[int]] = {}
    gen.add_request("r0", reqs[0])
    gen.add_request("r1", reqs[1])
    added_c = False
    while gen.has_unfinished():
        for out in gen.step():
            streamed.setdefault(out.request_id, []).extend(out.new_token_ids)
        if "r0" in gen.results and not added_c:  # a's row is free now: the newcomer takes it at the next step
            gen.add_request("r2", reqs[2])
            added_c = True
    got = [gen.results[f"r{i}"].token_ids for i in range(3)]
    assert got == expected
    assert [streamed[f"r{i}"] for i in range(3)] == expected
    assert gen.results["r0"].finish_reason == "eos"


def test_a_request_that_ends_by_length_launches_no_extra_step(perturbed_mot, monkeypatch):
    """n new tokens = the prefill's first token + n - 1 decode steps, even though the host reads tokens late."""
    from mot_engine.decoding.slabs import DecodeSlab

    steps = []
    decode = DecodeSlab.decode
    monkeypatch.setattr(DecodeSlab, "decode", lambda self: steps.append(1) or decode(self))
    gen = Generator(perturbed_mot, static_cache=True, cuda_graphs=False)
    res = gen.generate([GenerationRequest(UNIT, mode="fast", max_new_tokens=9, stop_at_eos=False, force_active=[0, 1])])
    assert len(res[0].token_ids) == 9
    assert len(steps) == 8
    assert not gen.slabs


def test_padded_prefill_path_gives_the_tokens_of_the_plain_prefill(perturbed_mot):
    """The prefill graphs' path (mot_engine/prefill_graphs.py), run eagerly on CPU: a request admitted alone is
    right-padded to its bucket, its logits taken at its last real token, its first L cache columns joined, and in
    full mode its secondaries' prompts padded too and its memory copied into padded static buffers. Same tokens as
    the plain prefill, both modes, prompts of several lengths (fp32)."""
    from mot_engine.decoding.prefill_graphs import PrefillGraphs

    mot = perturbed_mot
    reqs = [GenerationRequest(src, mode=mode, max_new_tokens=6, stop_at_eos=False, force_active=active)
            for src in (SHORT, UNIT * 3) for mode in ("fast", "full") for active in ([0, 1], [1, 2])]
    expected = [Generator(mot, static_cache=True, cuda_graphs=False).generate([r])[0].token_ids for r in reqs]
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    gen.prefill_graphs = PrefillGraphs(gen, capture=False)
    assert [gen.generate([r])[0].token_ids for r in reqs] == expected
    kinds = {key[0] for key in gen.prefill_graphs.entries}
    assert kinds == {"states", "prefill"} and len({key[3] for key in gen.prefill_graphs.entries if key[0] == "prefill"}) == 2
    assert all(key[2] == "full" or key[4] == 0 for key in gen.prefill_graphs.entries if key[0] == "prefill")


def test_padded_prefill_equals_the_plain_prefill_in_logits_cache_and_memory(perturbed_mot):
    """The same path, piece by piece: the padded secondaries' memory, and the primary's last-token logits and cache
    columns, against the unpadded forward (fp32); the interaction really acts (its memory moves the logits)."""
    import torch
    from transformers import DynamicCache

    from mot_engine.decoding.prefill_graphs import MIN_PROMPT, PrefillGraphs
    from mot_engine.decoding.slabs import bucket

    mot = perturbed_mot
    graphs = PrefillGraphs(Generator(mot, static_cache=True, cuda_graphs=False), capture=False)
    routing = mot.route([SHORT], noise=False, force_active=[[0, 1]])
    prompt = mot.prompt_ids(0, SHORT)
    assert bucket(len(prompt), MIN_PROMPT) > len(prompt)  # really padded
    with torch.no_grad():
        ctx = mot.memory_context([SHORT], routing)
        padded_ctx = mot.memory_context([SHORT], routing, prompt_runner=graphs.prompt_states)
        for stack, padded in zip(ctx.slots, padded_ctx.slots):
            for slot, pslot in zip(stack, padded):
                torch.testing.assert_close(pslot.key, slot.key, rtol=1e-5, atol=1e-5)
                assert torch.equal(pslot.mask, slot.mask)
        logits = {}
        for name, memory in (("fast", None), ("full", ctx)):
            cache = DynamicCache(config=mot.experts[0].config)
            with mot.interacting(memory):
                plain = mot.experts[0](input_ids=torch.tensor([prompt]), use_cache=True, logits_to_keep=1,
                                       **{mot.cache_kwarg[0]: cache})
            out = graphs.prefill(0, name, prompt, padded_ctx if memory is not None else None)
            torch.testing.assert_close(out.logits, plain.logits[:, -1].float(), rtol=1e-5, atol=1e-5)
            for layer, keys, values in zip(cache.layers, out.keys, out.values):
                torch.testing.assert_close(keys[:, :, : len(prompt)], layer.keys, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(values[:, :, : len(prompt)], layer.values, rtol=1e-5, atol=1e-5)
            assert (out.nonfinite is None) == (memory is None) and not (out.nonfinite is not None and out.nonfinite)
            logits[name] = out.logits
    assert (logits["full"] - logits["fast"]).abs().max() > 1e-3


@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="CUDA graphs need a GPU")
def test_prefill_graphs_replay_the_plain_prefill_on_gpu(monkeypatch):
    """fp32 on a GPU: requests admitted alone prefill by graph replay (captured once per shape, replayed after)
    and give the tokens of eager prefills, both modes; a batch of two prefills eagerly."""
    import torch
    from conftest import perturb

    from mot_engine import build_mot

    torch.backends.cuda.matmul.allow_tf32 = False
    mot = build_mot("tiny", device="cuda", dtype="float32")
    perturb(mot)
    reqs = [GenerationRequest(src, mode=mode, max_new_tokens=8, stop_at_eos=False, force_active=[0, 1])
            for src in (SHORT, UNIT * 3) for mode in ("fast", "full")]
    plain = Generator(mot, runtime=RuntimeConfig(prefill_graphs=False))
    assert plain.prefill_graphs is None
    expected = [plain.generate([r])[0].token_ids for r in reqs]
    gen = Generator(mot, runtime=RuntimeConfig())
    for _ in range(2):  # captured, then replayed
        assert [gen.generate([r])[0].token_ids for r in reqs] == expected
    graphs = gen.prefill_graphs
    assert graphs.broken is None and len(graphs.entries) == 6  # 2 prompt buckets x (fast, full, secondary states)
    assert all(entry.graph is not None for entry in graphs.entries.values())
    assert [r.token_ids for r in gen.generate(reqs[:2])] == expected[:2]  # admitted together: eager prefill


@pytest.mark.skipif(__import__("torch").cuda.device_count() < 2, reason="needs a second GPU")
def test_prefill_graphs_capture_a_secondary_on_another_gpu():
    """A secondary on cuda:1 (experts split over GPUs): its prompt states are captured and replayed on its own GPU,
    in a memory pool of that GPU, and the requests get the one-GPU engine's tokens, both modes."""
    import torch
    from conftest import perturb

    from mot_engine import build_mot
    from mot_engine.kernels.substitutions.launch import programmatic_launch_supported

    torch.backends.cuda.matmul.allow_tf32 = False
    mot = build_mot("tiny", device="cuda:0", dtype="float32")
    perturb(mot)
    reqs = [GenerationRequest(src, mode=mode, max_new_tokens=8, stop_at_eos=False, force_active=[0, 1])
            for src in (SHORT, UNIT * 3) for mode in ("fast", "full")]
    expected = [Generator(mot).generate([r])[0].token_ids for r in reqs]
    mot.experts[1].to("cuda:1")
    gen = Generator(mot)
    for _ in range(2):  # captured, then replayed
        assert [gen.generate([r])[0].token_ids for r in reqs] == expected
    graphs = gen.prefill_graphs
    assert graphs.broken is None
    states = [key for key, entry in graphs.entries.items() if key[0] == "states" and entry.graph is not None]
    assert {key[1] for key in states} == {1} and len(states) == 2  # expert 1's states, two prompt buckets
    assert set(graphs.pools) == {torch.device("cuda", 0), torch.device("cuda", 1)}
    # programmatic launch is probed on both GPUs (a capture on the second one must not land on the first's stream)
    assert gen.programmatic_launch == programmatic_launch_supported(torch.device("cuda", 0))


def test_requests_admitted_together_prefill_one_by_one_on_the_graph_path(perturbed_mot, monkeypatch):
    """With prefill graphs, a small group admitted in one step prefills one request at a time (each a graph replay
    on a GPU; the padded path here): same tokens as one eager batch, every request through the padded path."""
    from mot_engine.decoding import generator as generation
    from mot_engine.decoding.prefill_graphs import PrefillGraphs

    mot = perturbed_mot
    reqs = [GenerationRequest(src, mode=mode, max_new_tokens=5, stop_at_eos=False, force_active=[0, 1])
            for src in (SHORT, UNIT, UNIT * 2) for mode in ("fast", "full")]
    expected = [r.token_ids for r in Generator(mot, static_cache=True, cuda_graphs=False).generate(reqs)]
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    gen.prefill_graphs = graphs = PrefillGraphs(gen, capture=False)
    prefills = []
    monkeypatch.setattr(graphs, "prefill", lambda *a, real=graphs.prefill: prefills.append(a[1]) or real(*a))
    assert [r.token_ids for r in gen.generate(reqs)] == expected
    assert sorted(prefills) == ["fast"] * 3 + ["full"] * 3
    monkeypatch.setattr(generation, "GRAPH_PREFILL_MAX_GROUP", 2)  # a group of three: one eager batch
    prefills.clear()
    assert [r.token_ids for r in gen.generate(reqs)] == expected and prefills == []

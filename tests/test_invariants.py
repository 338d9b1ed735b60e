"""The engine's invariants (ARCHITECTURE.md, "Invariants"), on the tiny preset: three architectures, three tokenizers."""

from __future__ import annotations

import itertools

import pytest
import torch

from mot_engine import GenerationRequest, Generator, NonFiniteError
from mot_engine.model.mixture import MixtureOfThoughts

SOURCES = [
    "void add(const float* a, const float* b, float* c, int n) { for (int i = 0; i < n; ++i) c[i] = a[i] + b[i]; }",
    "double dot(const double* x, const double* y, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i] * y[i]; return s; }",
    "void relu(float* x, int n) { for (int i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0; }",
]
TARGET = "__global__ void add(const float* a, const float* b, float* c, int n) { int i = blockIdx.x * blockDim.x + threadIdx.x; if (i < n) c[i] = a[i] + b[i]; }"


def active_sets(num_experts: int, k: int):
    return [list(p) for p in itertools.permutations(range(num_experts), k)]


def primary_alone_logits(mot: MixtureOfThoughts, p: int, source: str, target_ids: list[int]) -> torch.Tensor:
    prompt = mot.prompt_ids(p, source)
    ids = torch.tensor([prompt + target_ids])
    with torch.no_grad():
        logits = mot.experts[p](input_ids=ids).logits[0]
    return logits[len(prompt) - 1 : len(prompt) - 1 + len(target_ids)]


# 1. Identity at init -------------------------------------------------------------------------------------------

@torch.no_grad()
def test_fresh_mot_equals_primary_alone_for_every_expert_and_active_set(tiny_mot):
    mot = tiny_mot.eval()
    for active in active_sets(mot.num_experts, mot.config.top_k):
        p = active[0]
        tgt = mot.target_ids(p, TARGET)
        mixed = mot.target_logits(SOURCES[0], tgt, active_experts=active)
        alone = primary_alone_logits(mot, p, SOURCES[0], tgt)
        assert mixed.shape == alone.shape == (len(tgt), mot.experts[p].config.vocab_size)
        torch.testing.assert_close(mixed, alone, rtol=0, atol=1e-6, msg=f"active set {active}")


@torch.no_grad()
def test_fresh_full_mode_generates_what_fast_mode_generates(tiny_mot):
    mot = tiny_mot.eval()
    for active in ([0, 1], [1, 2], [2, 0]):
        reqs = [GenerationRequest(SOURCES[1], mode=m, max_new_tokens=12, stop_at_eos=False, force_active=active) for m in ("fast", "full")]
        fast, full = Generator(mot).generate(reqs)
        assert fast.token_ids == full.token_ids, active


# 2. No look-ahead, across tokenizers ---------------------------------------------------------------------------

@torch.no_grad()
def test_logits_at_t_do_not_depend_on_later_text(perturbed_mot):
    mot = perturbed_mot.eval()
    for active in active_sets(mot.num_experts, mot.config.top_k):
        p = active[0]
        a = mot.target_ids(p, TARGET)
        m = len(a) // 2
        b = a[:m] + mot.target_ids(p, " return; } // a different ending that changes every later token")
        la = mot.target_logits(SOURCES[0], a, active_experts=active)
        lb = mot.target_logits(SOURCES[0], b, active_experts=active)
        # Row t sees the prompt and the first t target tokens: rows 0..m see only the shared prefix.
        torch.testing.assert_close(la[: m + 1], lb[: m + 1], rtol=0, atol=1e-5, msg=f"active set {active}")
        assert not torch.allclose(la[m + 1 :][:3], lb[m + 1 :][:3]), "later rows must see their own (different) text"


@torch.no_grad()
def test_interaction_really_changes_the_primary(perturbed_mot):
    mot = perturbed_mot.eval()
    tgt = mot.target_ids(0, TARGET)
    mixed = mot.target_logits(SOURCES[0], tgt, active_experts=[0, 2])
    alone = primary_alone_logits(mot, 0, SOURCES[0], tgt)
    assert (mixed - alone).abs().max() > 1e-3  # otherwise the other invariants would hold vacuously


@torch.no_grad()
def test_secondaries_read_their_whole_prompt_in_their_own_tokenization(perturbed_mot):
    mot = perturbed_mot.eval()
    long_source = SOURCES[1] * 3
    lengths = [len(mot.prompt_ids(e, long_source)) for e in range(mot.num_experts)]
    assert len(set(lengths)) == mot.num_experts, f"the tiny tokenizers should differ: {lengths}"
    for active in active_sets(mot.num_experts, 2):
        routing = mot.route([long_source], force_active=[active], noise=False)
        ctx = mot.memory_context([long_source], routing)
        for stack in ctx.slots:
            (slot,) = stack
            # the secondary's own token count: neither truncated nor padded to the primary's length
            assert slot.key.shape[2] == lengths[active[1]]
            assert bool(slot.mask.all())


# 3. The router learns from the task ---------------------------------------------------------------------------

def test_router_gets_gradient_from_lm_loss_alone(perturbed_mot):
    mot = perturbed_mot.train()
    try:
        mot.zero_grad(set_to_none=True)
        out = mot(SOURCES, [TARGET] * 3)
        out.lm_loss.backward()
        grads = [p.grad for p in mot.router.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0
    finally:
        mot.zero_grad(set_to_none=True)
        mot.eval()


def test_fresh_router_learns_from_lm_loss_after_one_step(tiny_mot):
    """At init the gates are zero, so L_lm cannot depend on the routing yet; after one step it does."""
    import copy

    mot = copy.deepcopy(tiny_mot).train()
    opt = torch.optim.SGD(list(mot.trainable_parameters()), lr=0.5)
    # the same active sets in both passes (the Gumbel draw could otherwise pick a primary whose gate is still 0)
    forced = [[0, 1], [1, 2], [2, 0]]
    mot(SOURCES, [TARGET] * 3, force_active=forced).lm_loss.backward()
    assert all(p.grad is None or float(p.grad.abs().sum()) == 0 for p in mot.router.parameters())
    opt.step()
    opt.zero_grad()
    mot(SOURCES, [TARGET] * 3, force_active=forced).lm_loss.backward()
    assert sum(float(p.grad.abs().sum()) for p in mot.router.parameters()) > 0


def test_gumbel_noise_in_training_and_deterministic_eval(tiny_mot):
    mot = tiny_mot
    emb = mot.encoder(SOURCES)
    mot.router.train()
    try:
        a, b = mot.router(emb), mot.router(emb)
        assert not torch.allclose(a.noisy_probs, b.noisy_probs)
    finally:
        mot.router.eval()
    c, d = mot.router(emb), mot.router(emb)
    assert torch.equal(c.noisy_probs, d.noisy_probs) and torch.equal(c.active, d.active)
    torch.testing.assert_close(c.noisy_probs, torch.softmax(c.logits / mot.config.gumbel_tau, -1))
    assert torch.equal(c.active, c.logits.topk(mot.config.top_k, -1).indices)
    assert mot.get_routing_info(SOURCES[0]) == mot.get_routing_info(SOURCES[0])


def test_straight_through_weights_are_exactly_one_forward(tiny_mot):
    mot = tiny_mot
    mot.router.train()
    try:
        r = mot.route(SOURCES)
    finally:
        mot.router.eval()
    hard = torch.zeros_like(r.weights).scatter_(1, r.active, 1.0)
    assert torch.equal(r.weights.detach(), hard)


# 4. Per-sample routing ----------------------------------------------------------------------------------------

@torch.no_grad()
def test_batch_gives_each_sample_its_own_routing_and_outputs(perturbed_mot):
    mot = perturbed_mot.eval()
    forced = [[0, 1], [2, 0], [1, 2]]  # three different primaries and secondaries in one batch
    reqs = [GenerationRequest(s, mode="full", max_new_tokens=10, stop_at_eos=False, force_active=f) for s, f in zip(SOURCES, forced)]
    batched = Generator(mot).generate(reqs)
    for req, res in zip(reqs, batched):
        alone = Generator(mot).generate([req])[0]
        assert res.routing == alone.routing
        assert res.token_ids == alone.token_ids
    # natural routing: a batch routes each source as it would alone
    routing = mot.route(SOURCES, noise=False)
    for b, s in enumerate(SOURCES):
        alone = mot.route([s], noise=False).info(0)
        assert routing.info(b)["active_experts"] == alone["active_experts"]
        # the encoder pads a batch: probabilities agree to float32 rounding
        assert routing.info(b)["all_expert_probs"] == pytest.approx(alone["all_expert_probs"], abs=1e-5)


@torch.no_grad()
def test_batched_teacher_forcing_equals_per_sample(perturbed_mot):
    mot = perturbed_mot.eval()
    forced = [[0, 1], [2, 0], [0, 2]]
    targets = [TARGET, TARGET[:60], TARGET[:30]]
    out = mot(SOURCES, targets, force_active=forced)
    for b in range(3):
        alone = mot([SOURCES[b]], [targets[b]], force_active=[forced[b]])
        torch.testing.assert_close(out.sample_lm_loss[b], alone.sample_lm_loss[0], rtol=1e-5, atol=1e-5)


# 5. Cached equals uncached ------------------------------------------------------------------------------------

@torch.no_grad()
def test_cached_full_mot_generation_equals_recompute(perturbed_mot):
    mot = perturbed_mot.eval()
    for active in ([0, 1], [1, 2], [2, 0]):
        req = GenerationRequest(SOURCES[0], mode="full", max_new_tokens=16, stop_at_eos=False, force_active=active)
        gen = Generator(mot).generate([req])[0].token_ids
        # (a) the teacher-forced forward (no cache) on the generated tokens predicts exactly those tokens
        logits = mot.target_logits(SOURCES[0], gen, active_experts=active)
        assert logits.argmax(-1).tolist() == gen, active
        # (b) literally recompute the full MoT forward on every prefix for the first tokens
        prefix: list[int] = []
        for _ in range(6):
            row = mot.target_logits(SOURCES[0], prefix + [0], active_experts=active)[-1]
            prefix.append(int(row.argmax()))
        assert prefix == gen[:6], active


@torch.no_grad()
def test_fast_mode_equals_hf_generate_greedy(tiny_mot):
    mot = tiny_mot.eval()
    for p in range(mot.num_experts):
        active = [p, (p + 1) % mot.num_experts]
        ours = Generator(mot).generate([GenerationRequest(SOURCES[2], max_new_tokens=12, stop_at_eos=False, force_active=active)])[0]
        prompt = torch.tensor([mot.prompt_ids(p, SOURCES[2])])
        ref = mot.experts[p].generate(prompt, max_new_tokens=12, do_sample=False, min_new_tokens=12, pad_token_id=mot.tokenizers[p].pad_token_id)
        assert ours.token_ids == ref[0, prompt.shape[1] :].tolist()


@torch.no_grad()
def test_routing_is_decided_once_from_the_source(perturbed_mot):
    mot = perturbed_mot.eval()
    res = Generator(mot).generate([GenerationRequest(SOURCES[1], mode="full", max_new_tokens=8, stop_at_eos=False)])[0]
    assert res.routing == mot.get_routing_info(SOURCES[1])


# 6. Experts stay frozen ---------------------------------------------------------------------------------------

def test_experts_are_bit_identical_after_an_optimizer_step(perturbed_mot):
    import copy

    mot = copy.deepcopy(perturbed_mot).train()
    before = {k: v.clone() for k, v in mot.experts.state_dict().items()}
    trainable = list(mot.named_trainable_parameters())
    assert trainable and not any(n.startswith("experts.") for n, _ in trainable)
    assert not any(p.requires_grad for p in mot.experts.parameters())
    opt = torch.optim.AdamW([p for _, p in trainable], lr=1e-2)
    mot(SOURCES, [TARGET] * 3).loss.backward()
    opt.step()
    after = mot.experts.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(not m.training for m in mot.experts)


# NaN / Inf are reported, never replaced ----------------------------------------------------------------------

def test_nonfinite_is_detected_not_hidden(perturbed_mot):
    import copy

    mot = copy.deepcopy(perturbed_mot).eval()
    with torch.no_grad():
        mot.interaction[1].gate[0].fill_(float("nan"))
        out = mot([SOURCES[0]], [TARGET], force_active=[[0, 1]])
    assert out.nonfinite and not torch.isfinite(out.loss)
    with pytest.raises(NonFiniteError):
        Generator(mot).generate([GenerationRequest(SOURCES[0], mode="full", max_new_tokens=4, force_active=[0, 1])])


@torch.no_grad()
def test_static_cache_decoding_equals_dynamic_cache(perturbed_mot):
    """The static-cache path (what CUDA graphs replay on a GPU) runs eagerly on CPU: same tokens, same routing."""
    mot = perturbed_mot.eval()
    forced = [[0, 1], [0, 2], [1, 2]]
    reqs = [GenerationRequest(s, mode=m, max_new_tokens=n, stop_at_eos=False, force_active=f)
            for (s, f, n) in zip(SOURCES, forced, (12, 7, 9)) for m in ("fast", "full")]
    dynamic = Generator(mot, static_cache=False).generate(reqs)
    static = Generator(mot, static_cache=True, cuda_graphs=False).generate(reqs)
    for a, b in zip(dynamic, static):
        assert a.token_ids == b.token_ids and a.routing == b.routing and a.text == b.text


def test_streamed_deltas_add_up_to_the_final_text(perturbed_mot):
    mot = perturbed_mot.eval()
    gen = Generator(mot)
    gen.add_request("r", GenerationRequest(SOURCES[0], mode="full", max_new_tokens=24, stop_at_eos=False))
    pieces = []
    while gen.has_unfinished():
        pieces += [o.text_delta for o in gen.step() if o.request_id == "r"]
    assert "".join(pieces) == gen.results["r"].text


def test_abort_frees_the_slot_at_the_next_step(perturbed_mot):
    mot = perturbed_mot.eval()
    gen = Generator(mot, max_batch_size=2)
    for rid in ("a", "b", "c"):
        gen.add_request(rid, GenerationRequest(SOURCES[0], mode="full", max_new_tokens=50, stop_at_eos=False))
    gen.step()
    assert gen.num_running == 2 and gen.num_waiting == 1
    assert gen.abort("a")
    outs = gen.step()
    assert any(o.request_id == "a" and o.finish_reason == "aborted" for o in outs)
    assert gen.num_running == 2 and gen.num_waiting == 0  # "c" took a's slot in the same step
    assert gen.results["a"].finish_reason == "aborted"
    assert not gen.abort("a")

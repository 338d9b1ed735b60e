"""Prompt-lookup speculation (mot_engine/decoding/speculation.py): drafting, the acceptance rules, and the engine's
invariant that speculative greedy decoding gives plain greedy decoding's tokens — fast and full mode, batch 1 and a
batch whose rows keep different numbers of draft tokens, stop rules landing inside a draft."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mot_engine import GenerationRequest, Generator
from mot_engine.decoding import speculation
from mot_engine.decoding.speculation import PromptLookup, accept
from mot_engine.envs import RuntimeConfig

SOURCES = [
    "void add(const float* a, const float* b, float* c, int n) { for (int i = 0; i < n; ++i) c[i] = a[i] + b[i]; }",
    "double dot(const double* x, const double* y, int n) { double s = 0; for (int i = 0; i < n; i++) s += x[i] * y[i]; return s; }",
    "void relu(float* x, int n) { for (int i = 0; i < n; i++) x[i] = x[i] > 0 ? x[i] : 0; }",
]
PLAIN = dataclasses.replace(RuntimeConfig(), prompt_lookup=False)
SPECULATIVE = dataclasses.replace(RuntimeConfig(), prompt_lookup=True, prompt_lookup_cuda=True)


# Drafting ---------------------------------------------------------------------------------------------------------

def test_lookup_drafts_what_followed_the_longest_latest_match():
    lookup = PromptLookup([1, 2, 3, 4, 5, 9, 2, 3, 7, 8], max_ngram=3, min_ngram=1)
    lookup.extend([1, 2, 3])  # suffix (1, 2, 3) occurred at the start: 4, 5, ... follow it
    assert lookup.draft(3) == [4, 5, 9]
    lookup.extend([7])  # (2, 3, 7) is the longest match: 8 followed it, then the text ends
    assert lookup.draft(4) == [8, 1, 2, 3]
    lookup.extend([6])  # 6 never occurred before
    assert lookup.draft(4) == []


def test_lookup_prefers_the_latest_occurrence_and_respects_the_shortest_ngram():
    lookup = PromptLookup([5, 1, 6, 5, 1, 8], max_ngram=2, min_ngram=2)
    lookup.extend([5, 1])
    assert lookup.draft(1) == [8]  # (5, 1) occurred twice: the later one's successor
    lookup.extend([4, 1])  # (4, 1) is new; the unigram (1,) would match but is shorter than min_ngram
    assert lookup.draft(2) == []
    with pytest.raises(ValueError, match="min_ngram"):
        PromptLookup([1], max_ngram=1, min_ngram=2)


def test_lookup_syncs_generated_tokens_once():
    lookup = PromptLookup([3, 4, 5], max_ngram=2, min_ngram=1)
    lookup.sync([3])
    lookup.sync([3, 4])
    assert lookup.tokens == [3, 4, 5, 3, 4] and lookup.draft(2) == [5, 3]


def test_draft_length_follows_acceptance():
    lookup = PromptLookup([1, 2, 3], max_ngram=2, min_ngram=1)
    lookup.feedback(drafted=8, kept=3, max_draft=8)  # cut short: one shorter
    assert lookup.budget == 7
    lookup.feedback(drafted=7, kept=7, max_draft=8)  # kept whole: two longer, capped
    assert lookup.budget == 8
    for _ in range(10):
        lookup.feedback(drafted=2, kept=0, max_draft=8)
    assert lookup.budget == 1  # never below one
    lookup.feedback(drafted=0, kept=0, max_draft=8)  # no draft: nothing learnt
    assert lookup.budget == 1


# The acceptance rules -----------------------------------------------------------------------------------------------

def _logits_preferring(tokens: list[int], vocab: int = 6) -> torch.Tensor:
    logits = torch.zeros(len(tokens), vocab)
    logits[torch.arange(len(tokens)), torch.tensor(tokens)] = 5.0
    return logits


def test_greedy_keeps_the_draft_while_it_is_the_argmax():
    greedy = GenerationRequest("x", temperature=0.0)
    logits = _logits_preferring([2, 3, 4, 5])  # positions: after next input, after d1, d2, d3
    assert accept(logits, [2, 3, 4], greedy, None) == [2, 3, 4, 5]  # all kept, plus the primary's next token
    assert accept(logits, [2, 1, 4], greedy, None) == [2, 3]  # d2 rejected: the argmax replaces it
    assert accept(logits[:1], [], greedy, None) == [2]  # no draft: plain greedy


@pytest.mark.parametrize("top_p", [1.0, 0.8])
def test_sampling_rule_leaves_the_distribution_unchanged(top_p):
    """The first emitted token, drafted or not, is distributed as plain sampling would draw it (chi-square)."""
    req = GenerationRequest("x", temperature=0.9, top_p=top_p)
    logits = torch.tensor([[1.0, 0.2, -0.5, 0.8, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0]])  # (2, V)
    target = speculation.probabilities(logits[0], req)
    target = target / target.sum()  # the nucleus renormalised: what multinomial draws from
    rng = torch.Generator().manual_seed(0)
    draws = 8000
    for draft in (3, 2):  # a likely and an unlikely draft token
        counts = torch.zeros(5)
        for _ in range(draws):
            counts[accept(logits, [draft], req, rng)[0]] += 1
        expected = target * draws
        seen = expected > 0
        assert torch.all(counts[~seen] == 0)  # tokens outside the nucleus never appear
        chi2 = float(((counts[seen] - expected[seen]) ** 2 / expected[seen]).sum())
        assert chi2 < 20.0, (draft, counts.tolist(), expected.tolist())  # df <= 4: p < 0.001


# The engine -----------------------------------------------------------------------------------------------------------

def _requests(max_new_tokens=(14, 9, 17), **kw):
    """Every source with each expert as primary, in both modes: cohorts of three rows (one per source)."""
    return [GenerationRequest(src, mode=mode, max_new_tokens=n, force_active=[p, (p + 1) % 3], **kw)
            for p in range(3) for mode in ("fast", "full") for src, n in zip(SOURCES, max_new_tokens)]


class OracleDrafts:
    """Drafts that are the plain run's own next tokens with every third draft corrupted at its second token: each
    step keeps all of a draft, part of one, or only the primary's token, and rows of a batch keep different counts."""

    def __init__(self, plain_results, requests):
        self.reference = {(r.source, r.mode, tuple(r.force_active)): res.token_ids
                          for r, res in zip(requests, plain_results)}
        assert len(self.reference) == len(requests)
        self.calls = 0

    def __call__(self, seqs, primary, settings=None):
        drafts = []
        for s in seqs:
            self.calls += 1
            ref = self.reference[(s.request.source, s.request.mode, tuple(s.request.force_active))]
            room = s.request.max_new_tokens - len(s.generated) - 1
            draft = list(ref[len(s.generated):len(s.generated) + min(4, room)])
            if self.calls % 3 == 0 and len(draft) > 1:
                draft[1] = (draft[1] + 1) % 50
            drafts.append(draft)
        return drafts


@torch.no_grad()
@pytest.mark.parametrize("batched", [False, True])
def test_speculative_greedy_equals_plain_greedy(perturbed_mot, monkeypatch, batched):
    mot = perturbed_mot.eval()
    reqs = _requests(stop_at_eos=False)
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(reqs)
    oracle = OracleDrafts(plain, reqs)
    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", oracle)
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=False)
    spec = gen.generate(reqs) if batched else [gen.generate([r])[0] for r in reqs]
    for r, a, b in zip(reqs, plain, spec):
        assert b.token_ids == a.token_ids and b.text == a.text and b.finish_reason == a.finish_reason, r.mode
    kept = sum(r.accepted_tokens for r in spec)
    drafted = sum(r.draft_tokens for r in spec)
    assert 0 < kept < drafted  # drafts were kept, and some were rejected


@torch.no_grad()
def test_speculative_greedy_equals_plain_greedy_in_a_slab(perturbed_mot, monkeypatch):
    """Verify steps in a slab (the static-cache path, run eagerly here): requests arrive at different steps, rows
    keep different numbers of draft tokens (masked holes in their columns), the slab shifts for a longer prompt and
    moves into bigger and smaller slabs (a moved row takes only its visible columns) — every request still gets
    plain greedy decoding's tokens."""
    mot = perturbed_mot.eval()
    reqs = [r for r in _requests(max_new_tokens=(21, 9, 30), stop_at_eos=False) if r.force_active[0] == 0]
    reqs += [GenerationRequest(SOURCES[1] * 3, mode=mode, max_new_tokens=12, stop_at_eos=False, force_active=[0, 2])
             for mode in ("fast", "full")]  # a longer prompt, late: the slab shifts
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(reqs)
    oracle = OracleDrafts(plain, reqs)
    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", oracle)
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=True, cuda_graphs=False)
    arrivals = {0: [0, 3], 1: [1, 4], 3: [2, 5], 6: [6, 7]}  # step -> requests added before it
    rows, step = [], 0
    while step <= max(arrivals) or gen.has_unfinished():
        for i in arrivals.get(step, []):
            gen.add_request(f"r{i}", reqs[i])
        gen.step()
        rows.append({key: slab.shape.rows for key, slab in gen.slabs.items()})
        step += 1
    for i, (r, a) in enumerate(zip(reqs, plain)):
        b = gen.results[f"r{i}"]
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason, (i, r.mode)
        assert b.draft_tokens > 0
    assert 0 < sum(gen.results[f"r{i}"].accepted_tokens for i in range(len(reqs))) < oracle.calls * 4
    assert max(r.get((0, "full"), 0) for r in rows) == 4  # grew from one row to four: rows moved
    assert not gen.slabs


@torch.no_grad()
@pytest.mark.parametrize("static_cache", [False, True])  # a cohort's speculative step, a slab's verify step
def test_verify_steps_run_the_slab_kernels_of_q_k_v_and_the_gated_mlp(monkeypatch, static_cache):
    """A verify step's few positions a row are rows for the fused q/k/v and gated-MLP kernels (their rows kernels
    take up to 16), as a slab's decode step's are, where the prefill's forward left them to the modules' own
    products; in a slab its attention (the step's own additive mask) runs the split-K decode attention — and
    speculative greedy still gives plain greedy's tokens. CPU: the plain-torch kernels stand in."""
    from conftest import perturb
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from mot_engine import build_mot
    from mot_engine.kernels import decode_attention
    from mot_engine.kernels.gemv import gemv_glu_reference, gemv_qkv_reference
    from mot_engine.kernels.substitutions.attention import install_decode_attention
    from mot_engine.kernels.substitutions.linear import install_fused_mlp, install_fused_qkv

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]  # the process-wide registry: restored after this test
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa", getattr(current, "mot_original", current))
    supported = decode_attention.supported  # the tiny experts' heads are 16 wide; the kernel's smallest is 32
    monkeypatch.setattr(decode_attention, "supported", lambda q, k, m: supported(
        *(t.repeat_interleave(2, -1) for t in (q, k)), m))
    torch.manual_seed(0)
    mot = build_mot("tiny", device="cpu").eval()  # its own: the dispatching forwards stay installed
    perturb(mot)
    widths, queries = [], []  # positions a row of each fused call's input / of each attention call's queries

    def counting(kernel, seen):
        def run(x, *args):
            seen.append(x.shape[-2] if x.dim() >= 3 else 1)
            return kernel(x, *args)
        return run

    assert install_fused_qkv(mot, kernel=counting(gemv_qkv_reference, widths)) > 0
    assert install_fused_mlp(mot, kernel=counting(gemv_glu_reference, widths)) > 0
    assert install_decode_attention(mot, kernel=counting(decode_attention.decode_attention_reference, queries)) > 0
    reqs = [r for r in _requests(stop_at_eos=False) if r.force_active[0] == 0]  # the tiny Qwen2 as primary
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(reqs)
    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", OracleDrafts(plain, reqs))
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=static_cache, cuda_graphs=False)
    gen.fused_qkv = gen.fused_mlp = gen.decode_attention = True  # on a GPU: on where installed
    widths.clear()
    queries.clear()
    spec = [gen.generate([r])[0] for r in reqs]  # alone: each verify step is one row of W <= 5 positions
    for r, a, b in zip(reqs, plain, spec):
        assert b.token_ids == a.token_ids and b.finish_reason == a.finish_reason, r.mode
    assert sum(r.accepted_tokens for r in spec) > 0
    assert max(widths) > 1  # verify steps ran their q/k/v and gated MLPs through the kernels
    assert max(widths) <= 5  # ... and the prompts (more positions) their modules' own products
    # a slab's verify steps pass their additive (C, 1, W, M) mask; a cohort's dynamic cache gets transformers'
    # boolean one, which stays with SDPA
    assert (max(queries) > 1) == static_cache and max(queries) <= 5


@torch.no_grad()
def test_a_lone_row_in_a_slab_uses_one_column_per_token(perturbed_mot, monkeypatch):
    """The write column moves back after each verify step to just after what was kept: a request alone in its slab
    leaves no holes, and its span is its prompt plus its tokens (the last one not yet written) — as plain decoding."""
    mot = perturbed_mot.eval()
    req = GenerationRequest(SOURCES[0], mode="full", max_new_tokens=20, stop_at_eos=False, force_active=[0, 1])
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate([req])
    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", OracleDrafts(plain, [req]))
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=True, cuda_graphs=False)
    gen.add_request("r", req)
    prompt = len(mot.prompt_ids(0, SOURCES[0]))
    while gen.has_unfinished():
        gen.step()
        for slab in gen.slabs.values():
            for r in slab.live:
                seq = slab.rows[r]
                assert bool(slab.key_valid[r, slab.start[r]:slab.column].all())
                assert slab.column - slab.start[r] == prompt + len(seq.generated) - 1
    assert gen.results["r"].token_ids == plain[0].token_ids and gen.results["r"].accepted_tokens > 0


@torch.no_grad()
def test_a_full_slab_takes_plain_steps_and_speculates_once_rows_leave(perturbed_mot, monkeypatch):
    """`LookupSettings.max_slab_rows`: while more rows are live, the slab decodes plain steps (no drafts asked for);
    when rows finish and few enough remain it speculates again. The tokens stay plain greedy's throughout."""
    mot = perturbed_mot.eval()
    reqs = [GenerationRequest(src, mode="full", max_new_tokens=n, stop_at_eos=False, force_active=[0, 1])
            for src, n in zip(SOURCES, (4, 6, 18))]
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(reqs)
    oracle = OracleDrafts(plain, reqs)
    asked = []  # live rows of the slab at each call for drafts

    def drafts(seqs, primary, settings=None):
        asked.append(len(seqs))
        return oracle(seqs, primary, settings)

    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", drafts)
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=True, cuda_graphs=False)
    gen.lookup_settings = dataclasses.replace(gen.lookup_settings, max_slab_rows=1)
    got = gen.generate(reqs)
    assert [r.token_ids for r in got] == [r.token_ids for r in plain]
    assert asked and set(asked) == {1}, f"drafts asked for slabs of {sorted(set(asked))} live rows"
    assert got[2].accepted_tokens > 0 and got[0].accepted_tokens == got[1].accepted_tokens == 0


@torch.no_grad()
def test_stop_rules_inside_a_draft_end_where_plain_decoding_ends(perturbed_mot, monkeypatch):
    """EOS, the answer's end and the token limit take effect at their token even when it lies inside a kept draft;
    the streamed pieces still add up to the final text."""
    mot = perturbed_mot.eval()
    reqs = _requests(max_new_tokens=(5, 11, 3))  # stop rules on
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(reqs)
    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", OracleDrafts(plain, reqs))
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=False)
    for i, r in enumerate(reqs):
        gen.add_request(f"r{i}", r)
    pieces: dict[str, list[str]] = {}
    while gen.has_unfinished():
        for out in gen.step():
            pieces.setdefault(out.request_id, []).append(out.text_delta)
    for i, a in enumerate(plain):
        b = gen.results[f"r{i}"]
        assert (b.token_ids, b.finish_reason) == (a.token_ids, a.finish_reason)
        assert "".join(pieces[f"r{i}"]) == b.text


@torch.no_grad()
def test_sampled_requests_decode_with_drafts_and_keep_their_limits(perturbed_mot, monkeypatch):
    mot = perturbed_mot.eval()
    reqs = _requests(stop_at_eos=False, temperature=0.8, top_p=0.95, seed=3)
    greedy = [dataclasses.replace(r, temperature=0.0) for r in reqs]
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(greedy)
    def run():  # fresh drafts each run: what a sampled row draws depends on what it was offered
        oracle = OracleDrafts(plain, greedy)
        monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", lambda seqs, p, settings: oracle(
            [dataclasses.replace(s, request=dataclasses.replace(s.request, temperature=0.0)) for s in seqs], p))
        return Generator(mot, runtime=SPECULATIVE, static_cache=False).generate(reqs)

    first, again = run(), run()
    for r, a, b in zip(reqs, first, again):
        assert len(a.token_ids) == r.max_new_tokens and a.token_ids == b.token_ids  # seeded: reproducible
    assert sum(r.accepted_tokens for r in first) > 0


def test_prompt_lookup_is_a_runtime_switch():
    assert RuntimeConfig.from_env({"MOT_PROMPT_LOOKUP": "0"}).prompt_lookup is False
    assert RuntimeConfig.from_env({}).prompt_lookup is True
    assert RuntimeConfig.from_env({}).prompt_lookup_cuda is False  # off on GPUs until shown to win there
    assert RuntimeConfig.from_env({"MOT_PROMPT_LOOKUP_CUDA": "1"}).prompt_lookup_cuda is True


def test_prompt_lookup_stays_off_on_a_cuda_model_unless_asked(perturbed_mot):
    """The Generator speculates on the CPU by default, on a CUDA model only with prompt_lookup_cuda."""
    from mot_engine.decoding.speculation import speculates_on

    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert speculates_on(cpu, RuntimeConfig()) and Generator(perturbed_mot, runtime=RuntimeConfig()).prompt_lookup
    assert not speculates_on(cuda, RuntimeConfig())
    assert speculates_on(cuda, RuntimeConfig(prompt_lookup_cuda=True))
    assert not speculates_on(cpu, RuntimeConfig(prompt_lookup=False))
    assert not speculates_on(cuda, RuntimeConfig(prompt_lookup=False, prompt_lookup_cuda=True))


@torch.no_grad()
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("path", ["cohorts", "slabs with CUDA graphs"])
def test_speculative_greedy_equals_plain_greedy_on_gpu(monkeypatch, path):
    """The same invariant on a CUDA device, on both decode paths (the slabs' verify steps replay captured graphs). fp32:
    a multi-token forward runs other kernels than a one-token step, and bf16 rounding could flip near-ties that are not
    the speculation's doing."""
    from conftest import perturb

    from mot_engine import build_mot

    torch.backends.cuda.matmul.allow_tf32 = False  # as the other fp32 GPU parity tests
    mot = build_mot("tiny", device="cuda", dtype="float32")
    perturb(mot)
    mot.eval()
    reqs = _requests(stop_at_eos=False)
    plain = Generator(mot, runtime=PLAIN, static_cache=False).generate(reqs)
    monkeypatch.setattr("mot_engine.decoding.generator.drafts_for", OracleDrafts(plain, reqs))
    gen = Generator(mot, runtime=SPECULATIVE, static_cache=False) if path == "cohorts" else Generator(mot, runtime=SPECULATIVE)
    assert gen.cuda_graphs == (path != "cohorts")
    spec = gen.generate(reqs)
    assert [r.token_ids for r in spec] == [r.token_ids for r in plain]
    assert sum(r.accepted_tokens for r in spec) > 0
    if gen.cuda_graphs:
        assert any(step.graph is not None for slab in gen._slab_pool for step in slab.wide.values())

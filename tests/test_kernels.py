"""Fused RMSNorm dispatch (mot_engine/kernels.py): same function, only inside decode steps, only where it is the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mot_engine import RuntimeConfig
from mot_engine.kernels.substitutions.norms import computes_rms_norm, fused_norms, install_fused_norms


def _tiny_causal_lm(model_type: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    extra = {"head_dim": 8} if model_type.startswith("gemma") else {}
    cfg = AutoConfig.for_model(model_type, vocab_size=64, num_hidden_layers=2, hidden_size=32, intermediate_size=64,
                               num_attention_heads=4, num_key_value_heads=2, **extra)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():  # trained-looking norm weights: the probe must not pass by an all-ones accident
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape) * 0.3)
    return model


@pytest.mark.parametrize("model_type,fusable", [("llama", True), ("qwen2", True), ("mistral", True),
                                                ("gemma", False), ("gemma3_text", False)])
def test_probe_accepts_exactly_the_norms_that_compute_rms_norm(model_type, fusable):
    model = _tiny_causal_lm(model_type)
    norms = [m for m in model.modules() if type(m).__name__.endswith("RMSNorm") and m.weight.dim() == 1]
    assert norms
    hidden = [m for m in norms if m.weight.numel() == 32]  # Gemma3's q/k norms (head_dim) are RMSNorms too
    assert {computes_rms_norm(m) for m in hidden} == {fusable}


class _Owner(torch.nn.Module):
    """Stands for the MixtureOfThoughts: install_fused_norms only needs `.experts`."""

    def __init__(self, experts):
        super().__init__()
        self.experts = torch.nn.ModuleList(experts)


def _counting(kernel, calls: list):
    """A reference kernel that records each call: where the dispatchers route, on CPU."""

    def counted(*args):
        calls.append(1)
        return kernel(*args)

    return counted


def test_dispatch_runs_the_fused_kernel_only_inside_the_block(monkeypatch):
    model = _tiny_causal_lm("qwen2")
    owner = _Owner([model])
    ids = torch.randint(0, 64, (2, 5))
    before = model(ids).logits
    keys_before = list(model.state_dict())
    count = install_fused_norms(owner)
    assert count == 2 * 2 + 1  # two per decoder layer and the final norm
    assert install_fused_norms(owner) == count  # idempotent: no double wrapping
    assert list(model.state_dict()) == keys_before  # the expert is not edited

    calls = []
    real = F.rms_norm
    monkeypatch.setattr(F, "rms_norm", lambda *a, **k: calls.append(1) or real(*a, **k))
    outside = model(ids).logits
    assert calls == [] and torch.equal(outside, before)  # the module's own forward, bit for bit
    with fused_norms(owner):
        inside = model(ids).logits
    assert len(calls) == count
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    with fused_norms(owner, on=False):
        model(ids)
    assert len(calls) == count


def test_gemma_norms_keep_their_forward_inside_the_block(monkeypatch):
    model = _tiny_causal_lm("gemma3_text")
    owner = _Owner([model])
    assert install_fused_norms(owner) == 0
    ids = torch.randint(0, 64, (1, 4))
    before = model(ids).logits
    with fused_norms(owner):
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


def test_fused_decoding_equals_unfused_decoding(perturbed_mot, monkeypatch):
    """Greedy tokens of both modes, static and dynamic cache paths, with and without the fused norms (fp32)."""
    from mot_engine import GenerationRequest, Generator

    mot = perturbed_mot
    reqs = [GenerationRequest("void f(int* a, int n) { for (int i = 0; i < n; ++i) a[i] = i; }", mode=m,
                              max_new_tokens=12, stop_at_eos=False, force_active=[0, 1]) for m in ("fast", "full")]
    plain = Generator(mot, static_cache=True, cuda_graphs=False, runtime=RuntimeConfig(fused_norms=False))
    assert not plain.fused_norms
    expected = [r.token_ids for r in plain.generate(reqs)]
    for static in (True, False):
        gen = Generator(mot, static_cache=static, cuda_graphs=False, runtime=RuntimeConfig())
        assert gen.fused_norms and mot._fused_norms_installed > 0
        assert [r.token_ids for r in gen.generate(reqs)] == expected
    assert not mot._use_fused_norms  # off again after decoding: training and scoring see the experts' forward


def test_small_query_attention_equals_sdpa():
    """The interaction's decode-step attention (explicit product) equals torch's fused kernel, padding included."""
    from mot_engine.model.interaction import SMALL_QUERY, _attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 8, t, 24, generator=g) for t in (1, 40, 40))
    mask = torch.zeros(3, 1, 1, 40, dtype=torch.bool)
    mask[0, ..., :10] = mask[1] = mask[2, ..., :1] = True
    for T in (1, SMALL_QUERY, SMALL_QUERY + 1):
        qt = torch.randn(3, 8, T, 24, generator=g)
        torch.testing.assert_close(_attend(qt, k, v, mask), F.scaled_dot_product_attention(qt, k, v, attn_mask=mask))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton GEMV needs a CUDA GPU")
def test_triton_gemv_equals_linear_on_gpu():
    from mot_engine.kernels.gemv import available, gemv

    if not available():
        pytest.skip("Triton is not installed")
    for n, k, bias in [(1536, 1536, True), (256, 1536, True), (8960, 1536, False), (1536, 8960, False), (1000, 300, True)]:
        w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k**0.5
        b = torch.randn(n, device="cuda", dtype=torch.bfloat16) if bias else None
        x = torch.randn(1, 1, k, device="cuda", dtype=torch.bfloat16)
        torch.testing.assert_close(gemv(x, w, b).float(), F.linear(x, w, b).float(), rtol=2e-2, atol=2e-2)
    if torch.cuda.device_count() > 1:  # a tensor on another GPU than the current one (experts split over GPUs)
        w, x = torch.randn(300, 200, device="cuda:1"), torch.randn(1, 200, device="cuda:1")
        torch.testing.assert_close(gemv(x, w), F.linear(x, w), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("model_type", ["qwen2", "llama", "starcoder2"])
def test_rotary_reference_equals_the_family_function(model_type):
    import importlib

    from mot_engine.kernels.substitutions.attention import computes_rotary
    from mot_engine.kernels.rotary import as_pair, rotary_reference

    family = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    original = getattr(family.apply_rotary_pos_emb, "mot_original", family.apply_rotary_pos_emb)
    assert computes_rotary(original, as_pair(rotary_reference), torch.device("cpu"), torch.float32)
    wrong = lambda x, cos, sin: rotary_reference(x, cos, -sin)  # noqa: E731 — the probe must tell them apart
    assert not computes_rotary(original, as_pair(wrong), torch.device("cpu"), torch.float32)
    swapped = lambda q, k, cos, sin: as_pair(rotary_reference)(k, q, cos, sin)  # noqa: E731
    assert not computes_rotary(original, swapped, torch.device("cpu"), torch.float32)


def test_rotary_dispatch_runs_the_kernel_only_inside_the_block(monkeypatch):
    import sys

    from mot_engine.kernels.substitutions.attention import fused_rotary, install_fused_rotary
    from mot_engine.kernels.rotary import rotary_reference

    model = _tiny_causal_lm("qwen2")
    family = sys.modules[type(model.model.layers[0].self_attn).__module__]
    current = family.apply_rotary_pos_emb  # the family's own function for this test (a GPU engine built earlier in
    monkeypatch.setattr(family, "apply_rotary_pos_emb", getattr(current, "mot_original", current))  # this process
    # may have installed the Triton dispatcher); restored after the test
    owner = _Owner([model])
    ids = torch.randint(0, 64, (2, 5))
    before = model(ids).logits
    calls = []
    assert install_fused_rotary(owner, kernel=_counting(rotary_reference, calls)) == 1
    calls.clear()  # the install probe's calls
    assert torch.equal(model(ids).logits, before) and not calls  # outside the block: the family's own function
    with fused_rotary():
        inside = model(ids).logits
    assert len(calls) == 2 * 2  # q and k of both layers
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton rotary kernel needs a CUDA GPU")
def test_triton_rotary_equals_the_reference_on_gpu():
    from mot_engine.kernels.rotary import available, rotary, rotary_pair, rotary_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for B, H, T, D in [(1, 12, 1, 128), (16, 2, 1, 128), (3, 4, 5, 64)]:
            x = torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)  # q_proj's view, not contiguous
            cos, sin = (torch.randn(B, T, D, device="cuda", dtype=dtype) for _ in range(2))
            tol = 1e-6 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(rotary(x, cos, sin), rotary_reference(x, cos, sin), rtol=tol, atol=tol)
            k = torch.randn(B, T, max(1, H // 6), D, device="cuda", dtype=dtype).transpose(1, 2)  # grouped k heads
            yq, yk = rotary_pair(x, k, cos, sin)
            assert torch.equal(yq, rotary(x, cos, sin)) and torch.equal(yk, rotary(k, cos, sin))
            yq, _ = rotary_pair(x, k, cos[:1], sin[:1])  # a batched prefill's cos/sin: one row for all
            torch.testing.assert_close(yq, rotary_reference(x, cos[:1], sin[:1]), rtol=tol, atol=tol)


def _one_two_many(model):
    """A decode step of one row, a slab's two rows, and a 17-position prefill (past the rows kernels' 16), with the
    model's logits for each before any substitution is on."""
    inputs = torch.randint(0, 64, (1, 1)), torch.randint(0, 64, (2, 1)), torch.randint(0, 64, (1, 17))
    return inputs, [model(ids).logits for ids in inputs]


def test_gated_mlp_dispatch_runs_the_fused_kernel_only_inside_the_block():
    from mot_engine.kernels.gemv import gemv_glu_reference
    from mot_engine.kernels.substitutions.linear import fused_mlp, install_fused_mlp

    qwen, starcoder = _tiny_causal_lm("qwen2"), _tiny_causal_lm("starcoder2")  # starcoder2: c_fc/c_proj, not gated
    owner = _Owner([qwen, starcoder])
    keys_before = list(qwen.state_dict())
    calls = []
    kernel = _counting(gemv_glu_reference, calls)
    assert install_fused_mlp(owner, kernel=kernel) == 2  # qwen's two layers; starcoder2's MLPs are not gated
    assert install_fused_mlp(owner, kernel=kernel) == 2 and list(qwen.state_dict()) == keys_before
    calls.clear()  # the install probes' calls
    (one, two, many), before = _one_two_many(qwen)
    assert not calls
    with fused_mlp(owner):
        inside = [qwen(one).logits, qwen(two).logits]  # one row, and a slab's two rows: fused
        assert len(calls) == 4
        assert torch.equal(qwen(many).logits, before[2]) and len(calls) == 4  # 17 rows: the module's own forward
    for got, want in zip(inside, before):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with fused_mlp(owner, on=False):
        qwen(one)
    assert len(calls) == 4


def test_gated_mlp_probe_rejects_another_activation():
    from mot_engine.kernels.gemv import gemv_glu_reference
    from mot_engine.kernels.substitutions.linear import computes_gated_mlp

    mlp = _tiny_causal_lm("qwen2").model.layers[0].mlp
    assert computes_gated_mlp(mlp, gemv_glu_reference)
    mlp.act_fn = torch.nn.GELU()
    assert not computes_gated_mlp(mlp, gemv_glu_reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_gated_gemv_equals_the_reference_on_gpu():
    from mot_engine.kernels.gemv import available, gemv_glu, gemv_glu_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for n, k in [(8960, 1536), (5504, 2048), (100, 300)]:
            g, u = (torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(2))
            x = torch.randn(1, 1, k, device="cuda", dtype=dtype)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(gemv_glu(x, g, u).float(), gemv_glu_reference(x, g, u).float(), rtol=tol, atol=tol)


def test_rotary_probe_refuses_a_function_with_another_signature():
    from mot_engine.kernels.substitutions.attention import computes_rotary
    from mot_engine.kernels.rotary import as_pair, rotary_reference

    def needs_positions(q, k, cos, sin, position_ids):  # an older family signature: not ours to replace
        raise AssertionError("never called with four arguments")

    assert not computes_rotary(needs_positions, as_pair(rotary_reference), torch.device("cpu"), torch.float32)


def _decode_inputs(C=3, H=6, Hk=2, M=70, D=32, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(0)
    q = torch.randn(C, 1, H, D, generator=g).to(device, dtype).transpose(1, 2)  # (C, H, 1, D) as q_proj's view
    k, v = (torch.randn(C, Hk, M, D, generator=g).to(device, dtype) for _ in range(2))
    mask = torch.zeros(C, 1, 1, M, dtype=dtype, device=device)
    mask[0, ..., 40:] = torch.finfo(dtype).min  # a shorter row
    mask[1:2, ..., :30] = torch.finfo(dtype).min  # a row whose first columns are free (if there is a second row)
    return q, k, v, mask


def test_decode_attention_reference_equals_transformers_sdpa():
    """The function the kernel must compute is the registered "sdpa" attention's (grouped heads, additive mask)."""
    from types import SimpleNamespace

    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from mot_engine.kernels.decode_attention import decode_attention_reference

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    sdpa = getattr(sdpa, "mot_original", sdpa)
    q, k, v, mask = _decode_inputs()
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    for m in (mask, None):
        want, _ = sdpa(module, q, k, v, m, dropout=0.0, scaling=0.2)
        torch.testing.assert_close(decode_attention_reference(q, k, v, m, 0.2), want, rtol=1e-5, atol=1e-5)


def test_decode_attention_dispatch_only_inside_the_block_for_decode_and_verify_steps(monkeypatch):
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from mot_engine.kernels.decode_attention import decode_attention_reference
    from mot_engine.kernels.substitutions.attention import decode_attention_on, install_decode_attention

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]  # the original for this test (see the rotary test); restored after
    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa", getattr(current, "mot_original", current))
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model("qwen2", vocab_size=64, num_hidden_layers=2, hidden_size=128, intermediate_size=64,
                               num_attention_heads=4, num_key_value_heads=2)  # head size 32: the kernel's smallest
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa").eval()
    calls = []
    assert install_decode_attention(_Owner([model]), kernel=_counting(decode_attention_reference, calls)) == 1
    calls.clear()  # the install probe's call
    prompt = torch.randint(0, 64, (2, 6))
    nxt = torch.randint(0, 64, (2, 1))
    mask = torch.zeros(2, 1, 1, 7)
    mask[1, ..., :2] = torch.finfo(torch.float32).min  # row 1's first two prompt tokens are padding

    def decode():
        cache = DynamicCache(config=model.config)
        prefill_mask = torch.ones(2, 6, dtype=torch.long)
        prefill_mask[1, :2] = 0
        model(prompt, attention_mask=prefill_mask, cache=cache)  # six positions: never the kernel
        return model(nxt, attention_mask=mask, cache=cache, position_ids=torch.tensor([[6], [4]])).logits

    def verify():  # a verify step's three positions, each seeing the columns up to its own (an additive mask)
        cache = DynamicCache(config=model.config)
        model(prompt, cache=cache)
        wide = torch.zeros(2, 1, 3, 9)
        for t in range(3):
            wide[:, :, t, 6 + t + 1:] = torch.finfo(torch.float32).min
        wide[1, ..., 4] = torch.finfo(torch.float32).min  # a hole: a column row 1 rejected earlier
        return model(torch.randint(0, 64, (2, 3), generator=torch.Generator().manual_seed(1)), attention_mask=wide,
                     cache=cache, position_ids=torch.arange(6, 9).expand(2, 3)).logits

    before, before_wide = decode(), verify()
    assert not calls
    with decode_attention_on():
        inside = decode()
        assert len(calls) == 2  # one decode position, two layers (the prompt's boolean-masked prefill: never)
        inside_wide = verify()
        assert len(calls) == 4  # the verify step's three positions, two layers
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(inside_wide, before_wide, rtol=1e-5, atol=1e-5)


def test_decode_attention_probe_says_which_steps_the_kernel_may_take():
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from mot_engine.kernels.decode_attention import MAX_QUERIES, decode_attention_reference
    from mot_engine.kernels.substitutions.attention import computes_decode_attention

    current = ALL_ATTENTION_FUNCTIONS["sdpa"]
    original = getattr(current, "mot_original", current)

    def one_query_only(q, k, v, mask, scale):  # right for a decode step, wrong for a verify step's positions
        out = decode_attention_reference(q, k, v, mask, scale)
        return out if q.shape[2] == 1 else out + 1

    def wrong(q, k, v, mask, scale):
        return decode_attention_reference(q, k, v, mask, scale) * 2

    cpu = torch.device("cpu")
    assert computes_decode_attention(original, decode_attention_reference, cpu, torch.float32) == MAX_QUERIES
    assert computes_decode_attention(original, one_query_only, cpu, torch.float32) == 1  # decode steps keep it
    assert computes_decode_attention(original, wrong, cpu, torch.float32) == 0


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_decode_attention_equals_the_reference_on_gpu():
    from mot_engine.kernels.decode_attention import available, decode_attention, decode_attention_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for C, H, Hk, M, D in [(1, 12, 2, 512, 128), (16, 12, 2, 300, 128), (3, 16, 16, 70, 64), (2, 32, 4, 1024, 128)]:
            q, k, v, mask = _decode_inputs(C, H, Hk, M, D, dtype, "cuda")
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            for m in (mask, None):
                torch.testing.assert_close(decode_attention(q, k, v, m, D**-0.5).float(),
                                           decode_attention_reference(q, k, v, m, D**-0.5).float(), rtol=tol, atol=tol)
            for T in (4, min(16, 64 // (H // Hk))):  # a verify step's positions, up to 64 query rows a program
                qt = torch.randn(C, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)
                wide = mask.expand(C, 1, T, M).clone()
                for t in range(T):
                    wide[:, :, t, M - T + t + 1:] = torch.finfo(dtype).min
                torch.testing.assert_close(decode_attention(qt, k, v, wide, D**-0.5).float(),
                                           decode_attention_reference(qt, k, v, wide, D**-0.5).float(), rtol=tol,
                                           atol=tol)


# ---------------------------------------------------------------------------------------------------- q/k/v in one launch


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])  # q/k/v with biases (Qwen2) and without (Llama)
def test_qkv_dispatch_runs_one_launch_per_attention_only_inside_the_block(model_type):
    from mot_engine.kernels.gemv import gemv_qkv_reference
    from mot_engine.kernels.substitutions.linear import fused_qkv, install_fused_qkv

    model = _tiny_causal_lm(model_type)
    owner = _Owner([model])
    keys_before = list(model.state_dict())
    calls = []
    assert install_fused_qkv(owner, kernel=_counting(gemv_qkv_reference, calls)) == 2  # one per attention
    assert install_fused_qkv(owner, kernel=_counting(gemv_qkv_reference, calls)) == 2
    assert list(model.state_dict()) == keys_before
    calls.clear()  # the install probes' calls
    (one, two, many), before = _one_two_many(model)
    assert not calls
    with fused_qkv(owner):
        inside = model(one).logits  # one row: one launch for the three products of each layer
        assert len(calls) == 2
        torch.testing.assert_close(model(two).logits, before[1], rtol=0, atol=0)  # a slab's two rows: one launch too
        assert len(calls) == 4
        assert torch.equal(model(many).logits, before[2]) and len(calls) == 4  # 17 rows: each layer's own forward
        attention = model.model.layers[0].self_attn
        x, other = torch.randn(1, 1, 32), torch.randn(1, 1, 32)
        q = attention.q_proj(x)
        # k_proj called on another tensor than q_proj's computes its own; v_proj on the same one takes the kept result
        torch.testing.assert_close(attention.k_proj(other), F.linear(other, attention.k_proj.weight,
                                                                     attention.k_proj.bias), rtol=0, atol=0)
        torch.testing.assert_close(attention.v_proj(x), F.linear(x, attention.v_proj.weight, attention.v_proj.bias),
                                   rtol=0, atol=0)
        assert len(calls) == 5 and q.shape[-1] == attention.q_proj.out_features
    torch.testing.assert_close(inside, before[0], rtol=0, atol=0)
    with fused_qkv(owner, on=False):
        model(one)
    assert len(calls) == 5


def test_qkv_probe_rejects_a_kernel_that_swaps_outputs():
    from mot_engine.kernels.gemv import gemv_qkv_reference
    from mot_engine.kernels.substitutions.linear import computes_qkv

    attention = _tiny_causal_lm("qwen2").model.layers[0].self_attn
    assert computes_qkv(attention, gemv_qkv_reference)
    assert not computes_qkv(attention, lambda x, w, b: (lambda q, k, v: (q, v, k))(*gemv_qkv_reference(x, w, b)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_qkv_equals_three_gemvs_on_gpu():
    from mot_engine.kernels.gemv import available, default_blocks, gemv, gemv_qkv, gemv_qkv_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for nq, nk, k, bias in [(1536, 256, 1536, True), (2048, 2048, 2048, False), (3072, 256, 3072, True),
                                (100, 30, 300, True)]:
            ws = [torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for n in (nq, nk, nk)]
            bs = [torch.randn(n, device="cuda", dtype=dtype) for n in (nq, nk, nk)] if bias else None
            x = torch.randn(1, 1, k, device="cuda", dtype=dtype)
            got = gemv_qkv(x, ws, bs)
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            for g, w, b, r in zip(got, ws, bs or [None] * 3, gemv_qkv_reference(x, ws, bs)):
                assert torch.equal(g, gemv(x, w, b, default_blocks(nq, k)))  # the same blocks, the same sums
                torch.testing.assert_close(g.float(), r.float(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------- interaction


def _memory_slots(B, H, S, D, device, n=2, seed=0):
    from mot_engine.model.interaction import MemorySlot

    g = torch.Generator().manual_seed(seed)
    slots = []
    for r in range(n):
        mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
        mask[0, ..., 10 + r:] = False  # padded memory
        mask[-1, ..., 1:] = False  # a free slab row: one real key
        slots.append(MemorySlot(key=torch.randn(B, H, S, D, generator=g).to(device),
                                value=torch.randn(B, H, S, D, generator=g).to(device), mask=mask.to(device),
                                weight=torch.rand(B, generator=g).to(device)))
    return slots


def test_memory_attention_reference_equals_the_interaction_attention():
    from mot_engine.model.interaction import _attend
    from mot_engine.kernels.interaction_kernels import memory_attention_reference

    slots = _memory_slots(3, 4, 30, 24, "cpu")
    q = torch.randn(3, 4, 1, 24)
    want = sum(s.weight.view(3, 1, 1, 1) * _attend(q, s.key, s.value, s.mask) for s in slots)
    torch.testing.assert_close(memory_attention_reference(q, slots), want, rtol=1e-6, atol=1e-6)


def test_fused_interaction_decoding_equals_plain_decoding(perturbed_mot):
    """Full MoT in fp32, both cache paths: the decode steps' fused interaction path (the kernels' references here)
    gives the same tokens as InteractionLayer.update, and runs at every stack of every decode step."""
    import copy

    from mot_engine import GenerationRequest, Generator
    from mot_engine.kernels.interaction_kernels import gated_residual_reference, memory_attention_reference
    from mot_engine.kernels.substitutions.interaction import install_fused_interaction

    mot = copy.deepcopy(perturbed_mot).eval()
    reqs = [GenerationRequest(s, mode="full", max_new_tokens=10, stop_at_eos=False, force_active=f)
            for s, f in (("void f(int* a, int n) { for (int i = 0; i < n; ++i) a[i] = i; }", [0, 1]),
                         ("int g(int x) { return x * 2; }", [1, 2]))]
    expected = [r.token_ids for r in Generator(mot, static_cache=True, cuda_graphs=False).generate(reqs)]
    calls = []
    assert install_fused_interaction(mot, (_counting(memory_attention_reference, calls),
                                           _counting(gated_residual_reference, calls), F.linear)) == 1
    calls.clear()
    for static in (True, False):
        gen = Generator(mot, static_cache=static, cuda_graphs=False)
        gen.fused_interaction = True  # on CPU the Generator enables only what runs there; the references do
        assert [r.token_ids for r in gen.generate(reqs)] == expected
        assert len(calls) >= 2 * mot.config.num_stacks * 9  # two kernels per stack, every decode step
        calls.clear()
    assert not mot._use_fused_interaction  # off after decoding: training and prefill keep update()


def test_fused_interaction_reports_nonfinite_updates(perturbed_mot):
    import copy

    from mot_engine import GenerationRequest, Generator, NonFiniteError
    from mot_engine.kernels.interaction_kernels import gated_residual_reference, memory_attention_reference
    from mot_engine.kernels.substitutions.interaction import install_fused_interaction

    mot = copy.deepcopy(perturbed_mot).eval()
    assert install_fused_interaction(mot, (memory_attention_reference, gated_residual_reference, F.linear)) == 1
    with torch.no_grad():
        mot.interaction[1].gate[0].fill_(float("nan"))
    gen = Generator(mot, static_cache=True, cuda_graphs=False)
    gen.fused_interaction = True
    with pytest.raises(NonFiniteError):
        gen.generate([GenerationRequest("int g(int x) { return x; }", mode="full", max_new_tokens=4,
                                        force_active=[0, 1])])


def test_interaction_probe_rejects_kernels_that_differ(perturbed_mot):
    from mot_engine.kernels.interaction_kernels import gated_residual_reference, memory_attention_reference
    from mot_engine.kernels.substitutions.interaction import computes_interaction

    mot = perturbed_mot
    assert computes_interaction(mot, memory_attention_reference, gated_residual_reference, F.linear)
    first_slot_only = lambda q, slots: memory_attention_reference(q, slots[:1])  # noqa: E731
    assert not computes_interaction(mot, first_slot_only, gated_residual_reference, F.linear)
    no_bias = lambda x, w, b: F.linear(x, w)  # noqa: E731
    assert not computes_interaction(mot, memory_attention_reference, gated_residual_reference, no_bias)

    def no_flag(hidden, y, norm, gate, weight, clamp, nonfinite):
        return gated_residual_reference(hidden, y, norm, gate, weight, clamp, torch.zeros_like(nonfinite))

    assert not computes_interaction(mot, memory_attention_reference, no_flag, F.linear)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_interaction_kernels_equal_the_references_on_gpu():
    from types import SimpleNamespace

    from mot_engine.kernels.interaction_kernels import (available, gated_residual, gated_residual_reference, memory_attention,
                                                memory_attention_reference)

    if not available():
        pytest.skip("Triton is not installed")
    for B, H, T, S, D in [(1, 8, 1, 211, 192), (16, 8, 1, 300, 192), (3, 4, 5, 40, 24)]:
        slots = _memory_slots(B, H, S, D, "cuda")
        q = torch.randn(B, H, T, D, device="cuda")
        for used in (slots[:1], slots):
            torch.testing.assert_close(memory_attention(q, used), memory_attention_reference(q, used),
                                       rtol=1e-4, atol=1e-4)
    for dtype in (torch.float32, torch.bfloat16):
        for B, T, d in [(1, 1, 1536), (16, 1, 2048), (2, 3, 3072), (2, 1, 100)]:
            norm = SimpleNamespace(weight=torch.randn(d, device="cuda"), bias=torch.randn(d, device="cuda"), eps=1e-5,
                                   normalized_shape=(d,))
            hidden = torch.randn(B, T, d, device="cuda").to(dtype)
            y, gate, weight = torch.randn(B, T, d, device="cuda") * 3, torch.randn(d, device="cuda"), torch.rand(B, device="cuda")
            flags = [torch.zeros((), dtype=torch.bool, device="cuda") for _ in range(2)]
            got = gated_residual(hidden, y, norm, gate, weight, 2.0, flags[0])
            want = gated_residual_reference(hidden, y, norm, gate, weight, 2.0, flags[1])
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
            assert not flags[0] and not flags[1]
            y[-1, -1, 7] = float("nan")
            gated_residual(hidden, y, norm, gate, weight, 2.0, flags[0])
            assert flags[0]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_rms_norm_cache_write_and_float32_gemv_on_gpu():
    from mot_engine.kernels.decode_attention import write_token
    from mot_engine.kernels.interaction_kernels import linear
    from mot_engine.kernels.rms_norm import available, rms_norm

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        tol = 1e-5 if dtype == torch.float32 else 2e-2
        for shape in [(1, 1, 1536), (16, 1, 2048), (2, 3, 3072), (1, 1, 100)]:
            x, w = torch.randn(*shape, device="cuda", dtype=dtype), torch.randn(shape[-1], device="cuda", dtype=dtype)
            torch.testing.assert_close(rms_norm(x, w, 1e-6).float(), F.rms_norm(x, shape[-1:], w, 1e-6).float(),
                                       rtol=tol, atol=tol)
        for C, Hk, M, D in [(1, 2, 300, 128), (16, 16, 40, 64)]:
            keys, values = (torch.randn(C, Hk, M, D, device="cuda", dtype=dtype) for _ in range(2))
            k = torch.randn(C, Hk, 1, D, device="cuda", dtype=dtype)
            v = torch.randn(C, 1, Hk, D, device="cuda", dtype=dtype).transpose(1, 2)  # v_proj's view
            column = torch.tensor([M - 3], device="cuda")
            want_k, want_v = keys.clone().index_copy_(2, column, k), values.clone().index_copy_(2, column, v)
            write_token(keys, values, k, v, column)
            assert torch.equal(keys, want_k) and torch.equal(values, want_v)
    x, w, b = torch.randn(1, 1, 1536, device="cuda"), torch.randn(2048, 1536, device="cuda") / 40, torch.randn(2048, device="cuda")
    torch.testing.assert_close(linear(x, w, b), F.linear(x, w, b), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs a second GPU")
def test_new_kernels_launch_on_their_tensors_gpu():
    """Experts may sit on another GPU than the current one: each kernel launches where its tensors are."""
    from types import SimpleNamespace

    from mot_engine.kernels.decode_attention import write_token
    from mot_engine.kernels.gemv import gemv_qkv, gemv_qkv_reference
    from mot_engine.kernels.interaction_kernels import (gated_residual, gated_residual_reference, memory_attention,
                                                memory_attention_reference)
    from mot_engine.kernels.rms_norm import rms_norm
    from mot_engine.kernels.rotary import rotary_pair, rotary_reference

    dev = "cuda:1"
    assert torch.cuda.current_device() == 0
    ws, bs, x = [torch.randn(n, 64, device=dev) for n in (64, 16, 16)], [torch.randn(n, device=dev) for n in (64, 16, 16)], torch.randn(1, 64, device=dev)
    for got, want in zip(gemv_qkv(x, ws, bs), gemv_qkv_reference(x, ws, bs)):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    q, k = torch.randn(1, 4, 1, 32, device=dev), torch.randn(1, 2, 1, 32, device=dev)
    cos, sin = torch.randn(1, 1, 32, device=dev), torch.randn(1, 1, 32, device=dev)
    for got, t in zip(rotary_pair(q, k, cos, sin), (q, k)):
        torch.testing.assert_close(got, rotary_reference(t, cos, sin), rtol=1e-5, atol=1e-5)
    w = torch.randn(64, device=dev)
    torch.testing.assert_close(rms_norm(x, w, 1e-6), F.rms_norm(x, (64,), w, 1e-6), rtol=1e-5, atol=1e-5)
    keys, values = torch.zeros(1, 2, 8, 32, device=dev), torch.zeros(1, 2, 8, 32, device=dev)
    write_token(keys, values, k, k, torch.tensor([3], device=dev))
    assert torch.equal(keys[:, :, 3:4], k) and torch.equal(values[:, :, 3:4], k)
    slots = _memory_slots(2, 4, 30, 24, dev)
    qm = torch.randn(2, 4, 1, 24, device=dev)
    torch.testing.assert_close(memory_attention(qm, slots), memory_attention_reference(qm, slots), rtol=1e-4, atol=1e-4)
    norm = SimpleNamespace(weight=torch.randn(64, device=dev), bias=torch.randn(64, device=dev), eps=1e-5,
                           normalized_shape=(64,))
    h, y, gate, pw = torch.randn(2, 1, 64, device=dev), torch.randn(2, 1, 64, device=dev), torch.randn(64, device=dev), torch.rand(2, device=dev)
    flags = [torch.zeros((), dtype=torch.bool, device=dev) for _ in range(2)]
    torch.testing.assert_close(gated_residual(h, y, norm, gate, pw, 2.0, flags[0]),
                               gated_residual_reference(h, y, norm, gate, pw, 2.0, flags[1]), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------------- residual adds

def _residual_kernels(calls: dict):
    from mot_engine.kernels.gemv import gemv_glu_reference, gemv_reference
    from mot_engine.kernels.rms_norm import add_rms_norm_reference

    def counted(name, kernel):
        def run(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return kernel(*args, **kwargs)
        return run

    return counted("add_norm", add_rms_norm_reference), gemv_glu_reference, counted("down", gemv_reference)


@pytest.mark.parametrize("model_type", ["qwen2", "llama"])
def test_fused_residual_dispatch_folds_both_adds_only_inside_the_block(model_type):
    from mot_engine.kernels.gemv import gemv_glu_reference
    from mot_engine.kernels.substitutions.linear import fused_mlp, install_fused_mlp
    from mot_engine.kernels.substitutions.residual import fused_residual, install_fused_residual

    model, starcoder = _tiny_causal_lm(model_type), _tiny_causal_lm("starcoder2")  # starcoder2: LayerNorms
    owner = _Owner([model, starcoder])
    keys_before = list(model.state_dict())
    calls: dict = {}
    assert install_fused_mlp(owner, kernel=gemv_glu_reference) == 2
    assert install_fused_residual(owner, kernels=_residual_kernels(calls)) == 2  # the two layers of one expert
    assert install_fused_residual(owner) == 2 and list(model.state_dict()) == keys_before
    calls.clear()  # the install probes' calls
    one, two, prompt = torch.randint(0, 64, (1, 1)), torch.randint(0, 64, (2, 1)), torch.randint(0, 64, (1, 5))
    before = [model(ids).logits for ids in (one, two, prompt)]
    assert not calls
    with fused_residual(owner), fused_mlp(owner):
        inside = model(one).logits  # one row: both adds folded
        assert calls == {"add_norm": 2, "down": 2}
        torch.testing.assert_close(model(two).logits, before[1], rtol=1e-5, atol=1e-5)  # two rows: the MLP's own
        assert calls == {"add_norm": 4, "down": 2}
        assert torch.equal(model(prompt).logits, before[2]) and calls == {"add_norm": 4, "down": 2}  # a prefill
    torch.testing.assert_close(inside, before[0], rtol=1e-5, atol=1e-5)
    with fused_residual(owner):  # the gated MLP not fused: its module runs, and the second add stays
        torch.testing.assert_close(model(one).logits, before[0], rtol=1e-5, atol=1e-5)
        assert calls == {"add_norm": 6, "down": 2}
    model(one)
    assert calls == {"add_norm": 6, "down": 2}  # outside the block: the layers' own forward


def test_fused_residual_probe_rejects_other_layer_structures():
    from mot_engine.kernels.substitutions.residual import computes_layer

    model = _tiny_causal_lm("qwen2")
    layer = model.model.layers[0]
    kernels = _residual_kernels({})
    assert computes_layer(layer, kernels, mlp_fused=True) and computes_layer(layer, kernels, mlp_fused=False)
    base = type(layer)

    class ParallelResidual(base):  # GPT-J style: attention and MLP both read the layer's input
        def forward(self, hidden_states, **kwargs):
            x = self.input_layernorm(hidden_states)
            return hidden_states + self.self_attn(hidden_states=x, **kwargs)[0] + self.mlp(x)

    class MoreAttentionArguments(base):  # the attention gets an argument the fused forward would not pass
        def forward(self, hidden_states, **kwargs):
            return base.forward(self, hidden_states, output_attentions=False, **kwargs)

    for cls in (ParallelResidual, MoreAttentionArguments):
        layer.__class__ = cls
        assert not computes_layer(layer, kernels, mlp_fused=True), cls.__name__
    layer.__class__ = base
    assert computes_layer(layer, kernels, mlp_fused=True)  # (the MLP's own function: computes_gated_mlp's probe)


def test_fused_residual_decoding_equals_plain_decoding(perturbed_mot):
    """Both modes in fp32, both cache paths: decode steps through the folded adds (the references here) give the
    tokens of the layers' own forward, and run at every layer of every decode step."""
    import copy

    from mot_engine import GenerationRequest, Generator
    from mot_engine.kernels.gemv import gemv_glu_reference
    from mot_engine.kernels.substitutions.linear import install_fused_mlp
    from mot_engine.kernels.substitutions.residual import install_fused_residual

    mot = copy.deepcopy(perturbed_mot).eval()
    reqs = [GenerationRequest(s, mode=m, max_new_tokens=10, stop_at_eos=False, force_active=f)
            for s, m, f in (("void f(int* a, int n) { for (int i = 0; i < n; ++i) a[i] = i; }", "full", [0, 1]),
                            ("int g(int x) { return x * 2; }", "fast", [1, 2]),
                            ("int h(int x) { return x - 1; }", "full", [1, 0]))]
    expected = [r.token_ids for r in Generator(mot, static_cache=True, cuda_graphs=False).generate(reqs)]
    calls: dict = {}
    install_fused_mlp(mot, kernel=gemv_glu_reference)
    installed = install_fused_residual(mot, kernels=_residual_kernels(calls))
    assert installed >= 4  # the Llama-family experts' layers (starcoder2's LayerNorm layers keep their forward)
    for static in (True, False):
        calls.clear()
        gen = Generator(mot, static_cache=static, cuda_graphs=False)
        gen.fused_residual = gen.fused_mlp = True  # on CPU the Generator enables only what runs there
        assert [r.token_ids for r in gen.generate(reqs)] == expected
        assert calls["add_norm"] >= 9 * 2 and calls["down"] >= 9 * 2  # every layer of every decode step
    assert not mot._use_fused_residual  # off after decoding: training and prefill keep the layers' forward


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_residual_folds_equal_the_two_ops_bit_for_bit_on_gpu():
    from mot_engine.kernels.gemv import available, gemv
    from mot_engine.kernels.rms_norm import add_rms_norm, rms_norm

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for shape in [(1, 1, 1536), (16, 1, 2048), (3, 1, 100)]:
            x, r, w = (torch.randn(*s, device="cuda", dtype=dtype) for s in (shape, shape, shape[-1:]))
            y, s = add_rms_norm(x, r, w, 1e-6)
            assert torch.equal(s, r + x) and torch.equal(y, rms_norm(r + x, w, 1e-6))
        for n, k in [(1536, 8960), (2048, 5504), (100, 300)]:
            x, w = torch.randn(1, 1, k, device="cuda", dtype=dtype), torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5
            r = torch.randn(1, 1, n, device="cuda", dtype=dtype)
            assert torch.equal(gemv(x, w, residual=r), r + gemv(x, w))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_rows_kernels_equal_the_references_on_gpu():
    """A slab's 2..16 rows at the Qwen2.5-Coder-1.5B shapes: q/k/v with biases, and the gate/up pair."""
    from mot_engine.kernels.gemv import available, gemv_glu, gemv_glu_reference, gemv_qkv, gemv_qkv_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        for rows in (2, 16):
            x = torch.randn(rows, 1, 1536, device="cuda", dtype=dtype)
            ws = [torch.randn(n, 1536, device="cuda", dtype=dtype) / 40 for n in (1536, 256, 256)]
            bs = [torch.randn(n, device="cuda", dtype=dtype) for n in (1536, 256, 256)]
            for got, want in zip(gemv_qkv(x, ws, bs), gemv_qkv_reference(x, ws, bs)):
                torch.testing.assert_close(got.float(), want.float(), rtol=tol, atol=tol)
            g, u = (torch.randn(8960, 1536, device="cuda", dtype=dtype) / 40 for _ in range(2))
            torch.testing.assert_close(gemv_glu(x, g, u).float(), gemv_glu_reference(x, g, u).float(), rtol=tol, atol=tol)


# ---------------------------------------------------------------------------------------------------- launches

def test_programmatic_launch_stays_off_without_a_hopper_gpu(perturbed_mot):
    """On a CPU (or a GPU before Hopper) the kernels launch as before: no PDL constexpr set, no launch attribute."""
    from mot_engine import Generator
    from mot_engine.kernels.gemv import launch_options
    from mot_engine.kernels.substitutions.launch import programmatic_launch_supported

    assert not programmatic_launch_supported(torch.device("cpu"))
    gen = Generator(perturbed_mot, static_cache=True, cuda_graphs=False)
    assert not gen.programmatic_launch and "programmatic" not in gen.decoding
    with gen.substitutions():
        assert launch_options() == {"PDL": False}


@pytest.mark.skipif(not torch.cuda.is_available(), reason="programmatic dependent launch needs a CUDA GPU")
def test_programmatic_launch_gives_the_tokens_of_plain_launches_on_gpu(monkeypatch):
    """fp32 on a GPU, graph-replayed decode and prefill: one request alone and three in one slab (the rows
    kernels), both modes, give the same tokens with programmatic dependent launch as without; the launch option is
    on only inside the engine's forwards."""
    from conftest import perturb

    from mot_engine import GenerationRequest, Generator, build_mot
    from mot_engine.kernels.gemv import PROGRAMMATIC_LAUNCH
    from mot_engine.kernels.substitutions.launch import programmatic_launch_supported

    if not programmatic_launch_supported(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs a Hopper or newer GPU and a Triton that has it")
    torch.backends.cuda.matmul.allow_tf32 = False
    mot = build_mot("tiny", device="cuda", dtype="float32")
    perturb(mot)
    src = "void axpy(int n, float a, const float* x, float* y) { for (int i = 0; i < n; ++i) y[i] += a * x[i]; }\n"
    reqs = [GenerationRequest(src * (1 + i), mode=mode, max_new_tokens=24, stop_at_eos=False, force_active=[0, 1])
            for mode in ("fast", "full") for i in range(3)]

    def run(gen):
        alone = [gen.generate([r])[0].token_ids for r in reqs]
        together = [r.token_ids for r in gen.generate(reqs)]
        return alone, together

    plain = Generator(mot, runtime=RuntimeConfig(pdl=False))
    assert not plain.programmatic_launch
    expected = run(plain)
    gen = Generator(mot, runtime=RuntimeConfig())
    assert gen.programmatic_launch and "programmatic dependent launch" in gen.decoding
    assert run(gen) == expected
    assert not PROGRAMMATIC_LAUNCH["on"]  # off again outside the engine's forwards


@pytest.mark.skipif(not torch.cuda.is_available(), reason="programmatic dependent launch needs a CUDA GPU")
def test_programmatic_launch_probe_says_no_when_the_capture_fails(monkeypatch, caplog):
    from mot_engine import graph_capture
    from mot_engine.kernels.substitutions.launch import computes_with_programmatic_launch, programmatic_launch_supported

    if not programmatic_launch_supported(torch.device("cuda")):
        pytest.skip("programmatic dependent launch needs a Hopper or newer GPU and a Triton that has it")
    assert computes_with_programmatic_launch(torch.device("cuda"))

    def broken(*args, **kwargs):
        raise RuntimeError("operation not permitted when stream is capturing")

    monkeypatch.setattr(graph_capture, "capture", broken)
    assert not computes_with_programmatic_launch(torch.device("cuda"))
    assert "failed its probe" in caplog.text and "operation not permitted" in caplog.text


def test_every_decode_kernel_waits_before_it_touches_what_a_kernel_before_it_wrote():
    """Programmatic dependent launch lets a kernel start before the one before it has finished: each kernel of the
    decode path must take the PDL flag, and before its `if PDL:` wait it may only load weights (which no kernel
    writes) — no store, no load of activations, caches or scratch."""
    import ast
    import inspect
    import textwrap

    pytest.importorskip("triton")
    from mot_engine.kernels import decode_attention
    from mot_engine.kernels import gemv
    from mot_engine.kernels import interaction_kernels
    from mot_engine.kernels import rms_norm
    from mot_engine.kernels import rotary
    factories = [gemv._kernel, gemv._glu_kernel, gemv._qkv_kernel, gemv._rows_kernels, rotary._kernel,
                 decode_attention._kernels, rms_norm._kernel, interaction_kernels._attention_kernels,
                 interaction_kernels._residual_kernel]
    weights = {"w_ptr", "g_ptr", "u_ptr"}
    checked = []
    for factory in factories:
        for kernel in factory.__wrapped__()[1:]:  # built afresh: the cached kernels stay as their tests built them
            tree = ast.parse(textwrap.dedent(inspect.getsource(kernel.fn)))
            fn = tree.body[0]
            assert "PDL" in [a.arg for a in fn.args.args], f"{fn.name} takes no PDL flag"
            body = fn.body
            waits = [i for i, st in enumerate(body) if isinstance(st, ast.If) and ast.unparse(st.test) == "PDL"]
            assert len(waits) == 1, f"{fn.name}: one `if PDL:` block at the top level"
            calls = [ast.unparse(st) for st in body[waits[0]].body]
            assert calls == ["tl.extra.cuda.gdc_wait()", "tl.extra.cuda.gdc_launch_dependents()"], (fn.name, calls)
            for st in body[:waits[0]]:
                for node in ast.walk(st):
                    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                        assert not node.func.attr.startswith(("store", "atomic")), f"{fn.name} writes before its wait"
                        if node.func.attr == "load":
                            pointers = {n.id for n in ast.walk(node.args[0]) if isinstance(n, ast.Name)
                                        and n.id.endswith("_ptr")}
                            assert pointers and pointers <= weights, f"{fn.name} loads {pointers} before its wait"
            checked.append(fn.name)
    assert len(checked) == 13, checked

"""Fused RMSNorm dispatch (mot_engine/kernels.py): same function, only inside decode steps, only where it is the same."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mot_engine.kernels import computes_rms_norm, fused_norms, install_fused_norms


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
    monkeypatch.setenv("MOT_FUSED_NORMS", "0")
    plain = Generator(mot, static_cache=True, cuda_graphs=False)
    assert not plain.fused_norms
    expected = [r.token_ids for r in plain.generate(reqs)]
    monkeypatch.delenv("MOT_FUSED_NORMS")
    for static in (True, False):
        gen = Generator(mot, static_cache=static, cuda_graphs=False)
        assert gen.fused_norms and mot._fused_norms_installed > 0
        assert [r.token_ids for r in gen.generate(reqs)] == expected
    assert not mot._use_fused_norms  # off again after decoding: training and scoring see the experts' forward


def test_small_query_attention_equals_sdpa():
    """The interaction's decode-step attention (explicit product) equals torch's fused kernel, padding included."""
    from mot_engine.interaction import SMALL_QUERY, _attend

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(3, 8, t, 24, generator=g) for t in (1, 40, 40))
    mask = torch.zeros(3, 1, 1, 40, dtype=torch.bool)
    mask[0, ..., :10] = mask[1] = mask[2, ..., :1] = True
    for T in (1, SMALL_QUERY, SMALL_QUERY + 1):
        qt = torch.randn(3, 8, T, 24, generator=g)
        torch.testing.assert_close(_attend(qt, k, v, mask), F.scaled_dot_product_attention(qt, k, v, attn_mask=mask))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton GEMV needs a CUDA GPU")
def test_triton_gemv_equals_linear_on_gpu():
    from mot_engine.gemv import available, gemv

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

    from mot_engine.kernels import computes_rotary
    from mot_engine.rotary import rotary_reference

    family = importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")
    original = getattr(family.apply_rotary_pos_emb, "mot_original", family.apply_rotary_pos_emb)
    assert computes_rotary(original, rotary_reference, torch.device("cpu"), torch.float32)
    wrong = lambda x, cos, sin: rotary_reference(x, cos, -sin)  # noqa: E731 — the probe must tell them apart
    assert not computes_rotary(original, wrong, torch.device("cpu"), torch.float32)


def test_rotary_dispatch_runs_the_kernel_only_inside_the_block(monkeypatch):
    import sys

    from mot_engine.kernels import fused_rotary, install_fused_rotary
    from mot_engine.rotary import rotary_reference

    model = _tiny_causal_lm("qwen2")
    family = sys.modules[type(model.model.layers[0].self_attn).__module__]
    monkeypatch.setattr(family, "apply_rotary_pos_emb", family.apply_rotary_pos_emb)  # restored after the test
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
    from mot_engine.rotary import available, rotary, rotary_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for B, H, T, D in [(1, 12, 1, 128), (16, 2, 1, 128), (3, 4, 5, 64)]:
            x = torch.randn(B, T, H, D, device="cuda", dtype=dtype).transpose(1, 2)  # q_proj's view, not contiguous
            cos, sin = (torch.randn(B, T, D, device="cuda", dtype=dtype) for _ in range(2))
            tol = 1e-6 if dtype == torch.float32 else 1e-2
            torch.testing.assert_close(rotary(x, cos, sin), rotary_reference(x, cos, sin), rtol=tol, atol=tol)


def test_gated_mlp_dispatch_runs_the_fused_kernel_only_inside_the_block():
    from mot_engine.gemv import gemv_glu_reference
    from mot_engine.kernels import fused_mlp, install_fused_mlp

    qwen, starcoder = _tiny_causal_lm("qwen2"), _tiny_causal_lm("starcoder2")  # starcoder2: c_fc/c_proj, not gated
    owner = _Owner([qwen, starcoder])
    keys_before = list(qwen.state_dict())
    calls = []
    kernel = _counting(gemv_glu_reference, calls)
    assert install_fused_mlp(owner, kernel=kernel) == 2  # qwen's two layers; starcoder2's MLPs are not gated
    assert install_fused_mlp(owner, kernel=kernel) == 2 and list(qwen.state_dict()) == keys_before
    calls.clear()  # the install probes' calls
    one, two = torch.randint(0, 64, (1, 1)), torch.randint(0, 64, (2, 1))
    before = [qwen(one).logits, qwen(two).logits]
    assert not calls
    with fused_mlp(owner):
        inside = qwen(one).logits  # one row: fused
        assert len(calls) == 2
        assert torch.equal(qwen(two).logits, before[1]) and len(calls) == 2  # two rows: the module's own forward
    torch.testing.assert_close(inside, before[0], rtol=1e-5, atol=1e-5)
    with fused_mlp(owner, on=False):
        qwen(one)
    assert len(calls) == 2


def test_gated_mlp_probe_rejects_another_activation():
    from mot_engine.gemv import gemv_glu_reference
    from mot_engine.kernels import computes_gated_mlp

    mlp = _tiny_causal_lm("qwen2").model.layers[0].mlp
    assert computes_gated_mlp(mlp, gemv_glu_reference)
    mlp.act_fn = torch.nn.GELU()
    assert not computes_gated_mlp(mlp, gemv_glu_reference)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_gated_gemv_equals_the_reference_on_gpu():
    from mot_engine.gemv import available, gemv_glu, gemv_glu_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for n, k in [(8960, 1536), (5504, 2048), (100, 300)]:
            g, u = (torch.randn(n, k, device="cuda", dtype=dtype) / k**0.5 for _ in range(2))
            x = torch.randn(1, 1, k, device="cuda", dtype=dtype)
            tol = 1e-5 if dtype == torch.float32 else 2e-2
            torch.testing.assert_close(gemv_glu(x, g, u).float(), gemv_glu_reference(x, g, u).float(), rtol=tol, atol=tol)


def test_rotary_probe_refuses_a_function_with_another_signature():
    from mot_engine.kernels import computes_rotary
    from mot_engine.rotary import rotary_reference

    def needs_positions(q, k, cos, sin, position_ids):  # an older family signature: not ours to replace
        raise AssertionError("never called with four arguments")

    assert not computes_rotary(needs_positions, rotary_reference, torch.device("cpu"), torch.float32)


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

    from mot_engine.decode_attention import decode_attention_reference

    sdpa = ALL_ATTENTION_FUNCTIONS["sdpa"]
    sdpa = getattr(sdpa, "mot_original", sdpa)
    q, k, v, mask = _decode_inputs()
    module = SimpleNamespace(num_key_value_groups=3, is_causal=True, training=False)
    for m in (mask, None):
        want, _ = sdpa(module, q, k, v, m, dropout=0.0, scaling=0.2)
        torch.testing.assert_close(decode_attention_reference(q, k, v, m, 0.2), want, rtol=1e-5, atol=1e-5)


def test_decode_attention_dispatch_only_inside_the_block_and_for_one_query(monkeypatch):
    from transformers.cache_utils import DynamicCache
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from mot_engine.decode_attention import decode_attention_reference
    from mot_engine.kernels import decode_attention_on, install_decode_attention

    monkeypatch.setitem(ALL_ATTENTION_FUNCTIONS._local_mapping, "sdpa", ALL_ATTENTION_FUNCTIONS["sdpa"])  # restored after
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

    before = decode()
    assert not calls
    with decode_attention_on():
        inside = decode()
    assert len(calls) == 2  # one decode position, two layers
    torch.testing.assert_close(inside, before, rtol=1e-5, atol=1e-5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the Triton kernels need a CUDA GPU")
def test_triton_decode_attention_equals_the_reference_on_gpu():
    from mot_engine.decode_attention import available, decode_attention, decode_attention_reference

    if not available():
        pytest.skip("Triton is not installed")
    for dtype in (torch.float32, torch.bfloat16):
        for C, H, Hk, M, D in [(1, 12, 2, 512, 128), (16, 12, 2, 300, 128), (3, 16, 16, 70, 64), (2, 32, 4, 1024, 128)]:
            q, k, v, mask = _decode_inputs(C, H, Hk, M, D, dtype, "cuda")
            tol = 1e-4 if dtype == torch.float32 else 2e-2
            for m in (mask, None):
                torch.testing.assert_close(decode_attention(q, k, v, m, D**-0.5).float(),
                                           decode_attention_reference(q, k, v, m, D**-0.5).float(), rtol=tol, atol=tol)

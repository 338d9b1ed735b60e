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

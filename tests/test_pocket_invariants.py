"""The engine's cross-tokenizer invariants with real pretrained experts whose tokenizers really differ:
SmolLM2-135M (Llama, 49k vocabulary) and Gemma-3-270M (Gemma3, 262k vocabulary), from the pocket preset."""

from __future__ import annotations

import copy

import pytest
import torch

from mot_engine import GenerationRequest, Generator

from conftest import perturb

pytestmark = [pytest.mark.pocket, pytest.mark.slow]

SOURCE = "void scale(float* x, float a, int n) {\n    for (int i = 0; i < n; ++i) x[i] *= a;\n}"
TARGET = "__global__ void scale(float* x, float a, int n) {\n    int i = blockIdx.x * blockDim.x + threadIdx.x;\n    if (i < n) x[i] *= a;\n}"
ACTIVE_SETS = ([0, 1], [1, 0])


@pytest.fixture(scope="module")
def pocket_mot():
    from mot_engine.presets.pocket import missing_pocket_packages

    missing = missing_pocket_packages()
    if missing:
        pytest.skip(f"pocket packages missing: {missing} (pip install '.[pocket]')")
    from mot_engine import build_mot

    return build_mot("pocket", device="cpu", untrained=True).eval()  # fresh layers: the invariants of a fresh MoT


@pytest.fixture(scope="module")
def perturbed_pocket(pocket_mot):
    mot = copy.deepcopy(pocket_mot)
    perturb(mot, seed=5)
    return mot.eval()


def test_the_tokenizers_really_differ(pocket_mot):
    sizes = [m.config.vocab_size for m in pocket_mot.experts]
    assert sizes[0] == 49152 and sizes[1] == 262144
    a, b = (pocket_mot.prompt_ids(e, SOURCE) for e in range(2))
    assert len(a) != len(b) or a != b


@torch.no_grad()
def test_identity_at_init(pocket_mot):
    for active in ACTIVE_SETS:
        p = active[0]
        tgt = pocket_mot.target_ids(p, TARGET)
        mixed = pocket_mot.target_logits(SOURCE, tgt, active_experts=active)
        prompt = pocket_mot.prompt_ids(p, SOURCE)
        alone = pocket_mot.experts[p](input_ids=torch.tensor([prompt + tgt])).logits[0, len(prompt) - 1 : -1]
        torch.testing.assert_close(mixed, alone, rtol=0, atol=1e-5, msg=f"active {active}")


@torch.no_grad()
def test_no_look_ahead(perturbed_pocket):
    mot = perturbed_pocket
    for active in ACTIVE_SETS:
        p = active[0]
        a = mot.target_ids(p, TARGET)
        m = len(a) // 2
        b = a[:m] + mot.target_ids(p, " return; } // another ending")
        la = mot.target_logits(SOURCE, a, active_experts=active)
        lb = mot.target_logits(SOURCE, b, active_experts=active)
        torch.testing.assert_close(la[: m + 1], lb[: m + 1], rtol=0, atol=1e-4, msg=f"active {active}")
        # and the secondary reads its own full tokenization of the prompt
        routing = mot.route([SOURCE], force_active=[active], noise=False)
        ctx = mot.memory_context([SOURCE], routing)
        assert ctx.slots[0][0].key.shape[2] == len(mot.prompt_ids(active[1], SOURCE))


@torch.no_grad()
def test_cached_equals_uncached(perturbed_pocket):
    mot = perturbed_pocket
    for active in ACTIVE_SETS:
        req = GenerationRequest(SOURCE, mode="full", max_new_tokens=8, stop_at_eos=False, force_active=active)
        gen = Generator(mot).generate([req])[0].token_ids
        logits = mot.target_logits(SOURCE, gen, active_experts=active)
        assert logits.argmax(-1).tolist() == gen, active

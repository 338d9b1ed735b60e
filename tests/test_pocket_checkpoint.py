"""The checkpoint that ships with the pocket preset (mot_engine/presets/checkpoints/pocket/, made by
scripts/train_pocket.sh): small, trainable layers only, loaded by default with the prompt format it was trained
with, and what the quickstart gets from it is a CUDA kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
from safetensors import safe_open

from kernelcheck.parsing import is_valid_cuda
from mot_engine.model.checkpoint import read_checkpoint_metadata
from mot_engine.model.prompts import FORMATS
from mot_engine.presets.registry import shipped_checkpoint

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vector_add.cpp"

pytestmark = pytest.mark.pocket


def test_the_shipped_checkpoint_is_small_and_holds_trainable_layers_only():
    folder = shipped_checkpoint("pocket")
    assert folder is not None, "mot_engine/presets/checkpoints/pocket/ is missing (scripts/train_pocket.sh makes it)"
    size = sum(f.stat().st_size for f in folder.iterdir())
    assert size < 16 * 2**20, f"{size / 2**20:.1f} MiB: the package ships this file"
    meta = read_checkpoint_metadata(folder)
    assert meta["preset"] == "pocket" and meta["mot_config"]["prompt_format"] in FORMATS
    with safe_open(str(folder / "model.safetensors"), framework="pt") as f:
        names = list(f.keys())
    assert names and {n.split(".")[0] for n in names} <= {"router", "interaction"}, sorted(names)[:5]


@pytest.fixture(scope="module")
def shipped_mot():
    from mot_engine.presets.pocket import missing_pocket_packages

    missing = missing_pocket_packages()
    if missing:
        pytest.skip(f"pocket packages missing: {missing} (pip install '.[pocket]')")
    from mot_engine import build_mot

    return build_mot("pocket", device="cpu")


def test_the_pocket_preset_loads_it_with_its_prompt_format(shipped_mot):
    folder = shipped_checkpoint("pocket")
    assert Path(shipped_mot.checkpoint) == folder
    assert shipped_mot.config.prompt_format == read_checkpoint_metadata(folder)["mot_config"]["prompt_format"]


def test_the_quickstart_function_becomes_a_kernel(shipped_mot):
    from mot_engine import translate

    source = EXAMPLE.read_text()
    source = source[source.index("void vector_add"):]
    result = translate(shipped_mot, source, max_new_tokens=256)
    assert result.status == "kernel", (result.status, result.answer[:500])
    assert result.kernel.lstrip().startswith("__global__ void vector_add"), result.kernel
    assert is_valid_cuda(result.kernel), result.kernel
    assert "###" not in result.kernel and "void vector_add(" not in result.kernel  # no markers, no echoed C++


def test_fast_mode_runs_the_expert_that_verified_more_often_alone(shipped_mot):
    """The shipped alone head (train.fast_primary: the prior won cross-validation) runs Gemma-3-270M alone in fast
    mode, which verified more often alone on the training functions, while full mode keeps SmolLM2-135M as the
    primary it was trained with."""
    folder = shipped_checkpoint("pocket")
    fit = read_checkpoint_metadata(folder)["extra"]["fast_primary"]
    best = max(fit["verified_alone"], key=fit["verified_alone"].get)
    source = EXAMPLE.read_text()
    info = shipped_mot.get_routing_info(source[source.index("void vector_add"):])
    assert shipped_mot.expert_names[info["alone_expert"]] == best == "gemma3-270m"
    assert shipped_mot.expert_names[info["primary_expert"]] == "smollm2-135m-instruct"

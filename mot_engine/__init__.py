"""mot_engine: a Mixture-of-Thoughts over frozen Hugging Face code LLMs. Pure compute: no sockets, no LSP.

Heavy names (anything that needs torch / transformers) are imported on first use, so that importing the package
for its light names (configuration, errors) costs no seconds of start-up.
"""

from __future__ import annotations

import importlib

from .config import DEFAULT_PROMPT_TEMPLATE, ExpertConfig, MoTConfig
from .errors import (
    CheckpointMismatch,
    MoTError,
    NonFiniteError,
    PresetUnavailable,
    QuantizationUnavailable,
    SourceTooLong,
)

_LAZY = {
    "load_checkpoint": ".checkpoint", "read_checkpoint_metadata": ".checkpoint", "save_checkpoint": ".checkpoint",
    "ExpertLoader": ".experts",
    "GenerationRequest": ".generation", "GenerationResult": ".generation", "Generator": ".generation",
    "StepOutput": ".generation",
    "MixtureOfThoughts": ".model", "MoTOutput": ".model", "print_gpu_memory": ".model",
    "PRESETS": ".presets", "build_mot": ".presets", "default_preset": ".presets",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'mot_engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


__all__ = [
    "DEFAULT_PROMPT_TEMPLATE", "PRESETS", "CheckpointMismatch", "ExpertConfig", "ExpertLoader", "GenerationRequest",
    "GenerationResult", "Generator", "MixtureOfThoughts", "MoTConfig", "MoTError", "MoTOutput", "NonFiniteError",
    "PresetUnavailable", "QuantizationUnavailable", "SourceTooLong", "StepOutput", "build_mot", "default_preset",
    "load_checkpoint", "print_gpu_memory", "read_checkpoint_metadata", "save_checkpoint",
]

"""mot_engine: a Mixture-of-Thoughts over frozen Hugging Face code LLMs. Pure compute: no sockets, no LSP."""

from .checkpoint import load_checkpoint, read_checkpoint_metadata, save_checkpoint
from .config import DEFAULT_PROMPT_TEMPLATE, ExpertConfig, MoTConfig
from .errors import (
    CheckpointMismatch,
    MoTError,
    NonFiniteError,
    PresetUnavailable,
    QuantizationUnavailable,
    SourceTooLong,
)
from .experts import ExpertLoader
from .generation import GenerationRequest, GenerationResult, Generator, StepOutput
from .model import MixtureOfThoughts, MoTOutput, print_gpu_memory
from .presets import PRESETS, build_mot, default_preset

__all__ = [
    "DEFAULT_PROMPT_TEMPLATE", "PRESETS", "CheckpointMismatch", "ExpertConfig", "ExpertLoader", "GenerationRequest",
    "GenerationResult", "Generator", "MixtureOfThoughts", "MoTConfig", "MoTError", "MoTOutput", "NonFiniteError",
    "PresetUnavailable", "QuantizationUnavailable", "SourceTooLong", "StepOutput", "build_mot", "default_preset",
    "load_checkpoint", "print_gpu_memory", "read_checkpoint_metadata", "save_checkpoint",
]

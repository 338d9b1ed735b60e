"""Configuration dataclasses: one `MoTConfig` passed down to every module, one `ExpertConfig` per expert."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

DEFAULT_PROMPT_TEMPLATE = "### Translate C++ to CUDA:\n{source}\n### CUDA:\n"

# "4bit" / "8bit": bitsandbytes NF4 / int8 (CUDA; training passes gradients through them). "int4": our inference
# path, group-wise int4 weights multiplied by PyTorch's fused int4 kernels (model/int4.py; CUDA and CPU, CUDA graphs).
Quantization = Literal[None, "4bit", "8bit", "int4"]
QUANTIZATIONS = (None, "4bit", "8bit", "int4")


@dataclass
class ExpertConfig:
    """Where one frozen expert comes from and how to load it.

    `path` is anything `from_pretrained` accepts: a hub id (needs a local HF cache when offline) or a folder.
    `config_dict` instead builds the architecture with random weights (shape checks and GPU benchmarks of the
    seed experts, whose weights cannot be downloaded here); `tokenizer_path` then names the tokenizer to use.
    """

    name: str
    path: str | None = None
    revision: str | None = None
    tokenizer_path: str | None = None
    config_dict: dict[str, Any] | None = None
    dtype: str | None = None  # "float32" | "bfloat16" | "float16"; None: bf16 on GPU, fp32 on CPU
    quantization: Quantization = None
    device: str | None = None  # None: the MoT's device

    def __post_init__(self) -> None:
        if self.path is None and self.config_dict is None:
            raise ValueError(f"expert {self.name!r}: give `path` (hub id or folder) or `config_dict` (random weights)")
        if self.config_dict is not None and self.tokenizer_path is None:
            raise ValueError(f"expert {self.name!r}: a random-weight expert (config_dict) needs `tokenizer_path`")
        if self.quantization not in QUANTIZATIONS:
            raise ValueError(f"expert {self.name!r}: quantization must be one of {QUANTIZATIONS}, got "
                             f"{self.quantization!r}")

    @property
    def model_id(self) -> str:
        return self.path if self.path is not None else f"random:{self.config_dict.get('model_type', '?')}:{self.name}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class MoTConfig:
    """Hyper-parameters of the Mixture-of-Thoughts. Defaults follow the design card."""

    num_stacks: int = 4
    top_k: int = 2
    router_hidden: int = 512
    shared_dim: int | None = None  # None: the smallest expert hidden size
    interaction_heads: int = 8
    gumbel_tau: float = 1.0
    # Loss weights: L = L_lm + w_entropy * L_entropy + w_balance * L_balance + lambda_consistency * L_consistency
    entropy_weight: float = 0.01
    balance_weight: float = 0.01
    lambda_consistency: float = 0.05
    balance_momentum: float = 0.9  # running average of selection frequencies for L_balance (works at batch 1)
    hidden_clamp: float = 1.0e4  # interaction updates are clamped to +-this before the residual add
    train_encoder: bool = False
    encoder: str = "microsoft/deberta-v3-large"
    encoder_max_length: int = 512
    max_source_tokens: int = 2048  # per expert, prompt included; longer sources are refused (never truncated)
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE
    # A named, versioned prompt format (model/prompts.py); None: `prompt_template` (the seed's: `seed-v1`), which is
    # what checkpoints from before named formats were trained with. Checkpoints record it; inference uses it.
    prompt_format: str | None = None
    # Fast mode decodes one expert alone, and the expert that does best alone need not be the router's primary
    # (which is chosen for the interaction). True: the router has a head that ranks the experts for decoding alone
    # (Router.alone, fit by train.fast_primary to which expert's kernel verifies alone); False: fast mode runs the
    # router's primary alone.
    alone_head: bool = False
    experts: list[ExpertConfig] = field(default_factory=list)

    def validate(self, num_experts: int) -> None:
        if num_experts < 1:
            raise ValueError("a Mixture-of-Thoughts needs at least one expert")
        if not 1 <= self.top_k <= num_experts:
            raise ValueError(f"top_k must be in [1, {num_experts}] for {num_experts} experts, got {self.top_k}")
        if self.num_stacks < 1:
            raise ValueError(f"num_stacks must be >= 1, got {self.num_stacks}")
        if self.interaction_heads < 1:
            raise ValueError(f"interaction_heads must be >= 1, got {self.interaction_heads}")
        if self.shared_dim is not None and self.shared_dim % self.interaction_heads:
            raise ValueError(
                f"shared_dim ({self.shared_dim}) must be divisible by interaction_heads ({self.interaction_heads})"
            )
        if self.gumbel_tau <= 0:
            raise ValueError(f"gumbel_tau must be > 0, got {self.gumbel_tau}")
        if "{source}" not in self.prompt_template:
            raise ValueError(f"prompt_template must contain '{{source}}', got {self.prompt_template!r}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MoTConfig":
        d = dict(d)
        experts = [ExpertConfig(**e) for e in d.pop("experts", [])]
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown MoTConfig keys: {sorted(unknown)}")
        return cls(experts=experts, **d)

"""Frozen experts: loading any decoder-only HF causal LM, finding its decoder layers, splitting them into stacks.

We never edit or copy modeling code. The MoT reaches into an expert only through forward hooks on the last
decoder layer of each stack (see `interaction.py` and `mixture.py`), so state-dict keys stay the experts' own.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
)

from mot_engine.errors import QuantizationUnavailable
from mot_engine.model.config import ExpertConfig
from mot_engine.model.int4 import quantize_int4

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str | None, device: torch.device) -> torch.dtype:
    if name is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name not in _DTYPES:
        raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {name!r}")
    return _DTYPES[name]


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The ordered decoder layers of a causal LM.

    Llama, Qwen2, Mistral, Starcoder2 and Gemma(3) all keep them at `model.get_decoder().layers`; GPT-2-style
    models at `.h`. Anything else: the one ModuleList whose length is `config.num_hidden_layers`.
    """
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else model
    for attr in ("layers", "h", "blocks"):
        layers = getattr(decoder, attr, None)
        if isinstance(layers, nn.ModuleList) and len(layers) > 0:
            return layers
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [m for m in model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
    if len(candidates) == 1:
        return candidates[0]
    raise ValueError(
        f"cannot find the decoder layers of {type(model).__name__}: expected `.layers` on its decoder or a single "
        f"ModuleList of num_hidden_layers={n} modules (found {len(candidates)})"
    )


def split_into_stacks(num_layers: int, num_stacks: int) -> list[range]:
    """Consecutive, near-equal stacks of layers; earlier stacks get the extra layer."""
    if num_stacks > num_layers:
        raise ValueError(f"num_stacks ({num_stacks}) exceeds the expert's {num_layers} decoder layers")
    base, extra = divmod(num_layers, num_stacks)
    stacks, start = [], 0
    for s in range(num_stacks):
        size = base + (1 if s < extra else 0)
        stacks.append(range(start, start + size))
        start += size
    return stacks


def hidden_size_of(model: nn.Module) -> int:
    cfg = model.config
    cfg = getattr(cfg, "text_config", None) or cfg
    return int(cfg.hidden_size)


def tokenizer_fingerprint(tokenizer) -> str:
    """A stable hash of a tokenizer's vocabulary: a checkpoint's interaction layers only fit the same tokenizers."""
    vocab = tokenizer.get_vocab()
    payload = json.dumps(sorted(vocab.items()), ensure_ascii=False).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def cache_kwarg_name(model: nn.Module) -> str:
    """transformers renamed `past_key_values` to `cache` (5.2x); take whichever this version's forward names."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params and "past_key_values" not in params else "past_key_values"


@dataclass
class LoadedExpert:
    config: ExpertConfig
    model: nn.Module
    tokenizer: object


class ExpertLoader:
    """Loads frozen experts through `from_pretrained` (hub id or folder) — the same path for tests and users."""

    @staticmethod
    def load_expert(config: ExpertConfig, device: torch.device | str = "cpu") -> tuple[nn.Module, object]:
        device = torch.device(config.device or device)
        dtype = resolve_dtype(config.dtype, device)
        tok_src = config.tokenizer_path or config.path
        tokenizer = AutoTokenizer.from_pretrained(tok_src, revision=None if config.tokenizer_path else config.revision)
        kwargs: dict = {"dtype": dtype}
        bnb = config.quantization in ("4bit", "8bit")  # loaded quantized by transformers; int4 is converted after
        # int4 weights from a checkpoint load in host memory, then each layer is quantized on the device (the bf16
        # model never sits there whole). Random-weight experts (config_dict) are built on the device: initialising
        # them on the CPU took longer than the rest of bench_int4 (56 s for the 1.5B seed expert on 2 cores).
        load_device = torch.device("cpu") if config.quantization == "int4" and config.config_dict is None else device
        if bnb:
            kwargs["quantization_config"] = _bnb_config(config, dtype, device)
            kwargs["device_map"] = {"": device.index or 0}
        if config.config_dict is not None:
            if bnb:
                raise QuantizationUnavailable(
                    f"expert {config.name!r}: random-weight experts (config_dict) cannot be quantized by "
                    f"from_config; save them with save_pretrained and load the folder with quantization="
                    f"{config.quantization!r} (benchmarks/bench_memory_4bit.py does)"
                )
            cfg_dict = {k: v for k, v in config.config_dict.items() if not k.startswith("_")}
            model_type = cfg_dict.pop("model_type")
            cfg_dict.pop("architectures", None)
            cfg_dict.pop("torch_dtype", None)
            hf_config = AutoConfig.for_model(model_type, **cfg_dict)
            with torch.device(load_device):
                model = AutoModelForCausalLM.from_config(hf_config, dtype=dtype)
        else:
            model = AutoModelForCausalLM.from_pretrained(config.path, revision=config.revision, **kwargs)
            if not bnb:
                model = model.to(load_device)
        if config.quantization == "int4":
            replaced = quantize_int4(model, dtype, device)
            log.info("expert %s: %d linear layers in int4", config.name, replaced)
        model.eval()
        model.requires_grad_(False)
        if tokenizer.pad_token_id is None:
            # Padding positions are always masked; any id works. EOS is the conventional choice.
            tokenizer.pad_token = tokenizer.eos_token
        return model, tokenizer

    @staticmethod
    def load_multiple_experts(
        configs: list[ExpertConfig], device: torch.device | str = "cpu"
    ) -> tuple[list[nn.Module], list[object]]:
        models, tokenizers = [], []
        for cfg in configs:
            log.info("loading expert %s from %s", cfg.name, cfg.model_id)
            model, tok = ExpertLoader.load_expert(cfg, device)
            models.append(model)
            tokenizers.append(tok)
        return models, tokenizers


def _bnb_config(config: ExpertConfig, dtype: torch.dtype, device: torch.device):
    if device.type != "cuda" or not torch.cuda.is_available():
        raise QuantizationUnavailable(
            f"expert {config.name!r}: {config.quantization} quantization needs a CUDA GPU, but the device is {device}"
        )
    try:
        import bitsandbytes  # noqa: F401
    except ImportError as e:
        raise QuantizationUnavailable(
            f"expert {config.name!r}: {config.quantization} quantization needs bitsandbytes: pip install '.[quant]'"
        ) from e
    if config.quantization == "4bit":
        return BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype, bnb_4bit_use_double_quant=True
        )
    return BitsAndBytesConfig(load_in_8bit=True)


def max_positions(model: nn.Module) -> int | None:
    """The most positions an expert's position embeddings cover (None: no limit in its config)."""
    cfg = getattr(model.config, "text_config", None) or model.config
    return getattr(cfg, "max_position_embeddings", None)

"""Model building for training and evaluation: the command line's choices (preset or experts, quantization,
devices, a checkpoint) turned into a MixtureOfThoughts through mot_engine.build_mot, and the run's accelerator.

Nothing here loads a model except `build_model`: `choose_experts`, `parse_experts` and `resolve_checkpoint` are
also what the command line validates with, before anything loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from accelerate import Accelerator

import mot_engine
from mot_engine import ExpertConfig, MoTConfig
from mot_engine.presets import resolve
from mot_engine.model.checkpoint import METADATA, read_checkpoint_metadata

from .defaults import LAMBDA_CONSISTENCY, NUM_STACKS, TOP_K


def parse_experts(value: str):
    """--experts: `id,id,...` / `name=path,...` / a JSON file holding a list of ExpertConfig dicts (or paths)."""
    path = Path(value)
    if value.endswith(".json") and path.is_file():
        items = json.loads(path.read_text())
        if not isinstance(items, list) or not items:
            raise ValueError(f"{value}: expected a non-empty JSON list of experts")
        out = []
        for i, item in enumerate(items):
            if isinstance(item, str):
                out.append(ExpertConfig(name=Path(item).name or item, path=item))
            elif isinstance(item, dict):
                out.append(ExpertConfig(**item))
            else:
                raise ValueError(f"{value}: item {i} is neither a path nor an object")
        return out
    out = []
    for item in (s.strip() for s in value.split(",")):
        if not item:
            raise ValueError(f"empty expert in {value!r}")
        name, sep, p = item.partition("=")
        if not sep:
            name, p = item.rstrip("/").split("/")[-1], item
        out.append(ExpertConfig(name=name, path=p))
    names = [e.name for e in out]
    if len(set(names)) != len(names):
        raise ValueError(f"expert names must differ, got {names}; name them as NAME=PATH")
    return out


def resolve_checkpoint(path) -> Path | None:
    """A checkpoint folder, the best_model/ of a training output folder, a .pt file; None if none of them."""
    path = Path(path)
    if path.is_file() and path.suffix == ".pt":
        return path
    if (path / METADATA).is_file():
        return path
    if (path / "best_model" / METADATA).is_file():
        return path / "best_model"
    return None


def choose_experts(args, meta: dict | None = None) -> tuple[list, str | None]:
    """(experts, encoder) without loading anything: --experts, else --preset, else what the checkpoint (metadata
    `meta`) was trained with, else the default preset. Sets args.preset to the preset used (args.json records it).
    Raises PresetUnavailable, saying how to get a preset's weights or packages."""
    if args.experts:
        return parse_experts(args.experts), args.encoder
    if args.preset is None and meta is not None and meta.get("preset") is None and meta["mot_config"].get("experts"):
        # trained with --experts: the checkpoint names them (its devices were the training machine's)
        experts = [ExpertConfig(**{**e, "device": None}) for e in meta["mot_config"]["experts"]]
        return experts, args.encoder or meta["encoder"]["id"]
    if args.preset is None:
        args.preset = (meta or {}).get("preset") or resolve.default_preset()
    experts, encoder = resolve.resolve_preset(args.preset)
    return experts, args.encoder or encoder


def model_overrides(args) -> dict:
    """The MoT options the command line sets (None: not given, the checkpoint's or the default applies)."""
    over = {}
    for name in ("num_stacks", "top_k", "lambda_consistency", "shared_dim", "prompt_format"):
        if getattr(args, name, None) is not None:
            over[name] = getattr(args, name)
    if getattr(args, "train_encoder", False):
        over["train_encoder"] = True
    return over


def build_model(args, device, *, checkpoint=None, world_size: int = 1):
    """A MixtureOfThoughts for these arguments, on `device`; optionally with a checkpoint's weights.

    Without a checkpoint the unset MoT options take train.defaults' values; with one, its configuration (and its
    preset when none is named). A checkpoint trained with --experts (no preset) brings its experts back.
    """
    device = torch.device(device)
    meta = None
    if checkpoint is not None and Path(checkpoint).suffix != ".pt":
        meta = read_checkpoint_metadata(checkpoint)
    overrides = model_overrides(args)
    if meta is None:
        overrides.setdefault("num_stacks", NUM_STACKS)
        overrides.setdefault("top_k", TOP_K)
        overrides.setdefault("lambda_consistency", LAMBDA_CONSISTENCY)
    if args.max_length > MoTConfig.max_source_tokens:  # a kept pair's prompt must never be refused
        overrides["max_source_tokens"] = args.max_length
    experts, encoder = choose_experts(args, meta)
    quant = "4bit" if args.use_4bit else "8bit" if args.use_8bit else None
    dtype = None if args.dtype == "auto" else args.dtype
    if device.type == "cuda" and not args.single_gpu and world_size == 1 and torch.cuda.device_count() > 1:
        n = torch.cuda.device_count()
        for i, e in enumerate(experts):
            e.device = f"cuda:{i % n}"
    # mot_engine.build_mot and presets.* are looked up when called: tests replace them to prove that bad arguments
    # are refused before any model loads.
    return mot_engine.build_mot(args.preset, checkpoint, device=device, dtype=dtype, quantization=quant,
                                experts=experts, encoder=encoder, untrained=checkpoint is None, **overrides)


def make_accelerator(args) -> Accelerator:
    """The run's accelerator: --mixed_precision (auto: bf16 on GPU, no on CPU), on the CPU when there is no GPU."""
    mp = args.mixed_precision
    if mp == "auto":
        mp = "bf16" if torch.cuda.is_available() else "no"
    return Accelerator(mixed_precision=mp, cpu=not torch.cuda.is_available())


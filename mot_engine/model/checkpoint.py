"""Router + interaction checkpoints: trainable weights in safetensors, everything else in JSON. No pickle.

Layout of a checkpoint folder:
    model.safetensors       trainable parameters (router, interaction layers, encoder if trained) + router stats
    mot_checkpoint.json     format version, MoT config, experts (ids, revisions, hidden sizes, layer counts,
                            tokenizer fingerprints), encoder id, preset, step / epoch / metric
A checkpoint only fits the experts it was trained with: loading checks names, architectures and tokenizer
fingerprints and raises CheckpointMismatch naming the difference.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mot_engine.errors import CheckpointMismatch
from mot_engine.model.config import MoTConfig
from mot_engine.model.experts import find_decoder_layers, tokenizer_fingerprint

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
METADATA = "mot_checkpoint.json"
# MoTConfig fields that change the shapes or meaning of the trained weights.
ARCH_FIELDS = ("num_stacks", "top_k", "router_hidden", "shared_dim", "interaction_heads", "train_encoder",
               "alone_head")


def describe_experts(mot) -> list[dict]:
    out = []
    for e, model in enumerate(mot.experts):
        cfg = mot.config.experts[e] if e < len(mot.config.experts) else None
        out.append({
            "name": mot.expert_names[e],
            "model_id": cfg.model_id if cfg else None,
            "revision": cfg.revision if cfg else None,
            "model_type": getattr(model.config, "model_type", None),
            "hidden_size": mot.hidden_sizes[e],
            "num_layers": len(find_decoder_layers(model)),
            "tokenizer_fingerprint": tokenizer_fingerprint(mot.tokenizers[e]),
        })
    return out


def save_checkpoint(
    mot, directory: str | Path, *, preset: str | None = None, step: int | None = None, epoch: float | None = None,
    metric: dict | None = None, extra: dict | None = None,
) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in mot.trainable_state_dict().items()}
    tmp = directory / (WEIGHTS + ".tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt"})
    tmp.replace(directory / WEIGHTS)
    cfg = mot.config.to_dict()
    cfg["shared_dim"] = mot.shared_dim  # resolved value
    meta = {
        "format_version": FORMAT_VERSION,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "mot_config": cfg,
        "experts": describe_experts(mot),
        "encoder": {"id": mot.config.encoder, "dim": mot.encoder.dim},
        "preset": preset,
        "step": step,
        "epoch": epoch,
        "metric": metric,
        "extra": extra or {},
    }
    tmp = directory / (METADATA + ".tmp")
    tmp.write_text(json.dumps(meta, indent=2))
    tmp.replace(directory / METADATA)
    return directory


def read_checkpoint_metadata(directory: str | Path) -> dict:
    path = Path(directory) / METADATA
    if not path.exists():
        raise FileNotFoundError(f"{directory} is not a MoT checkpoint: {METADATA} is missing")
    meta = json.loads(path.read_text())
    if meta.get("format_version") != FORMAT_VERSION:
        raise CheckpointMismatch(f"{path}: format_version {meta.get('format_version')} is not {FORMAT_VERSION}")
    return meta


def checkpoint_config(directory: str | Path) -> MoTConfig:
    return MoTConfig.from_dict(read_checkpoint_metadata(directory)["mot_config"])


def check_compatible(mot, meta: dict, source: str) -> None:
    mine, theirs = describe_experts(mot), meta["experts"]
    if len(mine) != len(theirs):
        raise CheckpointMismatch(
            f"{source} was trained with {len(theirs)} experts {[e['name'] for e in theirs]}, "
            f"this model has {len(mine)}: {[e['name'] for e in mine]}"
        )
    for i, (a, b) in enumerate(zip(mine, theirs)):
        for key in ("name", "model_type", "hidden_size", "num_layers", "tokenizer_fingerprint"):
            if a[key] != b[key]:
                raise CheckpointMismatch(
                    f"{source}: expert {i} {key} differs: checkpoint has {b[key]!r} ({b['name']}), "
                    f"this model has {a[key]!r} ({a['name']})"
                )
    cfg = mot.config.to_dict()
    cfg["shared_dim"] = mot.shared_dim
    defaults = MoTConfig().to_dict()  # a field newer than the checkpoint: the checkpoint was made with its default
    for key in ARCH_FIELDS:
        theirs = meta["mot_config"].get(key, defaults[key])
        if cfg[key] != theirs:
            raise CheckpointMismatch(f"{source}: MoT config {key} is {theirs!r} in the checkpoint, {cfg[key]!r} here")
    if meta["encoder"]["dim"] != mot.encoder.dim:
        raise CheckpointMismatch(
            f"{source}: encoder dim {meta['encoder']['dim']} ({meta['encoder']['id']}) != {mot.encoder.dim} ({mot.config.encoder})"
        )


def load_checkpoint(mot, directory: str | Path) -> dict:
    """Load trainable weights into `mot` after checking they fit; returns the metadata."""
    directory = Path(directory)
    legacy = directory if directory.suffix == ".pt" else None
    if legacy is not None:  # the original's format: a state dict, read without unpickling code
        state = torch.load(legacy, map_location="cpu", weights_only=True)
        meta = {"legacy": str(legacy)}
    else:
        meta = read_checkpoint_metadata(directory)
        check_compatible(mot, meta, str(directory))
        state = load_file(str(directory / WEIGHTS))
    expected = mot.trainable_state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointMismatch(f"{directory}: missing tensors {missing[:5]}, unexpected tensors {unexpected[:5]}")
    params = dict(mot.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            target = params[name] if name in params else mot.router.selection_ema
            if target.shape != value.shape:
                raise CheckpointMismatch(f"{directory}: {name} has shape {tuple(value.shape)}, expected {tuple(target.shape)}")
            target.copy_(value.to(target.device, target.dtype))
    return meta

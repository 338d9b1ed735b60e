"""Validation of `mot-train` / `mot-eval` arguments: every problem at once, as messages, before any model loads
(which experts a run uses, and whether they can be had, is known without loading them)."""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import torch

from mot_engine import MoTError
from mot_engine.model.checkpoint import read_checkpoint_metadata

from .building import choose_experts, parse_experts, resolve_checkpoint
from .checkpointing import TRAINER_STATE, latest_checkpoint
from .data import is_tok_prefix


def _checkpoint_metadata(args) -> dict | None:
    """Metadata of the checkpoint a run resumes or starts from (None: no checkpoint, or a legacy .pt file)."""
    path = getattr(args, "checkpoint_path", None)
    if getattr(args, "resume", None):
        path = latest_checkpoint(args.output_dir) if args.resume == "latest" else args.resume
    if not path:
        return None
    ckpt = resolve_checkpoint(path)
    return read_checkpoint_metadata(ckpt) if ckpt is not None and ckpt.suffix != ".pt" else None


def validate_args(args, *, mode: str) -> list[str]:
    """Every problem with the arguments, as messages (empty: fine). `mode` is 'train' or 'eval'."""
    errors = _data_errors(args, mode) + _model_errors(args) + _output_errors(args)
    errors += _training_errors(args) if mode == "train" else _evaluation_errors(args)
    errors += _checkpoint_path_errors(args)
    if not errors:  # which experts, and whether they can be had, is known without loading a model
        errors += _expert_errors(args)
    return errors


def _data_errors(args, mode: str) -> list[str]:
    """--data_path, the split ratios, the lengths and batch sizes of generation, --seed."""
    errors = []
    if not args.data_path:
        errors.append("--data_path is required")
    elif not Path(args.data_path).exists() and not is_tok_prefix(args.data_path):
        errors.append(f"--data_path {args.data_path}: no such file or directory")
    for name in ("train_ratio", "test_ratio"):
        v = getattr(args, name)
        if not (math.isfinite(v) and 0.0 <= v <= 1.0):
            errors.append(f"--{name} must be in [0, 1], got {v}")
    if args.train_ratio + args.test_ratio > 1.0 + 1e-9:
        errors.append(f"--train_ratio + --test_ratio must be <= 1, got {args.train_ratio} + {args.test_ratio}")
    if mode == "train" and args.train_ratio == 0:
        errors.append("--train_ratio 0 leaves nothing to train on")
    for name in ("max_length", "max_new_tokens", "eval_batch_size"):
        if getattr(args, name) < 1:
            errors.append(f"--{name} must be >= 1, got {getattr(args, name)}")
    if args.seed < 0:
        errors.append(f"--seed must be >= 0, got {args.seed}")
    return errors


def _model_errors(args) -> list[str]:
    """The MoT's options, quantization and precision (against the GPU and packages present), --experts."""
    errors = []
    if args.num_stacks is not None and args.num_stacks < 1:
        errors.append(f"--num_stacks must be >= 1, got {args.num_stacks}")
    if args.top_k is not None and args.top_k < 1:
        errors.append(f"--top_k must be >= 1, got {args.top_k}")
    if args.lambda_consistency is not None and not (math.isfinite(args.lambda_consistency) and args.lambda_consistency >= 0):
        errors.append(f"--lambda_consistency must be >= 0, got {args.lambda_consistency}")
    if args.use_4bit and args.use_8bit:
        errors.append("--use_4bit and --use_8bit exclude each other")
    if args.use_4bit or args.use_8bit:
        flag = "--use_4bit" if args.use_4bit else "--use_8bit"
        if not torch.cuda.is_available():
            errors.append(f"{flag} needs a CUDA GPU (bitsandbytes quantization); none is visible")
        elif importlib.util.find_spec("bitsandbytes") is None:
            errors.append(f"{flag} needs bitsandbytes: pip install '.[quant]'")
    if args.mixed_precision == "bf16" and not torch.cuda.is_available():
        errors.append(f"--mixed_precision {args.mixed_precision} needs a CUDA GPU; use 'no' or 'auto' on CPU")
    if args.experts and args.preset:
        errors.append("give --preset or --experts, not both")
    if args.experts:
        try:
            parse_experts(args.experts)
        except (ValueError, OSError) as e:
            errors.append(f"--experts: {e}")
    return errors


def _output_errors(args) -> list[str]:
    if not args.output_dir:
        return ["--output_dir is required"]
    if Path(args.output_dir).exists() and not Path(args.output_dir).is_dir():
        return [f"--output_dir {args.output_dir} exists and is not a folder"]
    return []


def _training_errors(args) -> list[str]:
    """mot-train's own flags: optimisation, schedule, bookkeeping steps, --resume."""
    errors = []
    for name in ("gradient_accumulation_steps", "num_epochs", "batch_size"):
        if getattr(args, name) < 1:
            errors.append(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        errors.append(f"--learning_rate must be > 0, got {args.learning_rate}")
    if not (math.isfinite(args.weight_decay) and args.weight_decay >= 0):
        errors.append(f"--weight_decay must be >= 0, got {args.weight_decay}")
    if not (math.isfinite(args.gradient_clip) and args.gradient_clip >= 0):
        errors.append(f"--gradient_clip must be >= 0 (0 disables clipping), got {args.gradient_clip}")
    for name in ("warmup_steps", "eval_steps", "eval_max_samples", "test_max_samples", "save_steps",
                 "save_total_limit", "stop_after_steps"):
        if getattr(args, name) < 0:
            errors.append(f"--{name} must be >= 0, got {getattr(args, name)}")
    if args.logging_steps < 1:
        errors.append(f"--logging_steps must be >= 1, got {args.logging_steps}")
    return errors + _resume_errors(args)


def _resume_errors(args) -> list[str]:
    errors = []
    if args.resume and args.checkpoint_path:
        errors.append("--resume continues a run (its weights, optimizer and data position); --checkpoint_path "
                      "starts a new one from a checkpoint's weights: give one of them")
    if args.resume and args.resume != "latest":
        if not (Path(args.resume) / TRAINER_STATE).is_file():
            errors.append(f"--resume {args.resume}: not a training checkpoint (trainer_state.json is missing)")
    elif args.resume == "latest" and args.output_dir and Path(args.output_dir).is_dir():
        if latest_checkpoint(args.output_dir) is None:
            errors.append(f"--resume: no checkpoint-N folder in {args.output_dir} to continue from")
    elif args.resume == "latest":
        errors.append(f"--resume: {args.output_dir} does not exist, so there is no checkpoint to continue from")
    return errors


def _evaluation_errors(args) -> list[str]:
    errors = []
    if args.max_samples < 0:
        errors.append(f"--max_samples must be >= 0, got {args.max_samples}")
    if not (math.isfinite(args.functional_timeout) and args.functional_timeout > 0):
        errors.append(f"--functional_timeout must be > 0, got {args.functional_timeout}")
    return errors


def _checkpoint_path_errors(args) -> list[str]:
    if not getattr(args, "checkpoint_path", None):
        return []
    cp = Path(args.checkpoint_path)
    if not cp.exists():
        return [f"--checkpoint_path {cp}: no such file or directory"]
    if cp.is_dir() and resolve_checkpoint(cp) is None:
        return [f"--checkpoint_path {cp}: neither a checkpoint (mot_checkpoint.json) nor a training output folder "
                "with best_model/"]
    return []


def _expert_errors(args) -> list[str]:
    """Whether the experts can be had (a preset's weights or packages), and --top_k against their number."""
    try:
        n = len(choose_experts(args, _checkpoint_metadata(args))[0])
    except (MoTError, ValueError, OSError) as e:  # PresetUnavailable says how to get the preset
        return [str(e)]
    if args.top_k is not None and args.top_k > n:
        return [f"--top_k {args.top_k} exceeds the {n} experts of "
                f"{'--experts' if args.experts else 'preset ' + repr(args.preset)}"]
    return []

"""The optimizer and the learning-rate schedule of training (see train.trainer's docstring for why they are so).

AdamW over `mot.named_trainable_parameters()` only (never an expert weight), in groups by name prefix: `router.` at
2x the base learning rate, `interaction.` at 1x, anything else trainable (`encoder.` with --train_encoder) at 0.5x;
weight decay on matrices only. Linear warm-up, then linear or cosine decay to 0 at the last step.
"""

from __future__ import annotations

import math

import torch

LR_MULTIPLIERS = {"router": 2.0, "interaction": 1.0, "auxiliary": 0.5}


def parameter_group(name: str) -> str:
    """The learning-rate group of a trainable parameter: "router", "interaction" or "auxiliary"."""
    if name.startswith("router."):
        return "router"
    if name.startswith("interaction."):
        return "interaction"
    return "auxiliary"


def build_optimizer(mot, learning_rate: float, weight_decay: float = 0.0) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: router 2x, interaction 1x, auxiliary 0.5x the base learning rate."""
    buckets: dict[tuple[str, bool], list] = {}
    for name, p in mot.named_trainable_parameters():
        decay = weight_decay > 0 and p.ndim >= 2
        buckets.setdefault((parameter_group(name), decay), []).append((name, p))
    groups = []
    for group, mult in LR_MULTIPLIERS.items():
        for decay in (True, False):
            items = buckets.get((group, decay))
            if items:
                groups.append({
                    "params": [p for _, p in items], "param_names": [n for n, _ in items], "group": group,
                    "lr": learning_rate * mult, "weight_decay": weight_decay if decay else 0.0,
                })
    if not groups:
        raise ValueError("the MoT has no trainable parameters")
    return torch.optim.AdamW(groups, lr=learning_rate)


def lr_factor(step: int, warmup: int, total: int, kind: str = "linear") -> float:
    """Multiplier of the base learning rates for optimizer step `step` (0-based): warm-up, then decay to 0."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    progress = min(max(progress, 0.0), 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0 - progress


def build_scheduler(optimizer, warmup: int, total: int, kind: str) -> torch.optim.lr_scheduler.LambdaLR:
    """`lr_factor` as a torch scheduler (one step per optimizer step)."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, warmup, total, kind))


"""The interaction's decode step on its fused path (InteractionLayer.decode_update with kernels/interaction_kernels.py):
nine kernels a stack instead of ~28, installed where a probe shows each kernel equal to its reference."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F

from mot_engine.kernels import interaction_kernels
from mot_engine.kernels.interaction_kernels import (
    gated_residual_reference,
    memory_attention_reference,
)
from mot_engine.kernels.substitutions.switches import Substitution
from mot_engine.model.interaction import MemorySlot


@torch.no_grad()
def computes_interaction(mot, attend, residual, linear) -> bool:
    """Do the kernels equal their references on probe inputs of this MoT's shapes, device and dtypes (a gate that is
    not zero, padded memory, one and two slots, one row through the projections)?"""
    layer, device = mot.interaction[0], mot.device
    dtype = next(mot.experts[0].parameters()).dtype
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    H, hd, S = layer.num_heads, layer.head_dim, 70
    q = randn(2, H, 1, hd)
    slots = []
    for r in range(2):
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        mask[0, ..., 40 - 20 * r:] = False  # padded memory
        slots.append(MemorySlot(key=randn(2, H, S, hd), value=randn(2, H, S, hd), mask=mask.to(device),
                                weight=randn(2, 3).abs()[:, r]))  # a column of routing weights, as at the call site
    tol = 1e-4
    d = mot.hidden_sizes[0]
    weight, bias = randn(d, H * hd) / 30, randn(d)  # the shared space -> the primary's
    for rows in (1, 3):  # a decode step of one request, and of a slab's few
        x = randn(rows, 1, H * hd)
        if not torch.allclose(linear(x, weight, bias), F.linear(x, weight, bias), rtol=tol, atol=tol):
            return False
    for used in (slots[:1], slots):
        if not torch.allclose(attend(q, used), memory_attention_reference(q, used), rtol=tol, atol=tol):
            return False
    norm = SimpleNamespace(weight=randn(d), bias=randn(d), eps=1e-5, normalized_shape=(d,))
    hidden, y, gate = randn(2, 1, d).to(dtype), randn(2, 1, d) * 3, randn(d)
    weight = randn(2, 3).abs()[:, 1]  # the primary's column of the (B, E) routing weights: stride E
    flags = [torch.zeros((), dtype=torch.bool, device=device) for _ in range(2)]
    got = residual(hidden, y, norm, gate, weight, 2.0, flags[0])
    want = gated_residual_reference(hidden, y, norm, gate, weight, 2.0, flags[1])
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol) or bool(flags[0]) or bool(flags[1]):
        return False
    y[1, 0, 3] = float("nan")  # a NaN in the update must set the step's flag
    residual(hidden, y, norm, gate, weight, 2.0, flags[0])
    return bool(flags[0])


def install_fused_interaction(mot, kernels: tuple | None = None) -> int:
    """Let decode steps run the interaction's fused path (InteractionLayer.decode_update) with the Triton kernels of
    kernels/interaction_kernels.py — or the given (attend, residual, linear) (tests) — if a probe shows them
    equal to their references. Returns 1 if installed, 0 otherwise (no Triton, no GPU). Idempotent."""
    if mot._interaction_kernels is not None:
        return 1
    if kernels is None:
        if mot.device.type != "cuda" or not interaction_kernels.available():
            return 0
        kernels = (interaction_kernels.memory_attention, interaction_kernels.gated_residual, interaction_kernels.linear)
    if not computes_interaction(mot, *kernels):
        return 0
    mot._interaction_kernels = kernels
    return 1


class fused_interaction(Substitution):
    """Within this block, decode steps run the interaction's fused path (InteractionLayer.decode_update)."""

    flag, installed = "_use_fused_interaction", "_interaction_kernels"

"""Trainable interaction layers: after each stack, the primary expert's stream reads the secondaries' states.

Design (ARCHITECTURE.md, "Interaction without look-ahead"): the secondaries read only the source prompt. Their
prompt states at the end of stack s are projected once per request into keys/values ("memory"). Every position of
the primary (prompt and target) cross-attends to that memory and gets a gated residual update:

    q      = Wq · Linear_i(LayerNorm_i(h_i))                  # (B, H, T, hd)   float32
    o_r    = softmax(q k_r^T / sqrt(hd) + pad_mask_r) v_r    # one secondary slot r = 1..k-1
    mixed  = sum_r w_r · o_r                                 # w_r: the router's straight-through weight
    delta  = w_primary · gate_i ⊙ LayerNorm(Linear_i'(Wo · mixed))
    h_i   <- h_i + clamp(delta)

`gate_i` starts at zero, so a fresh MoT equals its primary expert exactly (identity at init).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class MemorySlot:
    """Keys/values of one secondary per sample (slot r of each sample's active set), at one stack."""

    key: torch.Tensor  # (B, H, S, hd) float32
    value: torch.Tensor  # (B, H, S, hd) float32
    mask: torch.Tensor  # (B, 1, 1, S) bool, True where a real (non-pad) prompt token
    weight: torch.Tensor  # (B,) router weight of this slot's expert (1.0 forward)

    def select(self, rows: torch.Tensor) -> "MemorySlot":
        return MemorySlot(*(t.index_select(0, rows) for t in (self.key, self.value, self.mask, self.weight)))


class InteractionLayer(nn.Module):
    """The interaction after one stack, for every expert (each expert may be primary or secondary)."""

    def __init__(self, hidden_sizes: list[int], shared_dim: int, num_heads: int, clamp: float):
        super().__init__()
        if shared_dim % num_heads:
            raise ValueError(f"shared_dim ({shared_dim}) must be divisible by interaction_heads ({num_heads})")
        self.num_heads, self.head_dim, self.clamp = num_heads, shared_dim // num_heads, clamp
        # Expert-specific projections into / out of the shared space (experts differ in hidden size).
        self.query_in = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, shared_dim)) for d in hidden_sizes)
        self.memory_in = nn.ModuleList(nn.Sequential(nn.LayerNorm(d), nn.Linear(d, shared_dim)) for d in hidden_sizes)
        # Multi-head attention in the shared space.
        self.q_proj = nn.Linear(shared_dim, shared_dim)
        self.k_proj = nn.Linear(shared_dim, shared_dim)
        self.v_proj = nn.Linear(shared_dim, shared_dim)
        self.o_proj = nn.Linear(shared_dim, shared_dim)
        self.out = nn.ModuleList(nn.Linear(shared_dim, d) for d in hidden_sizes)
        self.out_norm = nn.ModuleList(nn.LayerNorm(d) for d in hidden_sizes)
        self.gate = nn.ParameterList(nn.Parameter(torch.zeros(d)) for d in hidden_sizes)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:  # (B, T, C) -> (B, H, T, hd)
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)

    def memory(self, expert: int, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of one secondary's prompt states (B, S, d_j): computed once per request."""
        m = self.memory_in[expert](states.float())  # (B, S, C)
        return self._heads(self.k_proj(m)), self._heads(self.v_proj(m))

    def update(
        self, expert: int, hidden: torch.Tensor, slots: list[MemorySlot], primary_weight: torch.Tensor
    ) -> torch.Tensor:
        """The residual update of the primary's states `hidden` (B, T, d_i), in float32."""
        B, T, _ = hidden.shape
        q = self._heads(self.q_proj(self.query_in[expert](hidden.float())))  # (B, H, T, hd)
        mixed = torch.zeros_like(q)
        for slot in slots:
            o = _attend(q, slot.key, slot.value, slot.mask)  # (B, H, T, hd)
            mixed = mixed + slot.weight.view(B, 1, 1, 1) * o
        mixed = self.o_proj(mixed.transpose(1, 2).reshape(B, T, -1))  # (B, T, C)
        delta = self.gate[expert] * self.out_norm[expert](self.out[expert](mixed))  # (B, T, d_i)
        delta = primary_weight.view(B, 1, 1) * delta
        return delta.clamp(-self.clamp, self.clamp)

    def decode_update(
        self, expert: int, hidden: torch.Tensor, slots: list[MemorySlot], primary_weight: torch.Tensor,
        nonfinite: torch.Tensor, attend, residual, linear,
    ) -> torch.Tensor:
        """`hidden + update(...)` for a decode step's few positions, in hidden's dtype, with fewer kernels: `attend`
        computes the slots' weighted attention, `residual` the gated, clamped residual add (and sets the bool scalar
        `nonfinite` where the update is NaN) and `linear` the projections — kernels/interaction_kernels.py,
        Triton or its references."""
        B, T, _ = hidden.shape
        norm, proj = self.query_in[expert]
        q = linear(linear(norm(hidden.float()), proj.weight, proj.bias), self.q_proj.weight, self.q_proj.bias)
        mixed = attend(self._heads(q), slots)  # (B, H, T, hd)
        mixed = linear(mixed.transpose(1, 2).reshape(B, T, -1), self.o_proj.weight, self.o_proj.bias)  # (B, T, C)
        y = linear(mixed, self.out[expert].weight, self.out[expert].bias)  # (B, T, d_i)
        return residual(hidden, y, self.out_norm[expert], self.gate[expert], primary_weight, self.clamp, nonfinite)


SMALL_QUERY = 16


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """softmax(q k^T / sqrt(hd) + mask) v in float32; q (B, H, T, hd), k/v (B, H, S, hd), mask (B, 1, 1, S) bool.

    A decode step has T = 1: there, torch's fused float32 attention (the memory-efficient kernel) took ~150 µs per
    call on an H200 — more than the rest of the interaction — while the plain product is four small kernels. Long
    queries (training, prefill) keep the fused kernel, which never materialises the (T, S) scores.
    """
    if q.shape[2] > SMALL_QUERY:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    scores = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, S)
    scores = scores.masked_fill(~mask, float("-inf"))
    return scores.softmax(-1) @ v

"""The memory a primary reads at every stack: the secondaries' keys and values of one group of samples."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from mot_engine.model.interaction import MemorySlot


@dataclass
class MemoryContext:
    """What the primary of a group of samples reads at each stack: one MemorySlot per secondary slot."""

    primary: int
    primary_weight: torch.Tensor  # (B,)
    slots: list[list[MemorySlot]]  # [stack][slot]
    nonfinite: torch.Tensor | None = None  # device-side flag, set by the hooks; read once per request/step

    def select(self, rows: torch.Tensor) -> "MemoryContext":
        return MemoryContext(
            primary=self.primary,
            primary_weight=self.primary_weight.index_select(0, rows),
            slots=[[slot.select(rows) for slot in stack] for stack in self.slots],
        )

    def row(self, b: int) -> list[list[tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]]:
        """Sample b's memory, [stack][slot] (key, value, mask, weight), cut to its real keys (masks are right-padded;
        reading their lengths syncs with the device, so callers use it only when requests move)."""
        parts = []
        for stack in self.slots:
            used = [int(slot.mask[b, 0, 0].sum()) for slot in stack]
            parts.append([(slot.key[b, :, :n], slot.value[b, :, :n], slot.mask[b, 0, 0, :n], slot.weight[b])
                          for slot, n in zip(stack, used)])
        return parts


def memory_buffers(mot, primary: int, rows: int, length: int) -> MemoryContext | None:
    """Zeroed memory of `rows` samples and `length` keys for `primary` of the MixtureOfThoughts `mot` (every mask
    False, weights 0): the static buffers a captured graph reads (slabs, prefill graphs); None without secondaries
    (top_k 1)."""
    k = mot.config.top_k
    if k == 1:
        return None
    heads = mot.config.interaction_heads
    hd = mot.shared_dim // heads
    dev = mot.device

    def slot():
        return MemorySlot(key=torch.zeros(rows, heads, length, hd, device=dev),
                          value=torch.zeros(rows, heads, length, hd, device=dev),
                          mask=torch.zeros(rows, 1, 1, length, dtype=torch.bool, device=dev),
                          weight=torch.zeros(rows, device=dev))

    return MemoryContext(primary=primary, primary_weight=torch.zeros(rows, device=dev),
                         slots=[[slot() for _ in range(k - 1)] for _ in range(mot.config.num_stacks)])

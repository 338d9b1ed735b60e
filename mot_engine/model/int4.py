"""4-bit weight-only experts for inference: group-wise int4 weights multiplied by PyTorch's own int4 kernels.

Why: decoding reads every weight once per step, so its speed is bounded by weight bytes; at 4 bits a step reads about
a quarter of bf16's. bitsandbytes' NF4 layers (quantization "4bit", kept for training: they pass gradients to the
interaction layers) dequantize in eager Python around each product and run ~23x slower than our bf16 decode path
(BENCHMARKS.md, run P). PyTorch ships the tinygemm int4 kernels (`torch._weight_int4pack_mm` on CUDA,
`_weight_int4pack_mm_for_cpu` on the CPU): dequantization fused into the product, any number of rows, no host
synchronisation — so the slabs' CUDA graphs capture them like any other kernel.

Format (the tinygemm layout): for each output row and each group of `group` input columns, a bf16 scale and zero;
4-bit codes q in 0..15; w ~= (q - 8) * scale + zero. Codes are packed once, on the device that runs them (the two
devices' packings differ), so an `Int4Linear` never moves between devices. Inference only: the kernels have no
backward, so training keeps quantization "4bit" (NF4).
"""

from __future__ import annotations

import torch
from torch import nn

GROUP_SIZES = (128, 64, 32)  # the largest that divides a layer's input width is used


def _inner_k_tiles(k: int) -> int | None:
    for tiles in (8, 4, 2):
        if k % (tiles * 16) == 0:
            return tiles
    return None


def quantizable(linear: nn.Linear) -> bool:
    """The kernels need an input width in whole groups and k-tiles, and an output width in whole 16-row tiles."""
    k, n = linear.in_features, linear.out_features
    return any(k % g == 0 for g in GROUP_SIZES) and _inner_k_tiles(k) is not None and n % 16 == 0


def quantize_groups(weight: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight -> (N, K) int32 codes in 0..15 and (K/group, N, 2) scales and zeros (asymmetric, per group)."""
    n, k = weight.shape
    w = weight.float().view(n, k // group, group)  # (N, G, group)
    lo, hi = w.amin(-1, keepdim=True), w.amax(-1, keepdim=True)
    scale = (hi - lo).clamp_min(1e-6) / 15  # (N, G, 1)
    codes = ((w - lo) / scale).round().clamp(0, 15).to(torch.int32).view(n, k)
    zero = lo + 8 * scale  # w = (q - 8) * scale + zero
    scales_and_zeros = torch.stack([scale.view(n, -1), zero.view(n, -1)], -1).transpose(0, 1).contiguous()
    return codes, scales_and_zeros  # (N, K), (G, N, 2)


class Int4Linear(nn.Module):
    """A frozen linear layer with int4 weights (see the module docstring); computes in its activations' dtype."""

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        if not quantizable(linear):
            raise ValueError(f"cannot quantize a {linear.in_features}->{linear.out_features} linear layer to int4")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.group = next(g for g in GROUP_SIZES if self.in_features % g == 0)
        tiles = _inner_k_tiles(self.in_features)
        weight = linear.weight.detach()
        codes, scales_and_zeros = quantize_groups(weight, self.group)
        if weight.is_cuda:  # CUDA takes the codes two to a byte; the CPU kernel packs them itself
            packed = torch._convert_weight_to_int4pack((codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8), tiles)
        else:
            packed = torch._convert_weight_to_int4pack_for_cpu(codes, tiles)
        self.register_buffer("packed", packed)
        self.register_buffer("scales_and_zeros", scales_and_zeros.to(dtype))
        bias = linear.bias.detach().to(dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    @property
    def dtype(self) -> torch.dtype:
        """What the kernels compute in: their scales' dtype."""
        return self.scales_and_zeros.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, self.in_features).to(self.dtype)  # (M, K)
        if self.packed.is_cuda:  # packed on its device once: the kernel of that device
            y = torch._weight_int4pack_mm(rows, self.packed, self.group, self.scales_and_zeros)
        else:
            y = torch._weight_int4pack_mm_for_cpu(rows, self.packed, self.group, self.scales_and_zeros)
        if self.bias is not None:
            y = y + self.bias
        return y.view(*shape[:-1], self.out_features).to(x.dtype)  # (..., N)

    def dequantized_weight(self, codes: torch.Tensor) -> torch.Tensor:
        """The (N, K) weight these codes stand for (tests: the reference the kernels must match)."""
        sz = self.scales_and_zeros.float()  # (G, N, 2)
        scale, zero = sz[..., 0].t(), sz[..., 1].t()  # (N, G)
        n, k = codes.shape
        q = codes.float().view(n, k // self.group, self.group)
        return ((q - 8) * scale[..., None] + zero[..., None]).view(n, k)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}, int4"


def quantize_int4(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> int:
    """Replace the model's linear layers (decoder layers and the output head) by `Int4Linear`, where the kernels take
    their shape; embeddings and norms stay as they are. Returns how many layers were replaced."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and quantizable(child)]
    for parent, name, child in targets:
        setattr(parent, name, Int4Linear(child, dtype))
    return len(targets)

"""4-bit weight-only experts for inference: group-wise int4 weights multiplied by PyTorch's own int4 kernels.

Why: decoding reads every weight once per step, so its speed is bounded by weight bytes; at 4 bits a step reads about
a quarter of bf16's. bitsandbytes' NF4 layers (quantization "4bit", kept for training: they pass gradients to the
interaction layers) dequantize in eager Python around each product and run ~23x slower than our bf16 decode path
(BENCHMARKS.md, run P). PyTorch ships the tinygemm int4 kernels (`torch._weight_int4pack_mm` on CUDA,
`_weight_int4pack_mm_for_cpu` on the CPU): dequantization fused into the product, any number of rows, no host
synchronisation — so the slabs' CUDA graphs capture them like any other kernel.

Two layouts of the same quantization (per output row and group of `group` input columns a scale and zero; 4-bit
codes q in 0..15; w ~= (q - 8) * scale + zero):
* "split" (CUDA, where K/2 is whole groups): codes two to a byte across the halves of K, scales and offsets (N, G);
  offsets fold the zero point: w = q * scale + offset. Multiplied by our Triton kernels (kernels/int4_gemv.py,
  put in place by kernels/substitutions/int4.py when a Generator is made), which read a quarter of bf16's bytes at
  one row and fit the slabs' CUDA graphs; until then (and without Triton) by `split_halves_reference`, the
  dequantized weight through F.linear.
* "tinygemm" (the CPU, or a width K/2 does not split into groups): PyTorch's packing for
  `torch._weight_int4pack_mm[_for_cpu]`.
Codes are packed once, on the device that runs them, so an `Int4Linear` never moves between devices; `quantize_int4`
moves one layer at a time there, so the bf16 weights of a whole model never sit on the GPU. Inference only: the
kernels have no backward, so training keeps quantization "4bit" (NF4).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
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

    def __init__(self, linear: nn.Linear, dtype: torch.dtype = torch.bfloat16, layout: str | None = None):
        """`layout`: "split" or "tinygemm" (module docstring); default: split on CUDA where K/2 is whole groups."""
        super().__init__()
        if not quantizable(linear):
            raise ValueError(f"cannot quantize a {linear.in_features}->{linear.out_features} linear layer to int4")
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight = linear.weight.detach()
        split_group = split_halves_group(self.in_features)
        if layout is None:
            layout = "split" if weight.is_cuda and split_group is not None else "tinygemm"
        if layout not in ("split", "tinygemm") or (layout == "split" and split_group is None):
            raise ValueError(f"int4 layout {layout!r} cannot hold a {self.in_features}-wide layer (split needs "
                             f"K/2 in whole groups of {GROUP_SIZES})")
        self.layout = layout
        self.kernel = None  # the split layout's product: kernels/substitutions/int4.py installs the Triton one
        self.group = split_group if self.layout == "split" else next(g for g in GROUP_SIZES if self.in_features % g == 0)
        codes, scales_and_zeros = quantize_groups(weight, self.group)  # (N, K), (G, N, 2) in float32
        if self.layout == "split":
            scale, zero = scales_and_zeros[..., 0].t(), scales_and_zeros[..., 1].t()  # (N, G)
            self.register_buffer("packed", pack_split_halves(codes))  # (N, K/2) uint8
            self.register_buffer("scales", scale.to(dtype).contiguous())
            self.register_buffer("offsets", (zero - 8 * scale).to(dtype).contiguous())
        else:
            tiles = _inner_k_tiles(self.in_features)
            if weight.is_cuda:  # CUDA takes the codes two to a byte; the CPU kernel packs them itself
                packed = torch._convert_weight_to_int4pack((codes[:, ::2] << 4 | codes[:, 1::2]).to(torch.uint8),
                                                           tiles)
            else:
                packed = torch._convert_weight_to_int4pack_for_cpu(codes, tiles)
            self.register_buffer("packed", packed)
            self.register_buffer("scales_and_zeros", scales_and_zeros.to(dtype))
        bias = linear.bias.detach().to(dtype) if linear.bias is not None else None
        self.register_buffer("bias", bias)

    @property
    def dtype(self) -> torch.dtype:
        """What the kernels compute in: their scales' dtype."""
        return (self.scales if self.layout == "split" else self.scales_and_zeros).dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.layout == "split":
            product = self.kernel or split_halves_reference
            return product(x.to(self.dtype), self.packed, self.scales, self.offsets, self.group, self.bias).to(x.dtype)
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
        if self.layout == "split":
            return dequantize_split(codes, self.scales.float(), self.offsets.float(), self.group)
        n, k = codes.shape
        q = codes.float().view(n, k // self.group, self.group)
        sz = self.scales_and_zeros.float()  # (G, N, 2)
        scale, zero = sz[..., 0].t(), sz[..., 1].t()  # (N, G)
        return ((q - 8) * scale[..., None] + zero[..., None]).view(n, k)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, group={self.group}, int4"


def split_halves_group(k: int) -> int | None:
    """The largest group size that splits K/2 into whole groups (the split layout's need), or None."""
    return next((g for g in GROUP_SIZES if k % (2 * g) == 0), None)


def pack_split_halves(codes: torch.Tensor) -> torch.Tensor:
    """(N, K) codes in 0..15 -> (N, K/2) uint8: byte j holds column j (low nibble) and column j + K/2 (high)."""
    half = codes.shape[1] // 2
    return (codes[:, :half] | codes[:, half:] << 4).to(torch.uint8).contiguous()


def unpack_split_halves(packed: torch.Tensor) -> torch.Tensor:
    """The inverse of `pack_split_halves`: (N, K/2) uint8 -> (N, K) int32 codes."""
    return torch.cat([packed & 15, packed >> 4], dim=1).to(torch.int32)


def split_halves_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                           group: int, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) -> (..., N) with the split layout's weight dequantized whole (the kernels' reference)."""
    return F.linear(x, dequantize_split(unpack_split_halves(packed), scales, offsets, group), bias)


def split_halves_glu_reference(x: torch.Tensor, packed: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
                               group: int) -> torch.Tensor:
    """silu(x gate^T) * (x up^T) for a merged weight of 2N rows (gate, then up) in the split layout, float32 maths."""
    y = split_halves_reference(x.float(), packed, scales.float(), offsets.float(), group)  # (..., 2N)
    gate, up = y.chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


@dataclass(frozen=True)
class MergedRows:
    """Several split-layout layers of one input stacked by rows into one weight (q/k/v, or a gated MLP's gate and
    up): one product reads them all. `sizes`: each layer's output width, in order."""

    packed: torch.Tensor  # (sum N, K/2) uint8
    scales: torch.Tensor  # (sum N, G)
    offsets: torch.Tensor  # (sum N, G)
    bias: torch.Tensor | None  # (sum N,)
    group: int
    sizes: tuple[int, ...]


def mergeable(layers: list[nn.Module]) -> bool:
    """Split-layout int4 layers of one input width, group, dtype and device, with biases on all or none."""
    if not all(isinstance(layer, Int4Linear) and layer.layout == "split" for layer in layers):
        return False
    first = layers[0]
    return (all((layer.in_features, layer.group, layer.dtype, layer.packed.device)
                == (first.in_features, first.group, first.dtype, first.packed.device) for layer in layers)
            and len({layer.bias is None for layer in layers}) == 1)


def merge_rows(layers: list[Int4Linear]) -> MergedRows:
    """Stack `mergeable` layers' buffers by rows into one weight and make each layer's buffers views of its rows: no
    memory is added, and each layer alone still computes what it did (its rows are the same codes and scales)."""
    assert mergeable(layers), "merge_rows takes split-layout layers of one input, group, dtype and device"
    merged = {name: torch.cat([getattr(layer, name) for layer in layers])
              for name in ("packed", "scales", "offsets") + (("bias",) if layers[0].bias is not None else ())}
    start = 0
    for layer in layers:
        rows = slice(start, start + layer.out_features)
        for name, tensor in merged.items():
            setattr(layer, name, tensor[rows])  # a registered buffer: the slice replaces it in place
        start += layer.out_features
    return MergedRows(merged["packed"], merged["scales"], merged["offsets"], merged.get("bias"), layers[0].group,
                      tuple(layer.out_features for layer in layers))


def dequantize_split(codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group: int) -> torch.Tensor:
    """(N, K) codes with (N, G) scales and offsets -> the (N, K) weight q * scale + offset, in the scales' dtype."""
    n, k = codes.shape
    q = codes.to(scales.dtype).view(n, k // group, group)
    return (q * scales[..., None] + offsets[..., None]).view(n, k)


def quantize_int4(model: nn.Module, dtype: torch.dtype = torch.bfloat16, device: torch.device | str | None = None,
                  layout: str | None = None) -> int:
    """Replace the model's linear layers (decoder layers and the output head) by `Int4Linear`, where the kernels take
    their shape; embeddings and norms stay as they are. With `device`, each layer moves there just before it is
    quantized, and the rest of the model after: a model loaded on the CPU reaches the GPU with no more than one
    layer's weights unquantized there (peak memory: the int4 model plus one layer). `layout`: `Int4Linear`'s (tests:
    "split" on the CPU). Returns how many were replaced."""
    targets = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
               if type(child) is nn.Linear and quantizable(child)]
    for parent, name, child in targets:
        layer = child if device is None else child.to(device)
        setattr(parent, name, Int4Linear(layer, dtype, layout))
        del layer, child
    if device is not None:
        model.to(device)
    return len(targets)

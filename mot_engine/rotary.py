"""Rotary position embedding for decode steps as one Triton kernel per tensor (queries, keys).

transformers' `apply_rotary_pos_emb` (Llama, Qwen2, Mistral, Starcoder2, ...) is ten small kernels per layer —
two multiplies, a negation, a concatenation and an add for each of q and k — each launched for a few hundred
bytes at batch 1. This kernel reads x, cos and sin once and writes x * cos + rotate_half(x) * sin, in float32
with one rounding at the end. Optional: it needs Triton (shipped with CUDA builds of PyTorch).
"""

from __future__ import annotations

import functools

import torch

from .gemv import available as gemv_available
from .gemv import on_device


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rotary_kernel(x_ptr, cos_ptr, sin_ptr, y_ptr, H, T, sxb, sxh, sxt, scb, sct, ssb, sst,
                      HALF: tl.constexpr, BLOCK: tl.constexpr):
        bt = tl.program_id(0)  # b * T + t
        h = tl.program_id(1)
        b = bt // T
        t = bt % T
        d = tl.arange(0, BLOCK)
        m = d < HALF
        x = x_ptr + b * sxb + h * sxh + t * sxt
        x1 = tl.load(x + d, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x + HALF + d, mask=m, other=0.0).to(tl.float32)
        c = cos_ptr + b * scb + t * sct
        s = sin_ptr + b * ssb + t * sst
        c1 = tl.load(c + d, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(c + HALF + d, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(s + d, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(s + HALF + d, mask=m, other=0.0).to(tl.float32)
        y = y_ptr + ((b * H + h) * T + t) * (2 * HALF)  # y is contiguous (B, H, T, D)
        tl.store(y + d, (x1 * c1 - x2 * s1).to(y_ptr.dtype.element_ty), mask=m)
        tl.store(y + HALF + d, (x2 * c2 + x1 * s2).to(y_ptr.dtype.element_ty), mask=m)

    return triton, rotary_kernel


def available() -> bool:
    return gemv_available()  # the same requirement: Triton importable


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) any strides with a unit last stride; cos, sin (B, T, D) -> contiguous (B, H, T, D)."""
    triton, kernel = _kernel()
    B, H, T, D = x.shape
    y = torch.empty(B, H, T, D, dtype=x.dtype, device=x.device)
    with on_device(x):
        kernel[(B * T, H)](x, cos, sin, y, H, T, x.stride(0), x.stride(1), x.stride(2), cos.stride(0), cos.stride(1),
                           sin.stride(0), sin.stride(1), HALF=D // 2, BLOCK=triton.next_power_of_2(D // 2), num_warps=1)
    return y


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same function in plain torch (float32 maths, one rounding): tests and CPU."""
    half = x.shape[-1] // 2
    xf, c, s = x.float(), cos.float()[:, None], sin.float()[:, None]
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * c[..., :half] - x2 * s[..., :half], x2 * c[..., half:] + x1 * s[..., half:]], dim=-1)
    return out.to(x.dtype)

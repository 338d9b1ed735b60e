"""RMSNorm of a decode step's few rows: one Triton program per row.

torch's fused `F.rms_norm` (the fused-norms substitution, mot_engine/kernels.py) runs a general layer-norm kernel:
3.1 µs a call for one 1536-wide row on an H100, 57 calls a token for the Qwen2.5-Coder-1.5B shape. One program that
loads the row once, reduces its squares and writes x * rsqrt(mean(x^2) + eps) * weight (float32 maths, one rounding,
as `F.rms_norm`) does the same work with less set-up. Optional: it needs Triton.
"""

from __future__ import annotations

import functools

import torch

from .gemv import available as gemv_available
from .gemv import on_device

MAX_ROWS = 16  # more rows: torch's kernel (it parallelises within rows too)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(x_ptr, w_ptr, y_ptr, N, eps, stride_x, stride_y, BLOCK: tl.constexpr):
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)

    return triton, rms_norm_kernel


def available() -> bool:
    return gemv_available()  # the same requirement: Triton importable


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., N) of a few rows with a unit last stride, weight (N,) -> (..., N) in x's dtype."""
    triton, kernel = _kernel()
    N = x.shape[-1]
    x2 = x.reshape(-1, N)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    y = torch.empty(x2.shape, dtype=x.dtype, device=x.device)
    block = triton.next_power_of_2(N)
    with on_device(x):
        kernel[(x2.shape[0],)](x2, weight, y, N, eps, x2.stride(0), y.stride(0), BLOCK=block,
                               num_warps=4 if block <= 2048 else 8)
    return y.view(x.shape)

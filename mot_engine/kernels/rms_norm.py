"""RMSNorm of a decode step's few rows: one Triton program per row.

torch's fused `F.rms_norm` (the fused-norms substitution, kernels/substitutions/) runs a general layer-norm kernel:
3.1 µs a call for one 1536-wide row on an H100, 57 calls a token for the Qwen2.5-Coder-1.5B shape. One program that
loads the row once, reduces its squares and writes x * rsqrt(mean(x^2) + eps) * weight (float32 maths, one rounding,
as `F.rms_norm`) does the same work with less set-up. Optional: it needs Triton.

`add_rms_norm` is the same kernel with a decoder layer's residual add in front (the fused-residual substitution,
kernels/substitutions/): it writes the sum, rounded to the inputs' dtype as torch's add rounds it, and the norm of
that rounded sum — bit for bit the add followed by `rms_norm`, in one launch instead of two.
"""

from __future__ import annotations

import functools

import torch

from mot_engine.kernels.gemv import as_rows, launch_options, on_device
from mot_engine.kernels.gemv import available as gemv_available

MAX_ROWS = 16  # more rows: torch's kernel (it parallelises within rows too)


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rms_norm_kernel(x_ptr, r_ptr, s_ptr, w_ptr, y_ptr, N, eps, stride_x, stride_r, stride_s, stride_y,
                        HAS_RESIDUAL: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row = tl.program_id(0)
        cols = tl.arange(0, BLOCK)
        mask = cols < N
        x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:  # s = x + r in the inputs' dtype (one rounding, as torch's add), then the norm of s
            r = tl.load(r_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
            s = (x + r).to(s_ptr.dtype.element_ty)
            tl.store(s_ptr + row * stride_s + cols, s, mask=mask)
            x = s.to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, axis=0) / N + eps)
        w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + row * stride_y + cols, (x * rstd * w).to(y_ptr.dtype.element_ty), mask=mask)

    return triton, rms_norm_kernel


def available() -> bool:
    return gemv_available()  # the same requirement: Triton importable


def _launch(x2, weight, y, eps, r2=None, s2=None) -> None:
    triton, kernel = _kernel()
    N = x2.shape[-1]
    block = triton.next_power_of_2(N)
    has_residual = r2 is not None
    r2, s2 = (r2, s2) if has_residual else (x2, y)  # unused pointers
    with on_device(x2):
        kernel[(x2.shape[0],)](x2, r2, s2, weight, y, N, eps, x2.stride(0), r2.stride(0), s2.stride(0), y.stride(0),
                               HAS_RESIDUAL=has_residual, BLOCK=block, num_warps=4 if block <= 2048 else 8,
                               **launch_options())


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x (..., N) of a few rows, weight (N,) -> (..., N) in x's dtype."""
    x2, y = as_rows(x, x.shape[-1])
    _launch(x2, weight, y, eps)
    return y.view(x.shape)


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """x and residual (..., N) of a few rows and one dtype, weight (N,) -> (rms_norm(s), s) with s = residual + x,
    both (..., N) in x's dtype: a decoder layer's residual add and the next norm in one launch."""
    if residual.shape != x.shape or residual.dtype != x.dtype:
        raise ValueError(f"add_rms_norm takes x and residual of one shape and dtype, got {tuple(x.shape)} "
                         f"{x.dtype} and {tuple(residual.shape)} {residual.dtype}")
    (x2, y), (r2, s) = as_rows(x, x.shape[-1]), as_rows(residual, x.shape[-1])
    _launch(x2, weight, y, eps, r2, s)
    return y.view(x.shape), s.view(x.shape)


def add_rms_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, eps: float
                           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same function in plain torch (tests, CPU)."""
    s = residual + x
    return torch.nn.functional.rms_norm(s, s.shape[-1:], weight, eps), s

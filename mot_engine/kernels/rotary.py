"""Rotary position embedding for decode steps as one Triton kernel for queries and keys together.

transformers' `apply_rotary_pos_emb` (Llama, Qwen2, Mistral, Starcoder2, ...) is ten small kernels per layer —
two multiplies, a negation, a concatenation and an add for each of q and k — each launched for a few hundred
bytes at batch 1. This kernel reads x, cos and sin once and writes x * cos + rotate_half(x) * sin, in float32
with one rounding at the end; `rotary_pair` does it for q's and k's heads in one launch. Optional: it needs Triton (shipped with CUDA builds of PyTorch).
"""

from __future__ import annotations

import functools

import torch

from mot_engine.kernels.gemv import available as gemv_available
from mot_engine.kernels.gemv import element_offset, launch_options, on_device


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def rotary_pair_kernel(q_ptr, cos_ptr, sin_ptr, yq_ptr, k_off, yk_off, HQ, HK, T, sqb, sqh, sqt, skb, skh, skt,
                           scb, sct, ssb, sst, HALF: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        # Programs [0, HQ) of axis 1 rotate q's heads, the rest k's: one launch for both. k and its output are
        # reached from q's pointers by element offsets (no copy).
        bt = tl.program_id(0)  # b * T + t
        hh = tl.program_id(1)
        is_q = hh < HQ
        h = tl.where(is_q, hh, hh - HQ)
        H = tl.where(is_q, HQ, HK)
        b = bt // T
        t = bt % T
        d = tl.arange(0, BLOCK)
        m = d < HALF
        x = (q_ptr + tl.where(is_q, 0, k_off) + b * tl.where(is_q, sqb, skb) + h * tl.where(is_q, sqh, skh)
             + t * tl.where(is_q, sqt, skt))
        x1 = tl.load(x + d, mask=m, other=0.0).to(tl.float32)
        x2 = tl.load(x + HALF + d, mask=m, other=0.0).to(tl.float32)
        c = cos_ptr + b * scb + t * sct
        s = sin_ptr + b * ssb + t * sst
        c1 = tl.load(c + d, mask=m, other=0.0).to(tl.float32)
        c2 = tl.load(c + HALF + d, mask=m, other=0.0).to(tl.float32)
        s1 = tl.load(s + d, mask=m, other=0.0).to(tl.float32)
        s2 = tl.load(s + HALF + d, mask=m, other=0.0).to(tl.float32)
        y = yq_ptr + tl.where(is_q, 0, yk_off) + ((b * H + h) * T + t) * (2 * HALF)  # outputs contiguous (B, H, T, D)
        tl.store(y + d, (x1 * c1 - x2 * s1).to(yq_ptr.dtype.element_ty), mask=m)
        tl.store(y + HALF + d, (x2 * c2 + x1 * s2).to(yq_ptr.dtype.element_ty), mask=m)

    return triton, rotary_pair_kernel


def available() -> bool:
    return gemv_available()  # the same requirement: Triton importable


def rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x (B, H, T, D) any strides with a unit last stride; cos, sin (B or 1, T, D) -> contiguous (B, H, T, D)."""
    return _launch(x, None, cos, sin)[0]


def rotary_pair(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """`rotary(q, cos, sin), rotary(k, cos, sin)` in one launch (the same maths). q (B, Hq, T, D), k (B, Hk, T, D)
    of one dtype, any strides with a unit last stride."""
    return _launch(q, k, cos, sin)


def _launch(q, k, cos, sin):
    triton, kernel = _kernel()
    B, HQ, T, D = q.shape
    HK = k.shape[1] if k is not None else 0
    yq = torch.empty(B, HQ, T, D, dtype=q.dtype, device=q.device)
    yk = torch.empty(B, HK, T, D, dtype=q.dtype, device=q.device) if k is not None else None
    kk, yy = (k, yk) if k is not None else (q, yq)  # no k: its offsets and strides are never used
    with on_device(q):
        kernel[(B * T, HQ + HK)](q, cos, sin, yq, element_offset(kk, q), element_offset(yy, yq), HQ, HK, T,
                                 q.stride(0), q.stride(1), q.stride(2), kk.stride(0), kk.stride(1), kk.stride(2),
                                 *_row_strides(cos, B), *_row_strides(sin, B), HALF=D // 2,
                                 BLOCK=triton.next_power_of_2(D // 2), num_warps=1, **launch_options())
    return yq, yk


def _row_strides(t: torch.Tensor, rows: int) -> tuple[int, int]:
    """Strides of cos/sin (B or 1, T, D) over rows and positions: one row serves every row of x (stride 0), as the
    family function broadcasts it (a prefill without position ids)."""
    if t.shape[0] not in (1, rows):
        raise ValueError(f"rotary: cos/sin rows {t.shape[0]} fit neither 1 nor x's {rows}")
    return (t.stride(0) if t.shape[0] == rows else 0), t.stride(1)


def as_pair(kernel):
    """A one-tensor rotary kernel as a (q, k) one, two calls: the references (tests, CPU)."""

    def pair(q, k, cos, sin):
        return kernel(q, cos, sin), kernel(k, cos, sin)

    return pair


def rotary_reference(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The same function in plain torch (float32 maths, one rounding): tests and CPU."""
    half = x.shape[-1] // 2
    xf, c, s = x.float(), cos.float()[:, None], sin.float()[:, None]
    x1, x2 = xf[..., :half], xf[..., half:]
    out = torch.cat([x1 * c[..., :half] - x2 * s[..., :half], x2 * c[..., half:] + x1 * s[..., half:]], dim=-1)
    return out.to(x.dtype)

"""A Triton matrix-vector product for decode steps: y = x W^T (+ b) for a few rows x, streaming W once.

At batch 1 every linear layer of a decode step is a matrix-vector product. cuBLAS runs them well below the GPU's
bandwidth (BENCHMARKS.md, "Where the time goes"), and they are most of a step's time. This kernel gives each
program BLOCK_N output features: it streams their rows of W over K in BLOCK_K chunks, multiplies by x in float32
and reduces once at the end. Optional: it needs Triton (shipped with CUDA builds of PyTorch), and callers fall
back to `F.linear` where it is absent.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Optional

import torch

# Programmatic dependent launch (PDL, Hopper and newer; the Generator turns it on for its forwards through
# kernels.programmatic_launch). While on, the decode path's kernels launch with it and each calls `gdc_wait` before
# it reads or writes anything a kernel before it touches: the next kernel's programs are scheduled, and load their
# first weights, while this one finishes, instead of after it. Off, the kernels are the same minus those two
# instructions. Eager launches use it too, so the eager warm-ups before every capture compile the very variants the
# graphs capture (a first compile inside a capture can invalidate it: a GPU run that launched PDL only while
# capturing failed that way).
PROGRAMMATIC_LAUNCH = {"on": False}


def launch_options() -> dict:
    """A decode-path kernel launch's extra keyword arguments: its PDL constexpr, and Triton's launch_pdl while on."""
    if PROGRAMMATIC_LAUNCH["on"]:
        return {"PDL": True, "launch_pdl": True}
    return {"PDL": False}


@functools.cache
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gemv_kernel(x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_rm, stride_ym,
                    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    PDL: tl.constexpr):
        pid_n = tl.program_id(0)
        m = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output features of this program
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        # The first K block is peeled: its weights load before the wait (no kernel writes them), so under PDL they
        # are in flight while the kernel before this one finishes.
        w = tl.load(w_ptr + rn[:, None] * stride_wn + rk[None, :],
                    mask=(rn[:, None] < N) & (rk[None, :] < K), other=0.0)  # (BLOCK_N, BLOCK_K)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        x = tl.load(x_ptr + m * stride_xm + rk, mask=rk < K, other=0.0)  # (BLOCK_K,)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        for k0 in range(BLOCK_K, K, BLOCK_K):
            kk = k0 + rk
            w = tl.load(w_ptr + rn[:, None] * stride_wn + kk[None, :],
                        mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)
            x = tl.load(x_ptr + m * stride_xm + kk, mask=kk < K, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, axis=1)  # (BLOCK_N,)
        if HAS_BIAS:
            y += tl.load(b_ptr + rn, mask=rn < N, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:  # r + round(y): the product rounded first, then the add, as two torch ops would do it
            r = tl.load(r_ptr + m * stride_rm + rn, mask=rn < N, other=0.0).to(tl.float32)
            y = y.to(y_ptr.dtype.element_ty).to(tl.float32) + r
        tl.store(y_ptr + m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=rn < N)

    return triton, gemv_kernel


@functools.cache
def _glu_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def glu_kernel(x_ptr, g_ptr, u_ptr, y_ptr, N, K, stride_xm, stride_wn, stride_ym,
                   BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        pid_n = tl.program_id(0)
        m = tl.program_id(1)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) rows of both the gate and the up weight
        rk = tl.arange(0, BLOCK_K)
        acc_g = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        wmask = (rn[:, None] < N) & (rk[None, :] < K)
        offs = rn[:, None] * stride_wn + rk[None, :]
        g = tl.load(g_ptr + offs, mask=wmask, other=0.0)  # the first K block peeled, as in gemv_kernel
        u = tl.load(u_ptr + offs, mask=wmask, other=0.0)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        x = tl.load(x_ptr + m * stride_xm + rk, mask=rk < K, other=0.0).to(tl.float32)[None, :]
        acc_g += g.to(tl.float32) * x
        acc_u += u.to(tl.float32) * x
        for k0 in range(BLOCK_K, K, BLOCK_K):
            kk = k0 + rk
            wmask = (rn[:, None] < N) & (kk[None, :] < K)
            offs = rn[:, None] * stride_wn + kk[None, :]
            x = tl.load(x_ptr + m * stride_xm + kk, mask=kk < K, other=0.0).to(tl.float32)[None, :]
            acc_g += tl.load(g_ptr + offs, mask=wmask, other=0.0).to(tl.float32) * x
            acc_u += tl.load(u_ptr + offs, mask=wmask, other=0.0).to(tl.float32) * x
        g = tl.sum(acc_g, axis=1)
        u = tl.sum(acc_u, axis=1)
        y = g / (1.0 + tl.exp(-g)) * u  # silu(gate) * up
        tl.store(y_ptr + m * stride_ym + rn, y.to(y_ptr.dtype.element_ty), mask=rn < N)

    return triton, glu_kernel


@functools.cache
def _qkv_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def qkv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, off_wk, off_wv, off_bk, off_bv, NQ, NK, NV, K, stride_xm, stride_ym,
                   HAS_BIAS: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        # Three products x W^T of one input in one launch: programs [0, bq) serve q's rows, the next bk k's, the rest
        # v's. The weights stay where they are (element offsets from q's, no copy); y holds [q | k | v] per row.
        pid = tl.program_id(0)
        m = tl.program_id(1)
        bq = tl.cdiv(NQ, BLOCK_N)
        bk = tl.cdiv(NK, BLOCK_N)
        is_q = pid < bq
        is_k = (pid >= bq) & (pid < bq + bk)
        first = tl.where(is_q, 0, tl.where(is_k, bq, bq + bk))  # this weight's first program
        N = tl.where(is_q, NQ, tl.where(is_k, NK, NV))
        w_off = tl.where(is_q, 0, tl.where(is_k, off_wk, off_wv))
        col0 = tl.where(is_q, 0, tl.where(is_k, NQ, NQ + NK))  # its first column of y
        rn = (pid - first) * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output features of this program
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        # The same blocks and order as gemv_kernel (the first K block peeled, its weights loaded before the wait):
        # the same sums, bit for bit.
        w = tl.load(w_ptr + w_off + rn[:, None] * K + rk[None, :], mask=(rn[:, None] < N) & (rk[None, :] < K),
                    other=0.0)  # (BLOCK_N, BLOCK_K)
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        x = tl.load(x_ptr + m * stride_xm + rk, mask=rk < K, other=0.0)  # (BLOCK_K,)
        acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        for k0 in range(BLOCK_K, K, BLOCK_K):
            kk = k0 + rk
            w = tl.load(w_ptr + w_off + rn[:, None] * K + kk[None, :],
                        mask=(rn[:, None] < N) & (kk[None, :] < K), other=0.0)  # (BLOCK_N, BLOCK_K)
            x = tl.load(x_ptr + m * stride_xm + kk, mask=kk < K, other=0.0)  # (BLOCK_K,)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, axis=1)  # (BLOCK_N,)
        if HAS_BIAS:
            b_off = tl.where(is_q, 0, tl.where(is_k, off_bk, off_bv))
            y += tl.load(b_ptr + b_off + rn, mask=rn < N, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * stride_ym + col0 + rn, y.to(y_ptr.dtype.element_ty), mask=rn < N)

    return triton, qkv_kernel


# ---------------------------------------------------------------------------------------------------- a few rows

# A slab of requests decoding together (2..MAX_ROWS rows) has skinny products: cuBLAS runs q, k and v as three
# launches of ~5 µs each, and gate and up as two plus a SiLU and a multiply (BENCHMARKS.md, batch 16). The rows
# kernels read each weight tile once for every row with one tensor-core product (rows padded to BLOCK_M = 16), in the
# layouts of the one-row kernels: an attention's three weights of one input in one launch (`gemv_qkv`), and the
# gate/up pair with its SiLU and product (`gemv_glu`). float32 runs the product in IEEE float32 (no TF32), as the
# references do. bench_gemv.py --slab-only, H100, 16 rows: q/k/v 5.7 µs (cuBLAS, three launches: 15.8), gate/up
# 21.5 µs (cuBLAS + SiLU + multiply: 28.4). Plain linear layers keep cuBLAS at several rows: with few output
# features the rows kernel has too few programs (and float32 products are slower than cuBLAS's).
MAX_ROWS = 16
ROWS_BLOCKS = (16, 256, 2)  # (BLOCK_N, BLOCK_K, num_warps) for q/k/v: small programs, many of them
ROWS_GLU_BLOCKS = (32, 128, 4)


@functools.cache
def _rows_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def rows_kernel(x_ptr, w_ptr, b_ptr, y_ptr, off_w1, off_w2, off_b1, off_b2, N0, N1, N2, M, K, stride_xm,
                    stride_ym, HAS_BIAS: tl.constexpr, IEEE: tl.constexpr, BLOCK_M: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        # Three products x W_i^T of one input (q/k/v) for a few rows: programs [0, b0) serve
        # W_0's rows, the next b1 W_1's, the rest W_2's. The weights stay where they are (element offsets from W_0's);
        # y holds [y_0 | y_1 | y_2] per row.
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pid = tl.program_id(0)
        b0 = tl.cdiv(N0, BLOCK_N)
        b1 = tl.cdiv(N1, BLOCK_N)
        in0 = pid < b0
        in1 = (pid >= b0) & (pid < b0 + b1)
        first = tl.where(in0, 0, tl.where(in1, b0, b0 + b1))
        N = tl.where(in0, N0, tl.where(in1, N1, N2))
        w_off = tl.where(in0, 0, tl.where(in1, off_w1, off_w2))
        col0 = tl.where(in0, 0, tl.where(in1, N0, N0 + N1))
        rm = tl.arange(0, BLOCK_M)
        rn = (pid - first) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, BLOCK_K)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K),
                        other=0.0)  # (BLOCK_M, BLOCK_K)
            w = tl.load(w_ptr + w_off + rn[:, None] * K + kk[None, :], mask=(rn[:, None] < N) & (kk[None, :] < K),
                        other=0.0)  # (BLOCK_N, BLOCK_K)
            if IEEE:
                acc += tl.dot(x, tl.trans(w), input_precision="ieee")
            else:
                acc += tl.dot(x, tl.trans(w))
        if HAS_BIAS:
            b_off = tl.where(in0, 0, tl.where(in1, off_b1, off_b2))
            acc += tl.load(b_ptr + b_off + rn, mask=rn < N, other=0.0).to(tl.float32)[None, :]
        tl.store(y_ptr + rm[:, None] * stride_ym + col0 + rn[None, :], acc.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    @triton.jit
    def rows_glu_kernel(x_ptr, g_ptr, u_ptr, y_ptr, M, N, K, stride_xm, stride_ym, IEEE: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        pid = tl.program_id(0)
        rm = tl.arange(0, BLOCK_M)
        rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # rows of both the gate and the up weight
        rk = tl.arange(0, BLOCK_K)
        acc_g = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_u = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            kk = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_xm + kk[None, :], mask=(rm[:, None] < M) & (kk[None, :] < K),
                        other=0.0)
            wmask = (rn[:, None] < N) & (kk[None, :] < K)
            offs = rn[:, None] * K + kk[None, :]
            g = tl.load(g_ptr + offs, mask=wmask, other=0.0)
            u = tl.load(u_ptr + offs, mask=wmask, other=0.0)
            if IEEE:
                acc_g += tl.dot(x, tl.trans(g), input_precision="ieee")
                acc_u += tl.dot(x, tl.trans(u), input_precision="ieee")
            else:
                acc_g += tl.dot(x, tl.trans(g))
                acc_u += tl.dot(x, tl.trans(u))
        y = acc_g / (1.0 + tl.exp(-acc_g)) * acc_u  # silu(gate) * up
        tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], y.to(y_ptr.dtype.element_ty),
                 mask=(rm[:, None] < M) & (rn[None, :] < N))

    return triton, rows_kernel, rows_glu_kernel


def _launch_rows(x2: torch.Tensor, weights, biases, y: torch.Tensor, blocks) -> None:
    """y (M, N_q + N_k + N_v) = x2 (M, K) [W_q | W_k | W_v]^T (+ b) for 2..MAX_ROWS rows, one launch."""
    triton, kernel, _ = _rows_kernels()
    M, K = x2.shape
    if M > MAX_ROWS:
        raise ValueError(f"the rows kernels take at most {MAX_ROWS} rows, got {M}")
    wq, wk, wv = weights
    bq, bk, bv = biases if biases is not None else (wq, wq, wq)  # unused pointers without biases
    block_n, block_k, warps = blocks or ROWS_BLOCKS
    grid = (sum(triton.cdiv(w.shape[0], block_n) for w in weights),)
    with on_device(x2):
        kernel[grid](x2, wq, bq, y, element_offset(wk, wq), element_offset(wv, wq), element_offset(bk, bq),
                     element_offset(bv, bq), wq.shape[0], wk.shape[0], wv.shape[0], M, K, x2.stride(0), y.stride(0),
                     HAS_BIAS=biases is not None, IEEE=x2.dtype == torch.float32, BLOCK_M=16, BLOCK_N=block_n,
                     BLOCK_K=block_k, num_warps=warps, **launch_options())


def on_device(t: torch.Tensor):
    """Triton launches on the current CUDA device: make it t's (experts may sit on several GPUs). CPU tensors (Triton's
    interpreter, TRITON_INTERPRET=1: the CPU tests) need no device."""
    if t.device.type != "cuda" or t.device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(t.device)


def available() -> bool:
    try:
        _kernel()
    except ImportError:
        return False
    return True


def default_blocks(n: int, k: int) -> tuple[int, int, int]:
    """(BLOCK_N, BLOCK_K, num_warps) for an (n, k) weight, from benchmarks/bench_gemv.py's sweeps (Qwen2.5-Coder-1.5B
    shapes, weights streamed from memory). Narrow outputs get one row per program — many small programs keep more
    loads in flight: on an H100 the 1536 x 8960 down projection took 11.7 µs against 14.2 with four rows and four
    warps, the 1536 x 1536 ones 3.6 against 4.1. BLOCK_K depends on k alone below n = 4096, so `gemv_qkv` sums like
    `gemv` for each of its weights."""
    if n <= 4096:
        if k >= 4096:
            return 1, 1024, 4
        return 1, 512 if k >= 512 else 128, 1
    return 8, 256 if k <= 2048 and n <= 65536 else 512, 4


@functools.cache
def gemv_op():
    """The kernel as a custom operator (`torch.ops.mot_engine.gemv`) that torch.compile keeps inside its graphs:
    inductor then fuses the elementwise work around the products instead of breaking the graph at each one.
    Takes x (M, K) contiguous, weight (N, K), bias (N,) or None."""
    from torch.library import triton_op, wrap_triton  # only for compiled layers (Triton checked above)

    triton, kernel = _kernel()

    def _gemv(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor]) -> torch.Tensor:
        M, K = x.shape
        N = weight.shape[0]
        y = torch.empty(M, N, dtype=x.dtype, device=x.device)
        block_n, block_k, warps = default_blocks(N, K)
        wrap_triton(kernel)[(triton.cdiv(N, block_n), M)](
            x, weight, bias if bias is not None else weight, y, y, N, K, x.stride(0), weight.stride(0), y.stride(0),
            y.stride(0), HAS_BIAS=bias is not None, HAS_RESIDUAL=False, BLOCK_N=block_n, BLOCK_K=block_k,
            PDL=False, num_warps=warps)
        return y

    _gemv.__annotations__ = {"x": torch.Tensor, "weight": torch.Tensor, "bias": Optional[torch.Tensor],
                             "return": torch.Tensor}  # real types for the schema (this module defers annotations)
    return triton_op("mot_engine::gemv", _gemv, mutates_args=())


def gemv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
         blocks: tuple[int, int, int] | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) with few rows, weight (N, K) contiguous, bias (N,) or None -> (..., N) in x's dtype.
    With `residual` (..., N) in x's dtype: residual + (x W^T + b), bit for bit the two torch ops (a decoder layer's
    second residual add folded into its down projection: the fused-residual substitution, kernels/substitutions/)."""
    triton, kernel = _kernel()
    N, K = weight.shape
    x2, y = as_rows(x, N)
    M = x2.shape[0]
    if residual is not None:
        if residual.shape != (*x.shape[:-1], N) or residual.dtype != x.dtype:
            raise ValueError(f"the residual must be {(*x.shape[:-1], N)} in {x.dtype}, got {tuple(residual.shape)} "
                             f"in {residual.dtype}")
        r2 = residual.reshape(M, N)
        if r2.stride(-1) != 1:
            r2 = r2.contiguous()
    block_n, block_k, warps = blocks or default_blocks(N, K)
    grid = (triton.cdiv(N, block_n), M)
    with on_device(x):
        kernel[grid](x2, weight, bias if bias is not None else weight, r2 if residual is not None else y, y, N, K,
                     x2.stride(0), weight.stride(0), r2.stride(0) if residual is not None else 0, y.stride(0),
                     HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None, BLOCK_N=block_n, BLOCK_K=block_k,
                     num_warps=warps, **launch_options())
    return y.view(*x.shape[:-1], N)


def gemv_reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                   blocks: tuple[int, int, int] | None = None, residual: torch.Tensor | None = None) -> torch.Tensor:
    """The same function as `gemv` with `F.linear` and torch's add (tests, CPU)."""
    y = torch.nn.functional.linear(x, weight, bias)
    return y if residual is None else residual + y


def as_rows(x: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """x (..., K) as (M, K) rows with a unit last stride, and an empty (M, n) output in x's dtype."""
    x2 = x.reshape(-1, x.shape[-1])
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    return x2, torch.empty(x2.shape[0], n, dtype=x.dtype, device=x.device)


# (BLOCK_N, BLOCK_K, num_warps) of the fused gate/up kernel: benchmarks/bench_gemv.py's sweep on an H200 (Qwen 1.5B's
# 8960 x 1536 pair, 55 MB: 15.4 µs, 3.6 TB/s; two GEMVs + SiLU + multiply took 21 µs). Two rows of each weight per
# program and one warp: many small programs keep more loads in flight than a few wide ones.
GLU_BLOCKS = (2, 512, 1)


def gemv_glu(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor,
             blocks: tuple[int, int, int] | None = None) -> torch.Tensor:
    """silu(x gate^T) * (x up^T) in one pass over both weights: a gated MLP's first half for up to MAX_ROWS rows
    (one row: the GEMV layout; more: the rows kernel, `blocks` then its own). x (..., K), gate and up (N, K)
    contiguous -> (..., N) in x's dtype (float32 maths, one rounding)."""
    N, K = gate.shape
    x2, y = as_rows(x, N)
    M = x2.shape[0]
    if M > 1:  # a slab's rows: one tensor-core pass over both weights for all of them
        if M > MAX_ROWS:
            raise ValueError(f"gemv_glu takes at most {MAX_ROWS} rows, got {M}")
        triton, _, kernel = _rows_kernels()
        block_n, block_k, warps = blocks or ROWS_GLU_BLOCKS
        with on_device(x):
            kernel[(triton.cdiv(N, block_n),)](x2, gate, up, y, M, N, K, x2.stride(0), y.stride(0),
                                               IEEE=x2.dtype == torch.float32, BLOCK_M=16, BLOCK_N=block_n,
                                               BLOCK_K=block_k, num_warps=warps, **launch_options())
        return y.view(*x.shape[:-1], N)
    triton, kernel = _glu_kernel()
    block_n, block_k, warps = blocks or GLU_BLOCKS
    with on_device(x):
        kernel[(triton.cdiv(N, block_n), M)](x2, gate, up, y, N, K, x2.stride(0), gate.stride(0), y.stride(0),
                                             BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps,
                                             **launch_options())
    return y.view(*x.shape[:-1], N)


def gemv_glu_reference(x: torch.Tensor, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """The same function in plain torch (float32 maths, one rounding): tests and CPU."""
    xf = x.float()
    return (torch.nn.functional.silu(xf @ gate.float().T) * (xf @ up.float().T)).to(x.dtype)


def element_offset(t: torch.Tensor, base: torch.Tensor) -> int:
    """t's address relative to base's, in elements: kernels that serve several tensors in one launch (q/k/v, the
    rotary pair, the cache write) reach the others from one pointer."""
    diff = t.data_ptr() - base.data_ptr()
    assert diff % t.element_size() == 0, "allocations are element-aligned"
    return diff // t.element_size()


def gemv_qkv(x: torch.Tensor, weights: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
             biases: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
             blocks: tuple[int, int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """x W_q^T (+ b_q), x W_k^T (+ b_k), x W_v^T (+ b_v) in one launch: an attention's three input projections.
    x (..., K); weights (N_q, K), (N_k, K), (N_v, K) contiguous, of one dtype and device; biases all three or None.
    Returns three (..., N) views of one output. One row: each equal bit for bit to `gemv` of its weight with the same
    blocks (the default blocks of q's shape); 2..MAX_ROWS rows: the rows kernel (`blocks` are then its own)."""
    wq, wk, wv = weights
    (nq, K), nk, nv = wq.shape, wk.shape[0], wv.shape[0]
    x2, y = as_rows(x, nq + nk + nv)
    if x2.shape[0] > 1:  # a slab's rows: the rows kernel, one launch for the three
        _launch_rows(x2, weights, biases, y, blocks)
        y = y.view(*x.shape[:-1], nq + nk + nv)
        return y[..., :nq], y[..., nq:nq + nk], y[..., nq + nk:]
    triton, kernel = _qkv_kernel()
    block_n, block_k, warps = blocks or default_blocks(nq, K)
    bq, bk, bv = biases if biases is not None else (wq, wq, wq)
    grid = (triton.cdiv(nq, block_n) + triton.cdiv(nk, block_n) + triton.cdiv(nv, block_n), x2.shape[0])
    with on_device(x):
        kernel[grid](x2, wq, bq, y, element_offset(wk, wq), element_offset(wv, wq), element_offset(bk, bq),
                     element_offset(bv, bq), nq, nk, nv, K, x2.stride(0), y.stride(0), HAS_BIAS=biases is not None,
                     BLOCK_N=block_n, BLOCK_K=block_k, num_warps=warps, **launch_options())
    y = y.view(*x.shape[:-1], nq + nk + nv)
    return y[..., :nq], y[..., nq:nq + nk], y[..., nq + nk:]


def gemv_qkv_reference(x: torch.Tensor, weights, biases=None) -> tuple[torch.Tensor, ...]:
    """The same three products with `F.linear` (tests, CPU)."""
    biases = biases if biases is not None else (None, None, None)
    return tuple(torch.nn.functional.linear(x, w, b) for w, b in zip(weights, biases))

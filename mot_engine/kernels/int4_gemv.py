"""Triton products with int4 weights: y = x W^T (+ b), the weight's 4-bit codes dequantized inside the kernel.

Decoding reads every weight once per step, so at batch 1 a linear layer costs its weight bytes; int4 codes are a
quarter of bf16's. PyTorch's tinygemm kernel (`torch._weight_int4pack_mm`) takes this format too but runs a
one-row product below our bf16 GEMV (BENCHMARKS.md, "int4 experts"), so the decode path multiplies with these.

Layout ("split halves", made by model/int4.py's `pack_split_halves`): a weight (N, K) with codes q in 0..15 is stored as
  codes  (N, K/2) uint8   byte j of row n = q[n, j] | q[n, j + K/2] << 4
  scales (N, G)           G = K / GROUP groups of GROUP input columns
  offset (N, G)           w[n, k] ~= q[n, k] * scale[n, g] + offset[n, g],  g = k // GROUP
A program's K step holds whole groups of the low half and the matching groups of the high half (K/2 is a whole
number of groups), so each row's scale and offset are one load per group.

Two kernels: `gemv` (one row: each weight dequantized, q * scale + offset, and multiplied in float32; the products
accumulate elementwise and are reduced once at the end, no tensor cores needed for a vector) and `mm` (any number of
rows, tl.dot on tiles of BLOCK_M rows: decode slabs of 2..16 rows and prefill), where the sum over a group factors,
  sum_k w[n, k] x[k] = scale * sum_k q[n, k] x[k] + offset * sum_k x[k],
leaving the codes (exact in any float type) to the tensor cores.

Dequantization by bits: an int-to-float conversion runs at a quarter of the FMA rate or less (16 a clock per SM on
Hopper against 128 FMAs), and a code is two FMAs of work, so conversions would bound the kernels. A code q instead
becomes the float f = 1 + q/16 exactly by writing its four bits below the exponent of 1.0 (one shift, one and-or),
and w = q * scale + offset = f * (16 scale) + (offset - 16 scale): the same two FMAs with the per-group constants
adjusted once per group (in bfloat16 for the rows kernel's tensor cores: 1.0 = 0x3F80, seven mantissa bits).
Marlin and FasterTransformer's int4 kernels build their halves the same way.

Both take a GLU flag for a gated MLP: one weight of 2N rows (gate, then up: model/int4.py's `merge_rows`) and the
output silu(x gate^T) * (x up^T), so the two products and the activation are one launch as on the bf16 path
(kernels/gemv.py's `gemv_glu`). An attention's q/k/v need no kernel of their own: their merged weight is one product.
"""

from __future__ import annotations

import functools

import torch

from mot_engine.kernels.gemv import launch_options, on_device

# Blocks per product kind: a decode step's int4 products are of three shapes, and one block config for all of them
# left the two that bound the step on a config tuned for neither (the 2026-12-07 sweep timed the experts' separate
# layers, not the merged products decoded since). "linear": an attention's merged q/k/v and its o (short K, N up
# to a few thousand); "glu": a gated MLP's gate and up in one launch (2N rows, short K); "long_k": its down product
# (K of several thousand, few output rows: without enough programs in flight a one-row kernel waits on its loads).
# bench_int4.py --tune on an H100 (2026-12-07 22:20 UTC, the separate layers; weights rotated past L2, times from
# CUDA-graph replay, codes made floats by bits): one row, (2, 4, 2) over 1536x1536 / 256x1536 / 8960x1536 /
# 1536x8960: 3.7 / 2.4 / 10.2 / 10.2 µs, against the bf16 GEMV's 3.6 / 3.1 / 11.1 / 11.3 (fastest per shape: (2, 4,
# 2), (2, 4, 4) 2.1, (2, 2, 1) 8.5, (2, 4, 4) 9.8). At 16 rows, K split to fill the SMs, (BLOCK_N, num_warps) =
# (128, 4): 7.6 / 6.2 / 14.6 / 16.4 µs.
PRODUCT_KINDS = ("linear", "glu", "long_k")
LONG_K = 4096  # a product at least this wide (K) without a GLU is "long_k"
# The one-row kernel: (BLOCK_N, groups per step, num_warps, programs sharing K: 1 unsplit)
ONE_ROW_BLOCKS = {"linear": (2, 4, 2, 1), "glu": (2, 4, 2, 1), "long_k": (2, 4, 2, 1)}
ROWS_BLOCKS = {"linear": (128, 4), "glu": (128, 4), "long_k": (128, 4)}  # the rows kernel: (BLOCK_N, num_warps)
# The rows kernel splits K across programs where its tiles alone would leave SMs idle: the seed primary's 1536-wide
# outputs at 16 rows are 12 tiles of 128 for 132 SMs (1536x8960 took 49.6 µs with 48 tiles of 32 and no split). At
# least this many programs per SM, each split at least a group of each half; None: from the GPU's SM count (1 on the
# CPU).
ROWS_PROGRAMS_PER_SM = 2
ROWS_SPLIT_K: int | None = None  # a fixed split (tests, sweeps)
# Codes become floats by bits, not by conversion instructions (module docstring); False: converted (the sweep's
# comparison).
DEQUANT_BY_BITS = True


def product_kind(k: int, glu: bool) -> str:
    """Which of PRODUCT_KINDS a product of K inputs is (the key of its blocks)."""
    return "glu" if glu else "long_k" if k >= LONG_K else "linear"


def rows_split_k(tiles: int, groups: int, device: torch.device) -> int:
    """How many programs share each tile's K (its `groups` per half) in the rows kernel."""
    if ROWS_SPLIT_K is not None:
        return max(1, min(ROWS_SPLIT_K, groups))  # a program without a group adds zeros: right, if idle
    if device.type != "cuda":
        return 1
    sms = _sm_count(device.index if device.index is not None else torch.cuda.current_device())
    return even_split(groups, -(-ROWS_PROGRAMS_PER_SM * sms // tiles))


def even_split(units: int, split: int) -> int:
    """The split nearest `split` (at most) that leaves no program of a K split without a unit of work (a group, or
    a one-row step): 6 groups in 5 splits are 3 of 2."""
    split = max(1, min(units, split))
    return -(-units // -(-units // split))


@functools.cache
def _sm_count(index: int) -> int:
    return torch.cuda.get_device_properties(index).multi_processor_count


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def int4_gemv_kernel(x_ptr, c_ptr, s_ptr, o_ptr, b_ptr, y_ptr, ws_ptr, N, H, G,
                         HAS_BIAS: tl.constexpr, GLU: tl.constexpr, BITS: tl.constexpr, GROUP: tl.constexpr,
                         BLOCK_N: tl.constexpr, GPI: tl.constexpr, SPLIT_K: tl.constexpr, PDL: tl.constexpr):
        # Program: BLOCK_N output features over all of K, GPI groups of each half a step. The products accumulate
        # elementwise in a (BLOCK_N, GPI, GROUP) tile, reduced once at the end (as kernels/gemv.py does): a
        # reduction per group serialises the loop, and a tile of several groups keeps more bytes in flight.
        # GLU: the weight holds 2N rows (a gated MLP's gate, then its up); part 1 accumulates the up rows rn + N
        # and the program writes silu(gate) * up, rounded once.
        # SPLIT_K > 1: program_id(1) takes a share of the groups (whole steps) and stores its float32 sums in the
        # workspace (SPLIT_K, 1, (1 + GLU) N) that `int4_split_reduce_kernel` adds up: a long K over few output rows
        # otherwise leaves too few programs, each waiting on one step's loads after another.
        pid_n = tl.program_id(0)
        rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # (BLOCK_N,) output features
        rg = tl.arange(0, GPI)
        rk = tl.arange(0, GROUP)
        nmask = rn < N
        NG = H // GROUP  # groups in each half
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        acc = tl.zeros((BLOCK_N, GPI, GROUP), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_N, GPI, GROUP), dtype=tl.float32)  # GLU only (unused otherwise)
        share = tl.cdiv(tl.cdiv(NG, GPI), SPLIT_K) * GPI  # groups a split, in whole steps
        g_first = tl.program_id(1) * share
        g_end = tl.minimum(g_first + share, NG)
        for g0 in range(g_first, g_end, GPI):
            gg = g0 + rg  # (GPI,) groups of the low half; + NG: the matching groups of the high half
            gmask = gg < g_end
            xo = gg[:, None] * GROUP + rk[None, :]
            x_lo = tl.load(x_ptr + xo, mask=gmask[:, None], other=0.0).to(tl.float32)  # (GPI, GROUP)
            x_hi = tl.load(x_ptr + H + xo, mask=gmask[:, None], other=0.0).to(tl.float32)
            smask = nmask[:, None] & gmask[None, :]
            for part in tl.static_range(1 + GLU):  # 0: the weight (or gate) rows rn, 1: the up rows rn + N
                c = tl.load(c_ptr + (rn + part * N)[:, None, None] * H + gg[None, :, None] * GROUP
                            + rk[None, None, :], mask=nmask[:, None, None] & gmask[None, :, None],
                            other=0)  # (BLOCK_N, GPI, GROUP) uint8
                so = (rn + part * N)[:, None] * G + gg[None, :]
                s_lo = tl.load(s_ptr + so, mask=smask, other=0.0).to(tl.float32)[:, :, None]  # (BLOCK_N, GPI, 1)
                o_lo = tl.load(o_ptr + so, mask=smask, other=0.0).to(tl.float32)[:, :, None]
                s_hi = tl.load(s_ptr + so + NG, mask=smask, other=0.0).to(tl.float32)[:, :, None]
                o_hi = tl.load(o_ptr + so + NG, mask=smask, other=0.0).to(tl.float32)[:, :, None]
                if BITS:  # f = 1 + q/16 built from bits (module docstring): w = f * 16s + (o - 16s)
                    ci = c.to(tl.int32)
                    f_lo = (((ci << 19) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
                    f_hi = (((ci << 15) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
                    t = ((f_lo * (16.0 * s_lo) + (o_lo - 16.0 * s_lo)) * x_lo[None, :, :]
                         + (f_hi * (16.0 * s_hi) + (o_hi - 16.0 * s_hi)) * x_hi[None, :, :])
                else:
                    t = (((c & 15).to(tl.float32) * s_lo + o_lo) * x_lo[None, :, :]
                         + ((c >> 4).to(tl.float32) * s_hi + o_hi) * x_hi[None, :, :])
                if part == 0:
                    acc += t
                else:
                    acc_up += t
        y = tl.sum(tl.sum(acc, axis=2), axis=1)  # (BLOCK_N,)
        if SPLIT_K > 1:
            wo = tl.program_id(1) * (1 + GLU) * N + rn
            tl.store(ws_ptr + wo, y, mask=nmask)
            if GLU:
                tl.store(ws_ptr + wo + N, tl.sum(tl.sum(acc_up, axis=2), axis=1), mask=nmask)
        else:
            if GLU:
                y = y * tl.sigmoid(y) * tl.sum(tl.sum(acc_up, axis=2), axis=1)
            if HAS_BIAS:
                y += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)
            tl.store(y_ptr + rn, y.to(y_ptr.dtype.element_ty), mask=nmask)

    @triton.jit
    def int4_mm_kernel(x_ptr, c_ptr, s_ptr, o_ptr, b_ptr, y_ptr, ws_ptr, M, N, H, G, stride_xm, stride_ym,
                       HAS_BIAS: tl.constexpr, GLU: tl.constexpr, IEEE: tl.constexpr, BITS: tl.constexpr,
                       GROUP: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT_K: tl.constexpr,
                       PDL: tl.constexpr):
        # GLU as in the one-row kernel: part 1 accumulates the up rows rn + N, silu(gate) * up is stored.
        # SPLIT_K > 1: program_id(2) takes its share of the groups and stores its float32 sums in the workspace
        # (SPLIT_K, M, (1 + GLU) N); `int4_split_reduce_kernel` adds them up and finishes.
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        rm = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
        rn = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        rk = tl.arange(0, GROUP)
        mmask, nmask = rm < M, rn < N
        NG = H // GROUP
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)  # GLU only
        share = tl.cdiv(NG, SPLIT_K)
        g_first = tl.program_id(2) * share
        for g in range(g_first, tl.minimum(g_first + share, NG)):
            x_lo = tl.load(x_ptr + rm[:, None] * stride_xm + g * GROUP + rk[None, :], mask=mmask[:, None], other=0.0)
            x_hi = tl.load(x_ptr + rm[:, None] * stride_xm + H + g * GROUP + rk[None, :], mask=mmask[:, None],
                           other=0.0)  # (BLOCK_M, GROUP)
            xs_lo = tl.sum(x_lo.to(tl.float32), axis=1)  # (BLOCK_M,)
            xs_hi = tl.sum(x_hi.to(tl.float32), axis=1)
            for part in tl.static_range(1 + GLU):
                rw = rn + part * N  # the weight's rows: the gate's (or the only weight's), then the up's
                c = tl.load(c_ptr + rw[:, None] * H + g * GROUP + rk[None, :], mask=nmask[:, None], other=0)
                # (BLOCK_N, GROUP) in x's dtype, exact: f = 1 + q/16 built from bits, or q converted
                if BITS and IEEE:
                    ci = c.to(tl.int32)
                    q_lo = (((ci << 19) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
                    q_hi = (((ci << 15) & 0x780000) | 0x3F800000).to(tl.float32, bitcast=True)
                elif BITS:  # bfloat16: 1.0 is 0x3F80, seven mantissa bits
                    ci = c.to(tl.int16)
                    q_lo = (((ci << 3) & 0x78) | 0x3F80).to(tl.bfloat16, bitcast=True)
                    q_hi = (((ci >> 1) & 0x78) | 0x3F80).to(tl.bfloat16, bitcast=True)
                else:
                    q_lo = (c & 15).to(x_lo.dtype)
                    q_hi = (c >> 4).to(x_lo.dtype)
                if IEEE:
                    qx_lo = tl.dot(x_lo, tl.trans(q_lo), input_precision="ieee")
                    qx_hi = tl.dot(x_hi, tl.trans(q_hi), input_precision="ieee")
                else:
                    qx_lo = tl.dot(x_lo, tl.trans(q_lo))  # (BLOCK_M, BLOCK_N) in fp32
                    qx_hi = tl.dot(x_hi, tl.trans(q_hi))
                s_lo = tl.load(s_ptr + rw * G + g, mask=nmask, other=0.0).to(tl.float32)
                o_lo = tl.load(o_ptr + rw * G + g, mask=nmask, other=0.0).to(tl.float32)
                s_hi = tl.load(s_ptr + rw * G + g + NG, mask=nmask, other=0.0).to(tl.float32)
                o_hi = tl.load(o_ptr + rw * G + g + NG, mask=nmask, other=0.0).to(tl.float32)
                if BITS:  # sum f x = sum x + sum q x / 16: the same two terms with 16s and o - 16s
                    o_lo, o_hi = o_lo - 16.0 * s_lo, o_hi - 16.0 * s_hi
                    s_lo, s_hi = 16.0 * s_lo, 16.0 * s_hi
                t = (qx_lo * s_lo[None, :] + xs_lo[:, None] * o_lo[None, :]
                     + qx_hi * s_hi[None, :] + xs_hi[:, None] * o_hi[None, :])
                if part == 0:
                    acc += t
                else:
                    acc_up += t
        mask = mmask[:, None] & nmask[None, :]
        if SPLIT_K > 1:
            W = (1 + GLU) * N  # the workspace's row width
            wo = tl.program_id(2) * M * W + rm[:, None] * W + rn[None, :]
            tl.store(ws_ptr + wo, acc, mask=mask)
            if GLU:
                tl.store(ws_ptr + wo + N, acc_up, mask=mask)
        else:
            if GLU:
                acc = acc * tl.sigmoid(acc) * acc_up
            if HAS_BIAS:
                acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
            tl.store(y_ptr + rm[:, None] * stride_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=mask)

    @triton.jit
    def int4_split_reduce_kernel(ws_ptr, b_ptr, y_ptr, M, N, stride_ym, HAS_BIAS: tl.constexpr, GLU: tl.constexpr,
                                 SPLIT_K: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        # y[m, n] = the SPLIT_K partial sums added (GLU: silu(gate) * up of the added sums) + bias, rounded once.
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)  # flat (m, n) indices
        mask = r < M * N
        m, n = r // N, r % N
        W = (1 + GLU) * N
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        acc_up = tl.zeros((BLOCK,), dtype=tl.float32)
        for split in tl.static_range(SPLIT_K):
            acc += tl.load(ws_ptr + split * M * W + m * W + n, mask=mask, other=0.0)
            if GLU:
                acc_up += tl.load(ws_ptr + split * M * W + m * W + N + n, mask=mask, other=0.0)
        if GLU:
            acc = acc * tl.sigmoid(acc) * acc_up
        if HAS_BIAS:
            acc += tl.load(b_ptr + n, mask=mask, other=0.0).to(tl.float32)
        tl.store(y_ptr + m * stride_ym + n, acc.to(y_ptr.dtype.element_ty), mask=mask)

    return triton, int4_gemv_kernel, int4_mm_kernel, int4_split_reduce_kernel


def int4_linear(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor, group: int,
                bias: torch.Tensor | None = None) -> torch.Tensor:
    """x (..., K) -> (..., N) in x's dtype, for a weight in the split-halves layout (module docstring)."""
    return _launch(x, codes, scales, offsets, group, bias, glu=False)


def int4_glu(x: torch.Tensor, codes: torch.Tensor, scales: torch.Tensor, offsets: torch.Tensor,
             group: int) -> torch.Tensor:
    """silu(x gate^T) * (x up^T) in one pass over both weights: a gated MLP's first half. The weight holds the gate's
    N rows, then the up's N rows (model/int4.py's `merge_rows`); x (..., K) -> (..., N), float32 maths, one rounding."""
    return _launch(x, codes, scales, offsets, group, None, glu=True)


def _launch(x, codes, scales, offsets, group, bias, glu: bool) -> torch.Tensor:
    triton, gemv_kernel, mm_kernel, reduce_kernel = _kernels()
    rows, half = codes.shape
    k = 2 * half
    if x.shape[-1] != k:
        raise ValueError(f"x has {x.shape[-1]} features, the int4 weight takes {k}")
    n = rows // 2 if glu else rows  # output features
    x2 = x.reshape(-1, k)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    m = x2.shape[0]
    y = torch.empty(m, n, dtype=x.dtype, device=x.device)
    b = bias if bias is not None else scales  # an unused pointer without a bias
    with on_device(x):
        kind = product_kind(k, glu)
        if m == 1:
            block_n, gpi, warps, split = ONE_ROW_BLOCKS[kind]
            split = even_split(triton.cdiv(half // group, gpi), split)
            # the partial sums: (split, 1, (1 + GLU) N) float32; an unused pointer without a split
            ws = torch.empty(split, 1, rows, dtype=torch.float32, device=x.device) if split > 1 else y
            gemv_kernel[(triton.cdiv(n, block_n), split)](
                x2, codes, scales, offsets, b, y, ws, n, half, scales.shape[1],
                HAS_BIAS=bias is not None, GLU=glu, BITS=DEQUANT_BY_BITS, GROUP=group, BLOCK_N=block_n, GPI=gpi,
                SPLIT_K=split, num_warps=warps, **launch_options())
        else:
            block_n, warps = ROWS_BLOCKS[kind]
            block_m = 16 if m <= 16 else 64
            tiles = triton.cdiv(m, block_m) * triton.cdiv(n, block_n)
            split = rows_split_k(tiles, half // group, x.device)
            # the partial sums: (split, M, (1 + GLU) N) float32; an unused pointer without a split
            ws = torch.empty(split, m, rows, dtype=torch.float32, device=x.device) if split > 1 else y
            mm_kernel[(triton.cdiv(m, block_m), triton.cdiv(n, block_n), split)](
                x2, codes, scales, offsets, b, y, ws, m, n, half, scales.shape[1], x2.stride(0), y.stride(0),
                HAS_BIAS=bias is not None, GLU=glu, IEEE=x2.dtype == torch.float32,
                BITS=DEQUANT_BY_BITS and x2.dtype in (torch.float32, torch.bfloat16), GROUP=group, BLOCK_M=block_m,
                BLOCK_N=block_n, SPLIT_K=split, num_warps=warps, **launch_options())
        if split > 1:
            reduce_kernel[(triton.cdiv(m * n, 1024),)](ws, b, y, m, n, y.stride(0), HAS_BIAS=bias is not None,
                                                      GLU=glu, SPLIT_K=split, BLOCK=1024, num_warps=4,
                                                      **launch_options())
    return y.view(*x.shape[:-1], n)

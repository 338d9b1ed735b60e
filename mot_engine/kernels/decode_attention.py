"""Attention of one new token over a KV cache (decode steps), split over the cache's columns (flash-decoding).

At batch 1 a decode step's attention is a few heads reading a few hundred cached keys: torch's fused kernels run it
as one or two thread blocks per key/value head (13 µs a layer on an H200 for Qwen2.5-Coder-1.5B: 2 key/value
heads). Here the cache's columns are split over many programs; each computes a partial softmax for the query heads
that share its key/value head (grouped-query attention: one load of K and V serves them all), and a second kernel
combines the parts. The additive mask is the engine's own (C, 1, 1, M) mask, so free and unwritten columns
contribute exactly zero. Optional: it needs Triton (shipped with CUDA builds of PyTorch).

A verify step (speculation) attends from a few new positions a row, their keys already in the cache: the same
kernels take T <= MAX_QUERIES positions as T x G query rows of a program (one load of K and V still serves them
all), with the step's (C, 1, T, M) mask saying which columns each position sees.
"""

from __future__ import annotations

import functools

import torch

from mot_engine.kernels.gemv import available as gemv_available
from mot_engine.kernels.gemv import element_offset, launch_options, on_device

BLOCK_M = 64  # cache columns per program and iteration


@functools.cache
def _kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def partial_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, scale, M, HK, G, T, COLS,
                       sqc, sqh, sqt, skc, skh, skm, svc, svh, svm, smc, smt, smm,
                       HAS_MASK: tl.constexpr, GP: tl.constexpr, D: tl.constexpr, BM: tl.constexpr,
                       IEEE: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        ch = tl.program_id(0)  # row c * HK + key/value head h
        split = tl.program_id(1)
        S = tl.num_programs(1)
        c = ch // HK
        h = ch % HK
        # query rows i: position t = i // G of the T new ones (a verify step's), head g = i % G of the group
        i = tl.arange(0, GP)
        t = i // G
        g = i % G
        d = tl.arange(0, D)
        imask = i < T * G
        q = tl.load(q_ptr + c * sqc + (h * G + g)[:, None] * sqh + t[:, None] * sqt + d[None, :],
                    mask=imask[:, None], other=0.0)
        m_i = tl.full((GP,), float("-inf"), tl.float32)
        l_i = tl.zeros((GP,), tl.float32)
        acc = tl.zeros((GP, D), tl.float32)
        lo = split * COLS
        for start in range(lo, lo + COLS, BM):
            cols = start + tl.arange(0, BM)
            cmask = cols < M
            k = tl.load(k_ptr + c * skc + h * skh + cols[:, None] * skm + d[None, :], mask=cmask[:, None], other=0.0)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            s = s * scale  # (GP, BM) float32
            if HAS_MASK:
                s += tl.load(mask_ptr + c * smc + t[:, None] * smt + cols[None, :] * smm,
                             mask=imask[:, None] & cmask[None, :], other=0.0).to(tl.float32)  # (GP, BM)
            s = tl.where(cmask[None, :], s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, axis=1))
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            p = tl.exp(s - m_safe[:, None])
            alpha = tl.exp(m_i - m_safe)
            v = tl.load(v_ptr + c * svc + h * svh + cols[:, None] * svm + d[None, :], mask=cmask[:, None], other=0.0)
            if IEEE:
                pv = tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                pv = tl.dot(p.to(v.dtype), v)
            acc = acc * alpha[:, None] + pv
            l_i = l_i * alpha + tl.sum(p, axis=1)
            m_i = m_new
        base = ch * S + split
        tl.store(m_ptr + base * GP + i, m_i)
        tl.store(l_ptr + base * GP + i, l_i)
        tl.store(acc_ptr + (base * GP + i)[:, None] * D + d[None, :], acc)

    @triton.jit
    def combine_kernel(m_ptr, l_ptr, acc_ptr, out_ptr, S, HK, G, soc, sot, soh,
                       GP: tl.constexpr, D: tl.constexpr, SP: tl.constexpr, BS: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        # Program (row c * HK + key/value head h, query row i = t * G + g: position t, head g of its group): one
        # query's parts, combined. A program per query keeps each one's loads small (one program per group read
        # GP x D per split, in sequence).
        ch = tl.program_id(0)
        i = tl.program_id(1)
        c = ch // HK
        h = ch % HK
        t = i // G
        g = i % G
        s = tl.arange(0, SP)
        d = tl.arange(0, D)
        smask = s < S
        m = tl.load(m_ptr + (ch * S + s) * GP + i, mask=smask, other=float("-inf"))  # (SP,)
        l = tl.load(l_ptr + (ch * S + s) * GP + i, mask=smask, other=0.0)
        m_all = tl.max(m, axis=0)
        denom = tl.sum(tl.where(smask, tl.exp(m - m_all), 0.0) * l, axis=0)
        out = tl.zeros((D,), tl.float32)
        for s0 in range(0, S, BS):
            si = s0 + tl.arange(0, BS)
            simask = si < S
            w = tl.exp(tl.load(m_ptr + (ch * S + si) * GP + i, mask=simask, other=float("-inf")) - m_all)  # (BS,)
            a = tl.load(acc_ptr + ((ch * S + si) * GP + i)[:, None] * D + d[None, :], mask=simask[:, None], other=0.0)
            out += tl.sum(a * w[:, None], axis=0)
        out = out / denom
        tl.store(out_ptr + c * soc + t * sot + (h * G + g) * soh + d, out.to(out_ptr.dtype.element_ty))

    @triton.jit
    def write_kernel(k_ptr, keys_ptr, col_ptr, v_off, values_off, HK, skb, skh, svb, svh, scb, sch, scm,
                     D: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        # Program (row * HK + head, 0 for the key / 1 for the value): one token's head into the cache at the slab's
        # write column (a device tensor, as index_copy_ reads it). value and its cache are reached from the key's
        # pointers by element offsets.
        bh = tl.program_id(0)
        is_v = tl.program_id(1) == 1
        b = bh // HK
        h = bh % HK
        d = tl.arange(0, BLOCK)
        col = tl.load(col_ptr)
        src = k_ptr + tl.where(is_v, v_off, 0) + b * tl.where(is_v, svb, skb) + h * tl.where(is_v, svh, skh)
        dst = keys_ptr + tl.where(is_v, values_off, 0) + b * scb + h * sch + col * scm
        tl.store(dst + d, tl.load(src + d, mask=d < D), mask=d < D)

    return triton, partial_kernel, combine_kernel, write_kernel


# The cache write of the slabs' decode steps (slabs.SlabLayer.update) runs `write_token` while this is on (the
# Generator's decode steps, kernels.fused_cache_write): one launch for a layer's key and value.
CACHE_WRITE = {"on": False}


def write_token(keys: torch.Tensor, values: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                column: torch.Tensor) -> None:
    """keys[:, :, column] = key and values[:, :, column] = value in one launch (index_copy_ along the columns).
    keys/values (C, Hk, M, D) contiguous caches of one dtype and shape; key/value (C, Hk, 1, D) any strides with a
    unit last stride; column (1,) long on the device."""
    triton, _, _, kernel = _kernels()
    C, HK, _, D = key.shape
    if key.stride(-1) != 1 or value.stride(-1) != 1 or keys.stride() != values.stride():
        raise ValueError("write_token needs unit last strides and caches of one layout")
    with on_device(keys):
        kernel[(C * HK, 2)](key, keys, column, element_offset(value, key), element_offset(values, keys), HK,
                            key.stride(0), key.stride(1), value.stride(0), value.stride(1),
                            keys.stride(0), keys.stride(1), keys.stride(2), D=D, BLOCK=triton.next_power_of_2(D),
                            num_warps=1, **launch_options())


def available() -> bool:
    return gemv_available()  # the same requirement: Triton importable


# Query positions a row at most: a verify step's next input and its draft (speculation), as the rows kernels take
# up to 16 rows; and query rows a program at most (positions x the heads of one key/value head), which bounds its
# (rows, D) float32 accumulator.
MAX_QUERIES = 16
MAX_QUERY_ROWS = 64


def supported(query: torch.Tensor, key: torch.Tensor, mask: torch.Tensor | None) -> bool:
    """Shapes this kernel takes: one query position (a decode step), or a few with an additive mask of their own
    (a verify step's: each position sees what it may), a power-of-two head size, grouped heads."""
    C, H, T, D = query.shape
    Hk = key.shape[1]
    if not (1 <= T <= MAX_QUERIES and D in (32, 64, 128, 256) and H % Hk == 0 and (H // Hk) * T <= MAX_QUERY_ROWS
            and key.shape[-1] == D and query.stride(-1) == key.stride(-1) == 1):
        return False
    if mask is None:
        return T == 1  # several positions without a mask would be causal among themselves: not this kernel's
    return (mask.dim() == 4 and mask.shape[0] == C and mask.shape[1] == 1 and mask.shape[2] == T
            and mask.shape[-1] == key.shape[2] and mask.dtype.is_floating_point)


def decode_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
                     scale: float) -> torch.Tensor:
    """query (C, H, T, D), key/value (C, Hk, M, D), additive mask (C, 1, T, M) shared by the heads, or None (T = 1)
    -> (C, T, H, D): softmax(q k^T * scale + mask) v per head and position, query head i reading key/value head
    i // (H / Hk). The T positions' own keys are in the cache already; the mask says which each may see."""
    import triton

    _, partial_kernel, combine_kernel, _ = _kernels()
    C, H, T, D = query.shape
    Hk, M = key.shape[1], key.shape[2]
    G = H // Hk
    GP = max(16, triton.next_power_of_2(G * T))
    programs = C * Hk
    S = max(1, min(triton.cdiv(M, BLOCK_M), triton.cdiv(264, programs)))  # enough programs for every SM, twice
    cols = triton.cdiv(triton.cdiv(M, S), BLOCK_M) * BLOCK_M
    S = triton.cdiv(M, cols)
    dev = query.device
    m = torch.empty(programs, S, GP, device=dev, dtype=torch.float32)
    l = torch.empty_like(m)
    acc = torch.empty(programs, S, GP, D, device=dev, dtype=torch.float32)
    out = torch.empty(C, T, H, D, device=dev, dtype=query.dtype)
    if mask is not None and (mask.shape[1] != 1 or mask.shape[2] != T):
        raise ValueError(f"decode_attention takes a mask (C, 1, {T}, M) shared by the heads, got {tuple(mask.shape)}")
    if mask is None and T > 1:
        raise ValueError(f"{T} query positions need a mask (which of them each may see)")
    mk = mask if mask is not None else query  # a dummy pointer when there is no mask
    with on_device(query):
        partial_kernel[(programs, S)](
            query, key, value, mk, m, l, acc, scale, M, Hk, G, T, cols,
            query.stride(0), query.stride(1), query.stride(2), key.stride(0), key.stride(1), key.stride(2),
            value.stride(0), value.stride(1), value.stride(2),
            mk.stride(0) if mask is not None else 0, mk.stride(2) if mask is not None else 0,
            mk.stride(-1) if mask is not None else 0,
            HAS_MASK=mask is not None, GP=GP, D=D, BM=BLOCK_M, IEEE=query.dtype == torch.float32, num_warps=4,
            **launch_options())
        combine_kernel[(programs, G * T)](m, l, acc, out, S, Hk, G, out.stride(0), out.stride(1), out.stride(2),
                                          GP=GP, D=D, SP=max(2, triton.next_power_of_2(S)), BS=8, num_warps=1,
                                          **launch_options())
    return out


def decode_attention_reference(query, key, value, mask, scale) -> torch.Tensor:
    """The same function in plain torch (float32): tests and CPU. (C, H, T, D) queries -> (C, T, H, D)."""
    C, H, _, D = query.shape
    G = H // key.shape[1]
    k = key.float().repeat_interleave(G, dim=1)
    v = value.float().repeat_interleave(G, dim=1)
    s = query.float() @ k.transpose(-1, -2) * scale  # (C, H, T, M)
    if mask is not None:
        s = s + mask.float()
    return (s.softmax(-1) @ v).transpose(1, 2).to(query.dtype)  # (C, T, H, D)

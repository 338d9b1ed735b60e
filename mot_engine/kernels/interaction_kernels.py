"""Triton kernels for the interaction's decode step (model/interaction.py, `InteractionLayer.decode_update`).

At a decode step the primary's few new positions read the secondaries' prompt memory at every stack boundary. In
plain torch that update is ~28 small kernels per stack (casts, two LayerNorms, six products, a masked softmax, the
slot weights, the gate, the clamp, the non-finite check and the residual add), each far below a microsecond of
work. Here it is nine a stack (top-2): the cast and LayerNorm of the query input, and

- `memory_attention`: softmax(q k^T / sqrt(hd) + mask) v over one slot's memory, split over chunks of keys (online
  softmax per chunk, then a combine), times the slot's router weight, written or added into `mixed` (two launches
  per slot: top-2 has one slot).
- `linear`: the float32 projections of one row through the Triton GEMV (kernels/gemv.py).
- `gated_residual`: h + clamp(w_primary * gate * LayerNorm(y)) in h's dtype, one program per position, and the
  step's non-finite flag set where the clamped update is NaN (the clamp maps +-inf to +-clamp, as torch's does).

Each has a plain-torch reference with the same semantics (tests, and CPU dispatch tests through the same path).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from mot_engine.kernels.gemv import available as gemv_available
from mot_engine.kernels.gemv import gemv, launch_options, on_device


@functools.cache
def _attention_kernels():
    import triton
    import triton.language as tl

    @triton.jit
    def memory_partial_kernel(q_ptr, k_ptr, v_ptr, mask_ptr, m_ptr, l_ptr, acc_ptr, H, T, S, D, CHUNK, C, scale,
                              sq_b, sq_h, sq_t, sk_b, sk_h, sk_s, sv_b, sv_h, sv_s, sm_b,
                              BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        # Program (query row, chunk): an online softmax over the chunk's keys; its max, sum and weighted values go
        # to the scratch buffers for memory_combine_kernel.
        row = tl.program_id(0)  # ((b * H) + h) * T + t
        c = tl.program_id(1)
        b = row // (H * T)
        h = (row // T) % H
        t = row % T
        rd = tl.arange(0, BLOCK_D)
        dmask = rd < D
        q = tl.load(q_ptr + b * sq_b + h * sq_h + t * sq_t + rd, mask=dmask, other=0.0).to(tl.float32)  # (BLOCK_D,)
        m_run = tl.full([], -float("inf"), tl.float32)
        l_run = tl.full([], 0.0, tl.float32)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        end = tl.minimum(c * CHUNK + CHUNK, S)
        for s0 in range(c * CHUNK, end, BLOCK_S):
            rs = s0 + tl.arange(0, BLOCK_S)
            smask = rs < end
            kv_mask = smask[:, None] & dmask[None, :]
            k = tl.load(k_ptr + b * sk_b + h * sk_h + rs[:, None] * sk_s + rd[None, :], mask=kv_mask, other=0.0)
            scores = tl.sum(k.to(tl.float32) * q[None, :], axis=1) * scale  # (BLOCK_S,)
            real = tl.load(mask_ptr + b * sm_b + rs, mask=smask, other=0) != 0
            scores = tl.where(real, scores, -float("inf"))
            m_new = tl.maximum(m_run, tl.max(scores, axis=0))
            m_safe = tl.where(m_new == -float("inf"), 0.0, m_new)  # nothing real yet: keep exp() away from -inf - -inf
            alpha = tl.exp(m_run - m_safe)
            p = tl.exp(scores - m_safe)  # (BLOCK_S,)
            v = tl.load(v_ptr + b * sv_b + h * sv_h + rs[:, None] * sv_s + rd[None, :], mask=kv_mask, other=0.0)
            acc = acc * alpha + tl.sum(p[:, None] * v.to(tl.float32), axis=0)
            l_run = l_run * alpha + tl.sum(p, axis=0)
            m_run = m_new
        tl.store(m_ptr + row * C + c, m_run)
        tl.store(l_ptr + row * C + c, l_run)
        tl.store(acc_ptr + (row * C + c) * BLOCK_D + rd, acc)

    @triton.jit
    def memory_combine_kernel(m_ptr, l_ptr, acc_ptr, w_ptr, out_ptr, H, T, D, C, sw_b, so_b, so_h, so_t,
                              ACCUMULATE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_D: tl.constexpr,
                              PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row = tl.program_id(0)
        b = row // (H * T)
        h = (row // T) % H
        t = row % T
        rc = tl.arange(0, BLOCK_C)
        rd = tl.arange(0, BLOCK_D)
        m_all = tl.full([], -float("inf"), tl.float32)
        for c0 in range(0, C, BLOCK_C):
            m_all = tl.maximum(m_all, tl.max(tl.load(m_ptr + row * C + c0 + rc, mask=c0 + rc < C,
                                                     other=-float("inf")), axis=0))
        m_safe = tl.where(m_all == -float("inf"), 0.0, m_all)
        l_all = tl.full([], 0.0, tl.float32)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            cmask = c0 + rc < C
            scale = tl.exp(tl.load(m_ptr + row * C + c0 + rc, mask=cmask, other=-float("inf")) - m_safe)  # (BLOCK_C,)
            l_all += tl.sum(scale * tl.load(l_ptr + row * C + c0 + rc, mask=cmask, other=0.0), axis=0)
            part = tl.load(acc_ptr + (row * C + c0 + rc)[:, None] * BLOCK_D + rd[None, :], mask=cmask[:, None],
                           other=0.0)  # (BLOCK_C, BLOCK_D)
            acc += tl.sum(scale[:, None] * part, axis=0)
        # A row with no real key: 0/0, NaN as torch's softmax gives.
        o = acc / l_all * tl.load(w_ptr + b * sw_b).to(tl.float32)
        out = out_ptr + b * so_b + h * so_h + t * so_t + rd
        dmask = rd < D
        if ACCUMULATE:
            o += tl.load(out, mask=dmask, other=0.0)
        tl.store(out, o, mask=dmask)

    return triton, memory_partial_kernel, memory_combine_kernel


@functools.cache
def _residual_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def gated_residual_kernel(h_ptr, y_ptr, ln_w_ptr, ln_b_ptr, gate_ptr, pw_ptr, out_ptr, flag_ptr, T, D, spw, eps,
                              clamp, BLOCK_D: tl.constexpr, PDL: tl.constexpr):
        if PDL:
            tl.extra.cuda.gdc_wait()
            tl.extra.cuda.gdc_launch_dependents()
        row = tl.program_id(0)  # one position: (b, t) flattened
        rd = tl.arange(0, BLOCK_D)
        dmask = rd < D
        y = tl.load(y_ptr + row * D + rd, mask=dmask, other=0.0).to(tl.float32)
        mean = tl.sum(y, axis=0) / D
        centred = tl.where(dmask, y - mean, 0.0)
        var = tl.sum(centred * centred, axis=0) / D  # biased, as LayerNorm
        normed = centred * (1.0 / tl.sqrt(var + eps))
        normed = normed * tl.load(ln_w_ptr + rd, mask=dmask, other=1.0) + tl.load(ln_b_ptr + rd, mask=dmask, other=0.0)
        delta = tl.load(gate_ptr + rd, mask=dmask, other=0.0) * normed
        # Read through its stride: the call site's primary weight is a column of the (B, E) routing weights.
        delta = tl.load(pw_ptr + (row // T) * spw).to(tl.float32) * delta
        clamped = tl.minimum(tl.maximum(delta, -clamp), clamp)
        delta = tl.where(delta != delta, delta, clamped)  # NaN stays NaN (torch.clamp's rule)
        bad = tl.sum(tl.where(dmask & (delta != delta), 1, 0), axis=0)
        tl.store(flag_ptr, 1, mask=bad > 0)
        h = tl.load(h_ptr + row * D + rd, mask=dmask, other=0.0)
        out = h.to(tl.float32) + delta.to(h.dtype).to(tl.float32)  # as h + delta.to(h.dtype): one rounding each
        tl.store(out_ptr + row * D + rd, out.to(h.dtype), mask=dmask)

    return triton, gated_residual_kernel


def available() -> bool:
    return gemv_available()  # the same requirement: Triton importable


# Keys per program of memory_partial_kernel: at least MIN_CHUNK, and at most MAX_CHUNKS programs per query row, and
# about TARGET_PROGRAMS programs in all (a slab of 16 rows has 16x the query rows of one request).
MIN_CHUNK, MAX_CHUNKS, BLOCK_S, TARGET_PROGRAMS = 16, 64, 16, 1024


def memory_chunk(rows: int, S: int, target_programs: int = TARGET_PROGRAMS) -> int:
    """Keys per program for `rows` query rows over S keys."""
    import triton

    chunks = max(1, min(MAX_CHUNKS, triton.cdiv(target_programs, rows)))
    return max(MIN_CHUNK, triton.next_power_of_2(triton.cdiv(S, chunks)))


def memory_attention(q: torch.Tensor, slots, chunk: int | None = None, block_s: int = BLOCK_S) -> torch.Tensor:
    """sum_r w_r softmax(q k_r^T / sqrt(hd) + mask_r) v_r in float32.
    q (B, H, T, hd) float32; each slot: key/value (B, H, S, hd) float32, mask (B, 1, 1, S) bool, weight (B,).
    -> (B, H, T, hd) float32.

    A decode step has B * H * T query rows of a few hundred keys: too few programs to stream the memory at speed
    (one program per row took 65 µs on an H100). Each row's keys are split into chunks, one program each, and a
    second kernel combines the chunks' softmax statistics (flash-decoding)."""
    triton, partial, combine = _attention_kernels()
    B, H, T, D = q.shape
    rows, block_d = B * H * T, triton.next_power_of_2(D)
    out = torch.empty(B, H, T, D, dtype=torch.float32, device=q.device)
    with on_device(q):
        for r, slot in enumerate(slots):
            k, v = slot.key, slot.value
            if k.stride(-1) != 1 or v.stride(-1) != 1 or q.stride(-1) != 1:
                raise ValueError("memory_attention needs a unit last stride in q, keys and values")
            S = k.shape[2]
            keys = chunk or memory_chunk(rows, S)
            C = triton.cdiv(S, keys)
            mask = slot.mask.reshape(B, S).view(torch.uint8)  # (B, S): a view of the (B, 1, 1, S) buffer
            m = torch.empty(rows, C, dtype=torch.float32, device=q.device)
            l = torch.empty_like(m)
            acc = torch.empty(rows, C, block_d, dtype=torch.float32, device=q.device)
            partial[(rows, C)](q, k, v, mask, m, l, acc, H, T, S, D, keys, C, D**-0.5,
                               q.stride(0), q.stride(1), q.stride(2), k.stride(0), k.stride(1), k.stride(2),
                               v.stride(0), v.stride(1), v.stride(2), mask.stride(0),
                               BLOCK_S=block_s, BLOCK_D=block_d, num_warps=4, **launch_options())
            combine[(rows,)](m, l, acc, slot.weight, out, H, T, D, C, slot.weight.stride(0), out.stride(0),
                             out.stride(1), out.stride(2),
                             ACCUMULATE=r > 0, BLOCK_C=16, BLOCK_D=block_d, num_warps=4,
                             **launch_options())
    return out


def memory_attention_reference(q: torch.Tensor, slots) -> torch.Tensor:
    """The same in plain torch (the interaction's own small-query path)."""
    B = q.shape[0]
    mixed = None
    for slot in slots:
        scores = (q @ slot.key.transpose(-1, -2)) * q.shape[-1] ** -0.5  # (B, H, T, S)
        o = scores.masked_fill(~slot.mask, float("-inf")).softmax(-1) @ slot.value
        o = slot.weight.view(B, 1, 1, 1) * o
        mixed = o if mixed is None else mixed + o
    return mixed


def gated_residual(hidden: torch.Tensor, y: torch.Tensor, norm: torch.nn.LayerNorm, gate: torch.Tensor,
                   primary_weight: torch.Tensor, clamp: float, nonfinite: torch.Tensor) -> torch.Tensor:
    """hidden + clamp(primary_weight * gate * norm(y)) in hidden's dtype; sets `nonfinite` (a bool scalar) if the
    clamped update holds a NaN. hidden (B, T, d) contiguous, y (B, T, d) float32 contiguous, primary_weight (B,) of
    any stride."""
    triton, kernel = _residual_kernel()
    B, T, D = hidden.shape
    if not (hidden.is_contiguous() and y.is_contiguous()):
        raise ValueError("gated_residual needs contiguous hidden states and update")
    out = torch.empty_like(hidden)
    with on_device(hidden):
        kernel[(B * T,)](hidden, y, norm.weight, norm.bias, gate, primary_weight, out, nonfinite.view(torch.uint8),
                         T, D, primary_weight.stride(0), norm.eps, clamp, BLOCK_D=triton.next_power_of_2(D),
                         num_warps=4 if D <= 2048 else 8, **launch_options())
    return out


def gated_residual_reference(hidden: torch.Tensor, y: torch.Tensor, norm: torch.nn.LayerNorm, gate: torch.Tensor,
                             primary_weight: torch.Tensor, clamp: float, nonfinite: torch.Tensor) -> torch.Tensor:
    """The same in plain torch (InteractionLayer.update's tail and the stack hook's residual add)."""
    B = hidden.shape[0]
    delta = (primary_weight.view(B, 1, 1) * (gate * F.layer_norm(y, norm.normalized_shape, norm.weight, norm.bias,
                                                                   norm.eps))).clamp(-clamp, clamp)
    nonfinite |= ~torch.isfinite(delta).all()
    return hidden + delta.to(hidden.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The interaction's float32 projections: one row through the Triton GEMV (cuBLAS's float32 GEMV took 6.2 µs
    for 1536 x 1536 on an H100), more rows through `F.linear` (for a slab's 16 rows cuBLAS took 17 µs, the rows
    kernel's IEEE float32 product 31 µs: bench_gemv.py)."""
    if x.numel() == x.shape[-1]:
        return gemv(x, weight, bias)
    return F.linear(x, weight, bias)

"""The engine's Triton kernels, run by Triton's interpreter on CPU (TRITON_INTERPRET=1).

CI has no GPU, so these run the very kernel code (masks, pointer offsets, online softmax, flags) on small shapes
against the plain-torch references, on every commit. The GPU-only tests in test_kernels.py run the compiled kernels
on a GPU at the real shapes. Skipped where Triton is not installed, and on a GPU machine (there the kernels compile).
"""

from __future__ import annotations

import os
import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

# Triton decides when it is imported whether its own library functions (tl.sum, ...) are interpreted, so the switch
# goes on at collection, before anything imports it — on CPU-only machines, where no kernel could run otherwise.
_INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1" or "triton" not in sys.modules
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
pytest.importorskip("triton")
pytestmark = [
    pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU runs the compiled kernels (test_kernels.py)"),
    pytest.mark.skipif(not _INTERPRETED, reason="Triton was imported before its interpreter could be switched on"),
]

from mot_engine.kernels import decode_attention, gemv, int4_gemv, interaction_kernels, rms_norm, rotary  # noqa: E402
from mot_engine.model.interaction import MemorySlot  # noqa: E402

FACTORIES = [gemv._kernel, gemv._glu_kernel, gemv._qkv_kernel, gemv._rows_kernels, rotary._kernel, decode_attention._kernels,
             rms_norm._kernel, interaction_kernels._attention_kernels, interaction_kernels._residual_kernel,
             int4_gemv._kernels]
DTYPES = [torch.float32, torch.bfloat16]


@pytest.fixture(autouse=True)
def interpreter():
    """Kernels are built at first use (functools.cache): build them under the interpreter, and drop them after."""
    for factory in FACTORIES:
        factory.cache_clear()
    yield
    for factory in FACTORIES:
        factory.cache_clear()


def _tol(dtype):
    return {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {"rtol": 2e-2, "atol": 2e-2}


@pytest.mark.parametrize("dtype", DTYPES)
def test_gemv_glu_and_qkv(dtype):
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g).to(dtype)

    blocks = (4, 16, 1)
    for n, k, bias in [(48, 40, True), (30, 33, False)]:
        x, w, b = randn(1, 1, k), randn(n, k) / k**0.5, randn(n) if bias else None
        torch.testing.assert_close(gemv.gemv(x, w, b, blocks).float(), F.linear(x, w, b).float(), **_tol(dtype))
        up = randn(n, k) / k**0.5
        torch.testing.assert_close(gemv.gemv_glu(x, w, up, blocks).float(),
                                   gemv.gemv_glu_reference(x, w, up).float(), **_tol(dtype))
    for nq, nk, nv, k, bias in [(48, 16, 16, 40, True), (30, 10, 12, 33, False)]:
        ws = [randn(n, k) / k**0.5 for n in (nq, nk, nv)]
        bs = [randn(n) for n in (nq, nk, nv)] if bias else None
        x = randn(1, 1, k)
        got = gemv.gemv_qkv(x, ws, bs, blocks)
        for out, w, b, ref in zip(got, ws, bs or [None] * 3, gemv.gemv_qkv_reference(x, ws, bs)):
            assert torch.equal(out, gemv.gemv(x, w, b, blocks))  # same blocks, same sums
            torch.testing.assert_close(out.float(), ref.float(), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_rotary_pair(dtype):
    for B, H, Hk, T, D in [(1, 6, 2, 1, 16), (3, 4, 4, 2, 8)]:
        q = torch.randn(B, T, H, D).to(dtype).transpose(1, 2)  # q_proj's view
        k = torch.randn(B, T, Hk, D).to(dtype).transpose(1, 2)
        cos, sin = (torch.randn(B, T, D).to(dtype) for _ in range(2))
        yq, yk = rotary.rotary_pair(q, k, cos, sin)
        torch.testing.assert_close(yq, rotary.rotary_reference(q, cos, sin), **_tol(dtype))
        torch.testing.assert_close(yk, rotary.rotary_reference(k, cos, sin), **_tol(dtype))
        assert torch.equal(yk, rotary.rotary(k, cos, sin))
        # a batched prefill without position ids: one row of cos/sin for every row of q and k
        yq, yk = rotary.rotary_pair(q, k, cos[:1], sin[:1])
        torch.testing.assert_close(yq, rotary.rotary_reference(q, cos[:1], sin[:1]), **_tol(dtype))
        torch.testing.assert_close(yk, rotary.rotary_reference(k, cos[:1], sin[:1]), **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_decode_attention_and_cache_write(dtype):
    for C, H, Hk, M, D in [(1, 6, 2, 150, 32), (2, 4, 4, 70, 32)]:
        q = torch.randn(C, 1, H, D).to(dtype).transpose(1, 2)
        keys, values = (torch.randn(C, Hk, M, D).to(dtype) for _ in range(2))
        mask = torch.zeros(C, 1, 1, M, dtype=dtype)
        mask[0, ..., M // 2:] = torch.finfo(dtype).min  # a row with padding
        # The interpreter's tl.dot of bfloat16 inputs returns garbage (Triton 3.9: 3e10 off on a 16x16 product), so
        # the attention runs here in float32 only; bfloat16 runs on the GPU (test_kernels.py).
        for m in (mask, None) if dtype == torch.float32 else ():
            got = decode_attention.decode_attention(q, keys, values, m, D**-0.5)
            want = decode_attention.decode_attention_reference(q, keys, values, m, D**-0.5)
            torch.testing.assert_close(got.float(), want.float(), **_tol(dtype))
        if dtype == torch.float32:  # a verify step: T new positions at columns c..c+T-1, position t sees up to c+t
            for T in (2, 9):  # 9 positions of 3 heads: 27 query rows, a program of 32
                qt = torch.randn(C, T, H, D).to(dtype).transpose(1, 2)  # (C, H, T, D), q_proj's view
                verify = mask.expand(C, 1, T, M).clone()
                c = M - 8
                for t in range(T):
                    verify[:, :, t, c + t + 1:] = torch.finfo(dtype).min
                verify[-1, :, :, 3] = torch.finfo(dtype).min  # a hole in one row's columns (a rejected draft's)
                got = decode_attention.decode_attention(qt, keys, values, verify, D**-0.5)
                want = decode_attention.decode_attention_reference(qt, keys, values, verify, D**-0.5)
                assert got.shape == (C, T, H, D)
                torch.testing.assert_close(got.float(), want.float(), **_tol(dtype))
        k = torch.randn(C, Hk, 1, D).to(dtype)
        v = torch.randn(C, 1, Hk, D).to(dtype).transpose(1, 2)  # v_proj's view
        column = torch.tensor([M - 3])
        want_k, want_v = keys.clone().index_copy_(2, column, k), values.clone().index_copy_(2, column, v)
        decode_attention.write_token(keys, values, k, v, column)
        assert torch.equal(keys, want_k) and torch.equal(values, want_v)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rms_norm(dtype):
    for shape in [(1, 1, 40), (3, 1, 100), (2, 2, 64)]:
        x, w = torch.randn(*shape).to(dtype), torch.randn(shape[-1]).to(dtype)
        torch.testing.assert_close(rms_norm.rms_norm(x, w, 1e-6).float(), F.rms_norm(x, shape[-1:], w, 1e-6).float(),
                                   **_tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
def test_residual_folds_equal_the_two_ops(dtype):
    """The add before the post-attention norm and the one after the down projection: bit for bit the two ops in
    float32. In bfloat16 only to one ulp: the interpreter casts float32 to bfloat16 toward zero (1 + 2^-8 + 2^-10
    becomes 1.0, not 1 + 2^-7), where torch and the compiled kernels round to nearest (the GPU test is bit for bit)."""

    def same(got, want):
        if dtype == torch.float32:
            assert torch.equal(got, want)
        else:
            torch.testing.assert_close(got.float(), want.float(), rtol=2**-7, atol=2**-7)

    for shape in [(1, 1, 40), (3, 1, 100)]:
        x, r, w = (torch.randn(*s).to(dtype) for s in (shape, shape, shape[-1:]))
        y, s = rms_norm.add_rms_norm(x, r, w, 1e-6)
        same(s, r + x)
        same(y, rms_norm.rms_norm(r + x, w, 1e-6))
    x, w, b, r = torch.randn(1, 1, 33).to(dtype), torch.randn(30, 33).to(dtype), torch.randn(30).to(dtype), torch.randn(1, 1, 30).to(dtype)
    same(gemv.gemv(x, w, b, (4, 16, 1), residual=r), r + gemv.gemv(x, w, b, (4, 16, 1)))


def test_rows_kernels_equal_the_references():
    """A slab's few rows: q/k/v in one launch (biases, unequal widths), and the gate/up pair. float32 only: the
    interpreter's bfloat16 tl.dot is wrong (see the decode attention test); the GPU test covers bfloat16."""
    g = torch.Generator().manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    blocks = (16, 16, 1)
    for rows in (2, 5, 16):
        x = randn(rows, 1, 40)
        ws, bs = [randn(n, 40) / 6 for n in (48, 16, 20)], [randn(n) for n in (48, 16, 20)]
        for biases in (bs, None):  # Qwen2's q/k/v have biases, Llama's none
            for got, want in zip(gemv.gemv_qkv(x, ws, biases, blocks), gemv.gemv_qkv_reference(x, ws, biases)):
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        gate, up = randn(50, 40) / 6, randn(50, 40) / 6
        torch.testing.assert_close(gemv.gemv_glu(x, gate, up, blocks), gemv.gemv_glu_reference(x, gate, up),
                                   rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="at most 16 rows"):
        gemv.gemv_qkv(randn(17, 1, 40), ws, bs)


def _slots(B, H, S, D, n=2):
    g = torch.Generator().manual_seed(1)
    slots = []
    for r in range(n):
        mask = torch.ones(B, 1, 1, S, dtype=torch.bool)
        mask[0, ..., 10 + r:] = False  # padded memory
        mask[-1, ..., 1:] = False  # a free slab row: one real key
        slots.append(MemorySlot(key=torch.randn(B, H, S, D, generator=g), value=torch.randn(B, H, S, D, generator=g),
                                mask=mask, weight=torch.rand(B, 3, generator=g)[:, r % 3]))  # strided, as routing's
    return slots


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the row with no real key: 0/0
def test_memory_attention():
    for B, H, T, S, D in [(3, 4, 1, 50, 24), (2, 2, 2, 1100, 20)]:  # several chunks; chunks longer than a block
        slots = _slots(B, H, S, D)
        q = torch.randn(B, H, T, D)
        for used in (slots[:1], slots):
            torch.testing.assert_close(interaction_kernels.memory_attention(q, used),
                                       interaction_kernels.memory_attention_reference(q, used), rtol=1e-5, atol=1e-5)
    empty = _slots(2, 2, 30, 8, n=1)
    empty[0].mask[1] = False  # a row with no real key: NaN, as torch's softmax gives
    q = torch.randn(2, 2, 1, 8)
    got, want = interaction_kernels.memory_attention(q, empty), interaction_kernels.memory_attention_reference(q, empty)
    assert torch.isnan(got[1]).all() and torch.isnan(want[1]).all()
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_gated_residual_and_float32_linear(dtype):
    d = 40
    norm = SimpleNamespace(weight=torch.randn(d), bias=torch.randn(d), eps=1e-5, normalized_shape=(d,))
    for T in (1, 2):
        hidden, y, gate = torch.randn(2, T, d).to(dtype), torch.randn(2, T, d) * 3, torch.randn(d)
        weight = torch.tensor([[0.9, 0.0, 0.1], [0.3, 0.7, 0.0]])[:, 0]  # a column of routing weights (stride 3), as
        # the call site's primary weight: reading it as contiguous gives row 1 the weight 0.0
        flags = [torch.zeros((), dtype=torch.bool) for _ in range(2)]
        got = interaction_kernels.gated_residual(hidden, y, norm, gate, weight, 0.5, flags[0])
        want = interaction_kernels.gated_residual_reference(hidden, y, norm, gate, weight, 0.5, flags[1])
        torch.testing.assert_close(got.float(), want.float(), **_tol(dtype))
        assert not flags[0] and not flags[1]
        y[1, -1, 5] = float("nan")
        interaction_kernels.gated_residual(hidden, y, norm, gate, weight, 0.5, flags[0])
        assert flags[0]  # a NaN in the update sets the step's flag
    x, w, b = torch.randn(1, 1, 48), torch.randn(40, 48) / 7, torch.randn(40)
    torch.testing.assert_close(gemv.gemv(x, w, b), F.linear(x, w, b), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", DTYPES)
def test_int4_kernels_equal_the_dequantized_product(dtype, monkeypatch):
    """The one-row kernel (M = 1) and the rows kernel (tiles of 16 and 64 rows) compute x W^T + b with the split
    layout's weight dequantized, and their GLU variants silu(gate) * up: masks on N and M, groups of 32 / 64 / 128
    across both halves of K, the rows kernel with K whole and split across programs (one left without a group
    too), codes made floats by bits and by conversion. The rows kernel in float32 only: the interpreter's bfloat16
    tl.dot is wrong (test_kernels.py runs it in bfloat16 on a GPU)."""
    from mot_engine.model.int4 import (
        pack_split_halves,
        quantize_groups,
        split_halves_glu_reference,
        split_halves_reference,
    )

    g = torch.Generator().manual_seed(0)
    # 384 / 32: six groups a half, so a step of 4 groups ends with a partial one
    shipped = dict(int4_gemv.ONE_ROW_BLOCKS)
    for n, k, group, bias in [(40, 64, 32, True), (48, 256, 128, False), (16, 128, 64, True), (24, 384, 32, True)]:
        w = torch.randn(n, k, generator=g) / k**0.5
        codes, sz = quantize_groups(w, group)
        scales, zeros = sz[..., 0].t().contiguous(), sz[..., 1].t().contiguous()  # (N, G)
        packed, offsets = pack_split_halves(codes), (zeros - 8 * scales).to(dtype)
        b = torch.randn(n, generator=g).to(dtype) if bias else None
        # (rows, one-row blocks, rows kernel's split of K, codes to floats by bits (else by conversion))
        # (one-row blocks: BLOCK_N, groups a step, warps, programs sharing K)
        for m, one_row, split, bits in [(1, (4, 1, 1, 1), None, True), (1, (8, 4, 2, 1), None, False),
                                        (1, (4, 1, 1, 4), None, True), (1, (2, 2, 2, 2), None, False),
                                        (1, None, None, True)] + \
                ([(3, None, 1, True), (20, None, 1, False), (3, None, 2, True), (20, None, 4, True)]
                 if dtype == torch.float32 else []):
            monkeypatch.setattr(int4_gemv, "ONE_ROW_BLOCKS",  # None: the shipped blocks of each product kind
                                dict.fromkeys(int4_gemv.PRODUCT_KINDS, one_row) if one_row else shipped)
            monkeypatch.setattr(int4_gemv, "ROWS_SPLIT_K", split)  # rows: K whole, or shared by 2 / 4 programs
            monkeypatch.setattr(int4_gemv, "DEQUANT_BY_BITS", bits)
            x = torch.randn(m, k, generator=g).to(dtype)
            got = int4_gemv.int4_linear(x, packed, scales.to(dtype), offsets, group, b)
            expected = split_halves_reference(x.float(), packed, scales.to(dtype).float(), offsets.float(), group,
                                              None if b is None else b.float())
            assert got.dtype == dtype and got.shape == (m, n)
            torch.testing.assert_close(got.float(), expected, **_tol(dtype))
            if n % 2 == 0:  # the same weight as a gated MLP's gate and up stacked (n/2 rows each): the GLU variant
                glu = int4_gemv.int4_glu(x, packed, scales.to(dtype), offsets, group)
                want = split_halves_glu_reference(x.float(), packed, scales.to(dtype), offsets, group)
                assert glu.dtype == dtype and glu.shape == (m, n // 2)
                torch.testing.assert_close(glu.float(), want.float(), **_tol(dtype))

"""Attention in the Generator's forwards: the rotary embedding of q and k in one launch (decode steps and prefills),
one-query split-K attention over the cache, and the slab cache write in one launch (kernels/rotary.py,
kernels/decode_attention.py). Each dispatches at the one shared place transformers calls by name."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from mot_engine.kernels import decode_attention as attention_kernels
from mot_engine.kernels.decode_attention import CACHE_WRITE
from mot_engine.kernels.rotary import as_pair, rotary_pair
from mot_engine.kernels.rotary import available as rotary_available
from mot_engine.kernels.substitutions.switches import GlobalSwitch
from mot_engine.model.experts import find_decoder_layers

# The rotary function is a module-level function of each model family's modeling module, called by name from the
# attention's forward: the one place to dispatch it without editing the experts. The dispatcher is installed once
# per family module, and computes the fused kernel only while `fused_rotary` is on (the engine's decode steps).
_ROTARY = {"on": False}


def _rotary_applies(q, k, cos, sin, args, kwargs) -> bool:
    return (_ROTARY["on"] and not args and not kwargs and q.dim() == 4 and k.dim() == 4
            and cos.dim() == 3 and cos.shape == sin.shape and cos.shape[-1] == q.shape[-1] == k.shape[-1]
            and cos.shape[0] in (1, q.shape[0]) and cos.shape[1] == q.shape[2] == k.shape[2]  # a prefill's cos: (1, T, D)
            and k.shape[0] == q.shape[0]
            and q.shape[-1] % 2 == 0 and q.dtype == k.dtype == cos.dtype == sin.dtype
            and q.stride(-1) == k.stride(-1) == cos.stride(-1) == sin.stride(-1) == 1
            and not torch.compiler.is_compiling())  # compiled layers: inductor fuses the original itself


def _rotary_dispatcher(original, pair, needs_cuda: bool):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if (q.is_cuda or not needs_cuda) and _rotary_applies(q, k, cos, sin, args, kwargs):
            return pair(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.mot_original = original
    return apply_rotary_pos_emb


@torch.no_grad()
def computes_rotary(original, pair, device, dtype) -> bool:
    """Does the family's `apply_rotary_pos_emb` equal the (q, k) kernel `pair` on a probe (decode shapes, 2 rows)?"""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k = (torch.randn(2, 1, h, 64, generator=gen).to(device, dtype).transpose(1, 2) for h in (4, 2))  # as q_proj's view
    cos, sin = (torch.randn(2, 1, 64, generator=gen).to(device, dtype) for _ in range(2))
    try:
        want = original(q, k, cos, sin)
    except (TypeError, ValueError, RuntimeError):  # another signature or layout: not this function
        return False
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    return all(g.shape == w.shape and torch.allclose(g.float(), w.float(), rtol=tol, atol=tol)
               for g, w in zip(pair(q, k, cos, sin), want))


def install_fused_rotary(mot, kernel=None) -> int:
    """Dispatch the rotary embedding of every expert family whose function a probe shows equal to the kernel (q's
    and k's heads in one launch: kernels/rotary.py's `rotary_pair`; a given one-tensor `kernel` runs twice —
    tests). Returns how many experts use it (0 without Triton or a GPU, unless a `kernel` is given). Idempotent."""
    if getattr(mot, "_fused_rotary_installed", None) is not None:
        return mot._fused_rotary_installed
    if kernel is None and not rotary_available():
        mot._fused_rotary_installed = 0
        return 0
    pair = rotary_pair if kernel is None else as_pair(kernel)
    count = 0
    for model in mot.experts:
        param = next(model.parameters())
        if kernel is None and not param.is_cuda:
            continue
        attention = getattr(find_decoder_layers(model)[0], "self_attn", None)
        module = sys.modules.get(type(attention).__module__) if attention is not None else None
        current = getattr(module, "apply_rotary_pos_emb", None)
        if current is None:
            continue
        original = getattr(current, "mot_original", current)
        if not computes_rotary(original, pair, param.device, param.dtype):
            continue
        if current is original:
            module.apply_rotary_pos_emb = _rotary_dispatcher(original, pair, needs_cuda=kernel is None)
        count += 1
    mot._fused_rotary_installed = count
    return count


class fused_rotary(GlobalSwitch):
    """Within this block, installed families rotate q and k with one launch."""

    state = _ROTARY


# ---------------------------------------------------------------------------------------------------- decode attention

# transformers looks the attention function up by name in one shared registry at every call
# (ALL_ATTENTION_FUNCTIONS["sdpa"]): the one place to reach it without editing an expert. The dispatcher computes
# the split-K decode kernel only while `decode_attention` is on (the engine's decode and verify steps) and for the
# shapes it takes (one query position with an additive mask or none, or a verify step's few positions with their
# mask; no sliding window or softcap); the original otherwise.
_ATTENTION = {"on": False}


def _attention_dispatcher(original, kernel, needs_cuda: bool, max_queries: int):
    def sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                               position_bias=None, **kwargs):
        if (_ATTENTION["on"] and (query.is_cuda or not needs_cuda) and dropout == 0.0 and position_bias is None
                and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None
                and not kwargs.get("output_attentions") and not torch.compiler.is_compiling()
                and query.shape[2] <= max_queries and attention_kernels.supported(query, key, attention_mask)):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return kernel(query, key, value, attention_mask, scale), None
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                        is_causal=is_causal, position_bias=position_bias, **kwargs)

    sdpa_attention_forward.mot_original = original
    return sdpa_attention_forward


@torch.no_grad()
def computes_decode_attention(original, kernel, device, dtype) -> int:
    """How many query positions a row the registered "sdpa" function is shown to equal the kernel for, on probes
    (grouped heads, additive masks): 0 (not even one), 1 (a decode step's one query) or MAX_QUERIES (also a verify
    step's: three positions, each seeing the columns up to its own) — a verify probe that fails leaves decode steps
    their kernel."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    k, v = (torch.randn(2, 2, 80, 32, generator=gen).to(device, dtype) for _ in range(2))
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    shown = 0
    for T, covers in ((1, 1), (3, attention_kernels.MAX_QUERIES)):
        q = torch.randn(2, T, 4, 32, generator=gen).to(device, dtype).transpose(1, 2)  # as q_proj's view
        mask = torch.zeros(2, 1, T, 80, dtype=dtype, device=device)
        mask[0, ..., 50:] = torch.finfo(dtype).min  # a padded row
        for t in range(T):
            mask[1, :, t, 70 + t + 1:] = torch.finfo(dtype).min  # position t sees the new columns up to its own
        try:
            want, _ = original(module, q, k, v, mask, dropout=0.0, scaling=32**-0.5)
        except (TypeError, ValueError, RuntimeError):
            return shown
        got = kernel(q, k, v, mask, 32**-0.5)
        if want.shape != got.shape or not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol):
            return shown
        shown = covers
    return shown


def install_decode_attention(mot, kernel=None) -> int:
    """Dispatch the shared "sdpa" attention function to the split-K decode kernel (kernels/decode_attention.py)
    if a probe shows the same function. Returns how many experts use "sdpa" and so benefit (0 without Triton or a
    GPU, unless a `kernel` is given — tests). Idempotent."""
    if getattr(mot, "_decode_attention_installed", None) is not None:
        return mot._decode_attention_installed
    needs_cuda = kernel is None
    if kernel is None and not attention_kernels.available():
        mot._decode_attention_installed = 0
        return 0
    kernel = kernel or attention_kernels.decode_attention
    users = [m for m in mot.experts if getattr(m.config, "_attn_implementation", None) == "sdpa"
             and (next(m.parameters()).is_cuda or not needs_cuda)]
    count = 0
    if users:
        current = ALL_ATTENTION_FUNCTIONS["sdpa"]
        original = getattr(current, "mot_original", current)
        param = next(users[0].parameters())
        max_queries = computes_decode_attention(original, kernel, param.device, param.dtype)
        if max_queries:
            if current is original:
                ALL_ATTENTION_FUNCTIONS["sdpa"] = _attention_dispatcher(original, kernel, needs_cuda, max_queries)
            count = len(users)
    mot._decode_attention_installed = count
    return count


class decode_attention_on(GlobalSwitch):
    """Within this block, one-query (and verify-step) attention through the shared "sdpa" function runs the split-K
    decode kernel."""

    state = _ATTENTION


# ---------------------------------------------------------------------------------------------------- cache write

def install_fused_cache_write(mot) -> int:
    """The slabs' cache layers (decoding/slabs.py) write a token's key and value in one launch
    (decode_attention.write_token) inside `fused_cache_write`: 1 where Triton and a GPU are there, else 0."""
    return int(mot.device.type == "cuda" and attention_kernels.available())


class fused_cache_write(GlobalSwitch):
    """Within this block, slab cache layers on CUDA write each token's key and value with one kernel."""

    state = CACHE_WRITE

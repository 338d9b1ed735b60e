"""`decode_substitutions`: every installed substitution switched as asked for one of the Generator's forwards."""

from __future__ import annotations

import contextlib

from mot_engine.kernels.substitutions.attention import (
    decode_attention_on,
    fused_cache_write,
    fused_rotary,
)
from mot_engine.kernels.substitutions.interaction import fused_interaction
from mot_engine.kernels.substitutions.launch import programmatic_launch
from mot_engine.kernels.substitutions.linear import fused_mlp, fused_qkv, triton_gemv
from mot_engine.kernels.substitutions.norms import fused_norms
from mot_engine.kernels.substitutions.residual import fused_residual


@contextlib.contextmanager
def decode_substitutions(mot, *, norms: bool, gemv: bool, qkv: bool, mlp: bool, rotary: bool, attention: bool,
                         cache_write: bool, interaction: bool, residual: bool = False, pdl: bool = False):
    """Every installed substitution switched as asked, for one of the Generator's forwards (a decode step or a
    prefill); training and scoring run outside, with every substitution off. `pdl`: the Triton kernels among them
    launch with programmatic dependent launch."""
    with fused_norms(mot, norms), triton_gemv(mot, gemv), fused_qkv(mot, qkv), fused_mlp(mot, mlp), \
            fused_rotary(rotary), decode_attention_on(attention), fused_cache_write(cache_write), \
            fused_interaction(mot, interaction), fused_residual(mot, residual), programmatic_launch(pdl):
        yield

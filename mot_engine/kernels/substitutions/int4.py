"""int4 experts' linear layers through the Triton int4 kernels (kernels/int4_gemv.py), an attention's q/k/v as one
product and a gated MLP's gate, up and SiLU as one kernel.

Unlike the other substitutions these are not switched per forward: a split-layout `Int4Linear` has no fast path
but this one (its own forward dequantizes the whole weight), so once installed it serves prefill, decode steps,
the slabs' CUDA graphs and eager forwards alike. The two fusions follow the bf16 path's (substitutions/linear.py), for
the same reason: at one row a layer's cost is launches and passes as much as bytes, and the int4 path ran q, k, v,
gate and up as five products plus the activation where the bf16 path runs two kernels (BENCHMARKS.md, run I3).
- q/k/v: the three layers' rows are stacked into one weight (`merge_rows`: each layer's buffers become views of its
  rows, so no memory is added and a layer called alone computes what it did); q_proj's forward computes all three
  and k_proj/v_proj take theirs (linear.py's `dispatch_qkv`). The same codes and kernel: the results are those of the
  three products, bit for bit.
- gated MLP: gate and up stacked the same way; the MLP's forward runs `int4_glu` (silu(gate) * up in float32, one
  rounding) and then down_proj, where a probe shows this equals the module's own forward (Gemma's GELU does not).
"""

from __future__ import annotations

import torch

from mot_engine.kernels.gemv import available
from mot_engine.kernels.int4_gemv import int4_glu, int4_linear
from mot_engine.kernels.substitutions.linear import dispatch_qkv, same_gated_mlp
from mot_engine.model.int4 import Int4Linear, MergedRows, merge_rows, mergeable


def install_int4_kernels(mot, *, qkv: bool = True, mlp: bool = True, product=None, glu=None) -> int:
    """Give every split-layout `Int4Linear` of the experts the Triton product, and (`qkv`, `mlp`) fuse the attentions'
    q/k/v and the gated MLPs whose layers are all such. Idempotent (the first call decides the fusions); returns how
    many layers use the product (0 without Triton, or without such layers). `product` and `glu` stand in for the
    Triton kernels (tests on CPU: the plain-torch references). Sets mot._int4_fused = (attentions, MLPs) fused."""
    if getattr(mot, "_int4_installed", None) is not None:
        return mot._int4_installed
    if product is None:
        if not available():
            return 0
        product, glu = int4_linear, int4_glu
    count = 0
    for model in mot.experts:
        for module in model.modules():
            if isinstance(module, Int4Linear) and module.layout == "split":
                module.kernel = product
                count += 1
    attentions = mlps = 0
    for model in mot.experts:
        for module in list(model.modules()):
            if qkv and _fuse_qkv(module, product):
                attentions += 1
            if mlp and glu is not None and _fuse_gated_mlp(module, glu):
                mlps += 1
    mot._int4_installed, mot._int4_fused = count, (attentions, mlps)
    return count


def _product(merged: MergedRows, kernel, x: torch.Tensor) -> torch.Tensor:
    dtype = merged.scales.dtype  # what the kernels compute in, as `Int4Linear.forward`
    return kernel(x.to(dtype), merged.packed, merged.scales, merged.offsets, merged.group, merged.bias).to(x.dtype)


def _fuse_qkv(attention: torch.nn.Module, product) -> bool:
    layers = [getattr(attention, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    if not mergeable(layers):
        return False
    merged = merge_rows(layers)

    def fused(x):
        if torch.compiler.is_compiling():
            return None
        return _product(merged, product, x).split(merged.sizes, dim=-1)  # (..., N_q), (..., N_k), (..., N_v)

    dispatch_qkv(attention, fused)
    return True


def _fuse_gated_mlp(module: torch.nn.Module, glu) -> bool:
    layers = [getattr(module, name, None) for name in ("gate_proj", "up_proj")]
    down = getattr(module, "down_proj", None)
    if (not mergeable(layers) or layers[0].bias is not None or layers[0].out_features != layers[1].out_features
            or down is None or not hasattr(module, "act_fn")):
        return False
    eager = module.forward
    merged = merge_rows(layers)

    def fused_forward(x):
        return down(glu(x.to(merged.scales.dtype), merged.packed, merged.scales, merged.offsets,
                        merged.group).to(x.dtype))  # (..., hidden)

    gate = layers[0]
    if not same_gated_mlp(eager, fused_forward, gate.in_features, gate.packed.device, gate.dtype):
        return False  # the layers stay merged (views: the same function), the module keeps its forward

    def forward(x, *args, **kwargs):
        if args or kwargs or torch.compiler.is_compiling():
            return eager(x, *args, **kwargs)
        return fused_forward(x)

    module.forward = forward
    return True

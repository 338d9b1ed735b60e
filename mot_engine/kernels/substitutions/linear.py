"""Linear layers in decode steps: one-row products through the Triton GEMV, an attention's q/k/v products in one
launch, and a gated MLP's gate and up products with the SiLU in one kernel (kernels/gemv.py; the last two also for
a slab's 2-16 rows)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mot_engine.kernels.gemv import MAX_ROWS as GEMM_ROWS
from mot_engine.kernels.gemv import available, gemv, gemv_glu, gemv_op, gemv_qkv
from mot_engine.kernels.substitutions.switches import Substitution, install_per_module


def _dispatch_linear(flag_owner, module: torch.nn.Linear, op) -> None:
    eager = module.forward
    weight, bias = module.weight, module.bias

    def forward(x, *args, **kwargs):
        if (flag_owner._use_triton_gemv and not args and not kwargs and x.is_cuda and x.dtype == weight.dtype
                and x.numel() == x.shape[-1]):  # one row: a matrix-vector product
            if torch.compiler.is_compiling():  # compiled layers (MOT_COMPILE=1): the op stays in inductor's graph
                return op(x.reshape(1, -1).contiguous(), weight, bias).view(*x.shape[:-1], -1)
            return gemv(x, weight, bias)
        return eager(x, *args, **kwargs)

    module.forward = forward


def install_triton_gemv(mot) -> int:
    """Give every plain `nn.Linear` of the experts on CUDA a dispatching forward: one-row inputs inside
    `triton_gemv(mot)` (batch-1 decode steps) run kernels/gemv.py's kernel, everything else `F.linear`.
    Quantized layers (bitsandbytes subclasses) keep theirs. Idempotent; returns how many layers dispatch (0 without
    Triton or a GPU)."""
    if getattr(mot, "_triton_gemv_installed", None) is not None:
        return mot._triton_gemv_installed
    mot._use_triton_gemv = False
    count = 0
    if available():
        op = gemv_op()
        for model in mot.experts:
            for module in model.modules():
                if type(module) is torch.nn.Linear and module.weight.is_cuda and module.weight.is_contiguous():
                    _dispatch_linear(mot, module, op)
                    count += 1
    mot._triton_gemv_installed = count
    return count


class triton_gemv(Substitution):
    """Within this block the installed linear layers run one-row inputs through the Triton GEMV."""

    flag, installed = "_use_triton_gemv", "_triton_gemv_installed"


# ---------------------------------------------------------------------------------------------------- q/k/v projections

# An attention's forward calls q_proj, k_proj and v_proj one after another on the same normed hidden states
# (transformers' Llama/Qwen2/Mistral/Starcoder2 attention). Inside `fused_qkv`, q_proj's dispatcher computes all
# three in one launch and keeps k's and v's results keyed by that very input tensor; k_proj and v_proj return them
# only when called with the same tensor object, and compute their own otherwise (another order, another input).
# The result is the same function by construction; the probe checks the kernel itself.


def _is_qkv_attention(module: torch.nn.Module) -> bool:
    layers = [getattr(module, name, None) for name in ("q_proj", "k_proj", "v_proj")]
    if not all(type(layer) is torch.nn.Linear for layer in layers):
        return False
    weights = [layer.weight for layer in layers]
    biases = [layer.bias for layer in layers]
    return (len({(w.shape[1], w.dtype, w.device) for w in weights}) == 1 and all(w.is_contiguous() for w in weights)
            and (all(b is None for b in biases) or all(b is not None and b.dtype == weights[0].dtype for b in biases)))


def _qkv_params(attention) -> tuple[tuple, tuple | None]:
    layers = attention.q_proj, attention.k_proj, attention.v_proj
    weights = tuple(layer.weight for layer in layers)
    biases = tuple(layer.bias for layer in layers) if layers[0].bias is not None else None
    return weights, biases


@torch.no_grad()
def computes_qkv(attention: torch.nn.Module, kernel) -> bool:
    """Do the kernel's three outputs equal q_proj(x), k_proj(x), v_proj(x) on a probe row?"""
    weights, biases = _qkv_params(attention)
    gen = torch.Generator(device="cpu").manual_seed(0)
    tol = 1e-4 if weights[0].dtype == torch.float32 else 2e-2
    for rows in (1, 3):  # a decode step of one request, and of a slab's few (the rows kernel)
        x = torch.randn(rows, 1, weights[0].shape[1], generator=gen).to(weights[0].device, weights[0].dtype)
        want = [attention.q_proj(x), attention.k_proj(x), attention.v_proj(x)]
        got = kernel(x, weights, biases)
        if not all(g.shape == w.shape and torch.allclose(g.float(), w.float(), rtol=tol, atol=tol)
                   for g, w in zip(got, want)):
            return False
    return True


def dispatch_qkv(attention: torch.nn.Module, fused) -> None:
    """Give the attention's q_proj, k_proj and v_proj the dispatching trio (see above): `fused(x)` returns (q, k, v)
    for an input it takes, None for one it does not (q_proj's own forward then). The int4 path shares it."""
    q_layer, k_layer, v_layer = attention.q_proj, attention.k_proj, attention.v_proj
    q_eager, k_eager, v_eager = q_layer.forward, k_layer.forward, v_layer.forward
    kept: dict[str, torch.Tensor] = {}  # "x": the input of the last fused launch, "k"/"v": its results not yet taken

    def q_forward(x, *args, **kwargs):
        kept.clear()
        out = fused(x) if not args and not kwargs else None
        if out is not None:
            q, kept["k"], kept["v"] = out
            kept["x"] = x
            return q
        return q_eager(x, *args, **kwargs)

    def taker(name, eager):
        def forward(x, *args, **kwargs):
            if not args and not kwargs and kept.get("x") is x and name in kept:
                out = kept.pop(name)
                if "k" not in kept and "v" not in kept:
                    kept.clear()  # both taken: hold no tensor between steps
                return out
            return eager(x, *args, **kwargs)
        return forward

    q_layer.forward = q_forward
    k_layer.forward = taker("k", k_eager)
    v_layer.forward = taker("v", v_eager)


def _dispatch_qkv(flag_owner, attention: torch.nn.Module, kernel, needs_cuda: bool) -> None:
    weights, biases = _qkv_params(attention)

    def fused(x):
        if (flag_owner._use_fused_qkv and (x.is_cuda or not needs_cuda) and x.dtype == weights[0].dtype
                and x.numel() <= GEMM_ROWS * x.shape[-1] and not torch.compiler.is_compiling()):
            return kernel(x, weights, biases)
        return None

    dispatch_qkv(attention, fused)


def install_fused_qkv(mot, kernel=None) -> int:
    """Give every attention whose q, k and v projections are plain linear layers of one input a dispatching trio:
    one-row inputs inside `fused_qkv(mot)` run the three products in one launch (kernels/gemv.py's `gemv_qkv`).
    Idempotent; returns how many attentions dispatch (0 without Triton or a GPU, unless a `kernel` is given — tests)."""
    return install_per_module(mot, "fused_qkv", kernel, gemv_qkv, _is_qkv_attention, lambda m: m.q_proj.weight,
                               computes_qkv, _dispatch_qkv)


class fused_qkv(Substitution):
    """Within this block the installed attentions compute one-row q, k and v projections in one launch."""

    flag, installed = "_use_fused_qkv", "_fused_qkv_installed"


# ---------------------------------------------------------------------------------------------------- gated MLPs


def is_gated_mlp(module: torch.nn.Module) -> bool:
    """Llama-family MLPs: down(act(gate(x)) * up(x)) with plain, bias-free gate and up layers of one shape."""
    layers = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(type(layer) is torch.nn.Linear for layer in layers) or not hasattr(module, "act_fn"):
        return False
    gate, up, _ = layers
    return (gate.bias is None and up.bias is None and gate.weight.shape == up.weight.shape
            and gate.weight.is_contiguous() and up.weight.is_contiguous())


@torch.no_grad()
def same_gated_mlp(eager, fused, width: int, device: torch.device, dtype: torch.dtype) -> bool:
    """Does `fused(x)` equal a gated MLP's own forward `eager(x)` on probe rows of `width` features (within float
    rounding: relative to the output's largest value)? The bf16 and int4 fusions' probe."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for rows in (1, 3):  # a decode step of one request, and of a slab's few (the rows kernel)
        x = torch.randn(rows, 1, width, generator=gen).to(device, dtype)
        try:
            reference = eager(x).float()
        except (TypeError, ValueError, RuntimeError):  # a module of this shape that wants other inputs: not a gated MLP
            return False
        got = fused(x).float()
        scale = reference.abs().max().clamp_min(1e-6)
        if got.shape != reference.shape or not bool(((got - reference).abs().max() / scale) < tol):
            return False
    return True


def computes_gated_mlp(module: torch.nn.Module, kernel) -> bool:
    """Does `module(x)` equal down_proj(kernel(x, gate, up)) (kernel = silu(x gate^T) * x up^T) on a probe row?"""
    gate, up, down = module.gate_proj.weight, module.up_proj.weight, module.down_proj
    return same_gated_mlp(module, lambda x: F.linear(kernel(x, gate, up), down.weight, down.bias), gate.shape[1],
                          gate.device, gate.dtype)


def _dispatch_mlp(flag_owner, module: torch.nn.Module, kernel, needs_cuda: bool) -> None:
    eager = module.forward
    gate, up, down = module.gate_proj.weight, module.up_proj.weight, module.down_proj

    def forward(x, *args, **kwargs):
        if (flag_owner._use_fused_mlp and not args and not kwargs and (x.is_cuda or not needs_cuda)
                and x.dtype == gate.dtype and x.numel() <= GEMM_ROWS * x.shape[-1] and not torch.compiler.is_compiling()):
            return down(kernel(x, gate, up))  # (..., hidden); down_proj keeps its own (dispatching) forward
        return eager(x, *args, **kwargs)

    module.forward = forward


def install_fused_mlp(mot, kernel=None) -> int:
    """Give every gated MLP of the experts that a probe shows equal a dispatching forward: one-row inputs inside
    `fused_mlp(mot)` compute silu(gate) * up in one pass over both weights (kernels/gemv.py's `gemv_glu`), then
    down_proj. Four kernels (two products, SiLU, multiply) become one. Idempotent; returns how many dispatch (0
    without Triton or a GPU, unless a `kernel` is given — tests)."""
    return install_per_module(mot, "fused_mlp", kernel, gemv_glu, is_gated_mlp, lambda m: m.gate_proj.weight,
                               computes_gated_mlp, _dispatch_mlp)


class fused_mlp(Substitution):
    """Within this block the installed gated MLPs run one-row inputs through the fused gate/up kernel."""

    flag, installed = "_use_fused_mlp", "_fused_mlp_installed"

"""Decode-step kernel substitutions, same maths: a fused RMSNorm for the frozen experts' norms, and the Triton
matrix-vector kernel (mot_engine/gemv.py) for their one-row linear layers.

Batch-1 decoding of a 1-3B expert runs far below the GPU's bandwidth: many small kernels and M=1 matrix products
(BENCHMARKS.md, "Where the time goes"). transformers' RMSNorm of the Llama family (Llama, Qwen2, Mistral, ...) is eight elementwise and
reduction kernels — cast, pow, mean, add, rsqrt, mul, cast, mul — two per decoder layer; torch's `F.rms_norm` is one
fused kernel on CUDA. That is about a third of an eager decode step's kernels (H200, Qwen2.5-Coder-1.5B shape:
1212 -> 813 kernels, graph replay 3.70 -> 3.51 ms fast and 4.98 -> 4.35 ms full MoT; BENCHMARKS.md).

We do not edit the experts (ARCHITECTURE.md, invariant "frozen experts are wrapped, never edited"): their
parameters, state-dict keys and classes stay as loaded. `install_fused_norms` gives each eligible norm instance a
dispatching `forward` that runs the fused kernel only while `fused_norms(mot)` is active — the engine's decode
steps — and the module's own forward everywhere else (training, prefill, scoring). A norm class is eligible only
if a probe on each instance's own weights shows that `F.rms_norm` computes the same function: Gemma's
`x * (1 + weight)` norm, for example, fails the probe and keeps its forward.

Numerics: in float32 the fused kernel agrees with the reference to rounding; in bfloat16 it multiplies by the
weight before the one rounding instead of after an intermediate one (one bf16 ulp at most, and closer to the exact
value). The engine's parity checks compare paths in float32 (see gpu-decoding notes).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .gemv import available, gemv, gemv_op


def _norm_eps(module: torch.nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        eps = getattr(module, name, None)
        if isinstance(eps, float):
            return eps
    return None


def _is_candidate(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(weight, torch.nn.Parameter)
        and weight.dim() == 1
        and _norm_eps(module) is not None
        and not list(module.children())
    )


@torch.no_grad()
def computes_rms_norm(module: torch.nn.Module) -> bool:
    """Does `module(x)` equal `F.rms_norm(x, weight, eps)` for this instance's own weight? (a probe, no side effects)"""
    weight, eps = module.weight, _norm_eps(module)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, weight.numel(), generator=gen, dtype=torch.float32).to(weight.device, weight.dtype)
    reference = module(x).float()
    fused = F.rms_norm(x, (weight.numel(),), weight, eps).float()
    tol = 1e-5 if weight.dtype == torch.float32 else 3e-2  # bf16/fp16: the one intermediate rounding differs
    return bool(torch.allclose(fused, reference, rtol=tol, atol=tol))


def _dispatch(flag_owner, module: torch.nn.Module) -> None:
    eager = module.forward
    shape, weight, eps = (module.weight.numel(),), module.weight, _norm_eps(module)

    def forward(hidden_states, *args, **kwargs):
        if flag_owner._use_fused_norms and not args and not kwargs and hidden_states.dtype == weight.dtype:
            return F.rms_norm(hidden_states, shape, weight, eps)
        return eager(hidden_states, *args, **kwargs)

    module.forward = forward


def install_fused_norms(mot) -> int:
    """Give every eligible RMSNorm of the experts a dispatching forward. Idempotent.

    Returns how many norms dispatch. Off until `fused_norms(mot)` turns it on.
    """
    if getattr(mot, "_fused_norms_installed", None) is not None:
        return mot._fused_norms_installed
    mot._use_fused_norms = False
    count = 0
    for model in mot.experts:
        for module in model.modules():
            if _is_candidate(module) and computes_rms_norm(module):
                _dispatch(mot, module)
                count += 1
    mot._fused_norms_installed = count
    return count


class _Substitution:
    """Turns one installed substitution on (or off) for the duration of a block; restores the previous state."""

    flag = installed = ""

    def __init__(self, mot, on: bool = True):
        self.mot, self.on = mot, on

    def __enter__(self):
        self.prev = getattr(self.mot, self.flag, False)
        setattr(self.mot, self.flag, self.on and bool(getattr(self.mot, self.installed, 0)))

    def __exit__(self, *exc):
        setattr(self.mot, self.flag, self.prev)


class fused_norms(_Substitution):
    """Within this block the installed norms run `F.rms_norm` (one kernel); outside it, their own forward."""

    flag, installed = "_use_fused_norms", "_fused_norms_installed"


# ---------------------------------------------------------------------------------------------------- linear layers


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
    `triton_gemv(mot)` (batch-1 decode steps) run mot_engine/gemv.py's kernel, everything else `F.linear`.
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


class triton_gemv(_Substitution):
    """Within this block the installed linear layers run one-row inputs through the Triton GEMV."""

    flag, installed = "_use_triton_gemv", "_triton_gemv_installed"

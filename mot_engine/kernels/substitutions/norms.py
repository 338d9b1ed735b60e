"""The experts' RMSNorms as one fused kernel (kernels/rms_norm.py for a few rows, else `F.rms_norm`).

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

import functools

import torch
import torch.nn.functional as F

from mot_engine.kernels import rms_norm
from mot_engine.kernels.rms_norm import MAX_ROWS
from mot_engine.kernels.substitutions.switches import Substitution


def norm_eps(module: torch.nn.Module) -> float | None:
    for name in ("variance_epsilon", "eps"):
        eps = getattr(module, name, None)
        if isinstance(eps, float):
            return eps
    return None


def is_rms_norm_candidate(module: torch.nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        type(module).__name__.endswith("RMSNorm")
        and isinstance(weight, torch.nn.Parameter)
        and weight.dim() == 1
        and norm_eps(module) is not None
        and not list(module.children())
    )


@torch.no_grad()
def computes_rms_norm(module: torch.nn.Module) -> bool:
    """Does `module(x)` equal `F.rms_norm(x, weight, eps)` for this instance's own weight? (a probe, no side effects)"""
    weight, eps = module.weight, norm_eps(module)
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(3, weight.numel(), generator=gen, dtype=torch.float32).to(weight.device, weight.dtype)
    reference = module(x).float()
    fused = F.rms_norm(x, (weight.numel(),), weight, eps).float()
    tol = 1e-5 if weight.dtype == torch.float32 else 3e-2  # bf16/fp16: the one intermediate rounding differs
    return bool(torch.allclose(fused, reference, rtol=tol, atol=tol))


def _dispatch(flag_owner, module: torch.nn.Module, rows_kernel) -> None:
    eager = module.forward
    shape, weight, eps = (module.weight.numel(),), module.weight, norm_eps(module)

    def forward(hidden_states, *args, **kwargs):
        if flag_owner._use_fused_norms and not args and not kwargs and hidden_states.dtype == weight.dtype:
            if (rows_kernel is not None and hidden_states.is_cuda and hidden_states.numel() <= MAX_ROWS * shape[0]
                    and not torch.compiler.is_compiling()):
                return rows_kernel(hidden_states, weight, eps)  # a decode step's few rows: one program each
            return F.rms_norm(hidden_states, shape, weight, eps)
        return eager(hidden_states, *args, **kwargs)

    module.forward = forward


def rows_kernel(weight: torch.Tensor):
    """kernels/rms_norm.py's kernel for a few rows on this weight's GPU, if Triton is there and a probe shows it
    equal to `F.rms_norm`; else None (torch's kernel serves all shapes)."""
    if not weight.is_cuda or not rms_norm.available():
        return None
    return _rows_kernel_probe(weight.device, weight.dtype, weight.numel())


@functools.cache
@torch.no_grad()
def _rows_kernel_probe(device: torch.device, dtype: torch.dtype, n: int):
    """The kernel's maths does not depend on the weight's values: one probe per (device, dtype, width) serves every
    norm of that shape (an expert has ~60)."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    x, weight = (t.to(device, dtype) for t in (torch.randn(2, 1, n, generator=gen), torch.randn(n, generator=gen)))
    want = F.rms_norm(x, (n,), weight, 1e-6).float()
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    return rms_norm.rms_norm if torch.allclose(rms_norm.rms_norm(x, weight, 1e-6).float(), want, rtol=tol, atol=tol) else None


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
            if is_rms_norm_candidate(module) and computes_rms_norm(module):
                _dispatch(mot, module, rows_kernel(module.weight))
                count += 1
    mot._fused_norms_installed = count
    return count


class fused_norms(Substitution):
    """Within this block the installed norms run one fused kernel (few rows: kernels/rms_norm.py, else
    `F.rms_norm`); outside it, their own forward."""

    flag, installed = "_use_fused_norms", "_fused_norms_installed"

"""Decode-step kernel substitutions, same maths: a fused RMSNorm for the frozen experts' norms, the Triton
matrix-vector kernel (mot_engine/gemv.py) for their one-row linear layers, one kernel for a gated MLP's gate and up
products with the SiLU and the product, one kernel per tensor for the rotary embedding (mot_engine/rotary.py), and
split-K attention of the one new token over the cache (mot_engine/decode_attention.py). `decode_substitutions`
switches them all for one decode step.

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

import contextlib

import torch
import torch.nn.functional as F

from .gemv import available, gemv, gemv_glu, gemv_op


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


# ---------------------------------------------------------------------------------------------------- gated MLPs


def _is_gated_mlp(module: torch.nn.Module) -> bool:
    """Llama-family MLPs: down(act(gate(x)) * up(x)) with plain, bias-free gate and up layers of one shape."""
    layers = [getattr(module, name, None) for name in ("gate_proj", "up_proj", "down_proj")]
    if not all(type(layer) is torch.nn.Linear for layer in layers) or not hasattr(module, "act_fn"):
        return False
    gate, up, _ = layers
    return (gate.bias is None and up.bias is None and gate.weight.shape == up.weight.shape
            and gate.weight.is_contiguous() and up.weight.is_contiguous())


@torch.no_grad()
def computes_gated_mlp(module: torch.nn.Module, kernel) -> bool:
    """Does `module(x)` equal down_proj(kernel(x, gate, up)) (kernel = silu(x gate^T) * x up^T) on a probe row?"""
    gate, up, down = module.gate_proj.weight, module.up_proj.weight, module.down_proj
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(1, 1, gate.shape[1], generator=gen).to(gate.device, gate.dtype)
    try:
        reference = module(x).float()
    except (TypeError, ValueError, RuntimeError):  # a module of this shape that wants other inputs: not a gated MLP
        return False
    fused = F.linear(kernel(x, gate, up), down.weight, down.bias).float()
    scale = reference.abs().max().clamp_min(1e-6)
    tol = 1e-4 if gate.dtype == torch.float32 else 3e-2
    return bool(((fused - reference).abs().max() / scale) < tol)


def _dispatch_mlp(flag_owner, module: torch.nn.Module, kernel, needs_cuda: bool) -> None:
    eager = module.forward
    gate, up, down = module.gate_proj.weight, module.up_proj.weight, module.down_proj

    def forward(x, *args, **kwargs):
        if (flag_owner._use_fused_mlp and not args and not kwargs and (x.is_cuda or not needs_cuda)
                and x.dtype == gate.dtype and x.numel() == x.shape[-1] and not torch.compiler.is_compiling()):
            return down(kernel(x, gate, up))  # (..., hidden); down_proj keeps its own (dispatching) forward
        return eager(x, *args, **kwargs)

    module.forward = forward


def install_fused_mlp(mot, kernel=None) -> int:
    """Give every gated MLP of the experts that a probe shows equal a dispatching forward: one-row inputs inside
    `fused_mlp(mot)` compute silu(gate) * up in one pass over both weights (mot_engine/gemv.py's `gemv_glu`), then
    down_proj. Four kernels (two products, SiLU, multiply) become one. Idempotent; returns how many dispatch (0
    without Triton or a GPU, unless a `kernel` is given — tests)."""
    if getattr(mot, "_fused_mlp_installed", None) is not None:
        return mot._fused_mlp_installed
    mot._use_fused_mlp = False
    needs_cuda = kernel is None
    if kernel is None and not available():
        mot._fused_mlp_installed = 0
        return 0
    kernel = kernel or gemv_glu
    count = 0
    for model in mot.experts:
        for module in model.modules():
            if (_is_gated_mlp(module) and (module.gate_proj.weight.is_cuda or not needs_cuda)
                    and computes_gated_mlp(module, kernel)):
                _dispatch_mlp(mot, module, kernel, needs_cuda)
                count += 1
    mot._fused_mlp_installed = count
    return count


class fused_mlp(_Substitution):
    """Within this block the installed gated MLPs run one-row inputs through the fused gate/up kernel."""

    flag, installed = "_use_fused_mlp", "_fused_mlp_installed"


# ---------------------------------------------------------------------------------------------------- rotary embedding

# The rotary function is a module-level function of each model family's modeling module, called by name from the
# attention's forward: the one place to dispatch it without editing the experts. The dispatcher is installed once
# per family module, and computes the fused kernel only while `fused_rotary` is on (the engine's decode steps).
_ROTARY = {"on": False}


def _rotary_applies(q, k, cos, sin, args, kwargs) -> bool:
    return (_ROTARY["on"] and not args and not kwargs and q.dim() == 4 and k.dim() == 4
            and cos.dim() == 3 and cos.shape == sin.shape and cos.shape[-1] == q.shape[-1] == k.shape[-1]
            and q.shape[-1] % 2 == 0 and q.dtype == k.dtype == cos.dtype == sin.dtype
            and q.stride(-1) == k.stride(-1) == cos.stride(-1) == sin.stride(-1) == 1
            and not torch.compiler.is_compiling())  # compiled layers: inductor fuses the original itself


def _rotary_dispatcher(original, kernel, needs_cuda: bool):
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        if (q.is_cuda or not needs_cuda) and _rotary_applies(q, k, cos, sin, args, kwargs):
            return kernel(q, cos, sin), kernel(k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb.mot_original = original
    return apply_rotary_pos_emb


@torch.no_grad()
def computes_rotary(original, kernel, device, dtype) -> bool:
    """Does the family's `apply_rotary_pos_emb` equal the kernel on a probe (decode shapes, 2 rows)?"""
    gen = torch.Generator(device="cpu").manual_seed(0)
    q, k = (torch.randn(2, 1, h, 64, generator=gen).to(device, dtype).transpose(1, 2) for h in (4, 2))  # as q_proj's view
    cos, sin = (torch.randn(2, 1, 64, generator=gen).to(device, dtype) for _ in range(2))
    try:
        want_q, want_k = original(q, k, cos, sin)
    except (TypeError, ValueError, RuntimeError):  # another signature or layout: not this function
        return False
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    return all(torch.allclose(kernel(x, cos, sin).float(), want.float(), rtol=tol, atol=tol)
               for x, want in ((q, want_q), (k, want_k)))


def install_fused_rotary(mot, kernel=None) -> int:
    """Dispatch the rotary embedding of every expert family whose function a probe shows equal to the kernel.
    Returns how many experts use it (0 without Triton or a GPU, unless a `kernel` is given — tests). Idempotent."""
    import sys

    from .experts import find_decoder_layers
    from .rotary import available, rotary

    if getattr(mot, "_fused_rotary_installed", None) is not None:
        return mot._fused_rotary_installed
    if kernel is None:
        if not available():
            mot._fused_rotary_installed = 0
            return 0
        kernel = rotary
    count = 0
    for model in mot.experts:
        param = next(model.parameters())
        if kernel is rotary and not param.is_cuda:
            continue
        attention = getattr(find_decoder_layers(model)[0], "self_attn", None)
        module = sys.modules.get(type(attention).__module__) if attention is not None else None
        current = getattr(module, "apply_rotary_pos_emb", None)
        if current is None:
            continue
        original = getattr(current, "mot_original", current)
        if not computes_rotary(original, kernel, param.device, param.dtype):
            continue
        if current is original:
            module.apply_rotary_pos_emb = _rotary_dispatcher(original, kernel, needs_cuda=kernel is rotary)
        count += 1
    mot._fused_rotary_installed = count
    return count


class _GlobalSwitch:
    """Turns a process-wide dispatcher (one per family module or registry) on or off for the duration of a block;
    restores the previous state. The engine drives the experts from one thread."""

    state: dict = {}

    def __init__(self, on: bool = True):
        self.on = on

    def __enter__(self):
        self.prev = self.state["on"]
        self.state["on"] = self.on

    def __exit__(self, *exc):
        self.state["on"] = self.prev


class fused_rotary(_GlobalSwitch):
    """Within this block, installed families compute the rotary embedding with one kernel per tensor."""

    state = _ROTARY


# ---------------------------------------------------------------------------------------------------- decode attention

# transformers looks the attention function up by name in one shared registry at every call
# (ALL_ATTENTION_FUNCTIONS["sdpa"]): the one place to reach it without editing an expert. The dispatcher computes
# the split-K decode kernel only while `decode_attention` is on (the engine's decode steps) and for the shapes it
# takes (one query position, an additive mask or none, no sliding window or softcap); the original otherwise.
_ATTENTION = {"on": False}


def _attention_dispatcher(original, kernel, needs_cuda: bool):
    from .decode_attention import supported

    def sdpa_attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, is_causal=None,
                               position_bias=None, **kwargs):
        if (_ATTENTION["on"] and (query.is_cuda or not needs_cuda) and dropout == 0.0 and position_bias is None
                and kwargs.get("sliding_window") is None and kwargs.get("softcap") is None
                and not kwargs.get("output_attentions") and not torch.compiler.is_compiling()
                and supported(query, key, attention_mask)):
            scale = scaling if scaling is not None else query.shape[-1] ** -0.5
            return kernel(query, key, value, attention_mask, scale), None
        return original(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                        is_causal=is_causal, position_bias=position_bias, **kwargs)

    sdpa_attention_forward.mot_original = original
    return sdpa_attention_forward


@torch.no_grad()
def computes_decode_attention(original, kernel, device, dtype) -> bool:
    """Does the registered "sdpa" function equal the kernel on a probe (one query, grouped heads, additive mask)?"""
    from types import SimpleNamespace

    gen = torch.Generator(device="cpu").manual_seed(0)
    q = torch.randn(2, 1, 4, 32, generator=gen).to(device, dtype).transpose(1, 2)  # as q_proj's view
    k, v = (torch.randn(2, 2, 80, 32, generator=gen).to(device, dtype) for _ in range(2))
    mask = torch.zeros(2, 1, 1, 80, dtype=dtype, device=device)
    mask[0, ..., 50:] = torch.finfo(dtype).min  # a padded row
    module = SimpleNamespace(num_key_value_groups=2, is_causal=True, training=False)
    try:
        want, _ = original(module, q, k, v, mask, dropout=0.0, scaling=32**-0.5)
    except (TypeError, ValueError, RuntimeError):
        return False
    got = kernel(q, k, v, mask, 32**-0.5)
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    return want.shape == got.shape and bool(torch.allclose(got.float(), want.float(), rtol=tol, atol=tol))


def install_decode_attention(mot, kernel=None) -> int:
    """Dispatch the shared "sdpa" attention function to the split-K decode kernel (mot_engine/decode_attention.py)
    if a probe shows the same function. Returns how many experts use "sdpa" and so benefit (0 without Triton or a
    GPU, unless a `kernel` is given — tests). Idempotent."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    from .decode_attention import available, decode_attention

    if getattr(mot, "_decode_attention_installed", None) is not None:
        return mot._decode_attention_installed
    needs_cuda = kernel is None
    if kernel is None and not available():
        mot._decode_attention_installed = 0
        return 0
    kernel = kernel or decode_attention
    users = [m for m in mot.experts if getattr(m.config, "_attn_implementation", None) == "sdpa"
             and (next(m.parameters()).is_cuda or not needs_cuda)]
    count = 0
    if users:
        current = ALL_ATTENTION_FUNCTIONS["sdpa"]
        original = getattr(current, "mot_original", current)
        param = next(users[0].parameters())
        if computes_decode_attention(original, kernel, param.device, param.dtype):
            if current is original:
                ALL_ATTENTION_FUNCTIONS["sdpa"] = _attention_dispatcher(original, kernel, needs_cuda)
            count = len(users)
    mot._decode_attention_installed = count
    return count


class decode_attention_on(_GlobalSwitch):
    """Within this block, one-query attention through the shared "sdpa" function runs the split-K decode kernel."""

    state = _ATTENTION


@contextlib.contextmanager
def decode_substitutions(mot, *, norms: bool, gemv: bool, mlp: bool, rotary: bool, attention: bool):
    """Every installed substitution switched as asked, for one decode step (or prefill, all off)."""
    with fused_norms(mot, norms), triton_gemv(mot, gemv), fused_mlp(mot, mlp), fused_rotary(rotary), \
            decode_attention_on(attention):
        yield

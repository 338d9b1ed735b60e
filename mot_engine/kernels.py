"""Kernel substitutions for the Generator's forwards, same maths: a fused RMSNorm for the frozen experts' norms
(mot_engine/rms_norm.py for a few rows), the Triton matrix-vector kernel (mot_engine/gemv.py) for their one-row
linear layers, one launch for an attention's q/k/v products, one kernel for a gated MLP's gate and up products with
the SiLU and the product, one launch for q's and k's rotary embedding (mot_engine/rotary.py), split-K attention of
the one new token over the cache and a one-launch cache write (mot_engine/decode_attention.py), and the
interaction's fused decode path (mot_engine/interaction_kernels.py). `decode_substitutions` switches them for one
forward: all of them in a decode step, the norms and rotary in a prefill.

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
import functools
import logging

import torch
import torch.nn.functional as F

from .decode_attention import CACHE_WRITE
from .gemv import MAX_ROWS as GEMM_ROWS
from .gemv import PROGRAMMATIC_LAUNCH
from .gemv import available, gemv, gemv_glu, gemv_op, gemv_qkv
from .rms_norm import MAX_ROWS

log = logging.getLogger(__name__)

# The environment variables that switch each decode-step substitution off (=0), in the order they were added (the
# benchmarks turn them on one by one). The Generator reads them (mot_engine/generation.py).
SWITCHES = ("MOT_FUSED_NORMS", "MOT_TRITON_GEMV", "MOT_FUSED_QKV", "MOT_FUSED_ROTARY", "MOT_FUSED_MLP",
            "MOT_DECODE_ATTENTION", "MOT_FUSED_CACHE_WRITE", "MOT_FUSED_INTERACTION", "MOT_FUSED_RESIDUAL",
            "MOT_PDL")


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


def _dispatch(flag_owner, module: torch.nn.Module, rows_kernel) -> None:
    eager = module.forward
    shape, weight, eps = (module.weight.numel(),), module.weight, _norm_eps(module)

    def forward(hidden_states, *args, **kwargs):
        if flag_owner._use_fused_norms and not args and not kwargs and hidden_states.dtype == weight.dtype:
            if (rows_kernel is not None and hidden_states.is_cuda and hidden_states.numel() <= MAX_ROWS * shape[0]
                    and not torch.compiler.is_compiling()):
                return rows_kernel(hidden_states, weight, eps)  # a decode step's few rows: one program each
            return F.rms_norm(hidden_states, shape, weight, eps)
        return eager(hidden_states, *args, **kwargs)

    module.forward = forward


def rows_kernel(weight: torch.Tensor):
    """mot_engine/rms_norm.py's kernel for a few rows on this weight's GPU, if Triton is there and a probe shows it
    equal to `F.rms_norm`; else None (torch's kernel serves all shapes)."""
    from . import rms_norm

    if not weight.is_cuda or not rms_norm.available():
        return None
    return _rows_kernel_probe(weight.device, weight.dtype, weight.numel())


@functools.cache
@torch.no_grad()
def _rows_kernel_probe(device: torch.device, dtype: torch.dtype, n: int):
    """The kernel's maths does not depend on the weight's values: one probe per (device, dtype, width) serves every
    norm of that shape (an expert has ~60)."""
    from . import rms_norm

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
            if _is_candidate(module) and computes_rms_norm(module):
                _dispatch(mot, module, rows_kernel(module.weight))
                count += 1
    mot._fused_norms_installed = count
    return count


def _install_per_module(mot, name: str, kernel, triton_kernel, eligible, weight_of, probe, dispatch) -> int:
    """The install loop of a per-module substitution: every eligible module of the experts whose probe passes gets
    `dispatch(mot, module, kernel, needs_cuda)`. `kernel` None means the Triton one (GPU modules only; none without
    Triton); a given kernel (tests) also serves CPU modules. Sets mot._use_{name} (off) and mot._{name}_installed
    (the count, returned). Idempotent."""
    installed = f"_{name}_installed"
    if getattr(mot, installed, None) is not None:
        return getattr(mot, installed)
    setattr(mot, f"_use_{name}", False)
    needs_cuda = kernel is None
    count = 0
    if kernel is not None or available():
        kernel = kernel or triton_kernel
        for model in mot.experts:
            for module in model.modules():
                if eligible(module) and (weight_of(module).is_cuda or not needs_cuda) and probe(module, kernel):
                    dispatch(mot, module, kernel, needs_cuda)
                    count += 1
    setattr(mot, installed, count)
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
    """Within this block the installed norms run one fused kernel (few rows: mot_engine/rms_norm.py, else
    `F.rms_norm`); outside it, their own forward."""

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


def _dispatch_qkv(flag_owner, attention: torch.nn.Module, kernel, needs_cuda: bool) -> None:
    q_layer, k_layer, v_layer = attention.q_proj, attention.k_proj, attention.v_proj
    q_eager, k_eager, v_eager = q_layer.forward, k_layer.forward, v_layer.forward
    weights, biases = _qkv_params(attention)
    kept: dict[str, torch.Tensor] = {}  # "x": the input of the last fused launch, "k"/"v": its results not yet taken

    def q_forward(x, *args, **kwargs):
        kept.clear()
        if (flag_owner._use_fused_qkv and not args and not kwargs and (x.is_cuda or not needs_cuda)
                and x.dtype == weights[0].dtype and x.numel() <= GEMM_ROWS * x.shape[-1]
                and not torch.compiler.is_compiling()):
            q, kept["k"], kept["v"] = kernel(x, weights, biases)
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


def install_fused_qkv(mot, kernel=None) -> int:
    """Give every attention whose q, k and v projections are plain linear layers of one input a dispatching trio:
    one-row inputs inside `fused_qkv(mot)` run the three products in one launch (mot_engine/gemv.py's `gemv_qkv`).
    Idempotent; returns how many attentions dispatch (0 without Triton or a GPU, unless a `kernel` is given — tests)."""
    return _install_per_module(mot, "fused_qkv", kernel, gemv_qkv, _is_qkv_attention, lambda m: m.q_proj.weight,
                               computes_qkv, _dispatch_qkv)


class fused_qkv(_Substitution):
    """Within this block the installed attentions compute one-row q, k and v projections in one launch."""

    flag, installed = "_use_fused_qkv", "_fused_qkv_installed"


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
    tol = 1e-4 if gate.dtype == torch.float32 else 3e-2
    for rows in (1, 3):  # a decode step of one request, and of a slab's few (the rows kernel)
        x = torch.randn(rows, 1, gate.shape[1], generator=gen).to(gate.device, gate.dtype)
        try:
            reference = module(x).float()
        except (TypeError, ValueError, RuntimeError):  # a module of this shape that wants other inputs: not a gated MLP
            return False
        fused = F.linear(kernel(x, gate, up), down.weight, down.bias).float()
        scale = reference.abs().max().clamp_min(1e-6)
        if not bool(((fused - reference).abs().max() / scale) < tol):
            return False
    return True


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
    `fused_mlp(mot)` compute silu(gate) * up in one pass over both weights (mot_engine/gemv.py's `gemv_glu`), then
    down_proj. Four kernels (two products, SiLU, multiply) become one. Idempotent; returns how many dispatch (0
    without Triton or a GPU, unless a `kernel` is given — tests)."""
    return _install_per_module(mot, "fused_mlp", kernel, gemv_glu, _is_gated_mlp, lambda m: m.gate_proj.weight,
                               computes_gated_mlp, _dispatch_mlp)


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
    and k's heads in one launch: mot_engine/rotary.py's `rotary_pair`; a given one-tensor `kernel` runs twice —
    tests). Returns how many experts use it (0 without Triton or a GPU, unless a `kernel` is given). Idempotent."""
    import sys

    from .experts import find_decoder_layers
    from .rotary import as_pair, available, rotary_pair

    if getattr(mot, "_fused_rotary_installed", None) is not None:
        return mot._fused_rotary_installed
    if kernel is None and not available():
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
    """Within this block, installed families rotate q and k with one launch."""

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


# ---------------------------------------------------------------------------------------------------- cache write

def install_fused_cache_write(mot) -> int:
    """The slabs' cache layers (mot_engine/slabs.py) write a token's key and value in one launch
    (decode_attention.write_token) inside `fused_cache_write`: 1 where Triton and a GPU are there, else 0."""
    from .decode_attention import available as triton_available

    return int(mot.device.type == "cuda" and triton_available())


class fused_cache_write(_GlobalSwitch):
    """Within this block, slab cache layers on CUDA write each token's key and value with one kernel."""

    state = CACHE_WRITE


# ---------------------------------------------------------------------------------------------------- interaction

@torch.no_grad()
def computes_interaction(mot, attend, residual, linear) -> bool:
    """Do the kernels equal their references on probe inputs of this MoT's shapes, device and dtypes (a gate that is
    not zero, padded memory, one and two slots, one row through the projections)?"""
    from types import SimpleNamespace

    from .interaction import MemorySlot
    from .interaction_kernels import gated_residual_reference, memory_attention_reference

    layer, device = mot.interaction[0], mot.device
    dtype = next(mot.experts[0].parameters()).dtype
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device)

    H, hd, S = layer.num_heads, layer.head_dim, 70
    q = randn(2, H, 1, hd)
    slots = []
    for r in range(2):
        mask = torch.ones(2, 1, 1, S, dtype=torch.bool)
        mask[0, ..., 40 - 20 * r:] = False  # padded memory
        slots.append(MemorySlot(key=randn(2, H, S, hd), value=randn(2, H, S, hd), mask=mask.to(device),
                                weight=randn(2).abs()))
    tol = 1e-4
    d = mot.hidden_sizes[0]
    weight, bias = randn(d, H * hd) / 30, randn(d)  # the shared space -> the primary's
    for rows in (1, 3):  # a decode step of one request, and of a slab's few
        x = randn(rows, 1, H * hd)
        if not torch.allclose(linear(x, weight, bias), F.linear(x, weight, bias), rtol=tol, atol=tol):
            return False
    for used in (slots[:1], slots):
        if not torch.allclose(attend(q, used), memory_attention_reference(q, used), rtol=tol, atol=tol):
            return False
    norm = SimpleNamespace(weight=randn(d), bias=randn(d), eps=1e-5, normalized_shape=(d,))
    hidden, y, gate, weight = randn(2, 1, d).to(dtype), randn(2, 1, d) * 3, randn(d), randn(2).abs()
    flags = [torch.zeros((), dtype=torch.bool, device=device) for _ in range(2)]
    got = residual(hidden, y, norm, gate, weight, 2.0, flags[0])
    want = gated_residual_reference(hidden, y, norm, gate, weight, 2.0, flags[1])
    tol = 1e-4 if dtype == torch.float32 else 2e-2
    if not torch.allclose(got.float(), want.float(), rtol=tol, atol=tol) or bool(flags[0]) or bool(flags[1]):
        return False
    y[1, 0, 3] = float("nan")  # a NaN in the update must set the step's flag
    residual(hidden, y, norm, gate, weight, 2.0, flags[0])
    return bool(flags[0])


def install_fused_interaction(mot, kernels: tuple | None = None) -> int:
    """Let decode steps run the interaction's fused path (InteractionLayer.decode_update) with the Triton kernels of
    mot_engine/interaction_kernels.py — or the given (attend, residual, linear) (tests) — if a probe shows them
    equal to their references. Returns 1 if installed, 0 otherwise (no Triton, no GPU). Idempotent."""
    from . import interaction_kernels

    if mot._interaction_kernels is not None:
        return 1
    if kernels is None:
        if mot.device.type != "cuda" or not interaction_kernels.available():
            return 0
        kernels = (interaction_kernels.memory_attention, interaction_kernels.gated_residual, interaction_kernels.linear)
    if not computes_interaction(mot, *kernels):
        return 0
    mot._interaction_kernels = kernels
    return 1


class fused_interaction(_Substitution):
    """Within this block, decode steps run the interaction's fused path (InteractionLayer.decode_update)."""

    flag, installed = "_use_fused_interaction", "_interaction_kernels"


# ---------------------------------------------------------------------------------------------------- residual adds

# A Llama-family decoder layer (Llama, Qwen2, Mistral) adds its attention's output to its input, norms that sum, and
# adds its MLP's output to the sum: two elementwise kernels a layer, plain tensor ops in the layer's own forward, so
# only a forward of the layer can fold them. In decode steps, `fused_residual` gives each eligible layer one that
# calls the same submodules in the same order with the same arguments and folds each add into a neighbour: the
# first into the post-attention norm (rms_norm.add_rms_norm), the second into the down projection (gemv's residual
# epilogue) when the gated MLP runs fused (one row); else the MLP runs as the module and the add stays. Both folds are
# bit for bit the two ops they replace. The install probe runs the family's own forward and this one on a stand-in
# of the layer whose attention is a recording linear map: the same output, and the same arguments to the attention.


class _RecordingAttention(torch.nn.Module):
    """A probe's attention: a fixed linear map of its input that records the keyword arguments it was called with."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight, self.calls = weight, []

    def forward(self, hidden_states, **kwargs):
        self.calls.append(kwargs)
        return F.linear(hidden_states, self.weight), None


def _is_residual_layer(layer: torch.nn.Module) -> bool:
    norms = [getattr(layer, name, None) for name in ("input_layernorm", "post_attention_layernorm")]
    return (all(norm is not None and _is_candidate(norm) for norm in norms)
            and isinstance(getattr(layer, "self_attn", None), torch.nn.Module)
            and isinstance(getattr(layer, "mlp", None), torch.nn.Module))


def _fused_layer_forward(flag_owner, layer, eager, kernels, mlp_fused: bool, needs_cuda: bool):
    """The layer's decode-step forward with the residual adds folded (see above); `eager` everywhere else."""
    add_norm, glu, down = kernels
    norm = layer.post_attention_layernorm
    eps = _norm_eps(norm)

    def forward(hidden_states, *args, **kwargs):
        if not (flag_owner._use_fused_residual and not args and hidden_states.dim() == 3
                and hidden_states.shape[1] == 1 and hidden_states.shape[0] <= MAX_ROWS
                and (hidden_states.is_cuda or not needs_cuda) and hidden_states.dtype == norm.weight.dtype
                and "hidden_states" not in kwargs and not torch.compiler.is_compiling()):
            return eager(hidden_states, *args, **kwargs)
        residual = hidden_states  # (B, 1, d)
        attention, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
        x, hidden_states = add_norm(attention, residual, norm.weight, eps)  # norm(h), h = residual + attention
        mlp = layer.mlp
        if mlp_fused and getattr(flag_owner, "_use_fused_mlp", False) and x.numel() == x.shape[-1]:
            act = glu(x, mlp.gate_proj.weight, mlp.up_proj.weight)  # (1, 1, intermediate)
            return down(act, mlp.down_proj.weight, mlp.down_proj.bias, residual=hidden_states)
        return hidden_states + mlp(x)

    return forward


@torch.no_grad()
def computes_layer(layer: torch.nn.Module, kernels, mlp_fused: bool) -> bool:
    """Does the fused forward equal the layer class's own forward on a one-row probe, and pass its attention the
    same arguments? The attention is a recording stand-in (a layer's real one needs a cache); norms and MLP are the
    layer's own."""
    import copy
    from types import SimpleNamespace

    weight = layer.post_attention_layernorm.weight
    d, device, dtype = weight.numel(), weight.device, weight.dtype
    gen = torch.Generator(device="cpu").manual_seed(0)

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, dtype)

    recorder = _RecordingAttention(randn(d, d) / d**0.5)
    stand_in = copy.copy(layer)  # shares every parameter and submodule; only its attention is the recorder
    stand_in._modules = {**layer._modules, "self_attn": recorder}
    hidden = randn(1, 1, d)
    kwargs = dict(attention_mask=None, position_ids=torch.zeros(1, 1, dtype=torch.long, device=device),
                  cache=None, use_cache=False, position_embeddings=(randn(1, 1, 8), randn(1, 1, 8)))
    try:
        want = type(layer).forward(stand_in, hidden, **kwargs)
    except (TypeError, ValueError, RuntimeError, AttributeError):  # another layer structure: not ours to replace
        return False
    owner = SimpleNamespace(_use_fused_residual=True, _use_fused_mlp=True)
    got = _fused_layer_forward(owner, stand_in, None, kernels, mlp_fused, needs_cuda=False)(hidden, **kwargs)
    if not (isinstance(want, torch.Tensor) and isinstance(got, torch.Tensor) and got.shape == want.shape):
        return False
    eager_args, fused_args = recorder.calls
    if eager_args.keys() != fused_args.keys() or any(eager_args[k] is not fused_args[k] for k in eager_args):
        return False
    scale = want.float().abs().max().clamp_min(1e-6)
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    return bool(((got.float() - want.float()).abs().max() / scale) < tol)


def install_fused_residual(mot, kernels: tuple | None = None) -> int:
    """Give every Llama-family decoder layer of the experts that the probe accepts a dispatching forward: inside
    `fused_residual(mot)`, decode steps (one position, ≤ MAX_ROWS rows) fold its two residual adds into the
    post-attention norm and the down projection. `kernels` (add_norm, glu, down) default to the Triton ones
    (rms_norm.add_rms_norm, gemv_glu, gemv; GPU layers only); given ones (tests) also serve CPU layers. Idempotent;
    returns how many layers dispatch."""
    from . import rms_norm
    from .experts import find_decoder_layers

    if getattr(mot, "_fused_residual_installed", None) is not None:
        return mot._fused_residual_installed
    mot._use_fused_residual = False
    needs_cuda = kernels is None
    count = 0
    if kernels is not None or available():
        kernels = kernels or (rms_norm.add_rms_norm, gemv_glu, gemv)
        for model in mot.experts:
            layers = find_decoder_layers(model)
            if needs_cuda and not next(model.parameters()).is_cuda:
                continue
            for layer in layers:
                if not _is_residual_layer(layer):
                    continue
                mlp_fused = _is_gated_mlp(layer.mlp) and computes_gated_mlp(layer.mlp, kernels[1])
                if computes_layer(layer, kernels, mlp_fused):
                    layer.forward = _fused_layer_forward(mot, layer, layer.forward, kernels, mlp_fused, needs_cuda)
                    count += 1
    mot._fused_residual_installed = count
    return count


class fused_residual(_Substitution):
    """Within this block, installed decoder layers fold their residual adds into the next norm and the down
    projection (one-position steps)."""

    flag, installed = "_use_fused_residual", "_fused_residual_installed"


# ---------------------------------------------------------------------------------------------------- launches

def programmatic_launch_supported(device: torch.device) -> bool:
    """Can this device's Triton kernels launch with programmatic dependent launch? A Hopper or newer GPU, and a
    Triton with the launch option and the grid-dependency instructions."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        import triton.language.extra.cuda as tl_cuda
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@torch.no_grad()
def computes_with_programmatic_launch(device: torch.device) -> bool:
    """Does a chain of the decode path's kernels, each reading the one before's output, captured in a CUDA graph with
    programmatic launch give the eager chain's results bit for bit (the waits in place, the launch attribute
    captured)? A failed launch or capture is a no."""
    from .graph_capture import capture
    from .rms_norm import add_rms_norm, rms_norm

    gen = torch.Generator(device="cpu").manual_seed(0)
    n, k = 256, 512

    def randn(*shape):
        return torch.randn(*shape, generator=gen).to(device, torch.bfloat16)

    x, w1, w2, wg, wu, norm = randn(1, k), randn(n, k), randn(k, n), randn(n, k), randn(n, k), randn(k)

    def chain():  # each kernel reads what the one before wrote; the last ones also read an older output
        h = gemv(rms_norm(x, norm, 1e-6), w1)
        y = gemv(gemv_glu(gemv(h, w2), wg, wu), w2, residual=x)
        return add_rms_norm(y, x, norm, 1e-6)[0]

    expected = chain()
    try:
        with torch.cuda.device(device), programmatic_launch():
            graph, out = capture(chain, device)
            out.zero_()
            graph.replay()
        torch.cuda.synchronize(device)
    except Exception as e:  # noqa: BLE001 — any failure means "launch as before", said by the installer
        log.warning("programmatic dependent launch failed its probe (%s: %s); kernels launch as before",
                    type(e).__name__, e)
        return False
    return bool(torch.equal(out, expected))


def install_programmatic_launch(mot) -> int:
    """1 where the decode path's Triton kernels may launch with programmatic dependent launch on every GPU the MoT
    sits on (supported, and the probe passes on each), else 0. Only the switch below turns it on."""
    devices = {next(m.parameters()).device for m in (*mot.experts, mot.interaction)}  # indexed: cuda:0, cuda:1
    return int(all(_programmatic_launch_works(d) for d in devices))


@functools.cache
def _programmatic_launch_works(device: torch.device) -> bool:
    """Supported and probed, once per GPU and process: the answer depends on the GPU and Triton, not on the MoT
    (every Generator asks)."""
    return programmatic_launch_supported(device) and computes_with_programmatic_launch(device)


class programmatic_launch(_GlobalSwitch):
    """Within this block, the decode path's Triton kernels launch with programmatic dependent launch
    (mot_engine/gemv.py, `launch_options`): each one's programs are scheduled while the kernel before it finishes."""

    state = PROGRAMMATIC_LAUNCH


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

"""A Llama-family decoder layer's two residual adds folded into its neighbours in decode steps."""

from __future__ import annotations

import copy
from types import SimpleNamespace

import torch
import torch.nn.functional as F

from mot_engine.kernels import rms_norm
from mot_engine.kernels.gemv import available, gemv, gemv_glu
from mot_engine.kernels.rms_norm import MAX_ROWS
from mot_engine.kernels.substitutions.linear import computes_gated_mlp, is_gated_mlp
from mot_engine.kernels.substitutions.norms import is_rms_norm_candidate, norm_eps
from mot_engine.kernels.substitutions.switches import Substitution
from mot_engine.model.experts import find_decoder_layers

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
    return (all(norm is not None and is_rms_norm_candidate(norm) for norm in norms)
            and isinstance(getattr(layer, "self_attn", None), torch.nn.Module)
            and isinstance(getattr(layer, "mlp", None), torch.nn.Module))


def _fused_layer_forward(flag_owner, layer, eager, kernels, mlp_fused: bool, needs_cuda: bool):
    """The layer's decode-step forward with the residual adds folded (see above); `eager` everywhere else."""
    add_norm, glu, down = kernels
    norm = layer.post_attention_layernorm
    eps = norm_eps(norm)

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
                mlp_fused = is_gated_mlp(layer.mlp) and computes_gated_mlp(layer.mlp, kernels[1])
                if computes_layer(layer, kernels, mlp_fused):
                    layer.forward = _fused_layer_forward(mot, layer, layer.forward, kernels, mlp_fused, needs_cuda)
                    count += 1
    mot._fused_residual_installed = count
    return count


class fused_residual(Substitution):
    """Within this block, installed decoder layers fold their residual adds into the next norm and the down
    projection (one-position steps)."""

    flag, installed = "_use_fused_residual", "_fused_residual_installed"

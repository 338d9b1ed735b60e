"""`MOT_COMPILE=1`: the experts' decoder layers (or their norms and MLP) compiled by torch.compile for decode steps,
dispatched by a flag on the MixtureOfThoughts that `compiled_layers` sets around a step."""

from __future__ import annotations

import torch
import torch._dynamo

from mot_engine.model.experts import find_decoder_layers
from mot_engine.model.interaction import InteractionLayer


def install_compiled_layers(mot, whole_layers: bool = True) -> None:
    """Give every expert decoder layer (or its norms and MLP) a dispatching forward: compiled for decode steps.

    Compiling the whole layer fuses norms, rotary embeddings, activations and residual adds (about 3x fewer
    kernels per token than eager). Its attention indexes the cache by the integer `layer_idx`, which dynamo
    treats as a constant: each layer is its own entry (identical graphs, so inductor's graph cache makes all but
    the first cheap), hence the raised recompile limits. `whole_layers=False` (MOT_COMPILE_WHOLE_LAYERS=0) compiles only the norms and MLP
    (one shared graph per family, fewer fused kernels). Our interaction hooks always run around the layer, eager,
    so a new request's memory tensors never trigger a recompilation.
    """
    if getattr(mot, "_compiled_layers_installed", False):
        return
    total = sum(len(find_decoder_layers(m)) for m in mot.experts)
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(cfg, name):
            setattr(cfg, name, max(getattr(cfg, name), 4 * total + 64))
    mot._use_compiled_layers = False
    mot._compiled_update = torch.compile(InteractionLayer.update, dynamic=True)  # one graph for every stack
    for model in mot.experts:
        for layer in find_decoder_layers(model):
            if whole_layers:
                _dispatch_forward(mot, layer)
                continue
            for name, child in layer.named_children():
                if name == "mlp" or "norm" in name:
                    _dispatch_forward(mot, child)
    mot._compiled_layers_installed = True


def _dispatch_forward(mot, module: torch.nn.Module) -> None:
    eager = module.forward
    compiled = torch.compile(eager, dynamic=True)

    def forward(*args, **kwargs):
        return (compiled if mot._use_compiled_layers else eager)(*args, **kwargs)

    module.forward = forward


class compiled_layers:
    """Within it, the compiled forwards run (`on`) or the eager ones."""

    def __init__(self, mot, on: bool):
        self.mot, self.on = mot, on

    def __enter__(self):
        self.prev = getattr(self.mot, "_use_compiled_layers", False)
        self.mot._use_compiled_layers = self.on

    def __exit__(self, *exc):
        self.mot._use_compiled_layers = self.prev

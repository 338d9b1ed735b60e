"""int4 experts' linear layers through the Triton int4 kernels (kernels/int4_gemv.py).

Unlike the other substitutions this one is not switched per forward: a split-layout `Int4Linear` has no fast path
but this one (its own forward dequantizes the whole weight), so once installed it serves prefill, decode steps,
the slabs' CUDA graphs and eager forwards alike.
"""

from __future__ import annotations

from mot_engine.kernels.gemv import available
from mot_engine.kernels.int4_gemv import int4_linear
from mot_engine.model.int4 import Int4Linear


def install_int4_kernels(mot) -> int:
    """Give every split-layout `Int4Linear` of the experts the Triton product. Idempotent; returns how many layers
    use it (0 without Triton or without such layers)."""
    if not available():
        return 0
    count = 0
    for model in mot.experts:
        for module in model.modules():
            if isinstance(module, Int4Linear) and module.layout == "split":
                module.kernel = int4_linear
                count += 1
    return count

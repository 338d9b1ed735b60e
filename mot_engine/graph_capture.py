"""One CUDA-graph capture, as the engine's captured paths do it (routing's encoder, prefills, slab decode steps)."""

from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)


def capture(run: Callable, device: torch.device, pool=None, warm_up: int = 2):
    """`run()` captured in a CUDA graph on `device`, after `warm_up` eager runs on a side stream (lazy buffers,
    kernel selection stay out of the graph; 0 where the caller's last eager step was that): (graph, what `run()`
    returned inside it — its static outputs). Graphs given one `pool` share its memory (replay them one at a time; a
    pool belongs to one device). Raises whatever the capture raises.

    `device` need not be the current one (a secondary expert on a second GPU): it is made current for the capture,
    and the graph is captured on a stream of its own — torch's default capture stream belongs to whichever device
    was current when the process first captured, and kernels launched on another device's stream leave the graph
    empty and invalidate the capture."""
    with torch.cuda.device(device):
        current = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(warm_up):
                run()
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool, stream=side):
            outputs = run()
    return graph, outputs


def capture_or_explain(run: Callable, device: torch.device, pool, what: str, fallback: str, warm_up: int = 2):
    """`capture`, or — where the capture fails (a forward doing host work inside, say) — a warning naming `what`
    and its `fallback`: (graph, outputs, None) or (None, None, the reason)."""
    try:
        graph, outputs = capture(run, device, pool, warm_up=warm_up)
    except Exception as e:  # noqa: BLE001 — any capture failure means "run eagerly", said once by the caller
        reason = f"{type(e).__name__}: {e}"
        log.warning("%s cannot be captured in a CUDA graph (%s); %s", what, reason, fallback)
        torch.cuda.synchronize(device)
        return None, None, reason
    return graph, outputs, None

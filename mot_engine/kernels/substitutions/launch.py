"""Programmatic dependent launch of the decode path's Triton kernels (Hopper and newer), probed once per GPU."""

from __future__ import annotations

import functools
import logging

import torch

from mot_engine.graph_capture import capture
from mot_engine.kernels.gemv import PROGRAMMATIC_LAUNCH, gemv, gemv_glu
from mot_engine.kernels.rms_norm import add_rms_norm, rms_norm
from mot_engine.kernels.substitutions.switches import GlobalSwitch

log = logging.getLogger(__name__)


def programmatic_launch_supported(device: torch.device) -> bool:
    """Can this device's Triton kernels launch with programmatic dependent launch? A Hopper or newer GPU, and a
    Triton with the launch option and the grid-dependency instructions."""
    if device.type != "cuda" or torch.cuda.get_device_capability(device)[0] < 9:
        return False
    try:
        import triton.language.extra.cuda as tl_cuda  # optional: Triton may be missing or too old
        from triton.backends.nvidia.compiler import CUDAOptions
    except ImportError:
        return False
    return hasattr(tl_cuda, "gdc_wait") and "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {})


@torch.no_grad()
def computes_with_programmatic_launch(device: torch.device) -> bool:
    """Does a chain of the decode path's kernels, each reading the one before's output, captured in a CUDA graph with
    programmatic launch give the eager chain's results bit for bit (the waits in place, the launch attribute
    captured)? A failed launch or capture is a no."""
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


class programmatic_launch(GlobalSwitch):
    """Within this block, the decode path's Triton kernels launch with programmatic dependent launch
    (kernels/gemv.py, `launch_options`): each one's programs are scheduled while the kernel before it finishes."""

    state = PROGRAMMATIC_LAUNCH

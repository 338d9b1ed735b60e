"""Memory of the serving device for `status` (CUDA allocator numbers, or the process's resident set) and of any
process (tests and benchmarks watch a daemon's). Torch-free unless the device is a GPU."""

from __future__ import annotations

import os
from typing import Any


def device_memory(device: str | None) -> dict[str, Any]:
    """Memory of the serving device: CUDA allocator numbers on a GPU, the process's resident set on CPU."""
    if device and device.startswith("cuda"):
        # torch only for a GPU's numbers; on a CPU the answer (status while a model loads, too) stays torch-free
        import torch

        index = torch.device(device).index
        index = torch.cuda.current_device() if index is None else index
        return {
            "kind": "cuda", "device": f"cuda:{index}",
            "allocated_bytes": int(torch.cuda.memory_allocated(index)),
            "reserved_bytes": int(torch.cuda.memory_reserved(index)),
            "peak_allocated_bytes": int(torch.cuda.max_memory_allocated(index)),
            "total_bytes": int(torch.cuda.get_device_properties(index).total_memory),
        }
    return {"kind": "cpu", "rss_bytes": process_rss_bytes()}


def process_rss_bytes(pid: int | None = None) -> int | None:
    """Resident memory of a process (Linux /proc; None where unavailable)."""
    try:
        with open(f"/proc/{pid or 'self'}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None

"""Shared fixtures. Tests never touch the network; model folders are built once per machine into MOT_CACHE_DIR."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models on a 2-core machine: intra-op threads only add contention (measured 10-100x slower with pytest,
# helper processes and daemon subprocesses competing). Subprocesses inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MOT_CACHE_DIR", str(Path(tempfile.gettempdir()) / "mot-test-cache"))

import torch  # noqa: E402  (after OMP_NUM_THREADS)

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.skip(f"reference data folder {SHARED_DATA} is absent")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_mot():
    """A tiny fp32 MoT on CPU with its fresh (identity) interaction layers. Do not mutate it: use `perturbed_mot`."""
    from mot_engine import build_mot

    torch.manual_seed(0)  # the fresh router's init: the same in every process, whatever ran before
    return build_mot("tiny", device="cpu")


@pytest.fixture(scope="session")
def perturbed_mot():
    """A tiny MoT whose interaction layers and router look trained (non-zero gates): interaction really happens."""
    from mot_engine import build_mot

    torch.manual_seed(0)  # building draws from the global generator a number of times that varies by process
    mot = build_mot("tiny", device="cpu")
    perturb(mot)
    return mot


def perturb(mot, seed: int = 1234) -> None:
    import torch

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in mot.named_trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g).to(p.device) * (0.5 if ".gate." in name else 0.1))  # any device

"""The training run's metrics log: metrics.jsonl (one JSON line per event: train, eval_loss, eval_generation,
resume) and, when TensorBoard is installed, the same numbers as scalars; plus the window of sums a train line
averages over (saved in checkpoints, so a resumed run's lines are the uninterrupted run's).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

METRICS_LOG = "metrics.jsonl"
AUX_LOSSES = ("entropy", "balance", "consistency")


@dataclass
class LogWindow:
    """Sums over the micro-batches since the last metrics line (this process only)."""

    loss: float = 0.0
    lm_loss: float = 0.0
    entropy: float = 0.0
    balance: float = 0.0
    consistency: float = 0.0
    micro: int = 0
    tokens: int = 0
    nonfinite: int = 0
    steps: int = 0
    skipped: int = 0
    grad_norm: float = 0.0
    primary: list[int] = field(default_factory=list)
    t0: float = field(default_factory=time.perf_counter)


class MetricsLog:
    """metrics.jsonl (+ TensorBoard) in the output folder, written by the main process only."""

    def __init__(self, output_dir: Path, *, main: bool):
        self.path = Path(output_dir) / METRICS_LOG
        self.main = main
        self.writer = None

    def open(self, *, resumed_at_step: int | None) -> None:
        """Main process, once the output folder exists: continue a resumed run's log; start TensorBoard."""
        if not self.main:
            return
        if resumed_at_step is not None:
            self.truncate(resumed_at_step)
        try:
            # tensorboard is optional (not a dependency): metrics.jsonl has everything
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            return
        self.writer = SummaryWriter(str(self.path.parent / "tensorboard"))

    def write(self, row: dict) -> None:
        if not self.main:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.writer is not None:
            prefix = row["type"]
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch") and v is not None:
                    self.writer.add_scalar(f"{prefix}/{k}", v, row["step"])
                elif isinstance(v, dict):
                    for kk, vv in v.items():
                        if isinstance(vv, (int, float)):
                            self.writer.add_scalar(f"{prefix}/{k}/{kk}", vv, row["step"])

    def truncate(self, step: int) -> None:
        """A resumed run continues the metrics log of the run it continues: later lines are dropped."""
        if not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines() if ln.strip() and json.loads(ln).get("step", 0) <= step]
        kept.append(json.dumps({"type": "resume", "step": step}))
        self.path.write_text("\n".join(kept) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()

"""What a run tells and writes: lines for the user (main process only, tqdm-safe) and the JSON / JSONL files of
training and evaluation, each written atomically (a reader never sees half a file)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm


def say(message: str, accelerator=None) -> None:
    """A line for the user on stderr, from the main process only (tqdm-safe)."""
    if accelerator is not None and not accelerator.is_main_process:
        return
    tqdm.write(message, file=sys.stderr)


def write_json(path: Path, obj) -> None:
    """Write atomically (a reader never sees half a file)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=_json_default) + "\n", encoding="utf-8")
    tmp.replace(path)


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if torch.is_tensor(o):
        return o.tolist()
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_predictions(path: Path, records: list[dict]) -> None:
    """JSONL, one line per sample: id, source, reference, prediction, primary expert, routing probabilities, metrics."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        for r in records:
            row = {k: v for k, v in r.items() if k not in ("routing", "index")}
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(path)


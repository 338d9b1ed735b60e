"""Export a checkpoint for shipping: its trainable tensors in a smaller dtype (bf16 halves the float32 file; loading
casts them back to the model's dtype) and its metadata, nothing else (no optimizer state, no predictions).

    python -m train.export_checkpoint runs/pocket/run/best_model mot_engine/presets/checkpoints/pocket --dtype bfloat16
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from mot_engine.model.checkpoint import METADATA, WEIGHTS, read_checkpoint_metadata

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
# Running statistics and the alone head (train.fast_primary): tiny, and rounding them would change routing.
KEEP_FLOAT32 = ("router.selection_ema", "router.alone.")


def export(source: Path, target: Path, dtype: str) -> Path:
    meta = read_checkpoint_metadata(source)  # refuses a folder that is not a checkpoint
    tensors = load_file(str(source / WEIGHTS))
    cast = {k: (v if k.startswith(KEEP_FLOAT32) or not v.is_floating_point() else v.to(DTYPES[dtype])).contiguous()
            for k, v in tensors.items()}
    meta["extra"] = {**meta.get("extra", {}), "exported_from": str(source), "exported_dtype": dtype}
    return replace_checkpoint(target, cast, meta)


def replace_checkpoint(target: Path, tensors: dict, meta: dict) -> Path:
    """Write a checkpoint folder beside `target`, then put it in its place (the source may be `target` itself)."""
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
    (staging / METADATA).write_text(json.dumps(meta, indent=2))
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", type=Path, help="a checkpoint folder (e.g. runs/x/best_model)")
    p.add_argument("target", type=Path, help="the folder to write (replaced)")
    p.add_argument("--dtype", choices=tuple(DTYPES), default="bfloat16")
    args = p.parse_args(argv)
    out = export(args.source, args.target, args.dtype)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {args.source} -> {out} ({args.dtype}, {size / 2**20:.1f} MiB)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

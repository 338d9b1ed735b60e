"""``mot-check``: does a CUDA kernel compute what a C/C++ function computes?  (differential testing)

    mot-check SOURCE KERNEL.cu [--function NAME] [--kernel NAME] [--backend auto|gpu|cpu] [--seeds N] [--json]

Builds the C/C++ function (SOURCE) and the kernel's ``__global__`` function (KERNEL.cu), runs both on the same
generated inputs (sizes 0, 1, 7, 33, 255, 257, 1000, ordinary and edge values, several seeds) and compares every
array and the return value (`kernelcheck.verify`).

Exit status:

* 0 — verified: the kernel matched on every input that ran (evidence, not a proof);
* 1 — wrong: a mismatch (printed: the input, the argument and element, expected and got), a crash, a hang, an
  out-of-bounds write, a data race — or a kernel that does not compile or parse;
* 2 — could not check: not verifiable (the reason is printed: an unsupported parameter, no launch to infer,
  every input discarded...), a missing tool (g++, nvcc, a GPU), or unusable arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .verdict import EXIT_CODES
from .verify import BACKENDS, verify

__all__ = ["build_parser", "main"]

_EPILOG = """exit status: 0 verified; 1 wrong (mismatch, crash, race, out-of-bounds write, compile or syntax error);
2 could not check (not verifiable, a tool missing, bad arguments).

example:
  mot-check saxpy.cpp saxpy.cu --function saxpy_cpu --backend cpu
  mot-check saxpy.cpp saxpy.cu --json | jq .status
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="mot-check", formatter_class=argparse.RawDescriptionHelpFormatter, epilog=_EPILOG,
        description="Differential testing of a CUDA kernel against a C/C++ function: both run on the same generated "
                    "inputs (several sizes, values and seeds) and every output is compared.")
    p.add_argument("source", help="C/C++ file with the reference function")
    p.add_argument("kernel_file", metavar="KERNEL.cu", help="CUDA file with the __global__ kernel")
    p.add_argument("--function", default=None, help="the C/C++ function (default: the only one, or the one no other "
                                                    "function calls)")
    p.add_argument("--kernel", default=None, help="the __global__ function (default: the only one)")
    p.add_argument("--backend", choices=BACKENDS, default="auto",
                   help="gpu: nvcc and a GPU; cpu: g++ with the CPU emulation; auto (default): gpu if possible")
    p.add_argument("--seeds", type=int, default=3, help="random seeds per size combination (default 3)")
    p.add_argument("--json", action="store_true", help="print one JSON object (status, backend, inputs, mismatch, "
                                                       "reason, launch, ...)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    texts = []
    for path in (args.source, args.kernel_file):
        try:
            texts.append(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError) as exc:
            print(f"mot-check: cannot read {path}: {exc}", file=sys.stderr)
            return 2
    if args.seeds < 1:
        print(f"mot-check: --seeds must be at least 1, got {args.seeds}", file=sys.stderr)
        return 2
    verdict = verify(texts[0], texts[1], function=args.function, kernel=args.kernel, backend=args.backend,
                     seeds=args.seeds)
    try:
        print(json.dumps(verdict.to_json(), indent=2, allow_nan=False) if args.json else verdict.summary())
        sys.stdout.flush()
    except BrokenPipeError:  # `mot-check ... | head`: the reader left; the exit status still tells the verdict
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return EXIT_CODES[verdict.status]


if __name__ == "__main__":
    sys.exit(main())

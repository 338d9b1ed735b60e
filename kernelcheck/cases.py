"""Executable test cases (BabelTower executable format) and the predictions to check against them.

A BabelTower executable file (``exec_dev.jsonl``) holds one case per line: ``id``, ``cpp_code``, ``cuda_code``,
``consistent_cpp_inputs``, ``consistent_cuda_inputs``, ``cuda_wrapper``, ``consistent_outputs``.  The test
statements (``consistent_*_inputs``) declare real C arrays and call the harness's ``wrapper(function, args...)``
(``float A3[] = {...}; wrapper(f, A3, 3);``); ``consistent_outputs`` is what each test printed.  The
``cuda_wrapper`` is host code ``<name>_invoke_in_cpp`` that allocates, copies, launches the kernel and copies
back.  The wrappers of cases 132 and 224 of exec_dev.jsonl launch no kernel at all (`ExecCase.launches_kernel`).

Predictions are JSONL, one ``{"id": ..., "prediction": "<cuda code>"}`` per line (the code field may also be
``cuda`` or ``generated_cuda``; several lines with one id are several samples).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

from .sourcetext import launch_names

__all__ = ["REQUIRED_FIELDS", "PREDICTION_FIELDS", "ExecCase", "load_exec_cases", "has_test_cases",
           "load_predictions"]

REQUIRED_FIELDS = ("id", "consistent_cuda_inputs", "cuda_wrapper", "consistent_outputs")
PREDICTION_FIELDS = ("prediction", "cuda", "generated_cuda")


@dataclass(frozen=True)
class ExecCase:
    """One BabelTower executable case."""

    id: str
    cpp_code: str
    cuda_code: str
    cpp_inputs: tuple[str, ...]
    cuda_inputs: tuple[str, ...]
    cuda_wrapper: str
    outputs: tuple[str, ...]

    @classmethod
    def from_record(cls, record: Mapping) -> "ExecCase":
        missing = [k for k in REQUIRED_FIELDS if k not in record]
        if missing:
            raise ValueError(f"record {record.get('id', '?')!r} lacks executable fields {missing}")
        return cls(
            id=str(record["id"]),
            cpp_code=str(record.get("cpp_code") or ""),
            cuda_code=str(record.get("cuda_code") or ""),
            cpp_inputs=tuple(str(s) for s in record.get("consistent_cpp_inputs") or ()),
            cuda_inputs=tuple(str(s) for s in record["consistent_cuda_inputs"]),
            cuda_wrapper=str(record["cuda_wrapper"]),
            outputs=tuple(str(s) for s in record["consistent_outputs"]),
        )

    @property
    def launched_kernels(self) -> list[str]:
        """Names of the kernels the wrapper launches with ``<<<...>>>`` (empty for CPU-only wrappers)."""
        return launch_names(self.cuda_wrapper)

    @property
    def launches_kernel(self) -> bool:
        """False for the few cases whose wrapper computes on the CPU: there the candidate is only compiled."""
        return bool(self.launched_kernels)


def load_exec_cases(path: str | os.PathLike) -> list[ExecCase]:
    """Read a BabelTower executable JSONL file (a JSON list is accepted too)."""
    text = Path(path).read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        records = json.loads(stripped)
    else:
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [ExecCase.from_record(r) for r in records]


def has_test_cases(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a JSONL/JSON data file whose records carry the executable (unit-test) fields.

    A predicate: an unreadable or non-JSON file is simply not an executable data file (False).
    """
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(1 << 16)
            first = head.lstrip()
            if not first:
                return False
            if first.startswith("["):
                fh.seek(0)
                records = json.load(fh)
                record = records[0] if records else None
            else:
                line = first.splitlines()[0]
                if not line.rstrip().endswith("}"):  # the first record is longer than what was read
                    fh.seek(0)
                    line = next(ln for ln in fh if ln.strip())
                record = json.loads(line)
    except (OSError, ValueError, UnicodeDecodeError, StopIteration, IndexError):
        return False
    return isinstance(record, dict) and all(k in record for k in REQUIRED_FIELDS)


def load_predictions(path: str | os.PathLike) -> dict[str, list[str]]:
    """``{"id": ..., "prediction"|"cuda"|"generated_cuda": code}`` JSONL -> {id: [sample, ...]} (file order)."""
    out: dict[str, list[str]] = {}
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            if "id" not in record:
                raise ValueError(f"{path}:{lineno}: no 'id' field")
            for name in PREDICTION_FIELDS:
                if name in record:
                    code = record[name]
                    break
            else:
                raise ValueError(f"{path}:{lineno}: none of the fields {PREDICTION_FIELDS}")
            out.setdefault(str(record["id"]), []).append("" if code is None else str(code))
    return out

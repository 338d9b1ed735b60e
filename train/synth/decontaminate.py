"""Keeps generated pairs apart from an evaluation set: a pair is rejected when its function or kernel shares a
name with an evaluation function (compared as `kernelcheck.heads.kernel_name` makes them, case folded, so
`add_matrix` meets `add_matrix_cpu`), or its C body or kernel body has the same tokens (`eval_body`) or the same
shape with identifiers renamed (`eval_shape`, `train.synth.textnorm.shape`) as an evaluation function's.

The families are written without looking at the evaluation functions; this gate makes the separation a checked
fact rather than a hope. The evaluation file is read only here (its functions' names and bodies as fingerprints).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from kernelcheck.heads import kernel_name
from kernelcheck.parsing import function_signatures

from .textnorm import body_tokens, shape

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_EVAL_SET = REPO_ROOT.parent / "shared" / "data" / "babeltower" / "exec_dev.jsonl"
SOURCE_FIELDS = ("cpp_code", "cuda_code", "cpp", "generated_cuda", "cuda")


class EvalSetError(ValueError):
    """The evaluation file cannot be read as JSON Lines of objects with code fields; names the file and line."""


def _name_key(name: str) -> str:
    return kernel_name(name).lower()


def first_function_name(source: str) -> str:
    """The name of the first function defined in `source` ("" when there is none)."""
    signatures = function_signatures(source)
    return signatures[0].name if signatures else ""


@dataclass
class EvalIndex:
    """Fingerprints of an evaluation set's functions: name keys, body token strings, body shapes."""

    source: str = ""
    names: set[str] = field(default_factory=set)
    bodies: set[str] = field(default_factory=set)
    shapes: set[str] = field(default_factory=set)
    functions: int = 0

    def add(self, code: str) -> None:
        name = first_function_name(code)
        if name:
            self.names.add(_name_key(name))
        self.bodies.add(" ".join(body_tokens(code)))
        self.shapes.add(shape(code))
        self.functions += 1

    @classmethod
    def from_jsonl(cls, path: str | Path) -> "EvalIndex":
        path = Path(path)
        index = cls(source=str(path))
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise EvalSetError(f"{path}:{number}: not JSON ({error.msg})") from error
            codes = [record[f] for f in SOURCE_FIELDS if isinstance(record, dict) and isinstance(record.get(f), str)]
            if not codes:
                raise EvalSetError(f"{path}:{number}: no code field (looked for {SOURCE_FIELDS})")
            for code in codes:
                index.add(code)
        return index

    def overlap(self, cpp: str, cuda: str) -> str | None:
        """Why the pair overlaps the evaluation set ("eval_name", "eval_body", "eval_shape"), or None."""
        for code in (cpp, cuda):
            name = first_function_name(code)
            if name and _name_key(name) in self.names:
                return "eval_name"
        for code in (cpp, cuda):
            if " ".join(body_tokens(code)) in self.bodies:
                return "eval_body"
        for code in (cpp, cuda):
            if shape(code) in self.shapes:
                return "eval_shape"
        return None

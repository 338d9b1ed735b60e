"""The toolkit families build specs with: `Draw` (the random source, the names already taken, parameter makers)
and `Family` (a named set of variants, each a function `Draw -> Spec`).

Every choice goes through the `Draw`'s `random.Random`, so a spec is a pure function of its seed.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable, Sequence

from . import names as vocab
from .spec import KERNEL_FORMS, Loop, Param, Spec, Stmt, SynthError


class Draw:
    """One spec's random choices and names."""

    def __init__(self, rng: random.Random, family: str, variant: str):
        self.rng = rng
        self.names = vocab.Names(rng)
        self.family = family
        self.variant = variant

    def choice(self, seq: Sequence):
        return self.rng.choice(seq)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def size(self, signed: bool = False, candidates: Sequence[str] = vocab.SIZE) -> Param:
        """A loop bound; `signed` where the bound is subtracted from (`n - 1` must not wrap)."""
        return Param(self.choice(vocab.SIGNED_SIZES if signed else vocab.SIZES), self.names.take(candidates),
                     role="size")

    def rows_cols(self) -> tuple[Param, Param]:
        rows, cols = self.names.take_pair(vocab.ROWS_COLS)
        type_ = self.choice(("int", "int", "int", "long"))
        return Param(type_, rows, role="size"), Param(type_, cols, role="size")

    def array(self, type_: str, candidates: Sequence[str], role: str) -> Param:
        return Param(type_, self.names.take(candidates), pointer=True, role=role)

    def scalar(self, type_: str, candidates: Sequence[str], role: str = "scalar") -> Param:
        return Param(type_, self.names.take(candidates), role=role)

    def var(self) -> str:
        return self.names.take(vocab.LOOP_VARS)

    def row_col_vars(self) -> tuple[str, str]:
        return self.names.take_pair(vocab.ROW_COL_VARS)

    def inner_var(self) -> str:
        return self.names.take(vocab.INNER_VARS)

    def fname(self, verbs: Sequence[str], nouns: Sequence[str]) -> str:
        return vocab.function_name(self.rng, verbs, nouns)

    def lit(self, type_: str, values: Sequence[str]) -> str:
        return vocab.literal(type_, self.choice(values))

    def spec_1d(self, name: str, params: Sequence[Param], var: str, bound: str, c_body: Sequence[Stmt],
                cuda_body: Sequence[Stmt] | None = None, *, start: str = "0", step: str = "1",
                pre: Sequence[str] = (), forms: Sequence[str] = KERNEL_FORMS, reversible: bool = True,
                notes: Sequence[str] = ()) -> Spec:
        if (start, step) != ("0", "1"):
            forms = tuple(f for f in forms if f != "grid_stride")
        return Spec(self.family, self.variant, name, tuple(params), Loop((var,), (bound,), start, step),
                    tuple(c_body), tuple(c_body if cuda_body is None else cuda_body), tuple(pre), tuple(forms),
                    reversible, tuple(notes))

    def spec_2d(self, name: str, params: Sequence[Param], row: str, rows: str, col: str, cols: str,
                c_body: Sequence[Stmt], cuda_body: Sequence[Stmt] | None = None, *,
                pre: Sequence[str] = ()) -> Spec:
        return Spec(self.family, self.variant, name, tuple(params), Loop((row, col), (rows, cols)),
                    tuple(c_body), tuple(c_body if cuda_body is None else cuda_body), tuple(pre),
                    ("guard", "early_return"))


Variant = Callable[[Draw], Spec]


@dataclass(frozen=True)
class Family:
    """A named template with variants; `make` draws one spec of a given variant."""

    name: str
    variants: dict[str, Variant]
    doc: str = ""

    def make(self, rng: random.Random, variant: str | None = None) -> Spec:
        if variant is None:
            variant = rng.choice(sorted(self.variants))
        if variant not in self.variants:
            raise SynthError(f"family {self.name!r} has no variant {variant!r}; it has {sorted(self.variants)}")
        return self.variants[variant](Draw(rng, self.name, variant))

"""`generate(n, seed)`: n unique C-function / CUDA-kernel pairs, deterministic from the seed.

Pair k is drawn from its own seed (`pair_seed(seed, k)`, written with the pair), so `make_pair(pair_seed)` makes
the same pair again. Families take turns (pair k comes from family k mod the number of families), so every family
is represented in any run of at least that many pairs; within a family the variant, types, names, C style and
kernel form are drawn at random. Pairs whose C function is already in the set (same tokens, layout aside) are
skipped and counted as duplicates, so the n pairs returned are unique.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from .families import FAMILIES
from .render import render_c, render_kernel
from .spec import Spec, SynthError
from .style import Style, sample_style
from .textnorm import normalized

# The kernel forms' weights where a spec allows them: mostly the guarded block the exemplars show.
FORM_WEIGHTS = {"guard": 0.6, "early_return": 0.25, "grid_stride": 0.15}
MAX_ATTEMPTS_PER_PAIR = 20


@dataclass(frozen=True)
class SynthPair:
    cpp: str
    cuda: str
    family: str
    variant: str
    seed: int  # the pair's own seed: make_pair(seed, family) makes it again
    form: str  # the kernel form: guard, early_return or grid_stride
    spec: Spec
    style: Style

    def record(self, verified: bool | None = None) -> dict:
        """The JSONL line (`train.data.load_jsonl` reads `cpp` and `generated_cuda`)."""
        return {"cpp": self.cpp, "generated_cuda": self.cuda, "family": self.family, "seed": self.seed,
                "verified": verified}


def pair_seed(seed: int, k: int) -> int:
    """The seed of the k-th draw of a run: distinct for every (seed, k) with k < 2**32."""
    if seed < 0 or not 0 <= k < 2 ** 32:
        raise SynthError(f"seeds are non-negative and draws fewer than 2**32, got seed={seed} k={k}")
    return seed * 2 ** 32 + k


def make_pair(seed: int, family: str) -> SynthPair:
    """One pair of `family` drawn from `seed`."""
    if family not in FAMILIES:
        raise SynthError(f"unknown family {family!r}; the families are {sorted(FAMILIES)}")
    rng = random.Random(seed)
    style = sample_style(rng)
    spec = FAMILIES[family].make(rng)
    forms = list(spec.forms)
    form = rng.choices(forms, weights=[FORM_WEIGHTS[f] for f in forms])[0]
    cpp = render_c(spec, style)
    return SynthPair(cpp, render_kernel(spec, cpp, form), family, spec.variant, seed, form, spec, style)


def generate(n: int, seed: int = 0, *, families: list[str] | None = None,
             duplicates: Counter | None = None) -> list[SynthPair]:
    """n unique pairs from `seed`, the families taking turns (all of them, or those named).

    `duplicates`, when given, counts the skipped duplicates per family. SynthError when n unique pairs cannot be
    made within `MAX_ATTEMPTS_PER_PAIR * n` draws (a family list too small for n).
    """
    if n < 0:
        raise SynthError(f"n must be non-negative, got {n}")
    names = sorted(FAMILIES) if families is None else list(families)
    unknown = [f for f in names if f not in FAMILIES]
    if unknown or not names:
        raise SynthError(f"unknown or no families {unknown or names}; the families are {sorted(FAMILIES)}")
    seen: set[str] = set()
    pairs: list[SynthPair] = []
    k = 0
    while len(pairs) < n:
        if k >= MAX_ATTEMPTS_PER_PAIR * n:
            raise SynthError(f"only {len(pairs)} unique pairs of {n} after {k} draws from families {names}")
        family = names[k % len(names)]
        pair = make_pair(pair_seed(seed, k), family)
        k += 1
        key = normalized(pair.cpp)
        if key in seen:
            if duplicates is not None:
                duplicates[family] += 1
            continue
        seen.add(key)
        pairs.append(pair)
    return pairs

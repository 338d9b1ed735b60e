"""The vocabularies the families draw from — parameter, loop-variable and function names, element types and their
literals — and `Names`, which hands out names without repeating one inside a function.

Every name here is our own choice of ordinary host-code spellings (n/len/size/numElements, src/dst/in/out/x/y,
verb_noun function names with the `_cpu`-style suffixes host code often carries). Names that are also C library
functions (`y0`, `j1`, `floor`, `index`...) are left out so a parameter never shadows one a body might call, and no
function name contains "kernel" (the kernel's name is the function's with `_kernel`; see `kernelcheck.heads`).
"""

from __future__ import annotations

import random
from typing import Sequence

from .spec import SynthError

FLOATS = ("float", "double")
INTS = ("int", "long", "unsigned int")
ELEMENT_TYPES = FLOATS + INTS
SIGNED_SIZES = ("int", "int", "int", "int", "long")  # sizes a loop bound may subtract from (n - 1)
SIZES = SIGNED_SIZES + ("unsigned int", "size_t")

SIZE = ("n", "len", "size", "count", "N", "numElements", "num", "length", "nElems", "elemCount", "numel",
        "dim", "nx", "total_len", "numItems", "cnt", "vecSize", "arrayLen", "numPoints", "nSamples")
ROWS_COLS = (("rows", "cols"), ("height", "width"), ("nrows", "ncols"), ("M", "N"), ("numRows", "numCols"),
             ("h", "w"), ("ny", "nx"), ("dimY", "dimX"), ("rowCount", "colCount"), ("nRows", "nCols"),
             ("m", "n"), ("H", "W"), ("lines", "stride_len"), ("numSamples", "numFeatures"))
INPUTS = ("src", "in", "input", "x", "a", "data", "values", "vals", "buf", "vec", "samples", "u", "arr", "inData",
          "source", "signal_in", "xs", "v", "d_in", "img", "field", "coeffs", "pts", "readings", "raw")
OUTPUTS = ("dst", "out", "output", "y", "b", "res", "result", "dest", "outData", "z", "target", "ys", "d_out",
           "outBuf", "w_out", "mapped", "converted", "filtered", "scaled", "ret")
SECOND = ("b", "c", "other", "rhs", "w", "q", "in2", "second", "B", "weights", "factors", "mask_vals", "g")
THIRD = ("c", "t", "third", "C", "sel", "blend", "mix", "k_in")
SCALARS = ("alpha", "beta", "scale", "factor", "k", "coef", "gain", "mult", "s", "amount", "ratio", "weight")
OFFSETS = ("offset", "shift", "bias", "delta", "base", "c0", "add", "displacement")
THRESHOLDS = ("threshold", "thresh", "limit", "cutoff", "level", "tol", "boundary", "pivot")
CLAMPS = (("lo", "hi"), ("lower", "upper"), ("minVal", "maxVal"), ("vmin", "vmax"), ("low", "high"),
          ("min_v", "max_v"), ("a_min", "a_max"))
STRIDES = ("stride", "step", "incx", "pitch", "spacing", "inc", "ld", "jump")
LOOP_VARS = ("i", "j", "k", "idx", "ii", "e", "pos", "id", "elem", "t", "p", "q")
ROW_COL_VARS = (("r", "c"), ("row", "col"), ("i", "j"), ("y", "x"), ("iy", "ix"), ("ri", "ci"), ("rr", "cc"))
INNER_VARS = ("k", "kk", "j", "c2", "m", "s", "t")
ACCUMULATORS = ("sum", "total", "result", "acc", "out", "res", "accum", "partial", "tally", "agg")
COUNTERS = ("count", "counter", "hits", "numFound", "n_match", "matches", "tally", "cnt_out")
EXTREMA = ("best", "peak", "extreme", "maxOut", "minOut", "top", "bound_out", "record")
HISTOGRAMS = ("hist", "bins_out", "histogram", "counts", "freq", "buckets", "tallies")
BIN_COUNTS = ("bins", "nbins", "numBins", "binCount", "buckets_n", "B")
INDEX_ARRAYS = ("idx", "indices", "perm", "map", "lookup", "order", "sel_idx", "ids", "pos_of", "where")
SUFFIXES = ("_cpu", "_cpu", "_host", "Cpu", "_CPU", "_seq", "CPU", "_serial")


class Names:
    """Hands out names that do not repeat within one function (C names are case-sensitive)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def take(self, candidates: Sequence[str]) -> str:
        """An unused name from `candidates`; SynthError (with the candidates) when all are taken."""
        free = [c for c in candidates if c not in self.used]
        if not free:
            raise SynthError(f"every candidate name is taken: {list(candidates)} (used: {sorted(self.used)})")
        name = self.rng.choice(free)
        self.used.add(name)
        return name

    def take_pair(self, candidates: Sequence[tuple[str, str]]) -> tuple[str, str]:
        free = [p for p in candidates if p[0] not in self.used and p[1] not in self.used and p[0] != p[1]]
        if not free:
            raise SynthError(f"every candidate name pair is taken: {list(candidates)} (used: {sorted(self.used)})")
        pair = self.rng.choice(free)
        self.used.update(pair)
        return pair


def _camel(words: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in words.split("_"))


def function_name(rng: random.Random, verbs: Sequence[str], nouns: Sequence[str]) -> str:
    """`verb_noun`, `verbNoun` or `VerbNoun`, a host suffix about a third of the time (`scale_values_cpu`)."""
    verb, noun = rng.choice(verbs), rng.choice(nouns)
    shape = rng.random()
    if shape < 0.5:
        base = f"{verb}_{noun}"
    elif shape < 0.9:
        camel = _camel(verb)
        base = camel[:1].lower() + camel[1:] + _camel(noun)
    else:
        base = _camel(verb) + _camel(noun)
    if "kernel" in base.lower():
        raise SynthError(f"function name {base!r} would say 'kernel' (the kernel is named after the function)")
    return base + rng.choice(SUFFIXES) if rng.random() < 0.35 else base


def literal(type_: str, value: str) -> str:
    """`value` written for `type_`: `2` -> `2.0f` for float, `2.0` for double, `2` for integers."""
    if type_ in FLOATS:
        text = value if any(ch in value for ch in ".e") else value + ".0"
        return text + "f" if type_ == "float" else text
    if any(ch in value for ch in ".e"):
        raise SynthError(f"integer type {type_!r} cannot take the literal {value!r}")
    return value


def math_fn(type_: str, name: str) -> str:
    """The C math function of `name` for `type_`: `sqrtf` for float, `sqrt` for double."""
    if type_ not in FLOATS:
        raise SynthError(f"math function {name!r} needs a floating type, got {type_!r}")
    return name + "f" if type_ == "float" else name


def pick_type(rng: random.Random, types: Sequence[str] = ELEMENT_TYPES) -> str:
    return rng.choice(types)

"""Source text reduced to what identifies a function: its tokens (`normalized`: spacing and layout gone, so a
flat and an indented copy compare equal, as do BabelTower's space-tokenized lines) and its *shape* (`shape`: the
body's tokens with every identifier that is not a keyword, type or library function renamed by order of first
appearance, so a copy with renamed variables compares equal too).

Used to deduplicate generated pairs and to keep every pair apart from the evaluation set.
"""

from __future__ import annotations

import re

_TOKEN = re.compile(r"[A-Za-z_]\w*|\d[\w.]*|->|\+\+|--|<<=|>>=|<<|>>|<=|>=|==|!=|&&|\|\||[-+*/%&|^]=|::|\S")
_IDENT = re.compile(r"[A-Za-z_]\w*\Z")

# Not renamed by `shape`: what a renamed copy would keep.
KEEP = frozenset("""
void int long short char float double unsigned signed bool const static inline return if else for while do break
continue sizeof struct auto size_t true false __global__ __device__ __restrict__ threadIdx blockIdx blockDim gridDim
atomicAdd atomicMax atomicMin atomicSub atomicExch atomicCAS __syncthreads
sqrt sqrtf exp expf log logf fabs fabsf sin sinf cos cosf tanh tanhf pow powf floor floorf ceil ceilf round roundf
fmax fmaxf fmin fminf abs min max exp2 exp2f log2 log2f rsqrt rsqrtf
""".split())


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(text)


def normalized(text: str) -> str:
    """The tokens joined by single spaces: layout-free text."""
    return " ".join(tokens(text))


def body_tokens(text: str) -> list[str]:
    """The tokens from the first `{` on (the function's body); all of them when there is none."""
    toks = tokens(text)
    return toks[toks.index("{"):] if "{" in toks else toks


def shape(text: str) -> str:
    """The body's tokens with identifiers outside `KEEP` renamed `v0, v1, ...` by first appearance (a member
    after `.` or `->`, such as `blockIdx.x`, keeps its name)."""
    names: dict[str, str] = {}
    out: list[str] = []
    for tok in body_tokens(text):
        member = bool(out) and out[-1] in (".", "->")
        if _IDENT.match(tok) and tok not in KEEP and not member:
            tok = names.setdefault(tok, f"v{len(names)}")
        out.append(tok)
    return " ".join(out)

"""What a family produces: a `Spec` — one C function's parameters, loop nest and loop body, from which
`train.synth.render` writes both the C function and its CUDA kernel.

The body is a tiny statement tree (plain statement strings, `If`, `For`) so each side renders braces in its own
style (the C in the sampled `Style`, the kernel in the one canonical style we want the model to write). The C body
and the kernel body are kept apart because they differ where the C accumulates (`*sum += x[i]` becomes
`atomicAdd(sum, x[i])`); most families give the same statements to both.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

# What a parameter is for: the test's tiny main (and readers) choose values by it; see `Param.role`.
ROLES = ("size", "stride", "divisor", "bins", "scalar", "in", "out", "inout", "index", "acc")

# Kernel forms (`render.render_kernel`): a guarded block, an early return, a grid-stride loop.
KERNEL_FORMS = ("guard", "early_return", "grid_stride")


class SynthError(ValueError):
    """A family or the renderer was asked for something it cannot make; the message names the offending value."""


@dataclass(frozen=True)
class Param:
    """One parameter: `type` is the element type for pointers (`float` for `const float *x`).

    `role` says what values make sense: "size" bounds a loop, "stride"/"divisor"/"bins" must be positive,
    "index" arrays hold indices, "acc" is a one-element accumulator, "in"/"out"/"inout" are data arrays.
    """

    type: str
    name: str
    pointer: bool = False
    role: str = "scalar"

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise SynthError(f"unknown parameter role {self.role!r} for {self.name!r}; expected one of {ROLES}")


@dataclass(frozen=True)
class If:
    cond: str
    then: tuple["Stmt", ...]
    other: tuple["Stmt", ...] = ()


@dataclass(frozen=True)
class For:
    """An inner loop `for (decl var = start; var < bound; var++)` kept inside one thread's work."""

    var: str
    bound: str
    body: tuple["Stmt", ...]
    start: str = "0"
    decl: str = "int"


Stmt = Union[str, If, For]


@dataclass(frozen=True)
class Loop:
    """The loop nest the kernel's threads replace: one variable (1-D) or two (rows outermost, then columns).

    1-D loops may start at a non-zero `start` and advance by `step` (an integer or a parameter's name).
    """

    vars: tuple[str, ...]
    bounds: tuple[str, ...]
    start: str = "0"
    step: str = "1"

    def __post_init__(self) -> None:
        if len(self.vars) not in (1, 2) or len(self.vars) != len(self.bounds):
            raise SynthError(f"a loop has one or two variables with as many bounds, got {self.vars} / {self.bounds}")
        if len(self.vars) == 2 and (self.start, self.step) != ("0", "1"):
            raise SynthError(f"2-D loops start at 0 with step 1, got start={self.start!r} step={self.step!r}")


@dataclass(frozen=True)
class Spec:
    """One pair to render. `pre`: statements before the loop, in both the C and the kernel (`int total = ...`).
    `forms`: the kernel forms that compute what the C does (a grid-stride loop needs a plain 1-D loop)."""

    family: str
    variant: str
    name: str
    params: tuple[Param, ...]
    loop: Loop
    c_body: tuple[Stmt, ...]
    cuda_body: tuple[Stmt, ...]
    pre: tuple[str, ...] = ()
    forms: tuple[str, ...] = KERNEL_FORMS
    reversible: bool = True  # the C may count down (no iteration reads what another writes)
    notes: tuple[str, ...] = field(default_factory=tuple)  # preconditions a verifier's inputs must meet

    def __post_init__(self) -> None:
        bad = [f for f in self.forms if f not in KERNEL_FORMS]
        if bad or not self.forms:
            raise SynthError(f"kernel forms must be a non-empty subset of {KERNEL_FORMS}, got {self.forms}")
        names = [p.name for p in self.params]
        if len(set(names)) != len(names):
            raise SynthError(f"duplicate parameter names in {self.name}: {names}")

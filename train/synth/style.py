"""How a C function is written: the surface choices that do not change what it computes.

Users paste host code in every style, so the C side varies: indentation, brace placement, braces around single
statements, the increment (`i++`, `++i`, `i += 1`, `i = i + 1`), the loop variable declared in the loop or before
it, the pointer star's place, `const` on inputs, `unsigned` or `unsigned int`, counting down where the order does
not matter, and a flat one-line form (what BabelTower-style data looks like once detokenized). The kernel side is
always written in one canonical style (see `train.synth.render`): that is the style we want the model to write.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

INDENTS = ("    ", "    ", "  ", "\t")
INCREMENTS = ("{v}++", "{v}++", "++{v}", "{v} += 1", "{v} = {v} + 1")
STARS = ("{t} *{n}", "{t} *{n}", "{t}* {n}", "{t} * {n}")


@dataclass(frozen=True)
class Style:
    indent: str = "    "
    allman: bool = False  # the function's `{` on its own line
    braces: bool = True  # braces around a single statement
    increment: str = "{v}++"
    declare_before: bool = False  # `int i;` before the loop, `for (i = 0; ...)`
    star: str = "{t} *{n}"
    const_inputs: bool = False
    unsigned_int: bool = True  # spell `unsigned int` (else `unsigned`)
    count_down: bool = False  # `for (i = n - 1; i >= 0; i--)` where the family allows it
    flat: bool = False  # the whole function on one line

    def step(self, var: str) -> str:
        return self.increment.format(v=var)

    def param(self, type_: str, name: str, pointer: bool, const: bool) -> str:
        if type_ == "unsigned int" and not self.unsigned_int:
            type_ = "unsigned"
        if not pointer:
            return f"{type_} {name}"
        return ("const " if const else "") + self.star.format(t=type_, n=name)


def sample_style(rng: random.Random) -> Style:
    """A style with each choice drawn independently; the flat form about a third of the time."""
    return Style(
        indent=rng.choice(INDENTS),
        allman=rng.random() < 0.2,
        braces=rng.random() < 0.6,
        increment=rng.choice(INCREMENTS),
        declare_before=rng.random() < 0.2,
        star=rng.choice(STARS),
        const_inputs=rng.random() < 0.4,
        unsigned_int=rng.random() < 0.6,
        count_down=rng.random() < 0.08,
        flat=rng.random() < 0.33,
    )


# The kernel's style: fixed, as in `mot_engine/model/prompt_exemplars.py`.
KERNEL_STYLE = Style(indent="    ", braces=True, increment="{v}++")

"""One input's launch configuration from a kernel's launch rule (`kernelcheck.launch`).

`concrete_launch` turns the rule into one input's ``<<<grid, block>>>``:

* checked global axis: blocks of 256 (1-D), 16x16 (2-D) or 8x8x4 (3-D) — so sizes that are not a multiple of
  the block leave threads past the bound, which exercises the bounds check — and ``ceil(extent / block)``
  blocks (one block when the extent is 0: the check must stop every thread);
* grid-stride: about half the blocks the extent needs, so each thread takes the loop more than once;
* ``thread`` form: one block as wide as the extent rounded up to a warp (at most 1024 threads);
  ``block`` form: one block per element;
* no bounds check at all: exactly one thread per element (``<<<n, 1>>>``), the extent taken from the C loop
  with the index variable's name, else by the row-major convention from the C function's first loop nest (1-D:
  the outermost loop; 2-D: x the second level, y the first), and the launch is skipped for an extent of 0;
* a static ``__shared__`` tile ``T s[A][B]`` fixes the block at B x A (A for ``T s[A]``);
* no thread index at all (a serial kernel: every thread runs the whole C loop): ``<<<2, 2>>>`` (`SERIAL_LAUNCH`),
  never one thread. A user may launch it like any kernel, so it is verified only if four threads in two blocks,
  each running the loop, still leave the right result: a loop that reads what it writes (``y[i] += ...``, a
  swap) then fails — on the CPU backend as a race, or as the result of four passes (an even count, so a swap
  done twice does not look right) — while one that only writes values the inputs decide passes.

An input that cannot be launched (more than 1024 threads a block, 65535 blocks in y or z, more than
`MAX_THREADS` threads, an axis without an extent) raises `kernelcheck.launch.LaunchError`; the check skips it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from .intervals import Evaluator, Iv
from .launch import AXES, IndexVar, LaunchError, LaunchRule, thread_coords
from .loopnest import LoopInfo
from .signatures import node_text

__all__ = ["Launch", "concrete_launch", "DEFAULT_BLOCKS", "MAX_THREADS", "MAX_GRID_YZ", "SERIAL_LAUNCH"]

DEFAULT_BLOCKS = {1: (256, 1, 1), 2: (16, 16, 1), 3: (8, 8, 4)}
MAX_THREADS = 1 << 20  # per launch: the CPU backend runs every thread
MAX_GRID_YZ = 65535
SERIAL_LAUNCH = ((2, 1, 1), (2, 1, 1))  # (grid, block) of a kernel with no thread index: see the module docstring


@dataclass(frozen=True)
class Launch:
    """One input's launch configuration."""

    grid: tuple[int, int, int]
    block: tuple[int, int, int]
    shared_bytes: int = 0

    @property
    def empty(self) -> bool:
        return 0 in self.grid

    def describe(self) -> str:
        def dim(v: tuple[int, int, int]) -> str:
            return str(v[0]) if v[1:] == (1, 1) else f"({v[0]},{v[1]},{v[2]})"
        return f"<<<{dim(self.grid)}, {dim(self.block)}>>>" + (" (no threads: skipped)" if self.empty else "")


def _kernel_env(rule: LaunchRule, values: Mapping[str, Iv]) -> dict[str, Iv]:
    """Kernel parameter values plus the straight-line locals of the body that do not depend on the thread."""
    env = dict(rule.macros)
    env.update(values)
    for node in rule.kernel.body.named_children:
        if node.type != "declaration":
            continue
        for decl in node.children_by_field_name("declarator"):
            if decl.type != "init_declarator":
                continue
            target = decl.child_by_field_name("declarator")
            value = decl.child_by_field_name("value")
            if target is not None and target.type == "identifier" and value is not None \
                    and not thread_coords(value, {}):
                env.setdefault(node_text(target), Evaluator(env).eval(value))
    return env


def _extent(var: IndexVar, env: Mapping[str, Iv]) -> int | None:
    best = None
    for bound, inclusive in var.bounds:
        value = Evaluator(env).eval(bound)
        if math.isfinite(value.hi):
            best = max(best or 0, max(0, math.ceil(value.hi) + (1 if inclusive else 0)))
    return best


def _first_nest(loops: list[LoopInfo]) -> list[LoopInfo]:
    """The first loop nest: the first loop of depth 0, the first of depth 1 inside it, and so on."""
    nest: list[LoopInfo] = []
    for loop in loops:
        if loop.depth == len(nest):
            nest.append(loop)
        elif loop.depth < len(nest):
            break
    return nest


def _c_extent(var: IndexVar, rule: LaunchRule, loops: list[LoopInfo]) -> int | None:
    """Trips of the C loop an unchecked index stands for: the loop of the same variable name, else by the
    row-major convention the first loop nest's levels from the inside out (x: the innermost of the D outer loops
    of a D-dimensional kernel, then y, then z)."""
    named = [loop for loop in loops if loop.var == var.name and math.isfinite(loop.trips.hi)]
    if named:
        return int(max(loop.trips.hi for loop in named))
    nest = _first_nest(loops)
    level = rule.dims - 1 - AXES.index(var.axis)
    if 0 <= level < len(nest) and math.isfinite(nest[level].trips.hi):
        return int(nest[level].trips.hi)
    return None


def _axis_launch(axis: str, vars_: list[IndexVar], env: Mapping[str, Iv], rule: LaunchRule,
                 loops: list[LoopInfo], default: int) -> tuple[int, int]:
    """(grid, block) along one axis; LaunchError when this input cannot be launched."""
    def need(var: IndexVar) -> int:
        extent = _extent(var, env) if var.bounds else None
        if extent is None:
            extent = _c_extent(var, rule, loops)
        if extent is None:
            raise LaunchError(f"no extent for the {axis} index {var.name}: it has no bounds check the harness can "
                              "evaluate and no C loop of that name")
        return extent

    by_form = {form: [v for v in vars_ if v.form == form] for form in ("global", "block", "thread")}
    unchecked = any(not v.bounds for v in vars_)
    strided = all(v.stride for v in vars_)
    if by_form["global"]:
        extent = max(need(v) for v in by_form["global"])
        if unchecked:
            return extent, 1
        block = next((v.block for v in by_form["global"] if v.block), default)
        blocks = math.ceil(extent / block)
        return max(1, math.ceil(blocks / 2) if strided else blocks), block
    block = 1
    if by_form["thread"]:
        extent = max(need(v) for v in by_form["thread"])
        block = default if all(v.stride for v in by_form["thread"]) else (
            extent if unchecked else max(32, 32 * math.ceil(extent / 32)))
    if by_form["block"]:
        extent = max(need(v) for v in by_form["block"])
        grid = max(1, math.ceil(extent / 2)) if all(v.stride for v in by_form["block"]) else (
            extent if unchecked else max(1, extent))
        return grid, block
    return 1, block


def concrete_launch(rule: LaunchRule, values: Mapping[str, Iv], loops: list[LoopInfo]) -> Launch:
    """The launch of one input (kernel parameter values, the C function's loops for this input).

    Raises LaunchError when this input cannot be launched (too many threads, a block over 1024 threads, no
    extent for an axis).
    """
    if not rule.axes and not rule.tile:
        return Launch(*SERIAL_LAUNCH)
    env = _kernel_env(rule, values)
    dims = rule.dims
    defaults = rule.tile or DEFAULT_BLOCKS[dims]
    grid, block = [1, 1, 1], [1, 1, 1]
    for i, axis in enumerate(AXES[:dims]):
        vars_ = rule.axes.get(axis, [])
        if not vars_:
            block[i] = defaults[i] if rule.tile else 1
            continue
        grid[i], block[i] = _axis_launch(axis, vars_, env, rule, loops, defaults[i])
    if rule.tile:
        block = list(rule.tile)
    threads_per_block = block[0] * block[1] * block[2]
    if threads_per_block > 1024:
        raise LaunchError(f"a block of {block[0]}x{block[1]}x{block[2]} threads exceeds 1024")
    if grid[1] > MAX_GRID_YZ or grid[2] > MAX_GRID_YZ:
        raise LaunchError(f"grid {tuple(grid)} exceeds 65535 blocks in y or z")
    if grid[0] * grid[1] * grid[2] * threads_per_block > MAX_THREADS:
        raise LaunchError(f"{grid[0] * grid[1] * grid[2] * threads_per_block} threads exceed the harness's "
                          f"{MAX_THREADS}")
    return Launch(tuple(grid), tuple(block))

"""A C/C++ function and a kernel made ready for a differential check: signatures, mapping, launch rule, inputs.

`prepare_pair` does steps 2-3 of `kernelcheck.verify` — read both functions (`kernelcheck.signatures`), map the
parameters (`kernelcheck.mapping`), read the launch rule (`kernelcheck.launch`), generate the inputs
(`kernelcheck.inputs`, from the C side only: every kernel checked against one function gets the same inputs) and
give each input its launch — or returns the ``not_verifiable`` `Verdict` that ends the check, with the reason.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from .inputs import InputCase, make_inputs
from .intervals import Iv
from .launch import LaunchError, LaunchRule, launch_rule
from .launch_config import Launch, concrete_launch
from .loopnest import CShape, shape_of
from .mapping import NotVerifiable, ParamMapping, map_params
from .signatures import FunctionInfo, SignatureError, read_c_function, read_kernel
from .verdict import Verdict

__all__ = ["Pair", "prepare_pair", "kernel_values"]


@dataclass
class Pair:
    """A C function and a kernel ready to run: ``inputs`` are every generated input (the reference runs them
    all); ``launches`` has the inputs this kernel can be launched on; ``skipped`` counts why others cannot."""

    c: FunctionInfo
    k: FunctionInfo
    shape: CShape
    mapping: ParamMapping
    rule: LaunchRule
    inputs: list[InputCase]
    launches: dict[int, Launch]
    skipped: Counter

    @property
    def names(self) -> dict[str, str]:
        return {"function": self.c.name, "kernel": self.k.name}


def kernel_values(mapping: ParamMapping, case: InputCase) -> dict[str, Iv]:
    """The values of the kernel's scalar parameters on one input (for its launch bounds)."""
    values: dict[str, Iv] = {}
    for b in mapping.bindings:
        if b.source == "vector_size":
            values[b.kernel.name] = Iv.point(case.extents[b.c_param.name])
        elif b.source == "param" and b.c_param.name in case.values:
            value = case.values[b.c_param.name]
            values[b.kernel.name] = Iv.point(value, isinstance(value, float))
    return values


def prepare_pair(cpp_source: str, kernel_source: str, function: str | None, kernel: str | None, seeds: int,
                 max_inputs: int) -> Pair | Verdict:
    """Steps 2-3 of the check (see the module docstring)."""
    try:
        c = read_c_function(cpp_source, function)
        k = read_kernel(kernel_source, kernel)
    except SignatureError as exc:
        return Verdict("not_verifiable", str(exc))
    names = {"function": c.name, "kernel": k.name}
    if "::" in c.name:
        return Verdict("not_verifiable", f"{c.name} is a member function (the harness has no object to call it on)",
                       **names)
    shape = shape_of(c)
    try:
        mapping = map_params(c, k, set(shape.size_params))
        rule = launch_rule(k)
    except (NotVerifiable, LaunchError) as exc:
        return Verdict("not_verifiable", str(exc), **names)
    inputs, too_large = make_inputs(c, shape, seeds=seeds, max_inputs=max_inputs)
    skipped: Counter = Counter()
    if too_large:
        skipped["too large (loop work or array sizes over the harness's caps)"] += too_large
    launches = {}
    for case in inputs:
        try:
            launches[case.index] = concrete_launch(rule, kernel_values(mapping, case), case.loops)
        except LaunchError as exc:
            skipped[f"no launch: {exc}"] += 1
    if not launches:
        why = "; ".join(f"{n} x {r}" for r, n in skipped.items()) or "the C function gives no input to try"
        return Verdict("not_verifiable", f"no input could be run ({why})", skipped=sum(skipped.values()),
                       launch=rule.describe(), mapping=mapping.describe(), **names)
    return Pair(c, k, shape, mapping, rule, inputs, launches, skipped)

"""Which C argument each kernel parameter receives — or why the pair cannot be checked.

`map_params` pairs the kernel's parameters with the C function's:

1. **Same name**, compatible type (a name shared with an incompatible type is refused).
2. The rest **in order** when the unnamed leftovers pair up with compatible types (translations rename
   parameters: ``intAdd(c, a, b, d)`` for ``addIntValues(destination, value1, value2, end)``); size parameters
   of the C function the kernel does not take are set aside first.  The verdict says the mapping was by position.
3. A kernel pointer left over receives the **C return value** (``float CEE(...)`` -> ``kernel_CEE(..., float*
   loss, ...)``: initialised to 0, compared with what the C function returned); an integer left over receives
   the **size of a ``std::vector``** parameter.
4. A C parameter the kernel does not take is allowed only when it is a **size** (it bounds a loop of the C
   function): the launch uses it.

Compatible: buffers (``T*``, ``T a[]``, ``std::vector<T>&``, and ``T&`` for a one-element output) with kernel
``T*`` of the same element size and kind (integers of one size interchange: ``int*``/``unsigned*``); scalars
with scalars of the same kind (integer with integer, floating with floating).  Everything else — structs,
templates, function pointers, ``T**``, ``void*``, a C return value the kernel cannot produce — raises
`NotVerifiable` with the reason (never "verified").
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .signatures import FunctionInfo, Param

__all__ = ["NotVerifiable", "Binding", "ParamMapping", "map_params", "compatible"]


class NotVerifiable(ValueError):
    """The C function and the kernel cannot be checked against each other; the message says why."""


@dataclass(frozen=True)
class Binding:
    """Where one kernel parameter's argument comes from: a C parameter, the C return value, a vector's size."""

    kernel: Param
    source: str  # "param" | "return" | "vector_size"
    c_param: Param | None = None

    def describe(self) -> str:
        if self.source == "return":
            return f"{self.kernel.name} <- the C return value"
        if self.source == "vector_size":
            return f"{self.kernel.name} <- {self.c_param.name}.size()"
        return f"{self.kernel.name} <- {self.c_param.name}" if self.c_param.name != self.kernel.name \
            else self.kernel.name


@dataclass(frozen=True)
class ParamMapping:
    """Kernel parameters in order with their sources; C parameters only the launch uses; how it was matched."""

    bindings: tuple[Binding, ...]
    launch_only: tuple[Param, ...] = ()
    by_position: bool = False
    notes: tuple[str, ...] = field(default_factory=tuple)

    def kernel_source_of(self, c_name: str) -> Binding | None:
        return next((b for b in self.bindings if b.c_param is not None and b.c_param.name == c_name
                     and b.source == "param"), None)

    def describe(self) -> str:
        text = ", ".join(b.describe() for b in self.bindings)
        extra = f"; launch only: {', '.join(p.name for p in self.launch_only)}" if self.launch_only else ""
        return f"({text}){extra}" + (" [by position]" if self.by_position else "")


def compatible(c: Param, k: Param) -> str:
    """"" when C parameter ``c`` can be passed to kernel parameter ``k``, else why not."""
    if c.scalar is None or k.scalar is None:
        return "unsupported type"
    same_kind = (c.scalar.is_float == k.scalar.is_float)
    if c.is_buffer or c.is_scalar_ref:
        if k.pointer_depth != 1 and not k.array:
            return f"the C side passes memory ({c.type_text}) but the kernel takes {k.type_text}"
        if c.scalar.size != k.scalar.size or not same_kind:
            return f"element types differ ({c.scalar.name} vs {k.scalar.name})"
        return ""
    if k.is_buffer or k.reference:
        return f"the C side passes a value ({c.type_text}) but the kernel takes {k.type_text}"
    if not same_kind:
        return f"scalar kinds differ ({c.scalar.name} vs {k.scalar.name})"
    return ""


def _check_supported(c: FunctionInfo, k: FunctionInfo) -> None:
    if c.template:
        raise NotVerifiable(f"the C function {c.name} is a template (the harness does not pick its types)")
    if k.template:
        raise NotVerifiable(f"the kernel {k.name} is a template (the harness does not pick its types)")
    for side, fn in (("C", c), ("kernel", k)):
        for p in fn.params:
            if p.unsupported:
                raise NotVerifiable(f"{side} parameter {p.name or '(unnamed)'!r}: {p.unsupported}")
            if not p.name:
                raise NotVerifiable(f"{side} parameter of type {p.type_text} has no name")
    if c.returns_value and c.return_type is None:
        raise NotVerifiable(f"the C function returns {c.return_text!r}, not a scalar the harness can compare")
    for p in c.params:
        if p.vector and not p.reference:
            raise NotVerifiable(f"C parameter {p.name!r} takes std::vector by value: the kernel cannot change the "
                                "caller's vector, so there is nothing to compare")


def _pair_in_order(c_left: list[Param], k_left: list[Param], size_like: set[str]) -> list[tuple[Param, Param]] | None:
    """Pair leftovers in order (dropping C sizes the kernel may not take); None when they do not pair up."""
    for candidates in (c_left, [p for p in c_left if p.name not in size_like]):
        if len(candidates) == len(k_left) and all(not compatible(a, b) for a, b in zip(candidates, k_left)):
            return list(zip(candidates, k_left))
    return None


def map_params(c: FunctionInfo, k: FunctionInfo, size_like: set[str]) -> ParamMapping:
    """Pair the kernel's parameters with the C function's (see the module docstring); NotVerifiable if they
    cannot be.  ``size_like``: C parameters that bound its loops (the only ones the kernel may leave out)."""
    _check_supported(c, k)
    c_names = {p.name: p for p in c.params}
    pairs: dict[str, Param] = {}
    for kp in k.params:
        cp = c_names.get(kp.name)
        if cp is not None:
            why = compatible(cp, kp)
            if why:
                raise NotVerifiable(f"parameter {kp.name!r}: {why}")
            pairs[kp.name] = cp
    c_left = [p for p in c.params if p.name not in {cp.name for cp in pairs.values()}]
    k_left = [p for p in k.params if p.name not in pairs]
    by_position = False
    if c_left and k_left:
        matched = _pair_in_order(c_left, k_left, size_like)
        if matched is None and c.returns_value:  # one kernel pointer may be the return value's slot
            for slot in [p for p in k_left if p.pointer_depth == 1]:
                matched = _pair_in_order(c_left, [p for p in k_left if p is not slot], size_like)
                if matched:
                    break
        if matched:
            by_position = True
            for cp, kp in matched:
                pairs[kp.name] = cp
            c_left = [p for p in c_left if p not in [cp for cp, _ in matched]]
            k_left = [p for p in k_left if p.name not in pairs]
    return _finish(c, k, pairs, c_left, k_left, size_like, by_position)


def _finish(c: FunctionInfo, k: FunctionInfo, pairs: dict[str, Param], c_left: list[Param], k_left: list[Param],
            size_like: set[str], by_position: bool) -> ParamMapping:
    bindings: dict[str, Binding] = {name: Binding(k.param(name), "param", cp) for name, cp in pairs.items()}
    vectors = [p for p in c.params if p.vector]
    return_slot = None
    for kp in k_left:
        if c.returns_value and return_slot is None and kp.pointer_depth == 1 and kp.scalar is not None \
                and c.return_type is not None and kp.scalar.is_float == c.return_type.is_float:
            return_slot = kp
            bindings[kp.name] = Binding(kp, "return")
        elif vectors and kp.is_value and kp.scalar is not None and kp.scalar.is_integer:
            named = [v for v in vectors if v.name.lower() in kp.name.lower()]
            bindings[kp.name] = Binding(kp, "vector_size", (named or vectors)[0])
        else:
            raise NotVerifiable(f"kernel parameter {kp.describe()!r} has no counterpart in the C function "
                                f"{c.name}({', '.join(p.describe() for p in c.params)})")
    if c.returns_value and return_slot is None:
        raise NotVerifiable(f"the C function returns {c.return_text} but the kernel has no output parameter "
                            "left to receive it")
    launch_only = []
    for cp in c_left:
        if cp.is_value and cp.scalar is not None and cp.scalar.is_integer and cp.name in size_like:
            launch_only.append(cp)
        else:
            raise NotVerifiable(f"C parameter {cp.describe()!r} is not passed to the kernel, and it is not a size "
                                "the launch can use")
    notes = ("parameters mapped by position",) if by_position else ()
    return ParamMapping(bindings=tuple(bindings[p.name] for p in k.params), launch_only=tuple(launch_only),
                        by_position=by_position, notes=notes)

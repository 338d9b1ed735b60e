"""Signatures of the C/C++ function under test and of its CUDA kernel: each parameter's type, name and kind.

`read_c_function` picks the function of a C/C++ source (``name`` given: that one; else the only one; else the
only function no other function of the file calls, ``main`` aside; else the first) and `read_kernel` the
``__global__`` function of a kernel source (``name`` given, else the only one).  Both return a `FunctionInfo`
whose `Param`s say what the harness needs: the element type (`ScalarType`, with its size and kind), pointer
depth, ``const``, C++ reference, array ``T a[]`` / ``T a[N]``, ``std::vector<T>&``, and — for what the harness
cannot feed (structs, function pointers, ``T**``, ``void*``, template types) — why, in ``unsupported``.

Types are normalised (``long int`` -> ``long``, ``unsigned`` -> ``unsigned int``, ``uint`` -> ``unsigned int``)
and sized for the LP64 data model of Linux x86-64 and CUDA (long = 8 bytes).  The C and CUDA grammars of
tree-sitter parse the same parameter syntax (`kernelcheck.parsing.syntax_tree`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from .parsing import function_name, syntax_tree

__all__ = ["ScalarType", "SCALAR_TYPES", "Param", "FunctionInfo", "SignatureError", "scalar_type",
           "read_c_function", "read_kernel", "function_nodes", "node_text"]


@dataclass(frozen=True)
class ScalarType:
    """A C scalar type the harness can generate and compare: canonical spelling, bytes, kind."""

    name: str
    size: int
    kind: str  # "i" signed integer, "u" unsigned integer, "f" floating point, "b" bool

    @property
    def is_float(self) -> bool:
        return self.kind == "f"

    @property
    def is_integer(self) -> bool:
        return self.kind in ("i", "u", "b")


def _scalars() -> dict[str, ScalarType]:
    table = {
        "bool": (1, "b"), "char": (1, "i"), "signed char": (1, "i"), "unsigned char": (1, "u"),
        "short": (2, "i"), "unsigned short": (2, "u"), "int": (4, "i"), "unsigned int": (4, "u"),
        "long": (8, "i"), "unsigned long": (8, "u"), "long long": (8, "i"), "unsigned long long": (8, "u"),
        "float": (4, "f"), "double": (8, "f"),
    }
    types = {name: ScalarType(name, size, kind) for name, (size, kind) in table.items()}
    aliases = {
        "signed": "int", "unsigned": "unsigned int", "signed int": "int", "uint": "unsigned int",
        "short int": "short", "signed short": "short", "unsigned short int": "unsigned short", "ushort": "unsigned short",
        "long int": "long", "signed long": "long", "unsigned long int": "unsigned long", "ulong": "unsigned long",
        "long long int": "long long", "signed long long": "long long", "unsigned long long int": "unsigned long long",
        "size_t": "unsigned long", "ssize_t": "long", "ptrdiff_t": "long", "uchar": "unsigned char",
        "int8_t": "signed char", "uint8_t": "unsigned char", "int16_t": "short", "uint16_t": "unsigned short",
        "int32_t": "int", "uint32_t": "unsigned int", "int64_t": "long", "uint64_t": "unsigned long",
    }
    for alias, target in aliases.items():
        types[alias] = types[target]
    for name in list(types):  # std::size_t, std::uint8_t...
        types["std::" + name] = types[name]
    return types


SCALAR_TYPES: dict[str, ScalarType] = _scalars()
_QUALIFIERS = {"const", "volatile", "__restrict__", "__restrict", "restrict", "register", "static", "inline"}


def scalar_type(text: str) -> ScalarType | None:
    """The `ScalarType` a type spelling names (qualifiers and repeated blanks ignored), or None."""
    words = [w for w in text.replace("\t", " ").split() if w not in _QUALIFIERS]
    return SCALAR_TYPES.get(" ".join(words))


class SignatureError(ValueError):
    """The function or kernel cannot be found or read; the message names what was looked for."""


@dataclass(frozen=True)
class Param:
    """One parameter.  ``scalar`` is the value type (the element type for pointers, arrays and vectors)."""

    name: str
    type_text: str
    scalar: ScalarType | None
    pointer_depth: int = 0
    const: bool = False
    reference: bool = False
    array: bool = False
    array_len: int | None = None
    vector: bool = False
    unsupported: str = ""

    @property
    def is_buffer(self) -> bool:
        """Memory the harness allocates, fills and compares: ``T*``, ``T a[]``, ``std::vector<T>&``."""
        return self.pointer_depth == 1 or self.array or self.vector

    @property
    def is_value(self) -> bool:
        """A scalar passed by value."""
        return not self.is_buffer and not self.reference

    @property
    def is_scalar_ref(self) -> bool:
        """``T&`` of a scalar: an output (or in-out) value of one element."""
        return self.reference and not self.vector and not self.array and self.pointer_depth == 0

    def describe(self) -> str:
        return f"{self.type_text} {self.name}".strip()


@dataclass(frozen=True)
class FunctionInfo:
    """A function definition: name, parameters, return type (None: void), and its tree-sitter node."""

    name: str
    params: tuple[Param, ...]
    return_type: ScalarType | None
    return_text: str
    template: bool
    kernel: bool
    node: Any = field(compare=False, repr=False)
    source: str = field(compare=False, repr=False, default="")

    @property
    def body(self) -> Any:
        return self.node.child_by_field_name("body")

    def param(self, name: str) -> Param | None:
        return next((p for p in self.params if p.name == name), None)

    @property
    def returns_value(self) -> bool:
        return self.return_text != "void"


def node_text(node: Any) -> str:
    """The source text of a tree-sitter node, blanks collapsed (data-set code is tokenised: ``a [ i ]``)."""
    return " ".join(node.text.decode("utf-8", errors="replace").split())


# --------------------------------------------------------------------------------------------------------------
# Parameters
# --------------------------------------------------------------------------------------------------------------
def _vector_element(type_node: Any) -> str | None:
    """``T`` of ``std::vector<T>`` / ``vector<T>`` (the text), else None."""
    node = type_node
    if node.type == "qualified_identifier":
        node = node.child_by_field_name("name") or node.named_children[-1]
    if node.type != "template_type":
        return None
    name = node.child_by_field_name("name")
    if name is None or node_text(name) != "vector":
        return None
    args = node.child_by_field_name("arguments")
    if args is None or len(args.named_children) != 1:
        return None
    return node_text(args.named_children[0])


def _walk_declarator(node: Any) -> tuple[str, int, bool, bool, int | None, str]:
    """(name, pointer depth, reference, array, array length, unsupported) of a parameter's declarator."""
    depth, reference, array, length = 0, False, False, None
    while node is not None:
        kind = node.type
        if kind == "identifier":
            return node_text(node), depth, reference, array, length, ""
        if kind == "pointer_declarator":
            depth += 1
        elif kind == "reference_declarator":
            reference = True
        elif kind == "array_declarator":
            if array:
                return "", depth, reference, array, length, "a multi-dimensional array parameter"
            array = True
            size = node.child_by_field_name("size")
            if size is not None:
                text = node_text(size)
                length = int(text, 0) if text.isdigit() else None
                if length is None:
                    return "", depth, reference, array, length, f"an array parameter of extent {text!r}"
        elif kind in ("function_declarator", "abstract_function_declarator"):
            return "", depth, reference, array, length, "a function pointer"
        elif kind == "parenthesized_declarator":
            pass
        else:
            return "", depth, reference, array, length, f"an unsupported declarator ({kind})"
        inner = node.child_by_field_name("declarator")
        if inner is None:
            inner = next((c for c in node.named_children if c.type not in ("type_qualifier", "ms_pointer_modifier")),
                         None) if kind in ("pointer_declarator", "reference_declarator",
                                           "parenthesized_declarator") else None
        node = inner
    return "", depth, reference, array, length, "an unnamed parameter"


def _param(node: Any) -> Param:
    """A `Param` from a ``parameter_declaration`` (or ``optional_parameter_declaration``) node."""
    type_node = node.child_by_field_name("type")
    const = any(c.type == "type_qualifier" and node_text(c) == "const" for c in node.children)
    type_text = node_text(type_node) if type_node is not None else ""
    name, depth, reference, array, length, why = _walk_declarator(node.child_by_field_name("declarator"))
    if node.type == "variadic_parameter_declaration":
        why = why or "a variadic parameter"
    scalar, vector = None, False
    element = _vector_element(type_node) if type_node is not None else None
    if element is not None:
        vector, scalar = True, scalar_type(element)
        if scalar is None:
            why = why or f"std::vector<{element}> (element type not a plain scalar)"
        elif depth:
            why = why or f"a pointer to std::vector<{element}>"
    elif type_node is not None and type_node.type in ("struct_specifier", "class_specifier", "union_specifier",
                                                       "enum_specifier"):
        why = why or f"a {type_text} (struct, class, union and enum parameters are not generated)"
    else:
        scalar = scalar_type(type_text)
        if scalar is None and not why:
            why = ("void* (no element type to size or compare)" if type_text == "void" and depth
                   else f"type {type_text!r} (not a plain scalar type; a struct, typedef or template parameter?)")
    if not why and depth > 1:
        why = f"{type_text}{'*' * depth} (pointer to pointer: the harness cannot size what it points to)"
    if not why and depth and (array or reference):
        why = f"{type_text}* combined with an array or reference declarator"
    suffix = "*" * depth + ("&" if reference else "") + ("[]" if array else "")
    display = ("const " if const else "") + type_text + (" " + suffix if suffix else "")
    return Param(name=name, type_text=display, scalar=scalar, pointer_depth=depth, const=const,
                 reference=reference, array=array, array_len=length, vector=vector, unsupported=why)


def _params(definition: Any) -> tuple[Param, ...]:
    declarator = definition.child_by_field_name("declarator")
    while declarator is not None and declarator.type != "function_declarator":
        declarator = declarator.child_by_field_name("declarator")
    if declarator is None:
        raise SignatureError(f"cannot read the parameter list of {node_text(definition)[:80]!r}")
    plist = declarator.child_by_field_name("parameters")
    params = []
    for child in plist.named_children:
        if child.type in ("parameter_declaration", "optional_parameter_declaration",
                          "variadic_parameter_declaration"):
            params.append(_param(child))
        elif child.type != "comment":
            params.append(Param(name="", type_text=node_text(child), scalar=None,
                                unsupported=f"an unsupported parameter form ({child.type})"))
    if len(params) == 1 and params[0].type_text == "void" and not params[0].name:
        return ()
    return tuple(params)


def _return_type(definition: Any) -> str:
    type_node = definition.child_by_field_name("type")
    text = node_text(type_node) if type_node is not None else "int"
    declarator = definition.child_by_field_name("declarator")
    if declarator is not None and declarator.type in ("pointer_declarator", "reference_declarator"):
        text += " *" if declarator.type == "pointer_declarator" else " &"
    return text


def _info(definition: Any, source: str, *, kernel: bool) -> FunctionInfo:
    template = definition.parent is not None and definition.parent.type == "template_declaration"
    return_text = _return_type(definition)
    return FunctionInfo(name=function_name(definition), params=_params(definition),
                        return_type=scalar_type(return_text), return_text=return_text, template=template,
                        kernel=kernel, node=definition, source=source)


# --------------------------------------------------------------------------------------------------------------
# Finding the function
# --------------------------------------------------------------------------------------------------------------
def function_nodes(source: str, *, grammar: str = "cpp") -> list[Any]:
    """Every function definition with a body, in source order (top level, namespaces, classes, templates)."""
    found: list[Any] = []
    pending = [syntax_tree(source, grammar=grammar)]
    while pending:
        node = pending.pop()
        if node.type == "function_definition":
            if node.child_by_field_name("body") is not None:
                found.append(node)
            continue  # lambdas and local classes inside a body are not candidates
        pending.extend(reversed(node.children))
    return found


def _is_global(definition: Any) -> bool:
    return any(child.type == "__global__" or node_text(child) == "__global__" for child in definition.children
               if child.type not in ("compound_statement", "function_declarator"))


def _called_names(definition: Any) -> set[str]:
    names: set[str] = set()
    pending = [definition.child_by_field_name("body")]
    while pending:
        node = pending.pop()
        if node is None:
            continue
        if node.type == "call_expression":
            callee = node.child_by_field_name("function")
            if callee is not None:
                names.add(node_text(callee).split("::")[-1].split("<")[0].strip())
        pending.extend(node.children)
    return names


def read_c_function(source: str, name: str | None = None) -> FunctionInfo:
    """The C/C++ function to check: ``name``, else the only function, else the only one no other function calls
    (``main`` aside), else the first.  Raises `SignatureError` when there is none (or no ``name``)."""
    nodes = [n for n in function_nodes(source, grammar="cpp") if not _is_global(n)]
    if name is not None:
        chosen = [n for n in nodes if function_name(n) in (name,) or function_name(n).split("::")[-1] == name]
        if not chosen:
            known = ", ".join(function_name(n) for n in nodes) or "none"
            raise SignatureError(f"no function named {name!r} in the C/C++ source (functions: {known})")
        return _info(chosen[0], source, kernel=False)
    candidates = [n for n in nodes if function_name(n) != "main"]
    if not candidates:
        raise SignatureError("the C/C++ source defines no function (other than main)")
    if len(candidates) > 1:
        called = set().union(*(_called_names(n) for n in candidates))
        roots = [n for n in candidates if function_name(n).split("::")[-1] not in called]
        if len(roots) == 1:
            return _info(roots[0], source, kernel=False)
    return _info(candidates[0], source, kernel=False)


def read_kernel(source: str, name: str | None = None) -> FunctionInfo:
    """The ``__global__`` function of a kernel source (``name``, else the only one).  Raises `SignatureError`."""
    kernels = [n for n in function_nodes(source, grammar="cuda") if _is_global(n)]
    if name is not None:
        kernels = [n for n in kernels if function_name(n) == name]
        if not kernels:
            raise SignatureError(f"no __global__ function named {name!r} in the kernel source")
    if not kernels:
        raise SignatureError("the kernel source defines no __global__ function")
    if len(kernels) > 1:
        names = ", ".join(function_name(n) for n in kernels)
        raise SignatureError(f"the kernel source defines several __global__ functions ({names}); the harness "
                             "launches one kernel, so name it")
    return _info(kernels[0], source, kernel=True)

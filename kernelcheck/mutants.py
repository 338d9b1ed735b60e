"""Mutants of a CUDA kernel: small, realistic bugs a translation check must catch (negative controls).

`make_mutants(kernel_source)` reads the kernel with tree-sitter-cuda (`kernelcheck.signatures.read_kernel`) and its
indexing with `kernelcheck.launch` and returns `Mutant`s of five kinds (`MUTANT_KINDS`), each a one-place edit:

* ``empty_body`` — the body is ``{ }``;
* ``flip_operator`` — the first (and, as a second mutant, the last) arithmetic operator of a computed value:
  ``+``/``-`` and ``*``/``/`` swapped, also in compound assignments (``+=`` -> ``-=``); index arithmetic (inside
  ``[...]`` or computing a thread index) is left alone;
* ``off_by_one`` — the bounds check admits one more element (``i < n`` -> ``i <= n``; ``if (i >= n) return``
  -> ``if (i > n) return``);
* ``drop_bounds_check`` — the ``if`` of the bounds check is removed (its body kept; an early ``return``
  deleted); not made for a loop's condition (the loop would not end);
* ``wrong_index`` — the first array read indexed by a thread index reads elsewhere: the two indexes of a 2-D
  kernel swapped, else the neighbour ``(i + 1)``.

A kind that does not apply to a kernel (no bounds check, no arithmetic) is simply absent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .launch import LaunchError, launch_rule
from .signatures import SignatureError, node_text, read_kernel

__all__ = ["MUTANT_KINDS", "Mutant", "make_mutants"]

MUTANT_KINDS = ("empty_body", "flip_operator", "off_by_one", "drop_bounds_check", "wrong_index")
_FLIPS = {"+": "-", "-": "+", "*": "/", "/": "*", "+=": "-=", "-=": "+=", "*=": "/=", "/=": "*="}


@dataclass(frozen=True)
class Mutant:
    kind: str
    source: str
    description: str


def _edit(source: bytes, start: int, end: int, text: str) -> str:
    return (source[:start] + text.encode("utf-8") + source[end:]).decode("utf-8")


def _line(node: Any) -> int:
    return node.start_point.row + 1


def _walk(node: Any):
    pending = [node]
    while pending:
        n = pending.pop()
        yield n
        pending.extend(reversed(n.children))


def _inside(node: Any, types: tuple[str, ...], stop: Any) -> bool:
    parent = node.parent
    while parent is not None and parent != stop:
        if parent.type in types:
            return True
        parent = parent.parent
    return False


def _mentions_coords(node: Any) -> bool:
    text = node_text(node)
    return any(name in text for name in ("threadIdx", "blockIdx", "blockDim", "gridDim"))


def _flip_sites(body: Any, index_names: set[str]) -> list[tuple[Any, str]]:
    """(operator node, replacement) of arithmetic that computes values (not indexes, not loop control)."""
    sites = []
    for node in _walk(body):
        if node.type == "binary_expression":
            op_node = node.child_by_field_name("operator")
        elif node.type == "assignment_expression":
            op_node = node.child_by_field_name("operator")
        else:
            continue
        op = node_text(op_node)
        if op not in _FLIPS or _inside(node, ("subscript_argument_list", "condition_clause"), body):
            continue
        if node.type == "assignment_expression" and node_text(node.child_by_field_name("left")) in index_names:
            continue  # `i += stride`: loop control, not a computed value
        if _inside(node, ("for_statement",), body) and _in_loop_header(node):
            continue
        if node.type == "binary_expression" and (_mentions_coords(node) or _only_indexes(node, index_names)):
            continue
        sites.append((op_node, _FLIPS[op]))
    return sites


def _in_loop_header(node: Any) -> bool:
    child, parent = node, node.parent
    while parent is not None and parent.type != "for_statement":
        child, parent = parent, parent.parent
    return parent is not None and child != parent.child_by_field_name("body")


def _only_indexes(node: Any, index_names: set[str]) -> bool:
    """An expression of index variables and constants only (``tid * 4 + 1``): index arithmetic."""
    names = {node_text(n) for n in _walk(node) if n.type == "identifier"}
    return bool(names) and names <= index_names


def _bound_comparisons(rule) -> list[tuple[Any, bool]]:
    """(comparison node, is a loop condition) of every bounds check of the launch rule's indexes."""
    found = []
    for vars_ in rule.axes.values():
        for var in vars_:
            for bound, _ in var.bounds:
                comparison = bound.parent
                if comparison is None or comparison.type != "binary_expression":
                    continue
                holder = comparison
                while holder is not None and holder.type not in ("if_statement", "for_statement", "while_statement",
                                                                  "do_statement"):
                    holder = holder.parent
                found.append((comparison, holder is not None and holder.type != "if_statement"))
    return sorted(found, key=lambda item: item[0].start_byte)


def _off_by_one(data: bytes, comparison: Any) -> tuple[str, str] | None:
    op_node = comparison.child_by_field_name("operator")
    op = node_text(op_node)
    if op not in ("<", "<=", ">", ">="):
        return None
    # `i < n` admits one more as `i <= n`; `i >= n` (an early return) admits one more as `i > n`.
    new = {"<": "<=", "<=": "<", ">=": ">", ">": ">="}[op]
    return _edit(data, op_node.start_byte, op_node.end_byte, new), f"line {_line(op_node)}: {op} -> {new}"


def _drop_check(data: bytes, comparison: Any) -> tuple[str, str] | None:
    holder = comparison
    while holder is not None and holder.type != "if_statement":
        holder = holder.parent
    if holder is None or holder.child_by_field_name("alternative") is not None:
        return None
    body = holder.child_by_field_name("consequence")
    inner = body.named_children[0] if body.type == "compound_statement" and len(body.named_children) == 1 else body
    if inner.type == "return_statement":
        return _edit(data, holder.start_byte, holder.end_byte, ";"), f"line {_line(holder)}: early return removed"
    return _edit(data, holder.start_byte, holder.end_byte, node_text(body) if body.type == "compound_statement"
                 else "{ " + node_text(body) + " }"), f"line {_line(holder)}: bounds check removed"


def _wrong_index(data: bytes, body: Any, index_names: list[str]) -> tuple[str, str] | None:
    for node in _walk(body):
        if node.type != "subscript_expression" or not _is_read(node):
            continue
        indices = next((c for c in node.children if c.type == "subscript_argument_list"), None)
        if indices is None:
            continue
        idents = [n for n in _walk(indices) if n.type == "identifier" and node_text(n) in index_names]
        if not idents:
            continue
        if len(index_names) >= 2:
            a, b = index_names[0], index_names[1]
            text = data[indices.start_byte:indices.end_byte].decode("utf-8")
            swapped = "".join(b if tok == a else a if tok == b else tok for tok in _split_identifiers(text))
            if swapped != text:
                return _edit(data, indices.start_byte, indices.end_byte, swapped), \
                    f"line {_line(node)}: {a} and {b} swapped in {node_text(node)}"
        target = idents[0]
        return _edit(data, target.start_byte, target.end_byte, f"({node_text(target)} + 1)"), \
            f"line {_line(node)}: {node_text(target)} -> ({node_text(target)} + 1) in {node_text(node)}"
    return None


def _split_identifiers(text: str) -> list[str]:
    out, current = [], ""
    for ch in text:
        if ch.isalnum() or ch == "_":
            current += ch
        else:
            if current:
                out.append(current)
                current = ""
            out.append(ch)
    if current:
        out.append(current)
    return out


def _is_read(node: Any) -> bool:
    parent = node.parent
    if parent is not None and parent.type == "assignment_expression" and parent.child_by_field_name("left") == node:
        return False
    return not (parent is not None and parent.type == "update_expression")


def make_mutants(kernel_source: str, kernel_name: str | None = None) -> list[Mutant]:
    """The mutants of the kernel (see the module docstring); [] when the kernel cannot be read."""
    try:
        kernel = read_kernel(kernel_source, kernel_name)
        rule = launch_rule(kernel)
    except (SignatureError, LaunchError):
        return []
    data = kernel_source.encode("utf-8")
    body = kernel.body
    out = [Mutant("empty_body", _edit(data, body.start_byte, body.end_byte, "{ }"), "the body emptied")]
    index_names = [v.name for a in ("x", "y", "z") for v in rule.axes.get(a, []) if not v.name.startswith("(")]
    sites = _flip_sites(body, set(index_names))
    for op_node, new in sites[:1] + sites[-1:] if len(sites) > 1 else sites:
        out.append(Mutant("flip_operator", _edit(data, op_node.start_byte, op_node.end_byte, new),
                          f"line {_line(op_node)}: {node_text(op_node)} -> {new}"))
    checks = _bound_comparisons(rule)
    if checks:
        edited = _off_by_one(data, checks[0][0])
        if edited is not None:
            out.append(Mutant("off_by_one", *edited))
        ifs = [c for c, in_loop in checks if not in_loop]
        dropped = _drop_check(data, ifs[0]) if ifs else None
        if dropped is not None:
            out.append(Mutant("drop_bounds_check", *dropped))
    wrong = _wrong_index(data, body, index_names)
    if wrong is not None:
        out.append(Mutant("wrong_index", *wrong))
    return out

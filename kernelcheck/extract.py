"""What a user gets from a model's answer: the kernel (with the `__device__` helpers before it and the host launcher
after it, where the model wrote one) and nothing else — no echoed source, no markers, no trailing text. Every
surface (the batch CLI's `.cu` and report, the language server's edit, the daemon's result, `mot-eval`) calls
`extract_kernel`, and says what came out by its status; C++ is never passed off as CUDA.

| status | meaning | `code` |
|---|---|---|
| `kernel` | a complete `__global__` function came out | the kernel, its helpers and launcher |
| `truncated` | a `__global__` function started, but the answer ended (token limit) before it closed | "" |
| `no_kernel` | no `__global__` function at all (an echo of the source, prose, host code) | "" |

The answer is cut at the first block marker (`###`) and read inside markdown fences where it has any; top-level
items are found by brace depth with strings and comments skipped (`sourcetext.CodeScanner`), since model output
is often not valid C++ and a parser cannot be trusted with it. Whether the kernel is *valid* CUDA, compiles, or
computes what the source computed is for the checks that follow (syntax, compile, differential test).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from kernelcheck.kernel_shape import SERIAL, parallelism
from kernelcheck.sourcetext import CodeScanner, strip_code_fences

KERNEL, TRUNCATED, NO_KERNEL = "kernel", "truncated", "no_kernel"
STATUSES = (KERNEL, TRUNCATED, NO_KERNEL)
MEANINGS = {KERNEL: "a kernel came out", TRUNCATED: "the kernel did not end before the token limit",
            NO_KERNEL: "the answer holds no __global__ function"}


SERIAL_NOTE = "serial: every thread runs the whole C loop (no thread index reaches the work), so it is not parallel"


def describe(status: str, notes=()) -> str:
    """What came out, in words a user reads: the status's meaning, then the extraction's notes."""
    return "; ".join([MEANINGS.get(status, status), *notes])

_MARKER = re.compile(r"^[ \t]*###", re.M)
_GLOBAL_NAME = re.compile(r"__global__\b[^;{}()]*?\b([A-Za-z_]\w*)\s*\(")
_DIRECTIVE = re.compile(r"^[ \t]*#[ \t]*(include|define|pragma)\b.*$", re.M)


@dataclass(frozen=True)
class Extraction:
    status: str  # one of STATUSES
    code: str  # what the user gets ("" unless status is "kernel")
    kernel_name: str | None = None
    notes: tuple[str, ...] = field(default=())

    @property
    def ok(self) -> bool:
        return self.status == KERNEL


@dataclass(frozen=True)
class _Item:
    header: str  # the text from the end of the previous item to the block's `{`
    start: int  # where the header starts
    end: int  # one past the block's `}`

    def code(self, text: str) -> str:
        """The item from the start of the line that holds its qualifier (`__global__`, `__device__`, `template`) or,
        for others, from its header's first line that is not a directive: prose or directives before it stay out."""
        keyword = re.search(r"\b(template|__global__|__device__)\b", self.header)
        if keyword is not None:
            start = self.start + self.header.rfind("\n", 0, keyword.start()) + 1
        else:
            lines = self.header.split("\n")
            skipped = 0
            while skipped < len(lines) - 1 and (not lines[skipped].strip() or lines[skipped].lstrip().startswith("#")):
                skipped += 1
            start = self.start + sum(len(line) + 1 for line in lines[:skipped])
        return text[start:self.end].strip()

    @property
    def kind(self) -> str:
        return block_kind(self.header)


def block_kind(header: str) -> str:
    """What a top-level `{...}` block is, from the text before its `{`: "kernel" (`__global__`), "device"
    (`__device__`), "type" (struct, class, union, enum, namespace), "function" (host code), or "other"."""
    if "__global__" in header:
        return "kernel"
    if "__device__" in header:
        return "device"
    if re.search(r"\b(struct|class|union|enum|namespace)\b", header):
        return "type"
    return "function" if "(" in header and ")" in header else "other"


def clean_answer(answer: str) -> str:
    """The answer inside its markdown fences, cut at the first `###` block marker."""
    text = strip_code_fences(answer) if "```" in answer else answer
    marker = _MARKER.search(text)
    return text[: marker.start()] if marker else text


def _items(text: str) -> tuple[list[_Item], str]:
    """Top-level `{...}` items in order, and the text after the last one (which may hold an unclosed block)."""
    scanner = CodeScanner()
    scanner.feed(text)
    items, previous_end = [], 0
    for open_at, close_at in scanner.closed:
        header_start = max(text.rfind(";", previous_end, open_at), text.rfind("}", previous_end, open_at)) + 1
        header_start = max(header_start, previous_end)
        end = close_at + 1
        if text[end:end + 1] == ";":  # `struct S {...};`
            end += 1
        items.append(_Item(text[header_start:open_at], header_start, end))
        previous_end = end
    return items, text[previous_end:]


def extract_kernel(answer: str) -> Extraction:
    """The kernel a model's answer holds (see the module docstring for the statuses)."""
    text = clean_answer(answer)
    items, tail = _items(text)
    kernel_index = next((i for i, item in enumerate(items) if item.kind == "kernel"), None)
    if kernel_index is None:
        if "__global__" in tail:
            name = _GLOBAL_NAME.search(tail)
            return Extraction(TRUNCATED, "", name.group(1) if name else None, ("raise max_new_tokens",))
        notes = ("the answer holds host code, not a kernel (an echo of the source?)",) \
            if any(item.kind == "function" for item in items) else ()
        return Extraction(NO_KERNEL, "", None, notes)
    kernel = items[kernel_index]
    name_match = _GLOBAL_NAME.search(text, kernel.start)
    name = name_match.group(1) if name_match else None
    parts = [item.code(text) for item in items[:kernel_index] if item.kind == "device"]
    parts.append(kernel.code(text))
    notes = []
    for item in items[kernel_index + 1:]:  # a host launcher the model wrote after the kernel
        if item.kind == "function" and name and re.search(rf"\b{re.escape(name)}\s*<<<", text[item.start:item.end]):
            parts.append(item.code(text))
            notes.append("with the host launcher the model wrote")
            break
    directives = [m.group(0).strip() for m in _DIRECTIVE.finditer(text, 0, kernel.start)]
    code = "\n\n".join(([("\n".join(directives))] if directives else []) + parts) + "\n"
    if parallelism(code) == SERIAL:  # a user must not mistake it for a parallel kernel, even where it is right
        notes.append(SERIAL_NOTE)
    return Extraction(KERNEL, code, name, tuple(notes))

"""Turning translations into one WorkspaceEdit.

Placements (setting `mot.placement`):
    newFile           write the kernels to `<stem>.cu` beside the source file, creating it when missing: a
                      function translated before is replaced where it is (its block, header to end line),
                      other kernels are appended
    belowFunction     insert each kernel below its function (or below the selection)
    replaceSelection  replace the selection (or the whole function) with its kernel

Every text edit names its document's version (the source's, or the open `.cu` file's); a file that is not open
has version null. The edit is built only from complete translations: the caller never passes partial text.
The builder also predicts where each kernel's text lands, so diagnostics can be placed before the editor has
even applied the edit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from daemon import protocol as P
from kernelcheck.candidates import SKIPPED, describe_check
from lsprotocol import types

from ..documents import OpenDocument, TextView, path_to_uri, uri_to_path

HEADER_CHECK_CHARS = 200  # the check's words in a kernel's header comment (hovers and diagnostics say all of it)
HEADER_LEAD = "// MoT: CUDA translation of "  # a kernel block's first line starts so (previous_block finds it)

_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n(?P<body>.*?)\n?```\s*$", re.S)
# C0 controls (but tab and newline), DEL, C1 controls, lone surrogates: a random-weight model emits them, an
# editor buffer chokes on some (Neovim shows NUL as a newline), and no CUDA source contains them.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\ud800-\udfff]")


def clean_kernel(raw: str) -> str:
    """The generated text as it goes into a file: CRLF -> LF, code fences and control characters removed,
    trailing blanks trimmed. "" when nothing is left."""
    text = raw.replace("\r\n", "\n").replace("\r", "\n")
    match = _FENCE.match(text)
    if match:
        text = match.group("body")
    text = _CONTROL.sub("", text)
    lines = [line.rstrip() for line in text.split("\n")]
    while lines and not lines[0].strip():
        lines.pop(0)
    while lines and not lines[-1].strip():
        lines.pop()
    return "\n".join(lines)


def check_words(check: P.Verification, limit: int = 1000) -> str:
    """What the daemon's check of a kernel found, in one line: "verified on 21 generated inputs (CPU)",
    "mismatch: c[0]: expected 3, got 0 (...) on input #1 (...)", "not checked: verification is off"..."""
    return describe_check(check.status, backend=check.backend, inputs=check.inputs, reason=check.reason, limit=limit)


@dataclass(frozen=True)
class Kernel:
    """One finished translation, ready to place."""

    text: str  # cleaned kernel source, no trailing newline
    name: str  # the function's name, or "selection"
    start: tuple[int, int]  # the translated span in the source document (line, code point col)
    end: tuple[int, int]
    primary_expert: str
    check: P.Verification = P.Verification(status=SKIPPED)  # the daemon's verification of this kernel
    notes: tuple[str, ...] = ()  # what the extraction noted (e.g. a serial kernel), said after the check

    @property
    def what(self) -> str:
        """How the header and end line name what was translated: "`saxpy`", or "the selection"."""
        return "the selection" if self.name == "selection" else f"`{self.name}`"

    def header(self, source_name: str) -> str:
        """The comment line above the kernel: its source, its primary expert and what its check found (nothing
        where no check ran)."""
        checked = "" if self.check.status == SKIPPED else f"; {check_words(self.check, HEADER_CHECK_CHARS)}"
        noted = "".join(f"; {note}" for note in self.notes)
        return (
            f"{HEADER_LEAD}{self.what} ({source_name}:{self.start[0] + 1}), "
            f"primary expert {self.primary_expert}{checked}{noted}"
        )

    def footer(self) -> str:
        """The comment line below the kernel: with the header it bounds the block that translating the same
        function again replaces (newFile), so nothing the user wrote around it is touched."""
        return f"// MoT: end of the translation of {self.what}"

    def block(self, source_name: str) -> str:
        return f"{self.header(source_name)}\n{self.text}\n{self.footer()}\n"


@dataclass(frozen=True)
class TargetFile:
    """The file a newFile placement writes to, as it is now."""

    uri: str
    path: Path
    text: str
    version: int | None  # its version when open in the editor
    exists: bool  # open or on disk


@dataclass(frozen=True)
class PlacedKernel:
    """Where a kernel's text will be once the edit is applied (for diagnostics)."""

    uri: str
    kernel: Kernel
    line: int  # 0-based line of the kernel's first line in the edited document


def cuda_path_for(source_path: Path) -> Path:
    return source_path.with_suffix(".cu")


def target_for(source: OpenDocument, open_document: OpenDocument | None) -> TargetFile:
    """The `.cu` file beside `source`: its open document if any, else what is on disk."""
    source_path = source.path
    if source_path is None:
        raise ValueError(f"{source.uri} is not a file: cannot place a .cu file beside it")
    path = cuda_path_for(source_path)
    if open_document is not None:
        return TargetFile(open_document.uri, path, open_document.text, open_document.version, True)
    if path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ValueError(f"cannot read {path}: {e}") from None
        return TargetFile(path_to_uri(path), path, text, None, True)
    return TargetFile(path_to_uri(path), path, "", None, False)


def _separator(existing: str) -> str:
    if not existing or existing.endswith("\n\n"):
        return ""
    return "\n" if existing.endswith("\n") else "\n\n"


def _apply(text: str, edits: list[tuple[int, int, str]]) -> tuple[str, list[int]]:
    """Apply non-overlapping (start, end, new) offset edits; returns the text and each edit's new start offset."""
    order = sorted(range(len(edits)), key=lambda i: edits[i][0])
    out, starts, cursor, shift = [], [0] * len(edits), 0, 0
    for i in order:
        start, end, new = edits[i]
        out.append(text[cursor:start])
        starts[i] = start + shift
        out.append(new)
        shift += len(new) - (end - start)
        cursor = end
    out.append(text[cursor:])
    return "".join(out), starts


def _line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset)


_ANY_HEADER = re.compile(rf"^{re.escape(HEADER_LEAD)}", re.M)


def previous_block(text: str, kernel: Kernel, source_name: str) -> tuple[int, int] | None:
    """The (start, end) offsets of the block an earlier translation of the same function of the same source file
    left in `text`: its header line through its end line. None for a selection (it has no name to match), for a
    block without its end line (written before end lines existed, or edited away: it is left alone) and when there
    is none."""
    if kernel.name == "selection":
        return None
    header = re.compile(rf"^{re.escape(HEADER_LEAD + kernel.what)} \({re.escape(source_name)}:\d+\)[^\n]*\n", re.M)
    footer = re.compile(rf"^{re.escape(kernel.footer())}[ \t]*(?:\n|\Z)", re.M)
    for match in header.finditer(text):
        end = footer.search(text, match.end())
        later = _ANY_HEADER.search(text, match.end())
        if end is not None and (later is None or later.start() > end.start()):
            return match.start(), end.end()
    return None


def build_edit(
    *,
    placement: str,
    source: OpenDocument,
    kernels: list[Kernel],
    target: TargetFile | None,
    document_changes: bool = True,
    create_files: bool = True,
) -> tuple[types.WorkspaceEdit, list[PlacedKernel]]:
    """One WorkspaceEdit placing every kernel. `target` is required for newFile.

    document_changes / create_files: the client's workspaceEdit capabilities. Without documentChanges the edit
    uses `changes` (no versions); without create support the caller must create a missing target file first.
    """
    source_name = source.path.name if source.path is not None else source.uri
    if placement == "newFile":
        if target is None:
            raise ValueError("the newFile placement needs a target file")
        if target.path == source.path and target.version is None:
            target = TargetFile(source.uri, target.path, source.text, source.version, True)
        # A function translated before is replaced in place; the other kernels go, in order, at the end.
        offsets: list[tuple[int, int, str]] = []  # (start, end, new text) in the target
        where: list[tuple[int, int]] = []  # each kernel's (edit, offset of its block in that edit's new text)
        taken: set[tuple[int, int]] = set()
        appended = ""  # the blocks that go at the end, a blank line between them
        for kernel in kernels:
            span = previous_block(target.text, kernel, source_name)
            if span is None or span in taken:
                appended += "\n" if appended else _separator(target.text)
                where.append((-1, len(appended)))  # -1: the appending edit, added last
                appended += kernel.block(source_name)
            else:
                taken.add(span)
                where.append((len(offsets), 0))
                offsets.append((*span, kernel.block(source_name)))
        if appended:
            where = [(len(offsets) if edit < 0 else edit, at) for edit, at in where]
            offsets.append((len(target.text), len(target.text), appended))
        view = TextView(target.text, source.view.encoding)
        edits = [types.TextEdit(range=view.to_range(view.point_at(start), view.point_at(end)), new_text=new)
                 for start, end, new in offsets]
        new_text, starts = _apply(target.text, offsets)
        placed = [PlacedKernel(target.uri, kernel,
                               _line_of(new_text, starts[edit] + at + len(kernel.header(source_name)) + 1))
                  for kernel, (edit, at) in zip(kernels, where)]  # the line after each header
        create = not target.exists and create_files
        return _workspace_edit(target.uri, target.version, edits, document_changes, create=create), placed

    if placement not in ("belowFunction", "replaceSelection"):
        raise ValueError(f"unknown placement {placement!r}")
    view = source.view
    offsets: list[tuple[int, int, str]] = []
    edits: list[types.TextEdit] = []
    bodies: list[int] = []  # offset of the kernel text inside each inserted string
    for kernel in kernels:
        block = kernel.block(source_name).rstrip("\n")
        if placement == "belowFunction":
            at = view.offset(*kernel.end)
            new = "\n\n" + block
            offsets.append((at, at, new))
            edits.append(types.TextEdit(range=view.to_range(kernel.end, kernel.end), new_text=new))
        else:
            new = block
            offsets.append((view.offset(*kernel.start), view.offset(*kernel.end), new))
            edits.append(types.TextEdit(range=view.to_range(kernel.start, kernel.end), new_text=new))
        bodies.append(len(new) - len(block) + len(kernel.header(source_name)) + 1)  # the text after the header
    new_text, starts = _apply(source.text, offsets)
    placed = [
        PlacedKernel(source.uri, kernel, _line_of(new_text, start + body))
        for kernel, start, body in zip(kernels, starts, bodies)
    ]
    return _workspace_edit(source.uri, source.version, edits, document_changes, create=False), placed


def _workspace_edit(
    uri: str, version: int | None, edits: list[types.TextEdit], document_changes: bool, *, create: bool
) -> types.WorkspaceEdit:
    if not document_changes:
        return types.WorkspaceEdit(changes={uri: edits})
    changes: list = []
    if create:
        changes.append(types.CreateFile(uri=uri, options=types.CreateFileOptions(ignore_if_exists=True)))
    changes.append(
        types.TextDocumentEdit(
            text_document=types.OptionalVersionedTextDocumentIdentifier(uri=uri, version=version), edits=edits
        )
    )
    return types.WorkspaceEdit(document_changes=changes)


def ensure_file(uri: str) -> None:
    """Create an empty file for a client that cannot create files through a WorkspaceEdit."""
    path = uri_to_path(uri)
    if path is None:
        raise ValueError(f"{uri} is not a file URI")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(exist_ok=True)

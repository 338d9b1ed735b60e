"""Code actions "Translate to CUDA (MoT)": listing (instant, no model call) and resolving (the translation).

Listing: for an empty range, the innermost function under the cursor (tree-sitter-cpp / -cuda finds its bounds);
for a non-empty selection, the selection itself, plus the function around the selection's start if there is one.
Each action carries `data` (uri, version, span) and no edit. Clients that resolve code actions' edits get the
translation in codeAction/resolve; other clients get a `mot.translate` command with the same data.

Resolving: translate (with progress and cancellation), then check the document is still at the listed version —
if it changed, no edit is returned and the user is told why — and build the edit for the configured placement.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

from kernelcheck.extract import KERNEL, describe
from lsprotocol import types

from ..documents import OpenDocument, Source, outermost_only, uri_key
from .edits import Kernel, build_edit, clean_kernel, ensure_file, target_for
from .host import ServerHost
from .translate import TranslationCancelled, TranslationFailed

log = logging.getLogger(__name__)

TITLE = "Translate to CUDA (MoT)"
KIND = "refactor.rewrite.cuda"
COMMAND_TRANSLATE = "mot.translate"


@dataclass(frozen=True)
class ActionData:
    """What an action (or the mot.translate command) translates. Positions: (line, code point col)."""

    uri: str
    version: int | None
    target: str  # "function" | "selection"
    name: str
    start: tuple[int, int]
    end: tuple[int, int]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["start"], data["end"] = list(self.start), list(self.end)
        return data

    @classmethod
    def from_json(cls, raw: Any) -> "ActionData":
        if not isinstance(raw, dict):
            raise ValueError(f"expected an object, got {raw!r}")
        try:
            start, end = tuple(int(v) for v in raw["start"]), tuple(int(v) for v in raw["end"])
            if len(start) != 2 or len(end) != 2:
                raise ValueError("start and end must be [line, col]")
            version = raw.get("version")
            return cls(
                uri=str(raw["uri"]), version=None if version is None else int(version), target=str(raw["target"]),
                name=str(raw.get("name") or raw["target"]), start=start, end=end,  # type: ignore[arg-type]
            )
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"malformed translation data {raw!r}: {e}") from None


def _kind_requested(only: list[str] | None) -> bool:
    if not only:
        return True
    return any(KIND == kind or KIND.startswith(kind + ".") for kind in only)


def targets_at(ls: ServerHost, document: OpenDocument, range_: types.Range) -> list[ActionData]:
    """The translation targets for a cursor / selection (no model call)."""
    start = document.view.to_point(range_.start)
    end = document.view.to_point(range_.end)
    if end < start:
        start, end = end, start
    targets: list[ActionData] = []
    if start != end and document.view.slice(start, end).strip():
        targets.append(ActionData(document.uri, document.version, "selection", "selection", start, end))
    span = ls.function_at(document, *start)
    if span is not None:
        name = span.name or "function"
        targets.append(
            ActionData(
                document.uri, document.version, "function", name,
                (span.start_line, span.start_col), (span.end_line, span.end_col),
            )
        )
    return targets


def _selection_label(target: ActionData) -> str:
    first = target.start[0]
    last = target.end[0] if target.end[1] > 0 or target.end[0] == first else target.end[0] - 1
    return f"selection (line {first + 1})" if last == first else f"selection (lines {first + 1}-{last + 1})"


def _supports_resolve(ls: ServerHost) -> bool:
    capabilities = ls.client_capabilities
    code_action = capabilities.text_document.code_action if capabilities and capabilities.text_document else None
    if code_action is None or not code_action.data_support or code_action.resolve_support is None:
        return False
    return "edit" in (code_action.resolve_support.properties or [])


def code_actions(ls: ServerHost, params: types.CodeActionParams) -> list[types.CodeAction] | None:
    """textDocument/codeAction: list the translate actions. Pure parsing; never waits for the daemon."""
    if not _kind_requested(params.context.only):
        return None
    document = ls.open_document(params.text_document.uri)
    if document is None:
        return None
    resolve = _supports_resolve(ls)
    actions = []
    for target in targets_at(ls, document, params.range):
        what = _selection_label(target) if target.target == "selection" else f"`{target.name}`"
        action = types.CodeAction(title=f"{TITLE}: {what}", kind=KIND)
        if resolve:
            action.data = target.to_json()
        else:
            action.command = types.Command(title=action.title, command=COMMAND_TRANSLATE, arguments=[target.to_json()])
        actions.append(action)
    return actions or None


async def resolve_code_action(ls: ServerHost, action: types.CodeAction) -> types.CodeAction:
    """codeAction/resolve: translate and attach the edit; on any failure the action comes back without one."""
    try:
        data = ActionData.from_json(action.data)
    except ValueError as e:
        log.warning("cannot resolve code action %r: %s", action.title, e)
        ls.tell(types.MessageType.Error, f"MoT: cannot run “{action.title}”: {e}")
        return action
    edit = await translate_to_edit(ls, data)
    if edit is not None:
        action.edit = edit
    return action


def _document_changed(ls: ServerHost, data: ActionData) -> str | None:
    document = ls.open_document(data.uri)
    name = data.uri.rsplit("/", 1)[-1]
    if document is None:
        return f"{name} was closed"
    if data.version is not None and document.version != data.version:
        return f"{name} changed (version {data.version} → {document.version})"
    return None


async def translate_to_edit(ls: ServerHost, data: ActionData) -> types.WorkspaceEdit | None:
    """Translate one target and build its edit, or tell the user why not and return None."""
    stale = _document_changed(ls, data)
    document = ls.open_document(data.uri)
    if stale is not None or document is None:
        ls.tell(types.MessageType.Warning, f"MoT: {stale}; nothing was translated. Run the action again.")
        return None
    text = document.view.slice(data.start, data.end)
    if not text.strip():
        ls.tell(types.MessageType.Warning, "MoT: there is nothing to translate here.")
        return None
    sources = [Source(data.name, text, data.start, data.end)]
    what = "the selection" if data.target == "selection" else f"`{data.name}`"
    return await _translate_sources(ls, document, sources, f"Translating {what} to CUDA (MoT)", data.version)


async def translate_file_to_edit(ls: ServerHost, uri: str) -> types.WorkspaceEdit | None:
    """Translate every (outermost) function of a document into one edit."""
    document = ls.open_document(uri)
    if document is None:
        ls.tell(types.MessageType.Warning, f"MoT: {uri} is not open as a C, C++ or CUDA document.")
        return None
    spans = outermost_only(ls.functions(document))
    if not spans:
        ls.tell(types.MessageType.Info, f"MoT: no function definitions in {uri.rsplit('/', 1)[-1]}.")
        return None
    sources = [
        Source(span.name or "function", span.text, (span.start_line, span.start_col), (span.end_line, span.end_col))
        for span in spans
    ]
    name = uri.rsplit("/", 1)[-1]
    return await _translate_sources(
        ls, document, sources, f"Translating {len(sources)} functions of {name} to CUDA (MoT)", document.version
    )


async def _translate_sources(
    ls: ServerHost, document: OpenDocument, sources: list[Source], title: str, version: int | None
) -> types.WorkspaceEdit | None:
    settings = ls.settings
    try:
        results = await ls.runner.run(sources, settings, title)
    except TranslationCancelled:
        ls.tell(types.MessageType.Info, "MoT: translation cancelled; nothing was changed.")
        return None
    except TranslationFailed as e:
        ls.tell(types.MessageType.Error, f"MoT: translation failed: {e}")
        return None
    data = ActionData(document.uri, version, "", "", (0, 0), (0, 0))
    stale = _document_changed(ls, data)
    if stale is not None:
        ls.tell(
            types.MessageType.Warning,
            f"MoT: {stale} while translating, so no edit was made (it would not fit any more). Run the action again.",
        )
        return None
    document = ls.open_document(document.uri) or document
    kernels, missing = [], []
    for source, result in zip(sources, results):
        text = clean_kernel(result.kernel) if result.status == KERNEL else ""
        if not text:  # the daemon says what came out instead of a kernel: never pass it off as CUDA
            missing.append(f"{source.name} ({result.status}: {describe(result.status, result.notes)})")
            continue
        kernels.append(Kernel(text, source.name, source.start, source.end, result.primary_expert_name, result.check,
                              tuple(result.notes)))
        ls.remember_translation(document, source, text, result)
    if missing:
        ls.tell(
            types.MessageType.Warning,
            f"MoT: no kernel came out for {', '.join(missing)}; nothing was changed.",
        )
        return None
    placement = settings.placement
    try:
        target = None
        if placement == "newFile":
            path = document.path
            if path is None:
                raise ValueError(f"{document.uri} is not a file on disk; use another mot.placement")
            target = target_for(document, ls.open_document_by_key(str(path.with_suffix(".cu"))))
        capabilities = ls.workspace_edit_capabilities()
        edit, placed = build_edit(
            placement=placement, source=document, kernels=kernels, target=target,
            document_changes=capabilities.document_changes, create_files=capabilities.create_files,
        )
        if target is not None and not target.exists and not capabilities.create_files:
            ensure_file(target.uri)
    except (ValueError, OSError) as e:
        ls.tell(types.MessageType.Error, f"MoT: cannot place the translation: {e}")
        return None
    ls.diagnostics.add(placed, settings.check)
    log.info("translation of %d source(s) from %s ready (%s)", len(kernels), uri_key(document.uri), placement)
    return edit

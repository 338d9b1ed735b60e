"""workspace/executeCommand commands.

    mot.translate       [target]  translate a function / selection and apply the edit (workspace/applyEdit).
                                  target: the `data` of a code action, or {"uri", "range"} / {"uri", "position"}
    mot.translateFile   [uri]     translate every function of a document (one edit, all or nothing)
    mot.daemonStatus    []        show and return the daemon's status
    mot.restartDaemon   []        stop the daemon at the endpoint and start one with the current settings

Each returns a small JSON object saying what happened (editors may ignore it; tests read it).
"""

from __future__ import annotations

import logging
from typing import Any

from daemon import protocol as P
from lsprotocol import types

from ..daemon_link import DaemonDown, LinkState
from .code_actions import ActionData, targets_at, translate_file_to_edit, translate_to_edit
from .host import ServerHost

log = logging.getLogger(__name__)

TRANSLATE = "mot.translate"
TRANSLATE_FILE = "mot.translateFile"
DAEMON_STATUS = "mot.daemonStatus"
RESTART_DAEMON = "mot.restartDaemon"
ALL = (TRANSLATE, TRANSLATE_FILE, DAEMON_STATUS, RESTART_DAEMON)


def _structure(ls: ServerHost, raw: Any, kind: type) -> Any:
    return ls.protocol._converter.structure(raw, kind)


def _target_from_args(ls: ServerHost, args: tuple) -> ActionData:
    if len(args) != 1 or not isinstance(args[0], dict):
        raise ValueError("expects one argument: a code action's data, or {uri, range} or {uri, position}")
    raw = args[0]
    if "start" in raw and "end" in raw:
        return ActionData.from_json(raw)
    uri = raw.get("uri")
    document = ls.open_document(uri) if isinstance(uri, str) else None
    if document is None:
        raise ValueError(f"{uri!r} is not an open C, C++ or CUDA document")
    if "range" in raw:
        range_ = _structure(ls, raw["range"], types.Range)
    elif "position" in raw:
        position = _structure(ls, raw["position"], types.Position)
        range_ = types.Range(start=position, end=position)
    else:
        raise ValueError("give a range or a position")
    targets = targets_at(ls, document, range_)
    if not targets:
        raise ValueError("there is no function at that position (select the code to translate)")
    return targets[0]


async def _apply(ls: ServerHost, edit: types.WorkspaceEdit | None, label: str) -> dict[str, Any]:
    if edit is None:
        return {"applied": False}
    try:
        result = await ls.workspace_apply_edit_async(types.ApplyWorkspaceEditParams(edit=edit, label=label))
    except Exception as e:  # a client without workspace/applyEdit, or one that failed: say so, keep serving
        log.exception("workspace/applyEdit failed")
        ls.tell(types.MessageType.Error, f"MoT: the editor could not apply the translation: {e}")
        return {"applied": False, "reason": str(e)}
    if not result.applied:
        reason = result.failure_reason or "the editor did not say why"
        ls.tell(types.MessageType.Warning, f"MoT: the editor did not apply the translation: {reason}")
        return {"applied": False, "reason": reason}
    return {"applied": True}


async def translate(ls: ServerHost, *args) -> dict[str, Any]:
    try:
        target = _target_from_args(ls, args)
    except ValueError as e:
        ls.tell(types.MessageType.Error, f"MoT: {TRANSLATE} {e}")
        return {"applied": False, "reason": str(e)}
    return await _apply(ls, await translate_to_edit(ls, target), "Translate to CUDA (MoT)")


async def translate_file(ls: ServerHost, *args) -> dict[str, Any]:
    uri = args[0].get("uri") if len(args) == 1 and isinstance(args[0], dict) else (args[0] if args else None)
    if not isinstance(uri, str):
        message = f"{TRANSLATE_FILE} expects one argument: the document's URI"
        ls.tell(types.MessageType.Error, f"MoT: {message}")
        return {"applied": False, "reason": message}
    return await _apply(ls, await translate_file_to_edit(ls, uri), "Translate file to CUDA (MoT)")


def status_summary(ls: ServerHost, status: P.StatusResult | None) -> str:
    link = ls.link
    owner = " (started by mot-lsp)" if link.owns_daemon else ""
    if status is None:
        return f"MoT: {link.describe()}."
    experts = ", ".join(status.expert_names) or "(loading)"
    return (
        f"MoT daemon at {link.endpoint_text()}{owner}: {status.state}, pid {status.pid}, "
        f"preset {status.preset or 'default'}, checkpoint {status.checkpoint or 'none'}, device {status.device}, "
        f"experts {experts}; {status.running} running, {status.queue_depth} queued, "
        f"{status.requests_served} served, up {status.uptime_s:.0f} s."
    )


async def daemon_status(ls: ServerHost, *args) -> dict[str, Any]:
    status = None
    if ls.link.state in (LinkState.READY, LinkState.LOADING):
        try:
            status = await ls.in_quick_thread(ls.link.status)
        except DaemonDown as e:
            log.info("status failed: %s", e)
    text = status_summary(ls, status)
    ls.tell(types.MessageType.Info, text)
    return {
        "state": ls.link.state.value,
        "endpoint": ls.link.endpoint_text(),
        "owned": ls.link.owns_daemon,
        "message": text,
        "status": P.to_builtins(status) if status is not None else None,
    }


async def restart_daemon(ls: ServerHost, *args) -> dict[str, Any]:
    ls.tell(types.MessageType.Info, f"MoT: restarting the daemon at {ls.link.endpoint_text()}…")
    try:
        await ls.link.restart_async()
        await ls.link.wait_ready()
    except DaemonDown as e:
        ls.tell(types.MessageType.Error, f"MoT: restart failed: {e}")
        return {"state": ls.link.state.value, "error": str(e)}
    ls.routes.clear()
    return await daemon_status(ls)

"""Hover on a function: its routing (primary expert, active experts, every expert's probability as a table with
bars) and the last translation of this function, if one is cached, with what the daemon's check of it found.

Fast by construction: routing only (never generation), answered from a small cache when the function's text was
routed before, and not even asked when the daemon is known to be down or loading. The daemon call runs on a worker
thread, so a hover is answered while translations run.
"""

from __future__ import annotations

import asyncio
import logging
import time

from daemon import protocol as P
from daemon.client import DaemonError
from lsprotocol import types

from ..daemon_link import DaemonDown, LinkState
from ..documents import text_hash
from .host import LastTranslation, ServerHost

log = logging.getLogger(__name__)

BAR_WIDTH = 20
MAX_TRANSLATION_LINES = 40


def bar(probability: float, width: int = BAR_WIDTH) -> str:
    filled = max(0, min(width, round(probability * width)))
    return "█" * filled + "░" * (width - filled)


def render_routing(name: str, routing: P.RouteResult) -> str:
    active = set(routing.active_experts)
    lines = [
        f"**MoT routing** for `{name}`: primary **{routing.primary_expert_name}**",
        "",
        "| expert | role | probability | |",
        "|:--|:--|--:|:--|",
    ]
    order = sorted(range(len(routing.expert_names)), key=lambda i: -routing.routing_probs[i])
    for i in order:
        expert = routing.expert_names[i]
        p = routing.routing_probs[i]
        if i == routing.primary_expert:
            role, shown = "primary", f"**{expert}**"
        elif i in active:
            role, shown = "active", expert
        else:
            role, shown = "", expert
        lines.append(f"| {shown} | {role} | {p:.3f} | `{bar(p)}` |")
    if routing.alone_expert is not None:  # the checkpoint ranks the experts apart for decoding alone
        lines += ["", f"Fast mode runs **{routing.expert_names[routing.alone_expert]}** alone."]
    return "\n".join(lines)


def _ago(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s ago"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min ago"
    return f"{seconds / 3600:.1f} h ago"


def render_translation(last: LastTranslation, current_hash: str) -> str:
    lines = last.kernel.split("\n")
    shown = "\n".join(lines[:MAX_TRANSLATION_LINES])
    more = f"\n… {len(lines) - MAX_TRANSLATION_LINES} more lines" if len(lines) > MAX_TRANSLATION_LINES else ""
    note = "" if last.source_hash == current_hash else " — of an earlier version of this function"
    fence = "````" if "```" in shown else "```"
    checked = f"\n\n**Check**: {last.check}" if last.check else ""
    return (
        f"**Last translation** (primary {last.primary_expert}, {last.num_generated_tokens} tokens, "
        f"{_ago(time.time() - last.when)}){note}{checked}\n\n{fence}cuda\n{shown}\n{fence}{more}"
    )


async def hover(ls: ServerHost, params: types.HoverParams) -> types.Hover | None:
    document = ls.open_document(params.text_document.uri)
    if document is None:
        return None
    line, col = document.view.to_point(params.position)
    span = ls.function_at(document, line, col)
    if span is None:
        return None
    name = span.name or "function"
    current_hash = text_hash(span.text)
    parts: list[str] = []
    routing = ls.routes.get(current_hash)
    if routing is None:
        if ls.link.state != LinkState.READY:
            parts.append(f"**MoT routing** unavailable: {ls.link.describe()}.")
        else:
            try:
                loop = asyncio.get_running_loop()
                routing = await loop.run_in_executor(ls.quick_pool, ls.link.route, span.text)
                ls.routes.put(current_hash, routing)
            except DaemonDown as e:
                parts.append(f"**MoT routing** unavailable: {e}")
            except DaemonError as e:
                parts.append(f"**MoT routing** failed: {e.message}")
    if routing is not None:
        parts.append(render_routing(name, routing))
    last = ls.last_translation(document.uri, name)
    if last is not None:
        parts.append(render_translation(last, current_hash))
    return types.Hover(
        contents=types.MarkupContent(kind=types.MarkupKind.Markdown, value="\n\n".join(parts)),
        range=document.view.to_range((span.start_line, span.start_col), (span.end_line, span.end_col)),
    )

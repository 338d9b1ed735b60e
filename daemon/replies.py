"""The engine's replies that say more than an id: refusals with their limits and offending values, timeouts, and
the result of a translation or a routing. Pure functions of protocol messages and numbers (no model, no torch)."""

from __future__ import annotations

import time

from kernelcheck.candidates import SKIPPED, choose
from kernelcheck.kernel_shape import PARALLEL, parallelism
from mot_engine.errors import SourceTooLong

from . import protocol as P
from .engine_config import EngineConfig
from .translation import Translation


def source_problem(request: P.Translate | P.Route, max_source_chars: int) -> P.Error | None:
    """`too_large` for a source over the daemon's limit, `bad_request` for an empty one, else None."""
    source = request.source
    if len(source) > max_source_chars:
        return P.Error(
            id=request.id, code="too_large",
            message=f"the source is {len(source)} characters long; this daemon's limit is "
            f"{max_source_chars} characters",
            details={"limit": max_source_chars, "actual": len(source), "what": "source_chars"},
        )
    if not source.strip():
        return P.Error(id=request.id, code="bad_request", message="the source is empty")
    return None


def new_tokens_over_limit(request: P.Translate, limit: int) -> P.Error | None:
    """`too_large` when the request asks for more tokens than this daemon allows (its --max-new-tokens)."""
    asked = request.options.max_new_tokens
    if asked <= limit:
        return None
    return P.Error(
        id=request.id, code="too_large",
        message=f"max_new_tokens={asked} is above this daemon's limit of {limit}",
        details={"limit": limit, "actual": asked, "what": "max_new_tokens"},
    )


def translations_overloaded(request_id: str, in_flight: int, config: EngineConfig) -> P.Error:
    return P.Error(
        id=request_id, code="overloaded",
        message=(
            f"the daemon is busy: {in_flight} translations are running or queued, the limit is {config.capacity} "
            f"({config.max_batch_size} running + {config.max_queue} queued); retry later"
        ),
        details={"in_flight": in_flight, "limit": config.capacity},
    )


def routes_overloaded(request_id: str, pending: int, limit: int) -> P.Error:
    return P.Error(
        id=request_id, code="overloaded",
        message=f"{pending} route requests are already waiting (limit {limit}); retry later",
        details={"in_flight": pending, "limit": limit},
    )


def timeout_error(request: P.Translate, num_tokens: int, default_timeout_s: float) -> P.Error:
    limit = request.options.timeout_s or default_timeout_s
    return P.Error(
        id=request.id, code="timeout",
        message=f"the translation did not finish within its timeout of {limit:g} s "
        f"({num_tokens} tokens were generated); raise timeout_s or lower max_new_tokens",
        details={"timeout_s": limit, "num_generated_tokens": num_tokens},
    )


def routing_fields(info: dict, expert_names: list[str]) -> dict:
    """The routing part of a translate_result / route_result, from the engine's routing info."""
    primary = int(info["primary_expert"])
    return {
        "primary_expert": primary,
        "primary_expert_name": expert_names[primary],
        "active_experts": [int(e) for e in info["active_experts"]],
        "expert_names": list(expert_names),
        "routing_probs": [float(p) for p in info["all_expert_probs"]],
    }


def alone_expert(info: dict) -> int | None:
    """The expert fast mode runs alone, where it is not the router's primary (the checkpoint's alone head)."""
    alone = info.get("alone_expert")
    return None if alone is None or int(alone) == int(info["primary_expert"]) else int(alone)


def refusal(request: P.Translate, error: Exception) -> P.Error:
    """The reply to a translation the Generator does not take: `too_large` for a source over an expert's context,
    `bad_request` for a request it cannot run, `internal` for anything else."""
    if isinstance(error, SourceTooLong):
        return P.Error(id=request.id, code="too_large", message=str(error),
                       details={"limit": error.limit, "actual": error.actual, "expert": error.expert,
                                "what": "source_tokens"})
    if isinstance(error, ValueError):
        return P.Error(id=request.id, code="bad_request", message=str(error))
    return P.Error(id=request.id, code="internal", message=f"{type(error).__name__}: {error}")


def translate_result(t: Translation, checks: list[P.Verification], *, expert_names: list[str]) -> P.TranslateResult:
    """The final reply of a translation whose candidates all ended: the chosen candidate (kernelcheck.candidates:
    the first verified, else the one whose check got furthest) with its check and every candidate's; timings gain
    the daemon's queue, verification and total."""
    now = time.monotonic()
    chosen = choose([c.status for c in checks], [parallelism(e.code) == PARALLEL for e in t.extractions])
    result, extraction = t.results[chosen], t.extractions[chosen]
    timings = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in result.timings.items()}
    timings["daemon_queue_s"] = round((t.t_admitted or now) - t.t_received, 6)
    if t.kernels and t.t_generated is not None:
        timings["daemon_verify_s"] = round(now - t.t_generated, 6)
    timings["daemon_total_s"] = round(now - t.t_received, 6)
    return P.TranslateResult(
        id=t.request.id, text=result.text, status=extraction.status, kernel=extraction.code,
        answer_prefix=result.answer_prefix, notes=list(extraction.notes), num_prompt_tokens=result.num_prompt_tokens,
        num_generated_tokens=result.num_generated_tokens, finish_reason=result.finish_reason, timings=timings,
        check=checks[chosen] if checks else P.Verification(status=SKIPPED),
        candidates=t.candidates(checks, expert_names), candidate=chosen, **routing_fields(result.routing, expert_names),
    )

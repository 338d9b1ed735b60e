"""The daemon's wire protocol: every message that crosses the socket, typed, in one module.

Why one module: the daemon, its clients (the batch CLI, the language server, scripts) and the tests must agree on
exactly one definition; a client only needs this file and `client.py`, never the engine or torch.

Framing
    A client talks to the daemon over a ZeroMQ DEALER socket; the daemon's socket is a ROUTER. Every message is
    ONE frame holding one msgpack map (msgspec). A request carries `type` (the tag), `v` (PROTOCOL_VERSION) and
    `id` (chosen by the client, unique among its own requests in flight; replies echo it). Ids are scoped to the
    client's connection: two clients may use the same id.

Requests (client -> daemon), `type` tag:
    translate  source + TranslateOptions -> zero or more `partial`, a `checking` when its candidates are verified,
               then `translate_result` or `error`
    route      source -> `route_result` (routing only, no generation)
    status     -> `status_result` (answered at once, even while the model loads or translations run)
    cancel     target_id -> `cancel_result`; the cancelled translation then ends with `error` code "cancelled"
    reload     checkpoint -> `reload_result` once running translations finished and the weights are swapped
    shutdown   -> `shutdown_result`, then the daemon cancels what is in flight and exits

Replies (daemon -> client): partial, checking, translate_result, route_result, status_result, cancel_result, reload_result,
shutdown_result, error, heartbeat (id "": sent to clients with work in flight so that they know the daemon is
alive and the daemon learns when a client has vanished).

Errors are replies, never dropped connections: `error` with a code from ERROR_CODES and a message a person
understands (limits and offending values included). A frame that is not a msgpack map at all gets an `error`
with id "" (the daemon cannot know which request it was).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import Meta, Struct, field

from mot_engine.defaults import CANDIDATES, CANDIDATES_LIMIT, MAX_NEW_TOKENS, MODE, TEMPERATURE, TOP_P, VERIFY

# 2: translate_result says what came out (status, kernel, answer_prefix, notes)
# 3: a translation has candidates and is verified: options `candidates` and `verify`; translate_result gains `check`,
#    `candidates` and `candidate`; the `checking` reply; status_result gains `verifying`
PROTOCOL_VERSION = 3

ErrorCode = Literal["bad_request", "too_large", "overloaded", "cancelled", "timeout", "internal"]
ERROR_CODES: tuple[str, ...] = ("bad_request", "too_large", "overloaded", "cancelled", "timeout", "internal")
# The modes as the wire validates them: a Literal must spell its values, so this repeats mot_engine.defaults.MODES
# (tests/test_defaults.py holds the two equal).
Mode = Literal["fast", "full"]
# Likewise mot_engine.defaults.VERIFY_CHOICES, and kernelcheck.candidates.CHECK_STATUSES (a test holds them equal).
VerifyChoice = Literal["auto", "off"]
CheckStatus = Literal["verified", "mismatch", "compile_error", "syntax_error", "not_verifiable", "unavailable",
                      "skipped"]

# Ceilings of the wire format itself; the daemon's own (configurable, usually lower) limits are in `status_result`.
MAX_ID_LENGTH = 128
MAX_NEW_TOKENS_CEILING = 1 << 16
MAX_TIMEOUT_S = 7 * 24 * 3600.0

RequestId = Annotated[str, Meta(min_length=1, max_length=MAX_ID_LENGTH)]


# ---------------------------------------------------------------------------------------------------- requests


class TranslateOptions(Struct, kw_only=True, frozen=True):
    """How to generate. Defaults (mot_engine.defaults) give deterministic greedy output in the fast mode."""

    mode: Mode = MODE
    max_new_tokens: Annotated[int, Meta(ge=1, le=MAX_NEW_TOKENS_CEILING)] = MAX_NEW_TOKENS
    temperature: Annotated[float, Meta(ge=0.0, le=100.0)] = TEMPERATURE  # 0 = greedy
    top_p: Annotated[float, Meta(gt=0.0, le=1.0)] = TOP_P
    seed: Annotated[int, Meta(ge=0, le=2**63 - 1)] | None = None
    # Seconds from the daemon receiving the request to its end, queueing included; None: the daemon's default.
    timeout_s: Annotated[float, Meta(gt=0.0, le=MAX_TIMEOUT_S)] | None = None
    stream: bool = True  # send `partial` replies as text is generated (and `checking` when the check starts)
    ignore_eos: bool = False  # generate exactly max_new_tokens (benchmarks)
    # Candidates to choose from: the first decodes with the options above (greedy by default), the others sample
    # (mot_engine.defaults.CANDIDATE_TEMPERATURE, their own seeds). Only where they are verified: with no check to
    # choose by, a translation generates its first candidate alone.
    candidates: Annotated[int, Meta(ge=1, le=CANDIDATES_LIMIT)] = CANDIDATES
    # "auto": verify the candidates' kernels where the daemon has a C++ compiler (kernelcheck.verify); "off": never.
    verify: VerifyChoice = VERIFY


class _Request(Struct, tag_field="type", kw_only=True, frozen=True):
    id: RequestId
    v: int = PROTOCOL_VERSION


class Translate(_Request, tag="translate"):
    source: str
    options: TranslateOptions = field(default_factory=TranslateOptions)


class Route(_Request, tag="route"):
    source: str


class Status(_Request, tag="status"):
    pass


class Cancel(_Request, tag="cancel"):
    target_id: RequestId


class Reload(_Request, tag="reload"):
    checkpoint: str | None = None  # None: re-read the daemon's current checkpoint


class Shutdown(_Request, tag="shutdown"):
    pass


Request = Union[Translate, Route, Status, Cancel, Reload, Shutdown]
REQUEST_TYPES: tuple[str, ...] = ("translate", "route", "status", "cancel", "reload", "shutdown")


# ---------------------------------------------------------------------------------------------------- replies


class _Reply(Struct, tag_field="type", kw_only=True):
    id: str
    v: int = PROTOCOL_VERSION


class Partial(_Reply, tag="partial"):
    """A piece of generated text. `index` counts 0, 1, 2... per request: a gap means a piece was lost (a client
    that does not read its socket); the final `translate_result.text` is always complete."""

    index: int
    text: str
    num_generated_tokens: int


class Checking(_Reply, tag="checking"):
    """The translation's candidates are generated and their kernels are being verified (sent when streaming)."""

    candidates: int  # candidates generated
    kernels: int  # distinct kernels among them being checked


class Verification(Struct, kw_only=True, frozen=True):
    """What the check of a kernel found (kernelcheck.verify's verdict, in brief). `status`: a kernelcheck verdict
    status, or "skipped" (no check ran: no kernel came out, verification is off). "verified" only where
    kernelcheck.verify said so for this very kernel."""

    status: CheckStatus
    reason: str = ""
    backend: str | None = None  # "cpu" | "gpu" where the kernel was built or run
    inputs: int = 0  # inputs compared
    mismatch: str | None = None  # the first mismatch ("y[3]: expected 1.5, got 0 (...)"), where there is one


class Candidate(Struct, kw_only=True, frozen=True):
    """One candidate of a translation, in the order they were made and checked."""

    index: int  # 0: decoded with the request's own options (greedy by default); then each other expert's; then sampled
    temperature: float  # 0: greedy
    top_p: float
    seed: int | None
    status: str  # what came out of its answer (kernelcheck.extract): "kernel", "truncated", "no_kernel"
    check: CheckStatus
    reason: str = ""  # the check's reason, short
    num_generated_tokens: int = 0
    primary: str = ""  # the expert that wrote it (mot_engine.decoding.candidates: each active expert in turn)


class TranslateResult(_Reply, tag="translate_result"):
    """`text` is what the model generated for the delivered candidate (`candidate`; the partials stream candidate
    0's text, so they join to `text` when candidate 0 is delivered); `answer_prefix` the start of the answer its
    prompt wrote (the kernel's head). `status` says what came out of the answer (kernelcheck.extract): "kernel",
    "truncated" or "no_kernel"; `kernel` is what a user gets — the kernel with its helpers and launcher — and is
    empty unless the status is "kernel". `check` is what the verification of that kernel found; `candidates` every
    candidate with its sampling, what came out and its check (kernelcheck.candidates: the first verified wins,
    else the one whose check got furthest)."""

    text: str
    status: str
    kernel: str
    primary_expert: int
    primary_expert_name: str
    active_experts: list[int]
    expert_names: list[str]
    routing_probs: list[float]  # softmax of the router's scores, one per expert (expert_names order)
    num_prompt_tokens: int
    num_generated_tokens: int
    finish_reason: str  # "stop" (the answer's end) | "eos" | "length"
    timings: dict[str, float | None] = field(default_factory=dict)
    answer_prefix: str = ""
    notes: list[str] = field(default_factory=list)
    check: Verification = field(default_factory=lambda: Verification(status="skipped"))
    candidates: list[Candidate] = field(default_factory=list)
    candidate: int = 0  # the index of the delivered candidate


class RouteResult(_Reply, tag="route_result"):
    primary_expert: int
    primary_expert_name: str
    active_experts: list[int]
    expert_names: list[str]
    routing_probs: list[float]
    alone_expert: int | None = None  # the expert fast mode runs alone (the router's alone head), where not the primary


class StatusResult(_Reply, tag="status_result"):
    state: Literal["loading", "ready", "reloading", "failed", "stopping"]
    protocol_version: int
    pid: int
    uptime_s: float
    preset: str | None
    checkpoint: str | None
    device: str | None
    dtype: str | None
    expert_names: list[str]
    expert_ids: list[str]
    encoder: str | None
    max_batch_size: int
    max_queue: int
    queue_depth: int  # translations accepted but not yet decoding
    running: int  # translations decoding now
    steps: int  # decoding steps since start
    requests_served: int
    device_memory: dict[str, Any]
    limits: dict[str, int | float]
    error: str | None = None  # why the state is "failed"
    verifying: int = 0  # translations whose candidates are being verified
    verification: str = ""  # whether this daemon verifies kernels ("on: ..." or why not)


class CancelResult(_Reply, tag="cancel_result"):
    target_id: str
    found: bool  # False: no such request of this client is in flight (unknown or already finished)


class ReloadResult(_Reply, tag="reload_result"):
    checkpoint: str | None
    took_s: float


class ShutdownResult(_Reply, tag="shutdown_result"):
    pass


class Error(_Reply, tag="error"):
    code: ErrorCode
    message: str
    details: dict[str, Any] = field(default_factory=dict)


class Heartbeat(_Reply, tag="heartbeat"):
    pass


Reply = Union[
    Partial, Checking, TranslateResult, RouteResult, StatusResult, CancelResult, ReloadResult, ShutdownResult, Error,
    Heartbeat,
]


# ---------------------------------------------------------------------------------------------------- codec


class ProtocolError(ValueError):
    """A frame that is not a valid request. `request_id` is the id it carried ("" when unreadable)."""

    def __init__(self, message: str, *, request_id: str = "", code: str = "bad_request"):
        super().__init__(message)
        self.request_id = request_id
        self.code = code

    def to_reply(self) -> Error:
        return Error(id=self.request_id, code=self.code, message=str(self))


class _Header(Struct):
    """What is read first from any frame: enough to check the version and to address an error reply."""

    v: Any = None
    type: Any = None
    id: Any = None


_encoder = msgspec.msgpack.Encoder()
_header_decoder = msgspec.msgpack.Decoder(_Header)
_request_decoder = msgspec.msgpack.Decoder(Request)
_reply_decoder = msgspec.msgpack.Decoder(Reply)


def encode(message: Request | Reply) -> bytes:
    return _encoder.encode(message)


def _safe_id(value: Any) -> str:
    return value if isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH else ""


def decode_request(frame: bytes | memoryview) -> Request:
    """Decode and validate one request frame; raises ProtocolError (never anything else) for a bad frame.

    The version is checked before the fields, so a client of another version is told "wrong version" rather than
    a confusing field error.
    """
    try:
        header = _header_decoder.decode(frame)
    except msgspec.MsgspecError as e:
        raise ProtocolError(f"the frame is not a msgpack map of a request ({e})") from None
    request_id = _safe_id(header.id)
    if header.v != PROTOCOL_VERSION:
        raise ProtocolError(
            f"protocol version {header.v!r} is not supported: this daemon speaks version {PROTOCOL_VERSION}",
            request_id=request_id,
        )
    if header.type not in REQUEST_TYPES:
        raise ProtocolError(
            f"unknown request type {header.type!r}; expected one of {', '.join(REQUEST_TYPES)}", request_id=request_id
        )
    try:
        return _request_decoder.decode(frame)
    except msgspec.MsgspecError as e:
        raise ProtocolError(f"invalid {header.type} request: {e}", request_id=request_id) from None


def decode_reply(frame: bytes | memoryview) -> Reply:
    """Decode one reply frame (client side); raises ProtocolError for a frame this client cannot read."""
    try:
        header = _header_decoder.decode(frame)
    except msgspec.MsgspecError as e:
        raise ProtocolError(f"the daemon sent a frame that is not a msgpack map ({e})") from None
    if header.v != PROTOCOL_VERSION:
        raise ProtocolError(
            f"the daemon speaks protocol version {header.v!r}, this client version {PROTOCOL_VERSION}",
            request_id=_safe_id(header.id),
        )
    try:
        return _reply_decoder.decode(frame)
    except msgspec.MsgspecError as e:
        raise ProtocolError(f"invalid reply from the daemon: {e}", request_id=_safe_id(header.id)) from None


def to_builtins(message: Struct) -> dict:
    """A plain dict of a message (for JSON reports and printing)."""
    return msgspec.to_builtins(message)

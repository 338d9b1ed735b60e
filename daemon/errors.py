"""The exceptions of the daemon's clients: one DaemonError subclass per protocol error code (an `error` reply), and
DaemonUnavailable / DaemonAuthError for a daemon that cannot be reached. Torch-free, socket-free."""

from __future__ import annotations

from . import protocol as P


class DaemonError(Exception):
    """The daemon answered with an error reply. `code` is one of protocol.ERROR_CODES."""

    code = "internal"

    def __init__(self, message: str, *, request_id: str = "", details: dict | None = None):
        super().__init__(message)
        self.message = message
        self.request_id = request_id
        self.details = details or {}


class BadRequest(DaemonError):
    code = "bad_request"


class TooLarge(DaemonError):
    code = "too_large"


class Overloaded(DaemonError):
    code = "overloaded"


class Cancelled(DaemonError):
    code = "cancelled"


class RequestTimeout(DaemonError):
    code = "timeout"


class InternalError(DaemonError):
    code = "internal"


ERRORS_BY_CODE: dict[str, type[DaemonError]] = {
    cls.code: cls for cls in (BadRequest, TooLarge, Overloaded, Cancelled, RequestTimeout, InternalError)
}


class DaemonUnavailable(ConnectionError):
    """No daemon answers at the endpoint, the connection was lost, or it stayed silent too long."""


class DaemonAuthError(DaemonUnavailable):
    """The daemon rejected this client's CURVE key (or the server key is wrong)."""


def error_from_reply(reply: P.Error) -> DaemonError:
    cls = ERRORS_BY_CODE.get(reply.code, InternalError)
    return cls(f"{reply.code}: {reply.message}", request_id=reply.id, details=dict(reply.details))

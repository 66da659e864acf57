"""The one error hierarchy: everything the exchange refuses, with a stable code.

A ``Refused`` carries what a client acts on (``code``), what a person reads (the message),
where the input was at fault (``path``, a JSON path) and when to retry (``retry_after_s``).
Its class says what kind of refusal it is; the core never names a transport's status. The
edges map the class to an HTTP status (``exchange.http.STATUS``) or to a WebSocket
``error`` message in one place each.
"""

from __future__ import annotations


class Refused(Exception):
    """A request refused with a stable ``code``; raised at the edges, returned as a value by
    the pure core (``lifecycle.apply_event``)."""

    def __init__(self, code: str, message: str, path: str | None = None, *, retry_after_s: int | None = None,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.code, self.path, self.retry_after_s = code, path, retry_after_s
        self.headers = headers  # extra response headers an HTTP edge adds (WWW-Authenticate)

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.path!r})"


class BadRequest(Refused):
    """The request is malformed outside its body (a header, the framing)."""


class Unauthenticated(Refused):
    """No key, or an unknown one."""


class Forbidden(Refused):
    """The key is known but its role may not do this."""


class NotFound(Refused):
    """No such thing visible to this caller (another tenant's ids look the same as none)."""


class Conflict(Refused):
    """The request clashes with the state: an idempotency key reused with another body, a
    call already finished, a reference already refunded."""


class TooLarge(Refused):
    """The body is over the size limit."""


class Invalid(Refused):
    """The input is well formed but not acceptable (a field's value, a number, a limit)."""


class RateLimited(Refused):
    """Out of tokens: retry after ``retry_after_s``."""


class Unavailable(Refused):
    """The exchange cannot take this now (draining, the ledger store down): retry."""


__all__ = ["Refused", "BadRequest", "Unauthenticated", "Forbidden", "NotFound", "Conflict", "TooLarge", "Invalid",
           "RateLimited", "Unavailable"]

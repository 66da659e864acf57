"""Control characters in a URL, refused before any handler runs.

Bodies are checked at decode (``messages``); what a URL carries (path parameters such as a
call id or a consent token, query parameters) is checked here, once for every endpoint: a C0
control character (NUL included), raw or percent-encoded, is ``422 invalid_message`` with the
JSON path of the parameter (``$.call_id``, ``$.from``). Without it such an id reached the store
(PostgreSQL refuses NUL in text: a 500). Two regex searches per request; the parameter's name is
looked up only for a refused one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from urllib.parse import parse_qsl

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Receive, Scope, Send

from .http import error_response

C0 = re.compile(r"[\x00-\x1f]")
C0_QUERY = re.compile(rb"%[01][0-9a-fA-F]|[\x00-\x1f]")


class UrlGuard:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = ()) -> None:
        self.app, self.routes = app, routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and (C0.search(scope["path"]) or C0_QUERY.search(scope["query_string"])):
            where = self._where(scope)
            await error_response(422, "invalid_message", "control characters are not allowed in a URL", where)(scope, receive, send)
            return
        await self.app(scope, receive, send)

    def _where(self, scope: Scope) -> str:
        """The JSON path of the first parameter holding a control character ("$": the path itself)."""
        for name, value in parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True):
            if C0.search(name):
                return "$"
            if C0.search(value):
                return f"$.{name}"
        for route in self.routes:
            match, child = route.matches(scope)
            if match is not Match.NONE:
                for name, value in child.get("path_params", {}).items():
                    if isinstance(value, str) and C0.search(value):
                        return f"$.{name}"
        return "$"

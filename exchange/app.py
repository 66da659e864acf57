"""The Starlette application: one app, one port, every edge; one lifespan builds the state."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.routing import Route, WebSocketRoute

from . import audit_api, compliance_api, dashboard, events_api, http, pings_api, privacy_api, reports_api, webhooks_api
from .callpath import CallPath
from .gateway import buyer_socket, publisher_socket
from .linkserver import LinkServer
from .nodes import NodeRefused
from .errors import Refused
from .openapi import openapi
from .service import Exchange
from .settings import Settings
from .urlguard import UrlGuard


def build_app(settings: Settings, exchange: Exchange | None = None) -> CallPath:
    """The Starlette app behind ``CallPath`` (which serves calls and events itself)."""
    ex = exchange or Exchange(settings)
    closing: list[CallPath] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        link = None
        if ex.node is not None:  # a node of a market listens for its edges' calls (exchange.nodelink)
            link = ex.link_server = LinkServer(ex, closing[0])
            try:
                ex.node.announce_link(await link.start(settings.host, settings.link_port))
            except OSError as exc:
                raise NodeRefused(f"node {ex.node.id!r}: cannot listen for its edges on {settings.host}:{settings.link_port} "
                                  f"(EXCHANGE_LINK_PORT): {exc}") from exc
        try:
            await ex.start()
            try:
                yield
            finally:
                await ex.stop()
        finally:
            if link is not None:
                await link.stop()
            for path in closing:  # an edge's pool to its seller
                if path.forward is not None:
                    await path.forward.close()

    routes = [
        Route("/healthz", http.healthz),
        Route("/readyz", http.readyz),
        Route("/metrics", http.metrics),
        Route("/openapi.json", openapi),
        Route("/", dashboard.home),
        Route("/dashboard", dashboard.page),
        Route("/v1/dashboard/stream", dashboard.stream),
        Route("/v1/accounts", http.create_account, methods=["POST"]),
        Route("/v1/accounts/{account_id}/deposits", http.create_deposit, methods=["POST"]),
        Route("/v1/accounts/{account_id}/payouts", http.create_payout, methods=["POST"]),
        Route("/v1/accounts/{account_id}/balance", http.get_balance),
        Route("/v1/accounts/{account_id}/statement", http.get_statement),
        Route("/v1/calls", http.post_call, methods=["POST"]),
        Route("/v1/calls", reports_api.list_calls, methods=["GET"]),
        Route("/v1/calls/{call_id}", reports_api.get_call),
        Route("/v1/calls/{call_id}/auction", reports_api.get_auction),
        Route("/v1/calls/{call_id}/events", http.post_event, methods=["POST"]),
        Route("/v1/calls/{call_id}/refund", http.post_refund, methods=["POST"]),
        Route("/v1/audit", audit_api.get_audit),
        Route("/v1/reports", reports_api.get_reports),
        Route("/v1/events", events_api.get_events),
        Route("/v1/webhooks", webhooks_api.post_webhook, methods=["POST"]),
        Route("/v1/webhooks", webhooks_api.get_webhooks, methods=["GET"]),
        Route("/v1/webhooks/{webhook_id}", webhooks_api.delete_webhook, methods=["DELETE"]),
        Route("/v1/webhooks/{webhook_id}/deliveries", webhooks_api.get_deliveries),
        Route("/v1/pings", pings_api.get_pings),
        Route("/v1/campaigns", pings_api.post_campaign, methods=["POST"]),
        Route("/v1/suppressions", http.post_suppression, methods=["POST"]),
        Route("/v1/privacy/erasures", privacy_api.post_erasure, methods=["POST"]),
        Route("/v1/privacy/holds", privacy_api.post_hold, methods=["POST"]),
        Route("/v1/privacy/holds", privacy_api.get_holds, methods=["GET"]),
        Route("/v1/privacy/holds/{number_hash}", privacy_api.delete_hold, methods=["DELETE"]),
        Route("/v1/privacy/key-rotations", privacy_api.post_rotation, methods=["POST"]),
        Route("/v1/dnc/national", compliance_api.post_national, methods=["POST"]),
        Route("/v1/dnc/state/{state}", compliance_api.post_state, methods=["POST"]),
        Route("/v1/consents", compliance_api.post_consent, methods=["POST"]),
        Route("/v1/consents/{token}/revoke", compliance_api.post_revoke, methods=["POST"]),
        WebSocketRoute("/v1/buyers/ws", buyer_socket),
        WebSocketRoute("/v1/publishers/ws", publisher_socket),
    ]
    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        middleware=[Middleware(UrlGuard, routes=routes)],  # control characters in a URL: 422 before any handler
        exception_handlers={
            Refused: http.on_refused,
            HTTPException: http.on_starlette_http,
            ClientDisconnect: http.on_disconnect,
            Exception: http.on_crash,
        },
    )
    app.state.exchange = ex
    path = CallPath(app, ex)
    closing.append(path)
    return path

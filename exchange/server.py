"""Runs the app on uvicorn: uvloop, httptools and the websockets sans-I/O implementation."""

from __future__ import annotations

import json
import logging
import sys

import uvicorn

from .app import build_app
from .service import Exchange
from .settings import Settings


class JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if not msg.startswith("{"):
            msg = json.dumps({"event": msg})
        out = json.loads(msg)
        out = {"level": record.levelname.lower(), "logger": record.name, **out}
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out)


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonLines())
    root = logging.getLogger("exchange")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def uvicorn_config(app: object, settings: Settings, **extra: object) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="websockets-sansio",
        ws_max_size=settings.max_frame_bytes,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        lifespan="on",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=10,
        **extra,
    )


def serve(settings: Settings) -> None:
    configure_logging(settings.log_level)
    exchange = Exchange(settings)
    if settings.admin_key is None:
        print(f"operator key (set EXCHANGE_ADMIN_KEY to choose one): {exchange.admin_key}", flush=True)
    app = build_app(settings, exchange)
    print(f"exchange listening on http://{settings.host}:{settings.port}", flush=True)
    uvicorn.Server(uvicorn_config(app, settings)).run()

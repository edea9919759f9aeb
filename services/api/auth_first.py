"""Authenticate before any body is read (pure ASGI): FastAPI parses a JSON body before it runs a
route's dependencies, so the key check cannot wait for the route.

Every ``/v1`` request (but ``OPEN_PATHS``) needs a live API key, which is handed on to the route in ``request.state``;
``/metrics`` needs the metrics token or an unscoped key when the API listens beyond loopback.
"""

from __future__ import annotations

import secrets

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from services.api.deps import KEY_STATE, authenticate, require_unscoped
from services.api.errors import error_response
from services.api.state import AppState
from shared.db import DatabaseUnavailable
from shared.errors import ApiError

API_PREFIX = "/v1/"
METRICS_PATH = "/metrics"
# /v1 paths served without a key: the error catalogue (routes/errors.py says why).
OPEN_PATHS = frozenset({"/v1/errors"})


class AuthFirst:
    def __init__(self, app: ASGIApp, *, protect_metrics: bool, metrics_token: str | None) -> None:
        self.app = app
        self.protect_metrics = protect_metrics
        self.metrics_token = metrics_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        metrics = self.protect_metrics and path == METRICS_PATH
        protected = path.startswith(API_PREFIX) and path not in OPEN_PATHS
        if scope["type"] != "http" or not (protected or metrics):
            await self.app(scope, receive, send)
            return
        state: AppState = scope["app"].state.kb
        headers = Headers(scope=scope)
        authorization = headers.get("authorization", "")
        try:
            if metrics:
                await self._admit_to_metrics(state, authorization)
            else:
                scope.setdefault("state", {})[KEY_STATE] = await authenticate(state.db, authorization)
        except (ApiError, DatabaseUnavailable) as exc:
            response = error_response(exc)
            if _has_body(headers):
                # The body stays unread: close rather than drain whatever the client still sends.
                response.headers["Connection"] = "close"
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _admit_to_metrics(self, state: AppState, authorization: str) -> None:
        scheme, _, token = authorization.partition(" ")
        if (
            self.metrics_token is not None
            and scheme.lower() == "bearer"
            and secrets.compare_digest(token.strip().encode(), self.metrics_token.encode())
        ):
            return
        require_unscoped(await authenticate(state.db, authorization))


def _has_body(headers: Headers) -> bool:
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers

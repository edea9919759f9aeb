"""Prometheus registry per process plus a request-metrics/request-id middleware for FastAPI."""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable

import structlog
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest


class HttpMetrics:
    """``kbingest_http_requests_total`` and ``kbingest_http_request_duration_seconds``."""

    def __init__(self, registry: CollectorRegistry, service: str) -> None:
        self.service = service
        self.requests = Counter(
            "kbingest_http_requests_total",
            "HTTP requests served",
            ["service", "method", "route", "status"],
            registry=registry,
        )
        self.duration = Histogram(
            "kbingest_http_request_duration_seconds",
            "HTTP request duration",
            ["service", "method", "route"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        )


def _route_template(request: Request) -> str:
    """The matched route's template (bounded label values), not the raw path."""
    route = request.scope.get("route")
    return str(getattr(route, "path", "unmatched"))


def install_http_observability(app: FastAPI, registry: CollectorRegistry, service: str) -> HttpMetrics:
    """Request ids (``X-Request-Id``), request metrics and ``GET /metrics``."""
    metrics = HttpMetrics(registry, service)

    @app.middleware("http")
    async def _observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        request_id = request.headers.get("x-request-id") or uuid.uuid4().hex
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            response.headers["X-Request-Id"] = request_id
            return response
        finally:
            route = _route_template(request)
            metrics.requests.labels(service, request.method, route, str(status)).inc()
            metrics.duration.labels(service, request.method, route).observe(time.perf_counter() - started)
            structlog.contextvars.unbind_contextvars("request_id")

    @app.get("/metrics", include_in_schema=False)
    async def _metrics() -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    return metrics

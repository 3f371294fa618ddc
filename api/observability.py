"""What the API tells operators about each request: a request id (X-Request-ID, in and
out), Prometheus metrics by route template, a structured access-log line, and a row in the
request log. Installed on the app by `install_observability`."""

import logging
import re
import time
from datetime import datetime
from uuid import uuid4

import structlog
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.process_collector import ProcessCollector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.request_log import RequestLogWriter
from schemas.tables import utcnow

ACCESS_LOGGER = "keel.access"
log = structlog.get_logger(ACCESS_LOGGER)

# A caller's own request id is kept when it is a plain token; anything else is replaced.
_CALLER_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Probes and scrapes: counted in the metrics, but neither request-log rows nor info lines.
OPERATIONS_ROUTES = frozenset({"/healthz", "/readyz", "/metrics"})
# Requests no route matched share one label, so scanners cannot blow up the metrics.
UNMATCHED_ROUTE = "unmatched"
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ApiMetrics:
    """The API's Prometheus metrics, in a registry of the app's own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "keel_http_requests",
            "API requests by method, route template and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "keel_http_request_duration_seconds",
            "API request latency by method and route template.",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tasks_started = Counter(
            "keel_tasks_started",
            "Agent tasks started through the API, by agent.",
            ["agent"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        """The metrics in Prometheus' text format."""
        return generate_latest(self.registry)


def identify_caller(request: Request, user_id: str) -> None:
    """Tag this request's log lines and request-log row with the authenticated user."""
    request.state.user_id = user_id
    structlog.contextvars.bind_contextvars(user_id=user_id)


class ObservabilityMiddleware:
    """Pure ASGI (no extra task per request, streaming responses untouched)."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics, request_log: RequestLogWriter) -> None:
        self.app = app
        self._metrics = metrics
        self._request_log = request_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = _request_id(scope)
        id_bytes = request_id.encode()
        status = 500  # what the server answers if the app raises before responding

        async def send_with_request_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), (b"x-request-id", id_bytes)]
            await send(message)

        started_at, started = utcnow(), time.perf_counter()
        with structlog.contextvars.bound_contextvars(request_id=request_id):
            try:
                await self.app(scope, receive, send_with_request_id)
            finally:
                seconds = time.perf_counter() - started
                self._record(scope, request_id, status, started_at, seconds)
                structlog.contextvars.unbind_contextvars("user_id")

    def _record(
        self, scope: Scope, request_id: str, status: int, started_at: datetime, seconds: float
    ) -> None:
        route = scope.get("route")
        template: str = getattr(route, "path", UNMATCHED_ROUTE)
        method: str = scope["method"]
        self._metrics.requests.labels(method, template, str(status)).inc()
        self._metrics.latency.labels(method, template).observe(seconds)
        user_id = scope.get("state", {}).get("user_id")
        latency_ms = round(seconds * 1000, 3)
        operations = template in OPERATIONS_ROUTES
        level = logging.DEBUG if operations else logging.INFO
        if logging.getLogger(ACCESS_LOGGER).isEnabledFor(level):  # render only lines kept
            log.log(
                level,
                "request",
                method=method,
                route=template,
                status=status,
                latency_ms=latency_ms,
                user_id=user_id,
            )
        if not operations:
            self._request_log.add(
                {
                    "created_at": started_at,
                    "request_id": request_id,
                    "user_id": user_id,
                    "method": method,
                    "route": None if template == UNMATCHED_ROUTE else template,
                    "status": status,
                    "latency_ms": latency_ms,
                }
            )


def _request_id(scope: Scope) -> str:
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            candidate = value.decode("latin-1")
            if _CALLER_REQUEST_ID.fullmatch(candidate):
                return candidate
    return uuid4().hex


def install_observability(app: FastAPI) -> None:
    """Metrics, request ids, access and request logs on every request. The request log's
    writer is `app.state.request_log`: the lifespan starts it and closes it (flushing)."""
    app.state.metrics = ApiMetrics()
    app.state.request_log = RequestLogWriter()
    app.add_middleware(
        ObservabilityMiddleware, metrics=app.state.metrics, request_log=app.state.request_log
    )

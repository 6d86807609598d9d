"""
The ``--metrics-listen`` endpoint: ``GET /metrics`` (the Prometheus
exposition of one :class:`~metagateway.observability.metrics.Metrics`),
and with a status, ``GET /status`` and ``GET /status.json``
(:mod:`metagateway.observability.status`).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.web.http import Request
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from metagateway.errors import GatewayError, error_response
from metagateway.observability.exposition import CONTENT_TYPE
from metagateway.observability.metrics import Metrics
from metagateway.observability.status import GatewayStatus, status_html, status_json


class MetricsResource(Resource):
    """
    ``GET /metrics``: the exposition of one :class:`Metrics`; with a
    status, ``GET /status`` and ``GET /status.json`` too
    (:mod:`metagateway.observability.status`); anything else is a JSON
    ``404``.

    :param metrics: what to expose.
    :param status: what the status page shows, if served.
    """

    isLeaf = True

    def __init__(
        self, metrics: Metrics, status: Optional[GatewayStatus] = None
    ) -> None:
        super().__init__()
        self.metrics = metrics
        self.status = status

    def render(self, request: IRequest) -> bytes:
        """
        Answer a scrape, or a look at the status.
        """
        path = request.path
        if request.method not in (b"GET", b"HEAD"):
            path = b""
        if path == b"/metrics":
            body = self.metrics.exposition()
            request.setHeader(b"Content-Type", CONTENT_TYPE)
            request.setHeader(b"Content-Length", b"%d" % (len(body),))
            return body
        if self.status is not None:
            if path == b"/status.json":
                return status_json(self.status, request)
            if path in (b"/status", b"/status/"):
                return status_html(self.status, request)
        return error_response(
            request, GatewayError(404, "NOT_FOUND", "Route not handled", "CORE")
        )


class MetricsSite(Site):
    """
    The ``Site`` on ``--metrics-listen``: scrapes are not access-logged.

    :param status: what ``/status`` shows, if served.
    """

    def __init__(
        self, metrics: Metrics, status: Optional[GatewayStatus] = None, **kwargs: Any
    ) -> None:
        super().__init__(MetricsResource(metrics, status), **kwargs)

    def log(self, request: Request) -> None:
        """
        Log nothing: scrapes would drown the access log.
        """

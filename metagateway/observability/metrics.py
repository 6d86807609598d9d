"""
Prometheus metrics: one :class:`Metrics` object per gateway, its text
exposition, and a credential-store decorator that measures lookups. The
resource and ``Site`` serving them on ``--metrics-listen`` are in
:mod:`metagateway.observability.metricsite`.

There is no global registry: two gateways in one process count separately.
The exposition is the Prometheus text format, version 0.0.4, written by
``prometheus_client`` from a custom collector over these counters
(:mod:`metagateway.observability.exposition`).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any, Callable, Optional

from prometheus_client.exposition import generate_latest
from zope.interface import implementer

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from metagateway.credentials.interfaces import (
    AccountRecord,
    ICredentialStore,
    StoreUnavailable,
    UnknownAccount,
)
from metagateway.observability.exposition import gateway_registry
from metagateway.state.stats import StateStats

#: Upper bounds, in seconds, of the request latency histogram's buckets.
LATENCY_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)

#: Upper bounds, in seconds, of the credential-store latency histogram.
STORE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

#: Method label values; any other method is counted as ``OTHER``.
_METHODS = {
    m: m.decode("ascii")
    for m in (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")
}

#: Status class label by ``status // 100``.
_STATUS_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx")

#: Gateway error code -> upstream error kind.
UPSTREAM_ERRORS = {
    "UPSTREAM_TIMEOUT": "timeout",
    "UPSTREAM_UNAVAILABLE": "unavailable",
    "MISSING_TARGET": "missing_target",
}

#: Gateway error code of a login -> login outcome.
LOGIN_OUTCOMES = {
    "INVALID_CREDENTIALS": "invalid_credentials",
    "TOO_MANY_ATTEMPTS": "throttled",
    "INVALID_REQUEST": "invalid_request",
    "PAYLOAD_TOO_LARGE": "invalid_request",
    "CREDENTIAL_STORE_UNAVAILABLE": "store_unavailable",
    "STATE_UNAVAILABLE": "state_unavailable",
    "GITHUB_NOT_CONFIGURED": "not_configured",
    "GITHUB_AUTH_FAILED": "upstream_failed",
}


def method_label(method: bytes) -> str:
    """
    The ``method`` label of a request method: the method itself if it is
    one of the usual seven, else ``OTHER`` (so clients cannot grow the
    label set).
    """
    return _METHODS.get(method, "OTHER")


def status_class(status: int) -> str:
    """
    The ``status`` label of a status code: ``2xx``, ``4xx`` ...
    """
    index = status // 100
    return _STATUS_CLASSES[index] if 0 < index < 6 else "other"


class Histogram:
    """
    A Prometheus histogram without labels: per-bucket counts (made
    cumulative only when exposed), the sum and the count.

    :param bounds: the buckets' upper bounds, ascending; ``+Inf`` is added.
    """

    __slots__ = ("bounds", "counts", "sum", "count")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        """
        Count one observation of ``value``.
        """
        self.counts[bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1


class Metrics:
    """
    One gateway's counters, gauge and histograms.

    The ``observe_*`` methods are called on the request path; they only
    touch dictionaries and lists. :meth:`exposition` has
    ``prometheus_client`` format everything, at scrape time.

    :ivar in_flight: requests received and not yet finished or aborted.
    :ivar worker: this process's worker index, added as a ``worker`` label
        when set (``--workers``).
    """

    def __init__(self, worker: Optional[int] = None) -> None:
        self.worker = worker
        self.in_flight = 0
        self.requests: dict[tuple[str, str, str], int] = {}
        self.latency: dict[str, Histogram] = {}
        self.upstream_errors: dict[tuple[str, str], int] = {}
        self.logins: dict[tuple[str, str], int] = {}
        self.store_lookups: dict[str, int] = {}
        self.store_latency = Histogram(STORE_BUCKETS)
        #: The shared state store's figures, when the state is shared.
        self.state: Optional[StateStats] = None
        #: More figures: each callable takes the labels every sample
        #: carries first (``worker="0",`` or ``""``) and returns whole
        #: metric families as exposition lines.
        self.extra: list[Callable[[str], list[str]]] = []
        #: This gateway's own registry, holding one collector over these
        #: counters (:mod:`metagateway.observability.exposition`).
        self.registry = gateway_registry(self)

    def observe_request(
        self,
        route: str,
        method: bytes,
        status: int,
        duration: float,
        error: Optional[str] = None,
        upstream_error: Optional[str] = None,
    ) -> None:
        """
        Count one finished (or aborted) request.

        :param route: the route label (see ``docs/operations.rst``).
        :param method: the request method.
        :param status: the status answered.
        :param duration: seconds from receiving the request to the end.
        :param error: the code of the gateway-made error answer, if any.
        :param upstream_error: how the upstream failed, if it did and the
            error code does not say (``truncated``).
        """
        key = (route, _METHODS.get(method, "OTHER"), status_class(status))
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        histogram = self.latency.get(route)
        if histogram is None:
            histogram = self.latency[route] = Histogram(LATENCY_BUCKETS)
        histogram.observe(duration)
        if error is not None and upstream_error is None:
            upstream_error = UPSTREAM_ERRORS.get(error)
        if upstream_error is not None:
            ukey = (route, upstream_error)
            self.upstream_errors[ukey] = self.upstream_errors.get(ukey, 0) + 1

    def observe_login(self, kind: str, status: int, error: Optional[str]) -> None:
        """
        Count one login attempt by its outcome.

        :param kind: ``password`` or ``github``.
        :param status: the status answered (``499`` if the client left).
        :param error: the gateway error code answered, if any.
        """
        if error is not None:
            outcome = LOGIN_OUTCOMES.get(error, "error")
        elif status == 200:
            outcome = "success"
        elif status == 499:
            outcome = "aborted"
        else:
            outcome = "error"
        key = (kind, outcome)
        self.logins[key] = self.logins.get(key, 0) + 1

    def observe_store_lookup(self, duration: float, result: str) -> None:
        """
        Count one credential-store lookup.

        :param duration: seconds the lookup took.
        :param result: ``found``, ``unknown``, ``unavailable`` or ``error``.
        """
        self.store_lookups[result] = self.store_lookups.get(result, 0) + 1
        self.store_latency.observe(duration)

    def exposition(self) -> bytes:
        """
        Everything, in the Prometheus text format, written by
        ``prometheus_client`` from :attr:`registry`.
        """
        return generate_latest(self.registry)


@implementer(ICredentialStore)
class MeasuredCredentialStore:
    """
    A credential store that counts and times another's lookups.

    :param store: the measured store.
    :param metrics: where the lookups are counted.
    :param seconds: the clock, such as ``reactor.seconds``.
    """

    def __init__(
        self, store: ICredentialStore, metrics: Metrics, seconds: Callable[[], float]
    ) -> None:
        self.store = store
        self.metrics = metrics
        self.seconds = seconds

    def lookup(self, username: str) -> Deferred[AccountRecord]:
        """
        Look ``username`` up in the measured store.

        :return: a Deferred firing with the :class:`AccountRecord`, or
            failing with :class:`UnknownAccount` or
            :class:`StoreUnavailable`, as the measured store's does.
        """
        started = self.seconds()

        def measure(result: Any) -> Any:
            if not isinstance(result, Failure):
                outcome = "found"
            elif result.check(UnknownAccount):
                outcome = "unknown"
            elif result.check(StoreUnavailable):
                outcome = "unavailable"
            else:
                outcome = "error"
            self.metrics.observe_store_lookup(self.seconds() - started, outcome)
            return result

        try:
            d = self.store.lookup(username)
        except Exception:
            self.metrics.observe_store_lookup(self.seconds() - started, "error")
            raise
        return d.addBoth(measure)

    def __repr__(self) -> str:
        return "<MeasuredCredentialStore %r>" % (self.store,)

"""
``twistd metagateway``: command-line options and the service they build.

This is the only module that reads ``os.environ`` or writes to stderr.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any, Callable, NoReturn, Optional, TypeVar

from twisted.application import strports
from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import LoggingFile
from twisted.python import usage

from metagateway.config import ConfigurationError, GatewayConfig

#: Secrets shorter than this many bytes get a warning at start.
MIN_SECRET_BYTES = 32


class Options(usage.Options):
    """
    The daemon's options; each also reads an environment variable (the
    option wins). See ``docs/running.rst``.
    """

    synopsis = "[options]"
    longdesc = (
        "Run the metagateway API gateway. Every option also reads an "
        "environment variable (METAGATEWAY_LISTEN, METAGATEWAY_ACCOUNTS_DIR, "
        "...); GATEWAY_JWT_SECRET and a credential store are required "
        "unless --dev is given."
    )

    optFlags = [
        ["dev", None, "Demo mode: generated secret, demo account, echo upstreams."],
    ]

    optParameters = [
        ["accounts-dir", None, None, "Local credential store directory."],
        ["upstream-timeout", None, None, "Seconds to wait for upstream headers (30)."],
        ["clock-skew", None, None, "Seconds of leeway on exp/iat/nbf (0)."],
        [
            "login-failures-per-user",
            None,
            None,
            "Failed logins per user per window (5).",
        ],
        [
            "login-failures-per-address",
            None,
            None,
            "Failed logins per client address per window (20).",
        ],
        [
            "login-window",
            None,
            None,
            "Sliding window for the login limits, seconds (60).",
        ],
        [
            "trusted-proxies",
            None,
            None,
            "Comma list of peer addresses or networks (CIDR) whose "
            "X-Forwarded-For is believed.",
        ],
        [
            "max-body",
            None,
            None,
            "Largest proxied request body in bytes (0: no limit).",
        ],
        ["store-cache-ttl", None, None, "Seconds an R2 record is cached (5; 0: off)."],
        [
            "drain-timeout",
            None,
            None,
            "Seconds in-flight requests get to finish on SIGTERM (30).",
        ],
        ["max-header-bytes", None, None, "Largest request head in bytes (16384)."],
        ["max-headers", None, None, "Most header lines in a request (100)."],
        ["workers", None, None, "Processes sharing the --listen sockets (1)."],
        [
            "state-url",
            None,
            None,
            "redis://[:password@]host:port[/db] or rediss://...: the store "
            "revocations and login counters are shared through.",
        ],
        [
            "access-log",
            None,
            None,
            "Access log: text (through the log), json (one object per line on "
            "stdout) or off (text).",
        ],
        [
            "metrics-listen",
            None,
            None,
            "Endpoint serving GET /metrics (Prometheus text); off if unset.",
        ],
    ]

    def __init__(self) -> None:
        super().__init__()
        self["listen"] = []

    def opt_listen(self, description: str) -> None:
        """
        A Twisted server endpoint to listen on (repeatable), e.g.
        tcp:8080:interface=127.0.0.1 (default tcp:8080).
        """
        self["listen"].append(description)


def _fail(message: str) -> NoReturn:
    line = "metagateway: %s\n" % (message,)
    sys.stderr.write(line)
    sys.stderr.flush()
    original = sys.__stderr__
    if original is not None and isinstance(sys.stderr, LoggingFile):
        # Once twistd has started logging, sys.stderr feeds its log: the
        # line is in the log, and goes to the real stderr as well.
        original.write(line)
        original.flush()
    raise SystemExit(1)


_T = TypeVar("_T")


def _bound(bind: Callable[[], _T]) -> _T:
    """
    ``bind()``; a port that cannot be bound (in use, not permitted) ends the
    start with one line on stderr instead of ``twistd``'s traceback.
    """
    try:
        return bind()
    except CannotListenError as e:
        _fail(str(e).rstrip("."))


class _Daemon(MultiService):
    """
    The single-process daemon's services: its ports are bound when
    ``twistd`` starts it (before dropping privileges), through
    :func:`_bound`.
    """

    def privilegedStartService(self) -> None:
        _bound(super().privilegedStartService)


def _stop_on_sigint() -> None:
    """
    Let SIGINT drain and stop the daemon even when it was started with SIGINT
    ignored (a shell's background job): the reactor only installs its
    handler over Python's default one.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def makeService(options: Options, reactor: Optional[Any] = None) -> IService:
    """
    Build the daemon's service from parsed options and the environment.

    :param options: the parsed :class:`Options`.
    :param reactor: the reactor; the global one if omitted.
    :raises SystemExit: after one line on stderr when the configuration is
        incomplete.
    """
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        _stop_on_sigint()
    from metagateway.gateway import Gateway
    from metagateway.http.site import GatewaySite

    environ = dict(os.environ)
    settings = dict(options)
    if options["dev"]:
        from metagateway.daemon.dev import prepare_dev

        for line in prepare_dev(settings, environ, reactor):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    from metagateway.daemon.workers import ProcessSettings

    try:
        config = GatewayConfig.from_options(settings, environ)
        process = ProcessSettings.from_options(settings, environ)
    except ConfigurationError as e:
        _fail(str(e))
    if len(config.jwt_secret.encode("utf-8")) < MIN_SECRET_BYTES:
        sys.stderr.write(
            "metagateway: warning: GATEWAY_JWT_SECRET is shorter than %d bytes\n"
            % (MIN_SECRET_BYTES,)
        )
    if process.workers > 1:
        if options["dev"]:
            sys.stderr.write("metagateway: warning: --dev runs one process\n")
        else:
            return _supervisor(options, config, process, environ, reactor)
    from metagateway.observability.accesslog import AccessLog
    from metagateway.observability.metrics import Metrics, MetricsSite

    access_log = None
    if process.access_log == "text":
        access_log = AccessLog("text")
    elif process.access_log == "json":
        # Lines are buffered briefly and written in batches; whatever is
        # left is written once the drain is over and the reactor stops.
        access_log = AccessLog("json", sys.stdout, clock=reactor)
        reactor.addSystemEventTrigger("after", "shutdown", access_log.flush)
    state = None
    if process.state_fd is not None and config.state is None:
        from metagateway.state.supervisor import SupervisedSecurityState

        state = SupervisedSecurityState(
            reactor,
            process.state_fd,
            config.login_failures_per_user,
            config.login_failures_per_address,
            config.login_window,
        )
    gateway = Gateway(
        config,
        reactor,
        access_log=access_log,
        metrics=Metrics(worker=process.worker_index),
        state=state,
    )
    top = _Daemon()
    gateway.service.setServiceParent(top)
    site = GatewaySite(gateway.resource)
    site.max_header_bytes = config.max_header_bytes
    site.max_headers = config.max_headers
    if process.is_worker:
        from metagateway.daemon.workers import adopt_sockets

        adopt_sockets(reactor, process, site, top)
    for description in () if process.is_worker else config.listen:
        try:
            listener = strports.service(description, site, reactor=reactor)
        except (ValueError, KeyError, TypeError) as e:
            _fail("bad --listen %r: %s" % (description, e))
        listener.setServiceParent(top)
    if process.metrics_listen:
        try:
            listener = strports.service(
                process.metrics_listen, MetricsSite(gateway.metrics), reactor=reactor
            )
        except (ValueError, KeyError, TypeError) as e:
            _fail("bad --metrics-listen %r: %s" % (process.metrics_listen, e))
        listener.setServiceParent(top)
    from metagateway.observability.collector import CollectorTuning

    # Last, so that what the other services set up at start is frozen too.
    CollectorTuning().setServiceParent(top)
    return top


def _supervisor(
    options: Options,
    config: GatewayConfig,
    process: Any,
    environ: dict[str, str],
    reactor: Any,
) -> IService:
    """
    The parent of ``--workers N``: binds the ``--listen`` endpoints and
    supervises N worker processes (:mod:`metagateway.daemon.workers`).
    """
    from functools import partial

    from metagateway.daemon.workers import (
        KILL_MARGIN,
        WorkerSupervisor,
        bind_sockets,
        endpoint_kind,
        offset_endpoint,
        worker_argv,
        worker_environ,
    )

    try:
        for description in config.listen:
            if endpoint_kind(description) not in ("tcp", "tcp6", "unix"):
                raise ConfigurationError(
                    "--workers needs tcp:, tcp6: or unix: --listen endpoints "
                    "(terminate TLS in front), not %r" % (description,)
                )
        if process.metrics_listen:
            offset_endpoint(process.metrics_listen, 0)
    except ConfigurationError as e:
        _fail(str(e))
    hub = None
    if config.state is None:
        # Without a state store, the workers share the state this process
        # holds.
        from metagateway.state.memory import MemorySecurityState
        from metagateway.state.supervisor import StateHub

        hub = StateHub(
            MemorySecurityState(
                reactor.seconds,
                config.login_failures_per_user,
                config.login_failures_per_address,
                config.login_window,
            ),
            reactor,
        )
    flags = [str(flag[0]) for flag in Options.optFlags]
    parameters = [str(parameter[0]) for parameter in Options.optParameters]
    return WorkerSupervisor(
        reactor,
        partial(worker_argv, options, flags, parameters, process.metrics_listen),
        worker_environ(environ),
        process.workers,
        partial(_bound, partial(bind_sockets, reactor, config.listen)),
        config.drain_timeout + KILL_MARGIN,
        hub,
    )

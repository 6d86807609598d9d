"""
``twistd metagateway``: command-line options and the service they build.

This is the only module that reads ``os.environ`` or writes to stderr.
"""

from __future__ import annotations

import getopt
import os
import signal
import sys
from functools import partial
from typing import Any, Callable, NoReturn, Optional, Sequence, TypeVar

import twisted
from twisted.application.service import IService, MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory
from twisted.python import usage
from twisted.python.failure import Failure

from metagateway import __version__
from metagateway.auth.assertion import AssertionKeyError, load_key
from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.credentials.factory import check_accounts_dir
from metagateway.daemon.adopted import adopt_sockets
from metagateway.daemon.dev import DevCleanup, DevSetup, prepare_dev
from metagateway.daemon.reload import Reloader, on_sighup
from metagateway.daemon.signals import stop_once
from metagateway.daemon.sockets import (
    bind_sockets,
    endpoint_kind,
    offset_endpoint,
    reuse_port_supported,
    tcp_address,
)
from metagateway.daemon.workers import (
    KILL_MARGIN,
    ProcessSettings,
    WorkerSupervisor,
    worker_argv,
    worker_environ,
)
from metagateway.gateway import Gateway
from metagateway.http.site import GatewaySite
from metagateway.observability.accesslog import AccessLog
from metagateway.observability.collector import CollectorTuning
from metagateway.observability.metrics import Metrics
from metagateway.observability.metricsite import MetricsSite
from metagateway.observability.otel import TracingService, tracing_from_environ
from metagateway.observability.status import GatewayStatus, StatusSampler
from metagateway.proxy.upstream import upstream_tls_policy
from metagateway.state.memory import MemorySecurityState
from metagateway.state.supervisor import StateHub, SupervisedSecurityState

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
        [
            "config",
            None,
            None,
            "TOML file of routes, upstreams and CORS origins; SIGHUP reloads it.",
        ],
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
            "store-timeout",
            None,
            None,
            "Seconds each R2 call may take, retries included (5).",
        ],
        [
            "store-retries",
            None,
            None,
            "Times a failed R2 call is repeated within --store-timeout (2).",
        ],
        [
            "drain-timeout",
            None,
            None,
            "Seconds in-flight requests get to finish on SIGTERM (30).",
        ],
        [
            "websocket-idle-timeout",
            None,
            None,
            "Seconds a joined WebSocket may pass no byte before it is closed "
            "(300; 0: no limit).",
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
            "upstream-ca",
            None,
            None,
            "PEM bundle https upstreams' certificates must chain to "
            "(default: the system's trust roots).",
        ],
        [
            "upstream-client-cert",
            None,
            None,
            "PEM file with the certificate and key presented to https "
            "upstreams (mutual TLS).",
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

    def opt_version(self) -> NoReturn:
        """
        Display metagateway's version (and Twisted's), then exit.
        """
        sys.stdout.write(version_line() + "\n")
        sys.stdout.flush()
        raise SystemExit(0)


def version_line() -> str:
    """
    ``metagateway X.Y.Z (Twisted A.B.C)``.
    """
    return "metagateway %s (Twisted %s)" % (__version__, twisted.__version__)


def _fail(message: str) -> NoReturn:
    """
    End the start: ``message`` in one line on stderr, exit status 1.

    ``makeService`` binds the listening ports itself, so every refusal
    comes before ``twistd`` sends stderr to its log: the line is written
    once, where the operator sees it.
    """
    sys.stderr.write("metagateway: %s\n" % (message,))
    sys.stderr.flush()
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


class Listener(Service):
    """
    Serves ``factory`` on ``endpoint``: listens when first started (by
    ``privilegedStartService``, or ``startService``), stops listening when
    stopped.

    :param description: the endpoint's description, as given.
    :param endpoint: the server endpoint; it must listen at once, as the
        ``tcp:``, ``ssl:`` and ``unix:`` ones do.
    :param factory: the factory to serve.

    :ivar port: the listening port, while listening.
    """

    def __init__(
        self, description: str, endpoint: IStreamServerEndpoint, factory: Factory
    ) -> None:
        self.description = description
        self.endpoint = endpoint
        self.factory = factory
        self.port: Optional[IListeningPort] = None

    def privilegedStartService(self) -> None:
        """
        Listen, if not listening yet.

        :raises CannotListenError: when the port cannot be bound.
        """
        super().privilegedStartService()
        if self.port is None:
            result: list[Any] = []
            self.endpoint.listen(self.factory).addBoth(result.append)
            if not result:
                raise CannotListenError(
                    None, self.description, ValueError("did not listen at once")
                )
            if isinstance(result[0], Failure):
                result[0].raiseException()
            self.port = result[0]

    def startService(self) -> None:
        """
        Listen, if ``privilegedStartService`` has not.
        """
        super().startService()
        self.privilegedStartService()

    def stopService(self) -> Optional[Deferred[None]]:
        """
        Stop listening.
        """
        super().stopService()
        port, self.port = self.port, None
        if port is None:
            return None
        return port.stopListening()  # type: ignore[no-any-return]


def _listener(reactor: Any, option: str, description: str, factory: Any) -> Listener:
    """
    A :class:`Listener` for ``description``.

    :raises SystemExit: after one line on stderr when the description is
        malformed.
    """
    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, KeyError, TypeError) as e:
        _fail("bad --%s %r: %s" % (option, description, e))
    return Listener(description, endpoint, factory)


def _stop_on_sigint() -> None:
    """
    Let SIGINT drain and stop the daemon even when it was started with SIGINT
    ignored (a shell's background job): the reactor only installs its
    handler over Python's default one.
    """
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def makeService(
    options: Options,
    reactor: Optional[Any] = None,
    reload_signal: Optional[bool] = None,
    reuse_port: Optional[bool] = None,
) -> IService:
    """
    Build the daemon's service from parsed options and the environment, and
    bind its listening ports (before ``twistd`` starts logging and drops
    privileges), so that a port in use ends the start at once, in one line.

    :param options: the parsed :class:`Options`.
    :param reactor: the reactor; the global one if omitted.
    :param reload_signal: whether ``SIGHUP`` reloads (:ref:`contract-config-file`); by
        default only with the global reactor (the real daemon).
    :param reuse_port: whether each worker of ``--workers N`` gets its own
        ``SO_REUSEPORT`` socket per TCP endpoint; by default with the
        global reactor where the kernel spreads connections over them
        (:func:`~metagateway.daemon.sockets.reuse_port_supported`).
    :raises SystemExit: after one line on stderr when the configuration is
        incomplete or a port cannot be bound.
    """
    if reload_signal is None:
        reload_signal = reactor is None
    # Only the real daemon is run by twistd, whose options say where its
    # log goes.
    text_to_stdout = reactor is None and twistd_logs_to_stdout(sys.argv[1:])
    if reuse_port is None:
        reuse_port = reactor is None and reuse_port_supported()
    if reactor is None:
        from twisted.internet import reactor as global_reactor

        reactor = global_reactor
        _stop_on_sigint()
        stop_once(reactor)
    environ = dict(os.environ)
    settings = dict(options)
    dev = prepare_dev(settings, environ, reactor) if options["dev"] else None
    try:
        config, process = _configure(settings, environ)
        service = _build(
            options,
            config,
            process,
            environ,
            reactor,
            dev,
            text_to_stdout,
            reuse_port,
        )
        if reload_signal:
            on_sighup(reactor, _reload_action(service, settings, environ))
        _bound(service.privilegedStartService)
    except BaseException:
        if dev is not None:
            dev.remove_accounts()
        raise
    if dev is not None:
        for line in dev.lines(_listening(service)):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    return service


def _configure(
    settings: dict[str, Any], environ: dict[str, str]
) -> tuple[GatewayConfig, ProcessSettings]:
    """
    The gateway's and the process's settings, checked.

    :raises SystemExit: after one line on stderr when they are incomplete
        or malformed, or the accounts directory cannot be read.
    """
    try:
        config = GatewayConfig.from_options(settings, environ)
        process = ProcessSettings.from_options(settings, environ)
        if config.accounts_dir is not None:
            check_accounts_dir(config.accounts_dir)
        check_upstream_trust(config)
    except ConfigurationError as e:
        _fail(str(e))
    if len(config.jwt_secret.encode("utf-8")) < MIN_SECRET_BYTES:
        sys.stderr.write(
            "metagateway: warning: GATEWAY_JWT_SECRET is shorter than %d bytes\n"
            % (MIN_SECRET_BYTES,)
        )
    return config, process


def check_upstream_trust(config: GatewayConfig) -> None:
    """
    Read the assertion key and the upstream TLS files now, so that an
    unusable one refuses the start in one line.

    :raises ConfigurationError: naming the file and the reason.
    """
    if config.assertion_key_file is not None:
        try:
            load_key(config.assertion_key_file)
        except AssertionKeyError as e:
            raise ConfigurationError(str(e)) from None
    upstream_tls_policy(config.upstream_ca, config.upstream_client_cert)


def _build(
    options: Options,
    config: GatewayConfig,
    process: ProcessSettings,
    environ: dict[str, str],
    reactor: Any,
    dev: Optional[DevSetup],
    text_to_stdout: bool = False,
    reuse_port: bool = False,
) -> IService:
    """
    The supervisor of ``--workers N``, or one process's services.
    """
    if process.workers > 1:
        if dev is not None:
            sys.stderr.write("metagateway: warning: --dev runs one process\n")
        else:
            return _supervisor(options, config, process, environ, reactor, reuse_port)
    return _single(config, process, reactor, dev, text_to_stdout)


def _reload_action(
    service: IService, settings: dict[str, Any], environ: dict[str, str]
) -> Callable[[], object]:
    """
    What ``SIGHUP`` does: the supervisor passes it on to its workers; a
    single process reloads its gateway (:mod:`metagateway.daemon.reload`).
    """
    if isinstance(service, WorkerSupervisor):
        return service.reload
    gateway: Gateway = service.gateway  # type: ignore[attr-defined]
    return Reloader(gateway, settings, environ).reload


def twistd_logs_to_stdout(args: Sequence[str]) -> bool:
    """
    Whether ``twistd``, run with the arguments ``args`` (its own options,
    then the subcommand's), writes its text log to standard output: with
    ``-n``/``--nodaemon``, and neither a ``--logfile`` other than ``-``
    nor ``--syslog`` or ``--logger``. Read with ``twistd``'s own option
    names, as ``twistd`` reads them (``getopt``, up to the subcommand).
    """
    from twisted.scripts import twistd

    # twistd's options on this platform (the Unix ones name -n).
    server = twistd.ServerOptions()  # type: ignore[attr-defined]
    try:
        parsed, _ = getopt.getopt(list(args), server.shortOpt, server.longOpt)
    except getopt.GetoptError:
        return False
    nodaemon = False
    logfile = ""
    for name, value in parsed:
        if name in ("-n", "--nodaemon"):
            nodaemon = True
        elif name in ("-l", "--logfile"):
            logfile = value
        elif name in ("--syslog", "--logger"):
            return False
    return nodaemon and logfile in ("", "-")


def _access_log(
    process: ProcessSettings, reactor: Any, to_stdout: bool
) -> Optional[AccessLog]:
    """
    The access log ``--access-log`` names.

    :param to_stdout: whether this process's text log is standard output
        (a worker's; ``twistd -n``'s without ``--logfile``): then the text
        lines are written there directly, in the form ``twistd`` writes
        them, buffered like JSON lines; else they are events to
        ``twistd``'s log, wherever it goes.
    """
    if process.access_log == "off":
        return None
    if process.access_log == "json" or to_stdout:
        # Lines are buffered briefly and written in batches; whatever is
        # left is written once the drain is over and the reactor stops.
        access_log = AccessLog(process.access_log, sys.stdout, clock=reactor)
        reactor.addSystemEventTrigger("after", "shutdown", access_log.flush)
        return access_log
    return AccessLog("text")


def _single(
    config: GatewayConfig,
    process: ProcessSettings,
    reactor: Any,
    dev: Optional[DevSetup],
    text_to_stdout: bool = False,
) -> MultiService:
    """
    One process serving the gateway: on the ``--listen`` endpoints, or on
    the sockets a worker inherited.

    :param text_to_stdout: whether ``twistd`` writes its text log to
        standard output (see :func:`_access_log`).
    """
    # Spans only when the OTEL_* variables name an exporter.
    tracing = tracing_from_environ(os.environ)
    gateway = Gateway(
        config,
        reactor,
        access_log=_access_log(process, reactor, text_to_stdout or process.is_worker),
        metrics=Metrics(worker=process.worker_index),
        state=_worker_state(config, process, reactor),
        tracing=tracing,
    )
    top = MultiService()
    if tracing is not None:
        TracingService(tracing).setServiceParent(top)
    # For the reload (SIGHUP).
    top.gateway = gateway  # type: ignore[attr-defined]
    gateway.service.setServiceParent(top)
    site = GatewaySite(gateway.resource)
    site.max_header_bytes = config.max_header_bytes
    site.max_headers = config.max_headers
    if process.is_worker:
        adopt_sockets(reactor, process, site, top)
    else:
        for description in config.listen:
            _listener(reactor, "listen", description, site).setServiceParent(top)
    if process.metrics_listen:
        status = GatewayStatus(
            gateway.metrics,
            reactor.seconds,
            lambda: gateway.proxies,
            gateway.reloads,
            lambda: gateway.config.config_file,
            config.listen,
            process.worker_index,
            # A worker is not told how many there are.
            None if process.is_worker else process.workers,
        )
        StatusSampler(status, reactor).setServiceParent(top)
        _listener(
            reactor,
            "metrics-listen",
            process.metrics_listen,
            MetricsSite(gateway.metrics, status),
        ).setServiceParent(top)
    if dev is not None:
        DevCleanup(dev).setServiceParent(top)
    # Last, so that what the other services set up at start is frozen too.
    CollectorTuning().setServiceParent(top)
    return top


def _worker_state(
    config: GatewayConfig, process: ProcessSettings, reactor: Any
) -> Optional[SupervisedSecurityState]:
    """
    In a worker of ``--workers N`` without ``--state-url``: the security
    state its supervisor holds, over the socket it inherited; else
    ``None`` (the gateway's own, or the Redis store's).
    """
    if process.state_fd is None or config.state is not None:
        return None
    return SupervisedSecurityState(
        reactor,
        process.state_fd,
        config.login_failures_per_user,
        config.login_failures_per_address,
        config.login_window,
    )


def _listening(service: IService) -> Sequence[tuple[str, Any]]:
    """
    Each ``--listen`` description of ``service`` with its bound address.
    """
    return [
        (child.description, child.port.getHost())
        for child in service  # type: ignore[attr-defined]
        if isinstance(child, Listener)
        and child.port is not None
        and isinstance(child.factory, GatewaySite)
    ]


def _supervisor(
    options: Options,
    config: GatewayConfig,
    process: ProcessSettings,
    environ: dict[str, str],
    reactor: Any,
    reuse_port: bool = False,
) -> IService:
    """
    The parent of ``--workers N``: binds the ``--listen`` endpoints (with
    ``reuse_port``, one socket per worker for each TCP one) and
    supervises N worker processes (:mod:`metagateway.daemon.workers`).
    """
    try:
        for description in config.listen:
            if endpoint_kind(description) not in ("tcp", "tcp6", "unix"):
                raise ConfigurationError(
                    "--workers needs tcp:, tcp6: or unix: --listen endpoints "
                    "(terminate TLS in front), not %r" % (description,)
                )
            if reuse_port and endpoint_kind(description) != "unix":
                tcp_address(description)
        if process.metrics_listen:
            offset_endpoint(process.metrics_listen, 0)
    except ConfigurationError as e:
        _fail(str(e))
    hub = None
    if config.state is None:
        # Without a state store, the workers share the state this process
        # holds.
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
        partial(
            _bound,
            partial(bind_sockets, reactor, config.listen, process.workers, reuse_port),
        ),
        config.drain_timeout + KILL_MARGIN,
        hub,
    )

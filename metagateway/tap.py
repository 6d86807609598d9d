"""
``twistd metagateway``: command-line options and the service they build.

This is the only module that reads ``os.environ`` or writes to stderr.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Optional

from twisted.application import strports
from twisted.application.service import IService, MultiService
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
        ["login-failures-per-user", None, None, "Failed logins per user per window (5)."],
        [
            "login-failures-per-address",
            None,
            None,
            "Failed logins per client address per window (20).",
        ],
        ["login-window", None, None, "Sliding window for the login limits, seconds (60)."],
        [
            "trusted-proxies",
            None,
            None,
            "Comma list of peer addresses whose X-Forwarded-For is believed.",
        ],
        ["max-body", None, None, "Largest proxied request body in bytes (0: no limit)."],
        ["store-cache-ttl", None, None, "Seconds an R2 record is cached (5; 0: off)."],
        [
            "drain-timeout",
            None,
            None,
            "Seconds in-flight requests get to finish on SIGTERM (30).",
        ],
        ["max-header-bytes", None, None, "Largest request head in bytes (16384)."],
        ["max-headers", None, None, "Most header lines in a request (100)."],
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


def _fail(message: str) -> None:
    sys.stderr.write("metagateway: %s\n" % (message,))
    sys.stderr.flush()
    raise SystemExit(1)


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
    from metagateway.gateway import Gateway
    from metagateway.site import GatewaySite

    environ = dict(os.environ)
    settings = dict(options)
    if options["dev"]:
        from metagateway.dev import prepare_dev

        for line in prepare_dev(settings, environ, reactor):
            sys.stdout.write(line + "\n")
        sys.stdout.flush()
    try:
        config = GatewayConfig.from_options(settings, environ)
    except ConfigurationError as e:
        _fail(str(e))
    if len(config.jwt_secret.encode("utf-8")) < MIN_SECRET_BYTES:
        sys.stderr.write(
            "metagateway: warning: GATEWAY_JWT_SECRET is shorter than %d bytes\n"
            % (MIN_SECRET_BYTES,)
        )
    gateway = Gateway(config, reactor)
    top = MultiService()
    gateway.service.setServiceParent(top)
    site = GatewaySite(gateway.resource)
    site.max_header_bytes = config.max_header_bytes
    site.max_headers = config.max_headers
    for description in config.listen:
        try:
            listener = strports.service(description, site, reactor=reactor)
        except (ValueError, KeyError, TypeError) as e:
            _fail("bad --listen %r: %s" % (description, e))
        listener.setServiceParent(top)
    return top

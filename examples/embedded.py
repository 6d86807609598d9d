"""
A host program with metagateway embedded: one process, one port, the
host's own page at ``/`` and the gateway under ``/api``.

Run it from the repository root (or anywhere metagateway is installed)::

    export GATEWAY_JWT_SECRET="$(openssl rand -base64 48)"
    export BUILD_SERVICE_URL=http://127.0.0.1:9001
    python examples/embedded.py --port 8080 --accounts-dir ./accounts

then::

    curl http://127.0.0.1:8080/
    curl -X POST http://127.0.0.1:8080/api/auth/login \\
        -d '{"username": "operator", "password": "..."}'
    curl -H "Authorization: Bearer $TOKEN" http://127.0.0.1:8080/api/build/status

The gateway reads the same environment variables as the daemon
(``GATEWAY_JWT_SECRET``, ``*_SERVICE_URL``, ``METAGATEWAY_*`` ...); the port
comes from ``--port`` or ``EMBEDDED_PORT`` (``0`` picks a free one), and the
accounts directory from ``--accounts-dir`` or ``METAGATEWAY_ACCOUNTS_DIR``.
Once listening it prints ``embedded: listening on http://HOST:PORT/``.
Ctrl-C or ``SIGTERM`` stops it: the port closes first, then the gateway's
upstream connections.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Optional, Sequence

from twisted.application.service import MultiService
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.task import react
from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.resource import Resource
from twisted.web.static import Data

from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.gateway import Gateway
from metagateway.http.site import GatewaySite

#: The host's own page.
PAGE = b"""<!doctype html>
<html>
<head><meta charset="utf-8"><title>host program</title></head>
<body>
<h1>A host program</h1>
<p>This page is the host's own. The API gateway is mounted at
<a href="/api/health">/api</a>: log in at <code>POST /api/auth/login</code>,
then call <code>/api/build/...</code> with the token.</p>
</body>
</html>
"""


def parse_arguments(argv: Sequence[str], environ: Any) -> argparse.Namespace:
    """
    Read the command line; defaults come from ``environ``.
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--port",
        type=int,
        default=int(environ.get("EMBEDDED_PORT") or 8080),
        help="TCP port to listen on (EMBEDDED_PORT; default 8080; 0: any free)",
    )
    parser.add_argument(
        "--interface",
        default=environ.get("EMBEDDED_INTERFACE") or "127.0.0.1",
        help="address to listen on (EMBEDDED_INTERFACE; default 127.0.0.1)",
    )
    parser.add_argument(
        "--accounts-dir",
        default=None,
        help="the gateway's credential directory (METAGATEWAY_ACCOUNTS_DIR)",
    )
    return parser.parse_args(list(argv))


def build(reactor: Any, config: GatewayConfig) -> tuple[MultiService, GatewaySite]:
    """
    The host's services and site: the gateway's service in the host's
    ``MultiService``, and its resource mounted at ``/api`` beside the
    host's page at ``/``.

    The site is the daemon's ``GatewaySite``, so that proxied request
    bodies stream and oversized ones are refused before they are read; a
    plain ``twisted.web.server.Site`` works too (see docs/embedding.rst).
    """
    gateway = Gateway(config, reactor)
    root = Resource()
    root.putChild(b"", Data(PAGE, "text/html; charset=utf-8"))
    root.putChild(b"api", gateway.resource)
    services = MultiService()
    gateway.service.setServiceParent(services)
    return services, GatewaySite(root, reactor=reactor)


async def main(
    reactor: Any, config: GatewayConfig, port_number: int, interface: str
) -> None:
    """
    Start the services, listen, and run until the reactor stops.
    """
    # ``react`` calls this before the reactor runs: wait until it does, so
    # that its signal handlers are in place before we say we listen.
    running: Deferred[None] = Deferred()
    reactor.callWhenRunning(running.callback, None)
    await running
    services, site = build(reactor, config)
    services.startService()
    endpoint = TCP4ServerEndpoint(reactor, port_number, interface=interface)
    port = await endpoint.listen(site)

    async def shut_down() -> None:
        await port.stopListening()
        await services.stopService()

    reactor.addSystemEventTrigger(
        "before", "shutdown", lambda: Deferred.fromCoroutine(shut_down())
    )
    address = port.getHost()
    print(
        "embedded: listening on http://%s:%d/ (gateway at /api)"
        % (address.host, address.port),
        flush=True,
    )
    # Never fires: the program runs until Ctrl-C or SIGTERM stops the reactor.
    await Deferred()


def run(argv: Optional[Sequence[str]] = None) -> None:
    """
    The program: configuration from the command line and environment, a
    one-line message and exit status 1 when it is incomplete.
    """
    environ = dict(os.environ)
    arguments = parse_arguments(sys.argv[1:] if argv is None else argv, environ)
    try:
        config = GatewayConfig.from_options(
            {"accounts-dir": arguments.accounts_dir}, environ
        )
    except ConfigurationError as e:
        sys.stderr.write("embedded: %s\n" % (e,))
        raise SystemExit(1) from None
    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stderr)], redirectStandardIO=False
    )
    react(main, (config, arguments.port, arguments.interface))


if __name__ == "__main__":
    run()

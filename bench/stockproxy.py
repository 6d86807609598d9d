"""
Twisted's stock reverse proxy, for the benchmark's reference row.

``twisted.web.proxy.ReverseProxyResource`` as it comes: one new upstream
connection per request (it sends ``Connection: close``), the whole response
relayed by ``ProxyClient``, and ``Site``'s usual access log line for each
request, written to a file as a twistd would.

Usage::

    python bench/stockproxy.py --port 8002 --upstream-port 8000 --log FILE
"""

from __future__ import annotations

import argparse
import sys

from twisted.logger import globalLogBeginner, textFileLogObserver
from twisted.web.proxy import ReverseProxyResource
from twisted.web.server import Site


def main() -> None:
    """Parse the command line and serve until stopped."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--log", help="log file (default: stdout)")
    args = parser.parse_args()

    out = open(args.log, "a") if args.log else sys.stdout
    globalLogBeginner.beginLoggingTo([textFileLogObserver(out)])

    from twisted.internet import reactor

    root = ReverseProxyResource("127.0.0.1", args.upstream_port, b"")
    reactor.listenTCP(args.port, Site(root), backlog=1024, interface="127.0.0.1")
    reactor.run()


if __name__ == "__main__":
    main()

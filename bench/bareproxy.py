"""
The "Python ceiling" for the benchmark: a bare streaming reverse proxy.

A Twisted ``Agent`` over a persistent ``HTTPConnectionPool``, nothing else:
no routing, no authentication, no access log. Every request is sent to the
same upstream with the same path; the response streams back with
backpressure. metagateway is measured against this.

Usage::

    python bench/bareproxy.py --port 8001 --upstream http://127.0.0.1:8000
    python bench/bareproxy.py --port 8001 --upstream ... --processes 2

With ``--processes N`` (N > 1) the parent binds the listening socket and
starts N children that adopt it with ``reactor.adoptStreamPort``; the parent
only waits, and passes SIGTERM/SIGINT on to them.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
from typing import Any

from twisted.internet import protocol
from twisted.web.client import Agent, FileBodyProducer, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

#: Headers that describe one connection, never forwarded (RFC 9110 7.6.1).
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
    b"content-length",
}


class _Relay(protocol.Protocol):
    """Write an upstream response body to the client request as it arrives."""

    def __init__(self, request: Any) -> None:
        self.request = request
        self.gone = False

    def connectionMade(self) -> None:
        """Let the client connection pause the upstream one (backpressure)."""
        self.request.registerProducer(self.transport, True)

    def dataReceived(self, data: bytes) -> None:
        """Pass a chunk of body on."""
        if not self.gone:
            self.request.write(data)

    def client_gone(self) -> None:
        """The client went away: stop reading the upstream body."""
        self.gone = True
        self.transport.stopProducing()

    def connectionLost(self, reason: Any) -> None:
        """Finish the client response once the upstream body is complete."""
        if not self.gone:
            self.request.unregisterProducer()
            self.request.finish()


class BareProxy(Resource):
    """Forward every request to one upstream base URL, streaming both ways."""

    isLeaf = True

    def __init__(self, agent: Agent, upstream: bytes) -> None:
        super().__init__()
        self.agent = agent
        self.upstream = upstream.rstrip(b"/")

    def render(self, request: Any) -> Any:
        """Start the upstream call; answer when its headers arrive."""
        headers = Headers()
        for name, values in request.requestHeaders.getAllRawHeaders():
            if name.lower() not in HOP_BY_HOP:
                headers.setRawHeaders(name, values)
        length = request.getHeader(b"content-length")
        body = None
        if length not in (None, b"0") or request.getHeader(b"transfer-encoding"):
            request.content.seek(0)
            body = FileBodyProducer(request.content)
        call = self.agent.request(
            request.method, self.upstream + request.uri, headers, body
        )
        relay = _Relay(request)

        def client_gone(reason: Any) -> None:
            relay.gone = True
            call.cancel()
            if relay.transport is not None:
                relay.client_gone()

        request.notifyFinish().addErrback(client_gone)

        def answer(response: Any) -> None:
            request.setResponseCode(response.code, response.phrase)
            for name, values in response.headers.getAllRawHeaders():
                if name.lower() not in HOP_BY_HOP:
                    request.responseHeaders.setRawHeaders(name, values)
            if isinstance(response.length, int):
                request.setHeader(b"content-length", b"%d" % response.length)
            response.deliverBody(relay)

        def fail(reason: Any) -> None:
            if not relay.gone:
                request.setResponseCode(502)
                request.finish()

        call.addCallbacks(answer, fail)
        return NOT_DONE_YET


class QuietSite(Site):
    """A Site without the per-request access log line."""

    def log(self, request: Any) -> None:
        """Log nothing."""


def serve(upstream: str, port: int | None, fd: int | None) -> None:
    """Run one proxy process, on a new port or on an inherited socket."""
    from twisted.internet import reactor

    pool = HTTPConnectionPool(reactor, persistent=True)
    pool.maxPersistentPerHost = 100
    site = QuietSite(BareProxy(Agent(reactor, pool=pool), upstream.encode()))
    if fd is not None:
        reactor.adoptStreamPort(fd, socket.AF_INET, site)
        os.close(fd)
    else:
        reactor.listenTCP(port, site, backlog=1024, interface="127.0.0.1")
    reactor.run()


def supervise(args: argparse.Namespace) -> None:
    """Bind once, start ``args.processes`` children on that socket, wait."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", args.port))
    sock.listen(1024)
    sock.setblocking(False)
    fd = sock.fileno()
    children = [
        subprocess.Popen(
            [sys.executable, __file__, "--upstream", args.upstream, "--fd", str(fd)],
            pass_fds=[fd],
        )
        for _ in range(args.processes)
    ]

    def stop(signum: int, frame: Any) -> None:
        for child in children:
            if child.poll() is None:
                child.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for child in children:
        child.wait()


def main() -> None:
    """Parse the command line and run."""
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--upstream", required=True, help="base URL, http://...")
    parser.add_argument("--port", type=int, help="port to listen on (127.0.0.1)")
    parser.add_argument("--fd", type=int, help="inherited listening socket")
    parser.add_argument("--processes", type=int, default=1)
    args = parser.parse_args()
    if args.fd is None and args.port is None:
        parser.error("one of --port or --fd is required")
    if args.processes > 1:
        supervise(args)
    else:
        serve(args.upstream, args.port, args.fd)


if __name__ == "__main__":
    main()

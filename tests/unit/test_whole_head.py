"""
Tests for the whole-head path of the gateway's channel
(:meth:`metagateway.http.twisted_internals.ChannelInternals.whole_head`):
a request head that arrives whole is handled in one go, with exactly the
outcome of Twisted's line-by-line parser.

Each request of a corpus (well-formed heads of every shape, and every kind
of head the path must leave to the parser) is sent to two channels, one
with the path and one without, and everything observable is compared: what
the requests saw, what went back to the client, and the parser's state.
"""

from __future__ import annotations

import re
from typing import Any, Optional, Sequence

import twisted
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.resource import Resource
from twisted.web.server import Site

from metagateway.http.channel import GatewayChannel
from metagateway.http.twisted_internals import RequestInternals, header_map
from metagateway.testing import ChannelHarness
from metagateway.testing.channel import CLIENT, SERVER

TWISTED = twisted.__version__


class Recorder(RequestInternals):
    """
    A request that records what the channel gives it, and is answered by
    the test.
    """

    def __init__(self, channel: Any, queued: Any = None) -> None:
        super().__init__(channel)
        self.seen: list[Any] = channel.seen

    def length_known(self, length: Optional[int]) -> None:
        self.seen.append(("length", length))
        super().length_known(length)

    def body_chunk(self, data: bytes) -> None:
        self.seen.append(("chunk", data))

    #: Whether the body is all in.
    complete = False

    def body_complete(self, command: bytes, path: bytes, version: bytes) -> None:
        self.complete = True
        self.seen.append(
            (
                "complete",
                command,
                path,
                version,
                list(header_map(self.requestHeaders).items()),
            )
        )


class Channel(GatewayChannel):
    """
    The gateway's channel with :class:`Recorder` requests and small limits
    (so that the corpus reaches them), counting the lines Twisted's parser
    handles.
    """

    requestFactory = Recorder  # type: ignore[assignment]
    max_header_bytes = 400
    max_headers = 6

    def __init__(self, whole: bool) -> None:
        super().__init__()
        self.whole_heads = whole
        self.seen: list[Any] = []
        self.lines = 0
        self.site = Site(Resource())

    def lineReceived(self, line: bytes) -> None:
        self.lines += 1
        super().lineReceived(line)


#: Every parser variable the two paths must leave alike.
STATE = (
    "line_mode",
    "persistent",
    "length",
    "discarding",
    "request_line",
    "receiving_body",
    "_head_bytes",
    "_head_lines",
    "_receivedHeaderSize",
    "_receivedHeaderCount",
    "_HTTPChannel__first_line",
    "_HTTPChannel__header",
    "_handlingRequest",
    "_dataBuffer",
    "_buffer",
)

#: What differs between two answers by chance: request identifiers and
#: error timestamps.
_RANDOM = re.compile(rb'(X-Request-Id: |"requestId":"|"timestamp":")[0-9a-fTZ:.-]+')


def observe(channel: Channel, transport: StringTransport) -> dict[str, Any]:
    """
    Everything observable of ``channel``: what its requests saw, what the
    client got (request identifiers, random, blanked) and the parser's
    state.
    """
    seen = dict(
        seen=list(channel.seen),
        sent=_RANDOM.sub(rb"\1-", transport.value()),
        closing=transport.disconnecting,
        queued=len(channel.requests),
        decoder=type(channel._transferDecoder).__name__,
    )
    for name in STATE:
        seen[name] = getattr(channel, name, "unset")
    return seen


def answer_ready(channel: Channel) -> None:
    """
    Answer the requests at the head of ``channel``'s queue whose bodies are
    in, oldest first.
    """
    while channel.requests:
        request = channel.requests[0]
        if not request.complete or request.finished:
            return
        channel.seen.append(("answering", request.uri))
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()


def run(
    data: Sequence[Optional[bytes]], whole: bool, answer: bool = True
) -> tuple[Any, int]:
    """
    Send ``data`` (one read each; ``None`` to answer what is ready instead)
    to a fresh :class:`Channel`, answering each request once complete when
    ``answer``; what is observable after each step, and how many lines went
    through Twisted's parser.
    """
    clock = MemoryReactorClock()
    channel = Channel(whole)
    channel.callLater = clock.callLater  # type: ignore[assignment, method-assign]
    transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
    channel.makeConnection(transport)
    observed = []
    for read in data:
        if read is None:
            answer_ready(channel)
        else:
            channel.dataReceived(read)
            if answer:
                answer_ready(channel)
        observed.append(observe(channel, transport))
    return observed, channel.lines


#: Heads the whole-head path takes (each a list of reads).
TAKEN = [
    [b"GET / HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET /a?b=c HTTP/1.0\r\n\r\n"],
    [b"GET /x HTTP/1.1\r\nhOsT: h\r\nx-custom-thing: 1\r\ncontent-md5: q\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\nx-a: 2\r\nX-A:3\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\nX-Pad: \t a b \t\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-High: \x80\xff\xa0\r\n\r\n"],
    [b"PROPFIND /dav HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"M-SEARCH * HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET http://h/abs?q HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET /\x7f\x80\xb0 HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhello"],
    [b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\nhel", b"lo"],
    [b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n", b"hello"],
    [b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n"],
    [b"POST /p HTTP/1.1\r\nHost: h\r\ncontent-length: 007\r\n\r\n1234567"],
    [b"POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nhiGET / HTTP/1.1\r\n"],
    [
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: Chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n"
    ],
    [
        b"POST /c HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nab",
        b"\r\n0\r\n\r\n",
    ],
    [b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHo", b"st: h\r\n\r\n"],
    [
        b"POST /e HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
        b"x",
    ],
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /after HTTP/1.1\r\n\r\n"
    ],
    [b"GET / HTTP/1.1\r\nHost: h\r\nConnection: keep-alive, close\r\n\r\n"],
    [b"GET / HTTP/1.1\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"],
    # At the limits: 6 headers (7 lines), and 400 bytes with the line ends.
    [b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 368 + b"\r\n\r\n"],
]

#: Heads the whole-head path leaves to Twisted's parser (each a list of
#: reads).
LEFT = [
    [b"GET / HTTP/1.1\r\nHost: h\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\n", b"\r\n"],
    [b"GET / HTTP/1.1\nHost: h\n\n"],
    [b"GET / HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\rX: 1\r\n\r\n"],
    [b"\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n b\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n\tb\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n b: c\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-Fold: a\r\n\tb: c\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX-Nul: a\x00b\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nNo colon\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n"],
    [b"GET / HTTP/1.1\r\nHost: h\r\n: x\r\n\r\n"],
    [b"GET /\r\nHost: h\r\n\r\n"],
    [b"GET / / HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET / HTTP/2.0\r\nHost: h\r\n\r\n"],
    [b"GET / http/1.1\r\nHost: h\r\n\r\n"],
    [b"G(T / HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET  HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"GET /\xff HTTP/1.1\r\nHost: h\r\n\r\n"],
    [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\nx"],
    [
        b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"
    ],
    [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: identity\r\n\r\n"],
    [b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip\r\n\r\n"],
    [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 5a\r\n\r\n"],
    [b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n"],
    [
        b"GET / HTTP/1.1\r\nHost: h\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\n\r\n"
    ],
    [b"GET / HTTP/1.1\r\nHost: h\r\nX: " + b"v" * 369 + b"\r\n\r\n"],
    [b"GET /" + b"a" * 500 + b" HTTP/1.1\r\n\r\n"],
]


class DifferentialTests(SynchronousTestCase):
    """
    The whole-head path changes nothing observable.
    """

    def compare(
        self, data: Sequence[Optional[bytes]], answer: bool = True
    ) -> tuple[int, int]:
        """
        ``data`` sent with and without the path: the same outcome after
        every read. The lines Twisted's parser handled, without and with.
        """
        slow, slow_lines = run(data, whole=False, answer=answer)
        fast, fast_lines = run(data, whole=True, answer=answer)
        for i, (s, f) in enumerate(zip(slow, fast)):
            for key in s:
                self.assertEqual(
                    f[key],
                    s[key],
                    "Twisted %s: %r after read %d differs in %s"
                    % (TWISTED, data, i, key),
                )
        return slow_lines, fast_lines

    def test_taken(self) -> None:
        """
        Each well-formed head gives the same outcome both ways, and the
        first never goes through Twisted's line parser.
        """
        for data in TAKEN:
            for answer in (True, False):
                slow_lines, fast_lines = self.compare(data, answer)
                self.assertGreater(slow_lines, 0)
                self.assertLess(fast_lines, slow_lines, repr(data))

    def test_left(self) -> None:
        """
        Each head the path leaves to the parser gives the same outcome both
        ways, through the parser both times.
        """
        for data in LEFT:
            for answer in (True, False):
                slow_lines, fast_lines = self.compare(data, answer)
                self.assertEqual(fast_lines, slow_lines, repr(data))

    def test_left_untouched(self) -> None:
        """
        ``whole_head`` declines each head it leaves to the parser without
        changing the channel.
        """
        for data in LEFT:
            channel = Channel(True)
            channel.makeConnection(
                StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
            )
            before = {name: getattr(channel, name, "unset") for name in STATE}
            result = channel.whole_head(
                data[0], channel.max_header_bytes, channel.max_headers + 1
            )
            self.assertIsNone(result, repr(data))
            after = {name: getattr(channel, name, "unset") for name in STATE}
            self.assertEqual(after, before, repr(data))
            self.assertEqual(channel.requests, [])

    def test_split_reads(self) -> None:
        """
        Every well-formed request, cut at every byte into two reads, gives
        the same outcome both ways.
        """
        for data in TAKEN[:3] + TAKEN[10:13] + TAKEN[16:17]:
            whole = b"".join(data)
            for cut in range(1, len(whole)):
                self.compare([whole[:cut], whole[cut:]])

    def test_only_between_requests(self) -> None:
        """
        A head that arrives while a request is being answered waits, as
        Twisted has it wait; it is taken once the answer is finished.
        """
        data: list[Optional[bytes]] = [
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /2 HTTP/1.1\r\nHost: h\r\n\r\n",
            None,
        ]
        self.compare(data, answer=False)
        observed, _ = run(data, whole=True, answer=False)

        def completed(step: dict[str, Any]) -> list[bytes]:
            return [seen[2] for seen in step["seen"] if seen[0] == "complete"]

        self.assertEqual(completed(observed[1]), [b"/1"])
        self.assertEqual(completed(observed[2]), [b"/1", b"/2"])


class GatewayTests(SynchronousTestCase):
    """
    Through the whole gateway, the path answers as the parser does.
    """

    def exchange(self, whole: bool, data: bytes) -> tuple[bytes, list[Any]]:
        """
        What the client gets for ``data``, and what went upstream.
        """
        h = ChannelHarness()
        h.channel.whole_heads = whole
        h.send(data)
        upstream = [
            (
                call.method,
                call.uri,
                [name for name, _ in call.headers.getAllRawHeaders()],
            )
            for call in h.agent.calls
        ]
        return _RANDOM.sub(rb"\1-", h.transport.value()), upstream

    def test_same_answers(self) -> None:
        """
        Guest tokens, refusals and routed requests come out the same.
        """
        for data in [
            b"POST /auth/login HTTP/1.1\r\nHost: g\r\nContent-Length: 2\r\n\r\n{}",
            b"GET /auth/verify HTTP/1.1\r\nHost: g\r\n\r\n",
            b"GET /build/x HTTP/1.1\r\nHost: g\r\n\r\n",
            b"GET /nowhere HTTP/1.1\r\nHost: g\r\n\r\n",
            b"GET /build/x HTTP/1.1\r\n\r\n",
            b"GET /build/x HTTP/1.1\r\nHost: g\r\nHost: h\r\n\r\n",
            b"GET /build/x HTTP/1.1\r\nHost: g\nX: 1\r\n\r\n",
        ]:
            self.assertEqual(
                self.exchange(True, data), self.exchange(False, data), repr(data)
            )

"""
Tests for the whole-head fast path of
:class:`metagateway.proxy.twisted_internals.GatewayClientProtocol`
(:func:`~metagateway.proxy.twisted_internals.receive_head`).

The fast path must take only heads Twisted's line-by-line parser takes, and
leave everything as that parser would. Each scenario here (requests, reads,
what the response's receiver does, a lost connection) runs twice, once
with the fast path and once without, recording everything observable: the
response, its headers and body, the parser's state, what the protocol
handed to the pool, and the transport's state after each step. The two
records must be equal. So must the calls the transport received, less one
difference the fast path makes on purpose: it holds back the parser's
pause of the connection until the response's receivers have run, and
drops it when they resume the connection at once (``_HeldPause``).
"""

from __future__ import annotations

import random
from typing import Any, Sequence

from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.protocol import Protocol
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase
from twisted.web import _newclient
from twisted.web.http_headers import Headers

from metagateway.proxy import twisted_internals
from metagateway.proxy.twisted_internals import GatewayClientProtocol

#: One step of a scenario: ``("request", method)``, ``("data", bytes)``,
#: ``("deliver",)`` (give the last response a body protocol now) or
#: ``("lose", reason)``.
Step = tuple[Any, ...]


def describe(failure: Failure) -> Any:
    """
    What a failure says: its type, its message, and for Twisted's wrapper
    exceptions (``ResponseFailed``...) the reasons wrapped.
    """
    value = failure.value
    reasons = getattr(value, "reasons", None)
    if reasons is not None:
        return (failure.type.__name__, [describe(reason) for reason in reasons])
    return (failure.type.__name__, repr(value.args))


class RecordingTransport(StringTransport):
    """
    A transport recording each pause, resume and close it is asked for;
    it ignores a resume once closing, as a TCP connection does.
    """

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def pauseProducing(self) -> None:
        self.calls.append("pause")
        self.producerState = "paused"

    def resumeProducing(self) -> None:
        # As a TCP connection does: resuming once closing does nothing.
        self.calls.append("resume")
        if not self.disconnecting:
            self.producerState = "producing"

    def loseConnection(self) -> None:
        self.calls.append("close")
        super().loseConnection()


def without_paused_resumes(calls: list[str]) -> list[str]:
    """
    ``calls`` less each pause a resume follows at once: what the fast path
    spares the connection.
    """
    kept = []
    for at, call in enumerate(calls):
        if call == "pause" and calls[at + 1 : at + 2] == ["resume"]:
            continue
        kept.append(call)
    return kept


class RecordingBody(Protocol):
    """
    A body protocol recording what it receives in the scenario's log.
    """

    def __init__(self, log: list[Any]) -> None:
        self.log = log

    def dataReceived(self, data: bytes) -> None:
        self.log.append(("body", data))

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.log.append(("body ended", describe(reason)))


def recording_protocol(fast: bool, log: list[Any]) -> GatewayClientProtocol:
    """
    A :class:`GatewayClientProtocol`, with the fast path or without, that
    records what it hands on: the end of each response (and the bytes
    after it) and its return to the pool.
    """

    class Recording(GatewayClientProtocol):
        whole_heads = fast

        def _finishResponse(self, rest: bytes) -> None:
            log.append(("finished", rest))
            super()._finishResponse(rest)

    return Recording(lambda protocol: log.append("quiescent"))


def snapshot(parser: Any) -> Any:
    """
    Everything the parser holds that the line-by-line path sets.
    """
    if parser is None:
        return None
    response = getattr(parser, "response", None)
    return (
        parser.state,
        list(parser.headers.getAllRawHeaders()),
        list(parser.connHeaders.getAllRawHeaders()),
        parser._partialHeader,
        parser._buffer,
        parser._busyReceiving,
        parser.line_mode,
        parser._everReceivedData,
        type(parser.bodyDecoder).__name__,
        hasattr(parser, "_responseDeferred"),
        None
        if response is None
        else (response.version, response.code, response.phrase, response.length),
    )


#: What the receiver of a response does when it arrives.
RECEIVERS = (
    "takes the body",
    "waits",
    "takes the body, pauses",
    "pauses, takes the body",
    "closes, takes the body",
    "loses the connection, takes the body",
)


def run(
    steps: Sequence[Step], fast: bool, receiver: str
) -> tuple[list[Any], list[str]]:
    """
    Play ``steps`` on a connected protocol, with the fast path or without,
    each response's receiver doing ``receiver`` (one of
    :data:`RECEIVERS`). The record, and the calls the transport received.
    """
    log: list[Any] = []
    transport = RecordingTransport()
    protocol = recording_protocol(fast, log)
    protocol.makeConnection(transport)
    parsers: list[Any] = []
    responses: list[Any] = []

    def answered(response: Any) -> None:
        log.append(
            (
                "response",
                response.version,
                response.code,
                response.phrase,
                list(response.headers.getAllRawHeaders()),
                response.length,
            )
        )
        responses.append(response)
        if receiver == "waits":
            return
        if receiver == "pauses, takes the body":
            response._transport.pauseProducing()
        elif receiver == "closes, takes the body":
            response._transport.loseConnection()
        elif receiver == "loses the connection, takes the body":
            protocol.connectionLost(Failure(ConnectionLost("reset")))
        response.deliverBody(RecordingBody(log))
        if receiver == "takes the body, pauses":
            response._transport.pauseProducing()

    def failed(failure: Failure) -> None:
        log.append(("request failed", describe(failure)))

    for step in steps:
        if step[0] == "request":
            answer = protocol.request(
                _newclient.Request(
                    step[1], b"/", Headers({b"Host": [b"h"]}), None, True
                )
            )
            answer.addCallbacks(answered, failed)
            parsers.append(protocol._parser)
        elif step[0] == "data":
            protocol.dataReceived(step[1])
        elif step[0] == "deliver":
            if responses:
                try:
                    responses[-1].deliverBody(RecordingBody(log))
                except RuntimeError:
                    log.append("deliver refused")
        elif step[0] == "lose" and protocol.state != "CONNECTION_LOST":
            protocol.connectionLost(Failure(step[1]))
        log.append(
            (
                "step done",
                step[0],
                protocol.state,
                transport.producerState,
                transport.disconnecting,
            )
        )
    log.append(("parsers", [snapshot(parser) for parser in parsers]))
    log.append(("written", transport.value()))
    return log, transport.calls


def splits(data: bytes) -> list[list[bytes]]:
    """
    ``data`` as it may arrive: whole, in two reads at every place, and one
    byte at a time.
    """
    ways = [[data]]
    ways.extend([data[:at], data[at:]] for at in range(1, len(data)))
    ways.append([data[at : at + 1] for at in range(len(data))])
    return ways


#: Response bytes: (name, method, bytes). Normal heads the fast path takes,
#: unusual ones it must leave to Twisted.
CORPUS: list[tuple[str, bytes, bytes]] = [
    (
        "nginx",
        b"GET",
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\n"
        b"Date: Sun, 06 Dec 2026 16:00:00 GMT\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 5\r\nConnection: keep-alive\r\nAccept-Ranges: bytes\r\n"
        b"\r\nhello",
    ),
    (
        "chunked",
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: 1\r\n\r\n"
        b"3\r\nabc\r\n0\r\n\r\n",
    ),
    (
        "chunked, no body yet",
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
    ),
    (
        "content-length, partial body",
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
    ),
    ("content-length 0", b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    (
        "content-length 0, more",
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nextra",
    ),
    ("close-delimited", b"GET", b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\r\nsome body"),
    ("no headers", b"GET", b"HTTP/1.1 200 OK\r\n\r\n"),
    ("no phrase", b"GET", b"HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n"),
    ("empty phrase", b"GET", b"HTTP/1.1 200 \r\nContent-Length: 0\r\n\r\n"),
    (
        "long phrase",
        b"GET",
        b"HTTP/1.1 404 Not  Found  Here\r\nContent-Length: 1\r\n\r\nx",
    ),
    ("HTTP/1.0", b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nab"),
    ("204", b"GET", b"HTTP/1.1 204 No Content\r\nX-A: 1\r\n\r\n"),
    ("204, more", b"GET", b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n"),
    (
        "304",
        b"GET",
        b'HTTP/1.1 304 Not Modified\r\nETag: "x"\r\nContent-Length: 9\r\n\r\n',
    ),
    ("HEAD", b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nX-A: 1\r\n\r\n"),
    ("500", b"GET", b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 2\r\n\r\nno"),
    (
        "1xx then final",
        b"GET",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx",
    ),
    ("1xx alone", b"GET", b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
    (
        "connection headers",
        b"GET",
        b"HTTP/1.1 200 OK\r\nConnection: x-a, close\r\nKeep-Alive: timeout=5\r\n"
        b"X-A: 1\r\nProxy-Connection: keep-alive\r\nUpgrade: h2\r\nTE: trailers\r\n"
        b"Trailers: x\r\nContent-Length: 1\r\n\r\nz",
    ),
    (
        "connection close",
        b"GET",
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nz",
    ),
    (
        "repeated headers",
        b"GET",
        b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nX-B: 1\r\nset-cookie: b=2\r\n"
        b"SET-COOKIE: c=3\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nab",
    ),
    (
        "conflicting lengths",
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nab",
    ),
    ("bad length", b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\nab"),
    ("unknown coding", b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nab"),
    (
        "odd casing",
        b"GET",
        b"HTTP/1.1 200 OK\r\ncontent-TYPE: a\r\nETAG: b\r\nwww-authenticate: c\r\n"
        b"x-xss-protection: 0\r\nCONTENT-length: 0\r\n\r\n",
    ),
    (
        "empty value",
        b"GET",
        b"HTTP/1.1 200 OK\r\nX-Empty:\r\nX-Spaces:   \r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "value whitespace",
        b"GET",
        b"HTTP/1.1 200 OK\r\nX-A:\t a b \t\r\nX-B:x\x0b\x0c\r\nX-C: a:b\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "obs-fold",
        b"GET",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n  2\r\nContent-Length: 0\r\n\r\n",
    ),
    (
        "obs-fold tab",
        b"GET",
        b"HTTP/1.1 200 OK\r\nX-A: 1\r\n\t2\r\nContent-Length: 0\r\n\r\n",
    ),
    ("bare LF", b"GET", b"HTTP/1.1 200 OK\nX-A: 1\nContent-Length: 0\n\n"),
    (
        "bare LF inside",
        b"GET",
        b"HTTP/1.1 200 OK\r\nX-A: 1\nX-B: 2\r\nContent-Length: 0\r\n\r\n",
    ),
    ("bare CR", b"GET", b"HTTP/1.1 200 OK\r\nX-A: 1\r2\r\nContent-Length: 0\r\n\r\n"),
    ("bare CR in status", b"GET", b"HTTP/1.1 200 O\rK\r\nContent-Length: 0\r\n\r\n"),
    ("missing colon", b"GET", b"HTTP/1.1 200 OK\r\nX-A 1\r\nContent-Length: 0\r\n\r\n"),
    ("missing colon, known name", b"GET", b"HTTP/1.1 200 OK\r\nX-A: 1\r\nX-A\r\n\r\n"),
    ("empty name", b"GET", b"HTTP/1.1 200 OK\r\n: 1\r\nContent-Length: 0\r\n\r\n"),
    (
        "space before colon",
        b"GET",
        b"HTTP/1.1 200 OK\r\nX-A : 1\r\nContent-Length: 0\r\n\r\n",
    ),
    ("bad name", b"GET", b"HTTP/1.1 200 OK\r\nX(A): 1\r\nContent-Length: 0\r\n\r\n"),
    ("bad status", b"GET", b"HTTP/1.1 2x0 OK\r\n\r\n"),
    ("short status", b"GET", b"HTTP/1.1 20\r\nContent-Length: 0\r\n\r\n"),
    ("long code", b"GET", b"HTTP/1.1 2000 OK\r\nContent-Length: 0\r\n\r\n"),
    ("code 600", b"GET", b"HTTP/1.1 600 Odd\r\nContent-Length: 0\r\n\r\n"),
    ("code 099", b"GET", b"HTTP/1.1 099 Odd\r\nContent-Length: 0\r\n\r\n"),
    ("HTTP/2.0", b"GET", b"HTTP/2.0 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ("bad version", b"GET", b"HTTP/x 200 OK\r\n\r\n"),
    ("one part", b"GET", b"HTTP/1.1\r\n\r\n"),
    ("empty status line", b"GET", b"\r\nHTTP/1.1 200 OK\r\n\r\n"),
    ("empty head", b"GET", b"\r\n\r\n"),
    ("not HTTP", b"GET", b"SSH-2.0-OpenSSH\r\n\r\n"),
    (
        "two responses",
        b"GET",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nab"
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\ncd",
    ),
    (
        "body then trailers",
        b"GET",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"1\r\na\r\n0\r\nX-T: 1\r\n\r\n",
    ),
]


def scenarios() -> list[tuple[str, list[Step]]]:
    """
    Each corpus entry in every way it may be read, then the connection
    closed cleanly, plus a few scenarios of their own.
    """
    played: list[tuple[str, list[Step]]] = []
    for name, method, data in CORPUS:
        for reads in splits(data):
            steps: list[Step] = [("request", method)]
            steps.extend(("data", read) for read in reads)
            steps.append(("deliver",))
            steps.append(("lose", ConnectionDone()))
            played.append(("%s %r" % (name, reads), steps))
    nginx = CORPUS[0][2]
    played.extend(
        [
            (
                "two requests in turn",
                [
                    ("request", b"GET"),
                    ("data", nginx),
                    ("deliver",),
                    ("request", b"GET"),
                    ("data", nginx[:50]),
                    ("data", nginx[50:]),
                    ("deliver",),
                ],
            ),
            (
                "reset mid-body",
                [
                    ("request", b"GET"),
                    ("data", b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\nab"),
                    ("deliver",),
                    ("lose", ConnectionLost("reset")),
                ],
            ),
            (
                "close-delimited reset",
                [
                    ("request", b"GET"),
                    ("data", b"HTTP/1.1 200 OK\r\n\r\nab"),
                    ("lose", ConnectionLost("reset")),
                    ("deliver",),
                ],
            ),
            ("data with no request", [("data", nginx)]),
            (
                "data after the response",
                [("request", b"GET"), ("data", nginx), ("data", nginx)],
            ),
            (
                "head longer than the line limit",
                [
                    ("request", b"GET"),
                    (
                        "data",
                        b"HTTP/1.1 200 OK\r\n"
                        + b"".join(
                            b"X-%d: %s\r\n" % (i, b"v" * 100) for i in range(200)
                        )
                        + b"Content-Length: 0\r\n\r\n",
                    ),
                ],
            ),
            (
                "line longer than the line limit",
                [
                    ("request", b"GET"),
                    ("data", b"HTTP/1.1 200 OK\r\nX-A: " + b"v" * 17000 + b"\r\n\r\n"),
                ],
            ),
        ]
    )
    return played


class WholeHeadDifferentialTests(SynchronousTestCase):
    """
    The fast path and Twisted's line-by-line parser, compared.
    """

    def setUp(self) -> None:
        self.taken: list[bool] = []
        receive = twisted_internals.receive_head

        def counted(parser: Any, data: bytes) -> bool:
            taken = receive(parser, data)
            self.taken.append(taken)
            return taken

        self.patch(twisted_internals, "receive_head", counted)

    def compare(self, name: str, steps: Sequence[Step]) -> None:
        """
        Play ``steps`` both ways, with each receiver; the records must be
        equal, and the transport's calls but for paused resumes.
        """
        for receiver in RECEIVERS:
            stock, stock_calls = run(steps, fast=False, receiver=receiver)
            fast, fast_calls = run(steps, fast=True, receiver=receiver)
            if fast != stock:
                self.fail(
                    "%s (the receiver %s): fast path %r\nstock path %r"
                    % (name, receiver, fast, stock)
                )
            if without_paused_resumes(fast_calls) != without_paused_resumes(
                stock_calls
            ):
                self.fail(
                    "%s (the receiver %s): the transport was told %r, not %r"
                    % (name, receiver, fast_calls, stock_calls)
                )

    def test_corpus(self) -> None:
        """
        Every corpus entry, read whole, in two reads split anywhere, and
        byte by byte: the same record both ways.
        """
        for name, steps in scenarios():
            self.compare(name, steps)
        self.assertIn(True, self.taken)

    def test_mutations(self) -> None:
        """
        Heads of the corpus with bytes changed at random (line breaks,
        colons, spaces, letters): the same record both ways. A fixed seed.
        """
        generator = random.Random(19)
        alphabet = [
            b"\r",
            b"\n",
            b"\r\n",
            b":",
            b" ",
            b"\t",
            b"a",
            b"A",
            b"-",
            b"\x00",
            b"1",
        ]
        for _attempt in range(400):
            name, method, data = generator.choice(CORPUS)
            mutated = bytearray(data)
            for _ in range(generator.randint(1, 3)):
                at = generator.randrange(len(mutated) + 1)
                if generator.random() < 0.5 and at < len(mutated):
                    del mutated[at]
                else:
                    mutated[at:at] = generator.choice(alphabet)
            steps: list[Step] = [
                ("request", method),
                ("data", bytes(mutated)),
                ("deliver",),
                ("lose", ConnectionDone()),
            ]
            self.compare("%s mutated %r" % (name, bytes(mutated)), steps)

    def test_normal_heads_taken(self) -> None:
        """
        The fast path takes the everyday heads, whole in one read; the
        record is still the stock one (see ``compare``).
        """
        for name, method, data in CORPUS[:17]:
            self.taken.clear()
            run(
                [("request", method), ("data", data)],
                fast=True,
                receiver="takes the body",
            )
            self.assertEqual(self.taken[:1], [True], name)

    def test_unusual_heads_left(self) -> None:
        """
        Heads with anything unusual are left to Twisted's parser.
        """
        unusual = {
            "1xx then final",
            "1xx alone",
            "obs-fold",
            "obs-fold tab",
            "bare LF",
            "bare LF inside",
            "bare CR",
            "bare CR in status",
            "missing colon",
            "missing colon, known name",
            "empty name",
            "space before colon",
            "bad name",
            "bad status",
            "short status",
            "long code",
            "code 600",
            "code 099",
            "HTTP/2.0",
            "bad version",
            "one part",
            "empty status line",
            "empty head",
            "not HTTP",
        }
        seen = set()
        for name, method, data in CORPUS:
            if name in unusual:
                seen.add(name)
                self.taken.clear()
                run(
                    [("request", method), ("data", data)],
                    fast=True,
                    receiver="takes the body",
                )
                self.assertEqual(self.taken[:1], [False], name)
        self.assertEqual(seen, unusual)

    def test_split_head_left(self) -> None:
        """
        A head split across reads goes through Twisted's parser (its
        first part is buffered there), and so does what follows.
        """
        data = CORPUS[0][2]
        run(
            [("request", b"GET"), ("data", data[:30]), ("data", data[30:])],
            fast=True,
            receiver="takes the body",
        )
        self.assertEqual(self.taken, [False, False])

    def test_switch(self) -> None:
        """
        ``whole_heads`` off, the fast path is not tried.
        """
        run(
            [("request", b"GET"), ("data", CORPUS[0][2])],
            fast=False,
            receiver="takes the body",
        )
        self.assertEqual(self.taken, [])


class HeldPauseTests(SynchronousTestCase):
    """
    The parser's pause of the connection after a head parsed whole: held
    until the response's receivers have run, dropped if they resume.
    """

    data = b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nab"

    def play(self, fast: bool, receiver: str) -> tuple[RecordingTransport, Any]:
        """
        One request answered by :attr:`data`; the transport and the
        request's parser.
        """
        log: list[Any] = []
        transport = RecordingTransport()
        protocol = recording_protocol(fast, log)
        protocol.makeConnection(transport)
        answer = protocol.request(
            _newclient.Request(b"GET", b"/", Headers({b"Host": [b"h"]}), None, True)
        )
        if receiver == "takes the body":
            answer.addCallback(
                lambda response: response.deliverBody(RecordingBody(log))
            )
        parser = protocol._parser
        protocol.dataReceived(self.data)
        return transport, parser

    def test_resumed_at_once(self) -> None:
        """
        The receiver takes the body at once: the connection is resumed
        (as Twisted does) but never paused; Twisted pauses it first.
        """
        transport, parser = self.play(fast=True, receiver="takes the body")
        self.assertEqual(transport.calls, ["resume"])
        self.assertEqual(transport.producerState, "producing")
        stock, _ = self.play(fast=False, receiver="takes the body")
        self.assertEqual(stock.calls, ["pause", "resume"])

    def test_paused_once_run(self) -> None:
        """
        The receiver waits: the connection is paused once the response
        has been handed over, until the body is taken; the parser's
        transport proxies the connection itself again.
        """
        transport, parser = self.play(fast=True, receiver="waits")
        self.assertEqual(transport.calls, ["pause"])
        self.assertEqual(transport.producerState, "paused")
        self.assertIs(parser.transport._producer, transport)
        parser.response.deliverBody(RecordingBody([]))
        self.assertEqual(transport.calls, ["pause", "resume"])
        self.assertEqual(transport.producerState, "producing")

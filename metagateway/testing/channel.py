"""
The gateway's HTTP/1.1 channel in memory, for tests: a fake upstream
``IAgent`` whose calls the test answers piece by piece, and
:class:`ChannelHarness`, a gateway served by a real ``GatewaySite`` over a
``StringTransport``, with helpers to write requests and read responses as
raw bytes.
"""

from __future__ import annotations

import json
from typing import Any, Optional

from zope.interface import implementer

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionLost
from twisted.internet.interfaces import IConsumer, IProducer
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone, ResponseFailed
from twisted.web.http_headers import Headers
from twisted.web.iweb import UNKNOWN_LENGTH, IAgent, IBodyProducer, IResponse

from metagateway.auth.passwords import make_record
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.gateway import Gateway
from metagateway.http.channel import GatewayChannel
from metagateway.http.site import GatewaySite
from metagateway.testing.gateway import PASSWORD, USERNAME, make_config

#: The client address of every :class:`ChannelHarness` connection.
CLIENT = IPv4Address("TCP", "10.0.0.7", 50000)
#: The address the gateway listens on.
SERVER = IPv4Address("TCP", "127.0.0.1", 8080)


@implementer(IConsumer)
class RecordingConsumer:
    """
    Stands for the upstream connection a body is written to.

    :ivar data: every write, in order.
    """

    def __init__(self) -> None:
        self.data: list[bytes] = []

    def write(self, data: bytes) -> None:
        """
        Keep ``data``.
        """
        self.data.append(data)

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        """
        Accept a producer (its pauses are the test's to make).
        """

    def unregisterProducer(self) -> None:
        """
        Forget the producer.
        """

    def body(self) -> bytes:
        """
        Everything written so far.
        """
        return b"".join(self.data)


@implementer(IResponse)
class FakeResponse:
    """
    An upstream's answer whose body the test delivers piece by piece.

    :ivar transport: the upstream connection, as the relay sees it: its
        ``producerState`` shows whether the relay paused it.
    """

    version = (b"HTTP", 1, 1)
    previousResponse = None
    request = None

    def __init__(
        self,
        code: int = 200,
        headers: Optional[Headers] = None,
        length: Any = UNKNOWN_LENGTH,
        phrase: bytes = b"OK",
    ) -> None:
        self.code = code
        self.phrase = phrase
        self.headers = headers if headers is not None else Headers()
        self.length = length
        self.protocol: Any = None
        self.transport = StringTransport()

    def deliverBody(self, protocol: Any) -> None:
        """
        Connect ``protocol`` to :attr:`transport`; the body comes as the
        test sends it.
        """
        self.protocol = protocol
        protocol.makeConnection(self.transport)

    def setPreviousResponse(self, response: Any) -> None:
        """
        Ignored: the fake follows no redirects.
        """

    def send(self, data: bytes) -> None:
        """
        Deliver ``data``, a piece of the body.
        """
        self.protocol.dataReceived(data)

    def finish(self) -> None:
        """
        End the body as complete.
        """
        self.protocol.connectionLost(Failure(ResponseDone()))

    def break_off(self) -> None:
        """
        End the body as cut off by a connection reset.
        """
        self.protocol.connectionLost(
            Failure(ResponseFailed([Failure(ConnectionLost("reset"))]))
        )


class UpstreamCall:
    """
    One request the fake agent received.

    :ivar response: the Deferred the proxy waits on.
    :ivar consumer: where the body goes once :meth:`start_body` is called.
    :ivar cancelled: whether the proxy cancelled the call.
    """

    def __init__(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers],
        body: Optional[IBodyProducer],
    ) -> None:
        self.method = method
        self.uri = uri
        self.headers = headers if headers is not None else Headers()
        self.body = body
        self.consumer = RecordingConsumer()
        self.producing: Optional[Deferred[None]] = None
        self.cancelled = False
        self.response: Deferred[IResponse] = Deferred(self._cancel)

    def start_body(self) -> Deferred[None]:
        """
        Connect the body to the upstream, as the ``Agent`` does once it has
        a connection.
        """
        assert self.body is not None
        self.producing = self.body.startProducing(self.consumer)
        return self.producing

    def _cancel(self, d: Deferred[IResponse]) -> None:
        # As the Agent does: cancelling the call stops the body.
        self.cancelled = True
        if self.producing is not None and not self.producing.called:
            self.producing.cancel()

    def answer(self, response: Optional[FakeResponse] = None) -> FakeResponse:
        """
        Answer the call with ``response`` (a ``200`` by default), and
        return it.
        """
        response = response or FakeResponse()
        self.response.callback(response)
        return response

    def fail(self, reason: BaseException) -> None:
        """
        Fail the call with ``reason``, as a connection error would.
        """
        self.response.errback(Failure(reason))


@implementer(IAgent)
class FakeAgent:
    """
    An ``Agent`` recording each request and answering nothing by itself.

    :ivar calls: an :class:`UpstreamCall` per request, in order.
    """

    def __init__(self) -> None:
        self.calls: list[UpstreamCall] = []

    def request(
        self,
        method: bytes,
        uri: bytes,
        headers: Optional[Headers] = None,
        bodyProducer: Optional[IBodyProducer] = None,
    ) -> Deferred[IResponse]:
        """
        Record the request as an :class:`UpstreamCall` and return its
        (unfired) response.
        """
        call = UpstreamCall(method, uri, headers, bodyProducer)
        self.calls.append(call)
        return call.response


class ParsedResponse:
    """
    One HTTP response read back from the client's transport.
    """

    def __init__(
        self, code: int, headers: Headers, body: bytes, complete: bool
    ) -> None:
        """
        :param complete: whether the whole body arrived.
        """
        self.code = code
        self.headers = headers
        self.body = body
        self.complete = complete

    def header(self, name: bytes) -> Optional[bytes]:
        """
        The last value of header ``name``, if any.
        """
        values = self.headers.getRawHeaders(name)
        return values[-1] if values else None

    def json(self) -> Any:
        """
        The body, parsed as JSON.
        """
        return json.loads(self.body)


def parse_responses(data: bytes) -> list[ParsedResponse]:
    """
    Split what a client received into responses (``Content-Length`` or
    chunked bodies; a last response may be incomplete).
    """
    responses: list[ParsedResponse] = []
    while data:
        head, sep, data = data.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.split(b"\r\n")
        code = int(lines[0].split(b" ")[1])
        headers = Headers()
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            headers.addRawHeader(name, value.strip())
        if code == 100:
            continue
        length = headers.getRawHeaders(b"content-length")
        chunked = headers.getRawHeaders(b"transfer-encoding") == [b"chunked"]
        complete = True
        if length:
            size = int(length[0])
            body, data = data[:size], data[size:]
            complete = len(body) == size
        elif chunked:
            body = b""
            complete = False
            while data:
                size_line, sep, rest = data.partition(b"\r\n")
                if not sep:
                    break
                size = int(size_line.split(b";")[0], 16)
                if len(rest) < size + 2:
                    body += rest[:size]
                    data = b""
                    break
                body += rest[:size]
                data = rest[size + 2 :]
                if size == 0:
                    complete = True
                    break
        else:
            body, data = data, b""
        responses.append(ParsedResponse(code, headers, body, complete))
    return responses


class ChannelHarness:
    """
    A gateway served by a :class:`GatewaySite` over a ``StringTransport``,
    with a :class:`FakeAgent` upstream and a ``MemoryReactorClock``.

    :ivar clock: the reactor and clock.
    :ivar agent: the fake upstream agent.
    :ivar gateway: the gateway (no access log).
    :ivar site: the site serving it.
    :ivar transport: the first connection's transport.
    :ivar channel: the first connection's channel.
    """

    def __init__(self, **config: Any) -> None:
        """
        :param config: ``GatewayConfig`` fields, as for
            :func:`~metagateway.testing.gateway.make_config`.
        """
        self.clock = MemoryReactorClock()
        self.clock.advance(1_800_000_000)
        self.agent = FakeAgent()
        self.gateway = Gateway(
            make_config(**config),
            self.clock,
            store=MemoryCredentialStore([make_record(USERNAME, PASSWORD, "admin")]),
            agent=self.agent,
            access_log=None,
        )
        self.site = GatewaySite(self.gateway.resource, reactor=self.clock)
        self.transport, self.channel = self.connect()

    def connect(self) -> tuple[StringTransport, GatewayChannel]:
        """
        Open another client connection.
        """
        channel = self.site.buildProtocol(CLIENT)
        transport = StringTransport(hostAddress=SERVER, peerAddress=CLIENT)
        channel.makeConnection(transport)
        return transport, channel

    def send(self, data: bytes) -> None:
        """
        Send ``data`` on the first connection, as the client.
        """
        self.channel.dataReceived(data)

    def responses(self) -> list[ParsedResponse]:
        """
        The responses the first connection received so far.
        """
        return parse_responses(self.transport.value())

    def response(self) -> ParsedResponse:
        """
        The one response the first connection received.
        """
        responses = self.responses()
        assert len(responses) == 1, self.transport.value()
        return responses[0]

    @property
    def reading(self) -> bool:
        """
        Whether the gateway reads from the client.
        """
        return self.transport.producerState == "producing"


def post_head(path: bytes, length: Optional[int] = None, extra: bytes = b"") -> bytes:
    """
    The head of a ``POST``: ``Content-Length`` if given, else chunked.
    """
    framing = (
        b"Content-Length: %d\r\n" % (length,)
        if length is not None
        else b"Transfer-Encoding: chunked\r\n"
    )
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: gateway.test\r\n"
        + framing
        + extra
        + b"\r\n"
    )


def chunk(data: bytes) -> bytes:
    """
    ``data`` as one chunk of a chunked body.
    """
    return b"%x\r\n" % (len(data),) + data + b"\r\n"

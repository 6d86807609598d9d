"""
Guard tests for :mod:`metagateway.http.twisted_internals`: each private or
undocumented Twisted hook the HTTP layer relies on still exists, takes the
same arguments and behaves as the gateway expects, checked through a real
``HTTPChannel`` on a ``StringTransport``. A failure names the hook and the
Twisted version: read the hook's comment in ``twisted_internals.py`` before
changing anything.

Tested against Twisted 26.10.0 (``tox -e tests``) and the newest release
(``tox -e twisted-latest``).
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Optional

from zope.interface.verify import verifyObject

import twisted
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http import Request as HTTPRequest
from twisted.web.http_headers import Headers, InvalidHeaderName, _nameEncoder
from twisted.web.resource import Resource
from twisted.web.server import Request, Site
from twisted.web.server import version as server_version

from metagateway.http import names
from metagateway.http.channel import GatewayChannel, IHeadersReceived
from metagateway.http.request import IDoneHooks, IEarlyRouting, StreamingRequest
from metagateway.http.site import GatewayResource, GatewaySite
from metagateway.http.twisted_internals import (
    ChannelInternals,
    RequestInternals,
    close_after_answer,
    head_written,
    header_map,
    one_line,
    prepare_for_root,
    set_sent_length,
    site_of,
    take_pipelined,
)

CLIENT = IPv4Address("TCP", "10.0.0.7", 50000)

#: The Twisted version these tests run on, named in every failure.
TWISTED = twisted.__version__


def changed(hook: str, what: str) -> str:
    """
    The message of a failed guard: which hook, what changed, and where to
    look.
    """
    return (
        "Twisted %s changed %s: %s. metagateway.http.twisted_internals relies "
        "on it; see the comment on its override there." % (TWISTED, hook, what)
    )


class RecordingRequest(RequestInternals):
    """
    A request that records the hooks Twisted's channel calls on it, and is
    answered by the test.
    """

    #: Remove ``Expect`` in ``gotLength`` (as the gateway's request does).
    drop_expect = False

    def __init__(self, channel: Any, queued: Any = None) -> None:
        super().__init__(channel)
        self.events: list[Any] = channel.events

    def length_known(self, length: Optional[int]) -> None:
        self.events.append(("gotLength", length))
        if self.drop_expect:
            self.requestHeaders.removeHeader(b"expect")
        super().length_known(length)

    def body_chunk(self, data: bytes) -> None:
        self.events.append(("chunk", data))
        super().body_chunk(data)

    def body_complete(self, command: bytes, path: bytes, version: bytes) -> None:
        self.events.append(("requestReceived", command, path, version))
        super().body_complete(command, path, version)

    def process(self) -> None:
        self.events.append(("process", self.content.read()))


class RecordingChannel(ChannelInternals):
    """
    A channel that records the hooks :class:`ChannelInternals` calls, with
    Twisted's behaviour otherwise.
    """

    requestFactory = RecordingRequest  # type: ignore[assignment]

    def __init__(self) -> None:
        super().__init__()
        self.events: list[Any] = []
        self.depth = 0
        self.site = Site(Resource())

    def dataReceived(self, data: bytes) -> None:
        self.events.append(("dataReceived", self.depth))
        self.depth += 1
        try:
            super().dataReceived(data)
        finally:
            self.depth -= 1

    def refuse_malformed(self) -> None:
        self.events.append("refuse_malformed")
        super().refuse_malformed()

    def head_received(self, request: Any, length: Optional[int]) -> bool:
        self.events.append(
            (
                "head_received",
                length,
                request.requestHeaders.getRawHeaders(b"x-probe"),
            )
        )
        assert request is self.current_request()
        assert length == self.body_length()
        return True

    def head_handled(self, request: Any) -> None:
        assert request is self.current_request()
        self.events.append("head_handled")

    def body_received(self) -> bool:
        self.events.append(("body_received", self.body_length()))
        return True

    def answered(self, request: Any) -> None:
        self.events.append(("answered", request is self.queued_requests()[0]))


def connect(channel: HTTPChannel) -> StringTransport:
    """
    Connect ``channel`` to a fresh ``StringTransport``.
    """
    transport = StringTransport(peerAddress=CLIENT)
    channel.makeConnection(transport)
    return transport


class SignatureTests(SynchronousTestCase):
    """
    Each hook the gateway overrides or calls exists, with the arguments it
    is called with.
    """

    def assert_hook(self, owner: type, name: str, parameters: list[str]) -> None:
        """
        ``owner.name`` exists and takes ``parameters``.
        """
        hook = "%s.%s" % (owner.__qualname__, name)
        method = owner.__dict__.get(name)
        if method is None:
            method = getattr(owner, name, None)
        if not callable(method):
            self.fail(changed(hook, "it is gone"))
        actual = list(inspect.signature(method).parameters)
        self.assertEqual(
            actual, parameters, changed(hook, "it now takes %r" % (actual,))
        )

    def test_respond_to_bad_request(self) -> None:
        """
        ``HTTPChannel._respondToBadRequestAndDisconnect(self)``.
        """
        self.assert_hook(HTTPChannel, "_respondToBadRequestAndDisconnect", ["self"])

    def test_channel_parser_steps(self) -> None:
        """
        ``allHeadersReceived``, ``allContentReceived``, ``rawDataReceived``
        and ``requestDone`` of ``HTTPChannel``.
        """
        self.assert_hook(HTTPChannel, "allHeadersReceived", ["self"])
        self.assert_hook(HTTPChannel, "allContentReceived", ["self"])
        self.assert_hook(HTTPChannel, "rawDataReceived", ["self", "data"])
        self.assert_hook(HTTPChannel, "requestDone", ["self", "request"])

    def test_channel_public_overrides(self) -> None:
        """
        The documented ``HTTPChannel`` methods the gateway's channel
        overrides keep their arguments too.
        """
        self.assert_hook(HTTPChannel, "lineReceived", ["self", "line"])
        self.assert_hook(
            HTTPChannel, "checkPersistence", ["self", "request", "version"]
        )
        self.assert_hook(
            HTTPChannel,
            "writeHeaders",
            ["self", "version", "code", "reason", "headers"],
        )

    def test_request_hooks(self) -> None:
        """
        ``gotLength``, ``handleContentChunk`` and ``requestReceived`` of
        ``twisted.web.http.Request`` ("not intended for users").
        """
        self.assert_hook(HTTPRequest, "gotLength", ["self", "length"])
        self.assert_hook(HTTPRequest, "handleContentChunk", ["self", "data"])
        self.assert_hook(
            HTTPRequest, "requestReceived", ["self", "command", "path", "version"]
        )
        self.assert_hook(Request, "process", ["self"])

    def test_parser_state(self) -> None:
        """
        ``HTTPChannel.length`` (0 between requests), ``requests`` (the
        queue, a list) and ``persistent`` (true until a request says
        otherwise).
        """
        channel = HTTPChannel()
        self.assertEqual(
            getattr(channel, "length", "gone"), 0, changed("HTTPChannel.length", "")
        )
        self.assertEqual(
            getattr(channel, "requests", "gone"),
            [],
            changed("HTTPChannel.requests", ""),
        )
        self.assertTrue(
            getattr(channel, "persistent", False),
            changed("HTTPChannel.persistent", "no longer true at first"),
        )

    def test_whole_head_state(self) -> None:
        """
        The parser state :meth:`ChannelInternals.whole_head` reads and sets:
        ``LineReceiver``'s ``_buffer``, ``_busyReceiving`` and ``paused``;
        ``HTTPChannel``'s name-mangled ``__first_line`` (1 between
        requests) and ``__header`` (empty), ``_transferDecoder``,
        ``_receivedHeaderSize`` and ``_receivedHeaderCount``, and its
        ``_maybeChooseTransferDecoder(header, data)``; the header name
        encoder (``_nameEncoder.encode``, raising ``InvalidHeaderName``).
        ``tests/unit/test_whole_head.py`` checks the outcome against the
        parser's own.
        """
        channel = HTTPChannel()
        channel.makeConnection(StringTransport())
        expected = {
            "_buffer": b"",
            "_busyReceiving": False,
            "paused": False,
            "_HTTPChannel__first_line": 1,
            "_HTTPChannel__header": b"",
            "_transferDecoder": None,
            "_receivedHeaderSize": 0,
            "_receivedHeaderCount": 0,
        }
        for name, value in expected.items():
            self.assertEqual(
                getattr(channel, name, "gone"),
                value,
                changed("HTTPChannel.%s" % (name,), "not as it was between requests"),
            )
        self.assert_hook(
            HTTPChannel, "_maybeChooseTransferDecoder", ["self", "header", "data"]
        )
        self.assertEqual(_nameEncoder.encode(b"x-thing"), b"X-Thing")
        self.assertRaises(InvalidHeaderName, _nameEncoder.encode, b"bad name")
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\nX-A: 1\r\n")
        self.assertEqual(
            (
                channel._HTTPChannel__first_line,  # type: ignore[attr-defined]
                channel._HTTPChannel__header,  # type: ignore[attr-defined]
            ),
            (0, b"X-A: 1"),
            changed("HTTPChannel.__first_line/__header", "not set by a head"),
        )
        self.assertEqual(
            (channel._receivedHeaderSize, channel._receivedHeaderCount),
            (27, 1),
            changed("HTTPChannel._receivedHeaderSize/Count", "counted otherwise"),
        )


class ChannelBehaviourTests(SynchronousTestCase):
    """
    What Twisted's channel does around the hooks, seen through
    :class:`ChannelInternals`.
    """

    def setUp(self) -> None:
        self.channel = RecordingChannel()
        self.transport = connect(self.channel)

    def answer(self) -> None:
        """
        Finish the request being answered, with a small body.
        """
        request = self.channel.queued_requests()[0]
        request.setHeader(b"content-length", b"2")
        request.write(b"ok")
        request.finish()

    def test_head_then_length_then_body(self) -> None:
        """
        At the blank line ending a head, ``allHeadersReceived`` runs with
        the request's headers parsed and ``HTTPChannel.length`` set; it
        calls the request's ``gotLength`` with that length, before any of
        the body; the body goes to ``handleContentChunk``, then
        ``allContentReceived`` and ``requestReceived`` follow.
        """
        self.channel.dataReceived(
            b"POST /x?a=1 HTTP/1.1\r\nHost: h\r\nX-Probe: 1\r\nContent-Length: 5\r\n\r\n"
        )
        self.channel.dataReceived(b"hel")
        self.channel.dataReceived(b"lo")
        events = [e for e in self.channel.events if e[0] != "dataReceived"]
        self.assertEqual(
            events,
            [
                ("head_received", 5, [b"1"]),
                ("gotLength", 5),
                "head_handled",
                ("chunk", b"hel"),
                ("chunk", b"lo"),
                ("body_received", 5),
                ("requestReceived", b"POST", b"/x?a=1", b"HTTP/1.1"),
                ("process", b"hello"),
            ],
            changed("HTTPChannel.allHeadersReceived/Request.gotLength", "the order"),
        )
        self.assertEqual(
            self.channel.body_length(),
            0,
            changed("HTTPChannel.length", "not reset once the body is in"),
        )

    def test_chunked_and_empty_lengths(self) -> None:
        """
        ``HTTPChannel.length`` reads ``None`` for a chunked body and ``0``
        for none; each chunk's data goes to ``handleContentChunk``.
        """
        self.channel.dataReceived(
            b"POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3\r\nabc\r\n0\r\n\r\n"
        )
        self.assertIn(("head_received", None, None), self.channel.events)
        self.assertIn(("gotLength", None), self.channel.events)
        self.assertIn(("chunk", b"abc"), self.channel.events)
        self.answer()
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertIn(("head_received", 0, None), self.channel.events)
        self.assertIn(("gotLength", 0), self.channel.events)

    def test_expect_continue_after_got_length(self) -> None:
        """
        ``100 Continue`` is sent after ``gotLength``, and only if the
        ``Expect`` header is still there: the gateway's request removes it
        to send its own later.
        """
        head = b"POST / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n"
        self.channel.dataReceived(head)
        self.assertEqual(
            self.transport.value(),
            b"HTTP/1.1 100 Continue\r\n\r\n",
            changed("HTTPChannel.allHeadersReceived", "no 100 Continue"),
        )
        channel = RecordingChannel()
        transport = connect(channel)
        self.patch(RecordingRequest, "drop_expect", True)
        channel.dataReceived(head)
        self.assertEqual(
            transport.value(),
            b"",
            changed(
                "HTTPChannel.allHeadersReceived",
                "100 Continue sent before gotLength, or whatever the headers say",
            ),
        )

    def test_malformed_requests(self) -> None:
        """
        A bad request line, a bad header, conflicting framing and a broken
        chunk each go to ``_respondToBadRequestAndDisconnect``.
        """
        for data in [
            b"GARBAGE\r\n",
            b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n",
            b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
            b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        ]:
            channel = RecordingChannel()
            transport = connect(channel)
            channel.dataReceived(data)
            self.assertIn(
                "refuse_malformed",
                channel.events,
                changed("HTTPChannel._respondToBadRequestAndDisconnect", repr(data)),
            )
            # The default hook is Twisted's own bare 400.
            self.assertEqual(transport.value(), b"HTTP/1.1 400 Bad Request\r\n\r\n")

    def test_request_done_replays_pipelined_bytes(self) -> None:
        """
        ``requestDone`` is called by the first request in the queue once it
        is finished, and replays the bytes that came behind it through
        ``dataReceived``, from inside that call (the gateway's channel
        counts on the re-entry).
        """
        self.channel.dataReceived(
            b"GET /1 HTTP/1.1\r\nHost: h\r\n\r\nGET /2 HTTP/1.1\r\nHost: h\r\n\r\n"
        )
        self.assertEqual(
            [e for e in self.channel.events if e[0] == "requestReceived"],
            [("requestReceived", b"GET", b"/1", b"HTTP/1.1")],
        )
        self.channel.events.clear()
        self.answer()
        self.assertEqual(self.channel.events[0], ("answered", True))
        self.assertIn(
            ("requestReceived", b"GET", b"/2", b"HTTP/1.1"),
            self.channel.events,
            changed("HTTPChannel.requestDone", "pipelined bytes not replayed"),
        )
        self.assertIn(
            ("dataReceived", 0),
            self.channel.events,
            changed("HTTPChannel.requestDone", "replay not through dataReceived"),
        )

    def test_not_persistent_closes(self) -> None:
        """
        With ``HTTPChannel.persistent`` false, ``requestDone`` closes the
        connection after the answer.
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        close_after_answer(self.channel)
        self.answer()
        self.assertTrue(
            self.transport.disconnecting,
            changed("HTTPChannel.persistent", "a false value no longer closes"),
        )

    def test_pipelined_bytes_held_in_data_buffer(self) -> None:
        """
        Bytes that arrive behind a request being answered are held in
        ``HTTPChannel._dataBuffer`` (:func:`take_pipelined` takes them),
        and what was taken is never replayed.
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n\x81\x80abcd")
        self.channel.dataReceived(b"more")
        self.assertEqual(
            take_pipelined(self.channel),
            b"\x81\x80abcdmore",
            changed("HTTPChannel._dataBuffer", "pipelined bytes held elsewhere"),
        )
        self.assertEqual(take_pipelined(self.channel), b"")
        self.channel.events.clear()
        self.answer()
        self.assertNotIn(
            "requestReceived",
            [e[0] for e in self.channel.events],
            changed("HTTPChannel._dataBuffer", "taken bytes replayed"),
        )

    def test_head_written_finish_writes_nothing(self) -> None:
        """
        With ``Request.startedWriting`` set (:func:`head_written`),
        ``finish`` writes neither a head nor a chunk terminator; the
        ``sentLength`` set by :func:`set_sent_length` is what it keeps.
        """
        self.channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        request = self.channel.queued_requests()[0]
        self.transport.clear()
        head_written(request)
        set_sent_length(request, 1234)
        request.finish()
        self.assertEqual(
            self.transport.value(),
            b"",
            changed("Request.startedWriting", "finish() wrote something"),
        )
        self.assertEqual(
            request.sentLength,
            1234,
            changed("Request.sentLength", "not kept"),
        )

    def test_defaults_are_twisteds(self) -> None:
        """
        With its default hooks, :class:`ChannelInternals` writes what
        Twisted's own channel writes, for a request and a malformed one.
        """
        outputs = []
        for factory in (HTTPChannel, ChannelInternals):
            for data in [
                b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 2\r\n\r\nab",
                b"GET / HTTP/1.1\r\nBad header\r\n\r\n",
            ]:
                channel = factory()
                channel.requestFactory = HTTPRequest
                transport = connect(channel)
                channel.dataReceived(data)
                if channel.requests and not transport.disconnecting:
                    channel.requests[0].setResponseCode(201)
                    channel.requests[0].finish()
                outputs.append(transport.value())
        self.assertEqual(outputs[:2], outputs[2:])


class SiteTests(SynchronousTestCase):
    """
    What Twisted's ``Site`` and ``Request.process`` do that the gateway
    repeats or reads.
    """

    def test_site_of(self) -> None:
        """
        ``Site.buildProtocol`` gives its channel a ``site`` attribute.
        """
        site = Site(Resource())
        channel = site.buildProtocol(CLIENT)
        self.assertIs(
            site_of(channel), site, changed("Site.buildProtocol", "no channel.site")
        )
        self.assertIsNone(site_of(HTTPChannel()))

    def test_prepare_as_process_does(self) -> None:
        """
        :func:`prepare_for_root` leaves a request as Twisted's
        ``Request.process`` does before it renders: ``site``, ``sitepath``,
        ``prepath``, the ``Server`` and ``Date`` headers.
        """
        seen: dict[str, Any] = {}

        class Leaf(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                seen["site"] = request.site
                seen["sitepath"] = request.sitepath
                seen["prepath"] = request.prepath
                seen["headers"] = sorted(request.responseHeaders.getAllRawHeaders())
                return b""

        site = Site(Leaf())
        channel = site.buildProtocol(CLIENT)
        connect(channel)
        channel.dataReceived(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n")
        self.assertEqual(seen["site"], site, changed("Request.process", "site"))
        self.assertEqual(seen["sitepath"], [], changed("Request.process", "sitepath"))
        self.assertEqual(seen["prepath"], [], changed("Request.process", "prepath"))
        names = [name for name, _ in seen["headers"]]
        self.assertEqual(
            names, [b"Date", b"Server"], changed("Request.process", "headers")
        )

        plain = HTTPChannel()
        connect(plain)
        plain.site = site  # type: ignore[attr-defined]
        request = Request(plain)
        prepare_for_root(request, site, b"a date")
        self.assertEqual(
            (
                request.site,
                request.sitepath,  # type: ignore[attr-defined]
                request.prepath,
                request.postpath,
            ),
            (site, [], [], []),
        )
        self.assertEqual(
            request.responseHeaders.getRawHeaders(b"server"), [server_version]
        )
        self.assertEqual(request.responseHeaders.getRawHeaders(b"date"), [b"a date"])


class HeaderMapTests(SynchronousTestCase):
    """
    The mapping inside ``Headers`` that :func:`header_map` reads and the
    proxy writes: canonical names to lists of values, shared with every
    public method.
    """

    def test_is_the_live_mapping(self) -> None:
        """
        What the public methods store is in the mapping under the canonical
        name, and what is put in the mapping is what they read.
        """
        headers = Headers()
        headers.addRawHeader(b"x-request-id", b"one")
        raw = header_map(headers)
        self.assertEqual(
            raw,
            {names.canonical_name(b"x-request-id"): [b"one"]},
            changed("Headers._rawHeaders", "not the name-to-values dict"),
        )
        raw[names.CONTENT_LENGTH] = [b"5"]
        self.assertEqual(
            headers.getRawHeaders(b"content-length"),
            [b"5"],
            changed("Headers._rawHeaders", "not read by getRawHeaders"),
        )
        self.assertTrue(headers.hasHeader(b"Content-Length"))
        self.assertIn(
            (b"Content-Length", [b"5"]),
            list(headers.getAllRawHeaders()),
            changed("Headers._rawHeaders", "not read by getAllRawHeaders"),
        )
        headers.removeHeader(b"x-request-id")
        self.assertEqual(list(raw), [names.CONTENT_LENGTH])

    def test_parsed_names_are_canonical(self) -> None:
        """
        A request's parsed headers are stored under the names
        :mod:`metagateway.http.names` computes, whatever case the client
        used.
        """
        seen: list[dict[bytes, list[bytes]]] = []

        class Leaf(Resource):
            isLeaf = True

            def render(self, request: Any) -> bytes:
                seen.append(dict(header_map(request.requestHeaders)))
                return b""

        channel = Site(Leaf()).buildProtocol(CLIENT)
        connect(channel)
        channel.dataReceived(
            b"GET / HTTP/1.1\r\nhOST: h\r\nauthorization: Bearer t\r\n"
            b"UPGRADE: x\r\ncontent-LENGTH: 0\r\n\r\n"
        )
        self.assertEqual(
            seen,
            [
                {
                    names.HOST: [b"h"],
                    names.AUTHORIZATION: [b"Bearer t"],
                    names.UPGRADE: [b"x"],
                    names.CONTENT_LENGTH: [b"0"],
                }
            ],
            changed("Headers", "parsed names stored otherwise"),
        )

    def test_one_line_as_set_raw_headers(self) -> None:
        """
        :func:`one_line` turns line breaks into spaces as ``setRawHeaders``
        does with any value.
        """
        for value in (b"plain", b"a\r\nb", b"a\rb\nc", b"x\r\n\r\ny", b"end\n"):
            headers = Headers()
            headers.setRawHeaders(b"x", [value])
            self.assertEqual(
                [one_line(value)],
                headers.getRawHeaders(b"x"),
                changed("Headers.setRawHeaders", "line breaks kept otherwise"),
            )


class InterfaceTests(SynchronousTestCase):
    """
    The HTTP layer's internal hooks are declared as interfaces, and the
    gateway's classes provide them.
    """

    def test_request(self) -> None:
        """
        The gateway's request provides :class:`IDoneHooks` and
        :class:`IHeadersReceived`.
        """
        site = GatewaySite(Resource())
        channel = site.buildProtocol(CLIENT)
        connect(channel)
        request = StreamingRequest(channel)
        self.assertTrue(verifyObject(IDoneHooks, request))
        self.assertTrue(verifyObject(IHeadersReceived, request))
        self.assertIsInstance(channel, GatewayChannel)

    def test_resource(self) -> None:
        """
        The gateway's root resource provides :class:`IEarlyRouting`.
        """
        resource = GatewayResource(Resource(), {}, own_endpoints=frozenset())
        self.assertTrue(verifyObject(IEarlyRouting, resource))

    def test_plain_request(self) -> None:
        """
        A plain Twisted request provides none of them: the callers fall
        back to Twisted's own behaviour for it.
        """
        request: Callable[..., Any] = HTTPRequest
        channel = HTTPChannel()
        connect(channel)
        plain = request(channel)
        self.assertFalse(IDoneHooks.providedBy(plain))
        self.assertFalse(IHeadersReceived.providedBy(plain))

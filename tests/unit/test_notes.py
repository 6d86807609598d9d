"""
Tests for :mod:`metagateway.notes`: one typed notes object per request,
reachable from any request.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.http import HTTPChannel
from twisted.web.http import Request as HTTPRequest
from twisted.web.resource import Resource

from metagateway.errors import GatewayError, error_response, request_id_of
from metagateway.http.drain import InFlight
from metagateway.http.request import StreamingRequest
from metagateway.http.site import GatewaySite
from metagateway.notes import RequestNotes, new_notes, notes_of
from metagateway.observability.accesslog import (
    note_bytes_in,
    note_refused,
    note_route,
    note_subject,
    note_upstream,
)


def plain_request() -> Any:
    """
    A plain Twisted request (not ``Componentized``) on a connected channel;
    typed ``Any``: ``twisted.web.http.Request`` provides ``IRequest``
    without declaring it.
    """
    channel = HTTPChannel()
    channel.makeConnection(StringTransport())
    return HTTPRequest(channel)


class NotesOfTests(SynchronousTestCase):
    """
    :func:`notes_of` gives each request one notes object.
    """

    def test_made_once(self) -> None:
        """
        The first call makes the notes, with their defaults; later calls
        give the same object; another request has its own.
        """
        request = plain_request()
        notes = notes_of(request)
        self.assertIsInstance(notes, RequestNotes)
        self.assertIs(notes_of(request), notes)
        self.assertIsNot(notes_of(plain_request()), notes)
        self.assertEqual(
            (notes.route, notes.error, notes.bytes_in, notes.bytes_in_noted),
            ("NONE", None, None, False),
        )

    def test_slotted(self) -> None:
        """
        A misspelt field fails at once rather than noting nothing.
        """
        notes = RequestNotes()
        with self.assertRaises(AttributeError):
            notes.rout = "BUILD"  # type: ignore[attr-defined]
        self.assertIn("route='NONE'", repr(notes))

    def test_layers_note(self) -> None:
        """
        The ``note_*`` functions and the error helpers write the one notes
        object.
        """
        request = plain_request()
        note_route(request, "BUILD", "password")
        note_subject(request, "alice")
        note_upstream(request, 502, "truncated")
        note_refused(request, 400, "BAD_REQUEST")
        note_bytes_in(request, 12)
        error_response(request, GatewayError(404, "NOT_FOUND", "x", "CORE"))
        notes = notes_of(request)
        self.assertEqual(
            (
                notes.route,
                notes.login,
                notes.subject,
                notes.upstream_status,
                notes.upstream_error,
                notes.refused,
                notes.error,
                notes.bytes_in,
                notes.bytes_in_noted,
            ),
            (
                "BUILD",
                "password",
                "alice",
                502,
                "truncated",
                400,
                "NOT_FOUND",
                12,
                True,
            ),
        )
        self.assertEqual(notes.request_id, request_id_of(request))

    def test_draining(self) -> None:
        """
        A request's notes say it is answered while draining only once it is
        counted in requests in flight that drain.
        """
        request = plain_request()
        self.assertFalse(notes_of(request).draining())
        in_flight = InFlight()
        in_flight.track(request, watch=False)
        self.assertFalse(notes_of(request).draining())
        in_flight.draining = True
        self.assertTrue(notes_of(request).draining())

    def test_new_notes(self) -> None:
        """
        :func:`new_notes` replaces a request's notes with fresh ones, which
        :func:`notes_of` then finds; the gateway's request has its own from
        the start.
        """
        request = plain_request()
        notes_of(request).route = "BUILD"
        fresh = new_notes(request)
        self.assertEqual(fresh.route, "NONE")
        self.assertIs(notes_of(request), fresh)
        channel = GatewaySite(Resource()).buildProtocol(None)
        channel.makeConnection(StringTransport())
        ours = StreamingRequest(channel)
        self.assertIs(notes_of(ours), ours.metagateway_notes)

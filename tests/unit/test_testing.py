"""
Tests for :mod:`metagateway.testing`: each fake provides the interface it
stands in for, the scripted resource hangs and drops as told, and the
gateway's own modules never import the package.
"""

from __future__ import annotations

import ast
import os

from zope.interface.verify import verifyClass, verifyObject

from twisted.internet.interfaces import IConsumer, IReactorFromThreads
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.iweb import IAgent, IResponse
from twisted.web.resource import IResource

import metagateway
from metagateway.credentials.interfaces import (
    ICredentialStore,
    IWritableCredentialStore,
)
from metagateway.testing import (
    ChannelHarness,
    FakeAgent,
    FakeGitHub,
    FakeResponse,
    FakeS3,
    FakeThreadPool,
    GatewayHarness,
    ImmediateReactor,
    MemoryCredentialStore,
    RecordingConsumer,
    RecordingUpstream,
    StubTreq,
)


class InterfaceTests(SynchronousTestCase):
    """
    Each fake provides the interface of what it stands in for.
    """

    def test_agent(self) -> None:
        """
        :class:`FakeAgent` is an ``IAgent``.
        """
        self.assertTrue(verifyClass(IAgent, FakeAgent))
        self.assertTrue(verifyObject(IAgent, FakeAgent()))

    def test_response(self) -> None:
        """
        :class:`FakeResponse` is an ``IResponse``.
        """
        self.assertTrue(verifyClass(IResponse, FakeResponse))
        self.assertTrue(verifyObject(IResponse, FakeResponse()))

    def test_consumer(self) -> None:
        """
        :class:`RecordingConsumer` is an ``IConsumer``.
        """
        self.assertTrue(verifyObject(IConsumer, RecordingConsumer()))

    def test_store(self) -> None:
        """
        The harness's store, a ``MemoryCredentialStore``, is a writable
        credential store.
        """
        store = GatewayHarness().store
        self.assertIsInstance(store, MemoryCredentialStore)
        self.assertTrue(verifyObject(ICredentialStore, store))
        self.assertTrue(verifyObject(IWritableCredentialStore, store))

    def test_resources(self) -> None:
        """
        The fake upstream, the fake GitHub and the fake S3 bucket are
        ``IResource``s.
        """
        github = FakeGitHub()
        for resource in (
            RecordingUpstream(),
            github.root,
            github.token,
            github.user,
            github.hosts(),
            FakeS3(MemoryReactorClock()),
        ):
            self.assertTrue(verifyObject(IResource, resource))

    def test_reactor_from_threads(self) -> None:
        """
        :class:`ImmediateReactor` is an ``IReactorFromThreads`` and calls
        at once.
        """
        reactor = ImmediateReactor()
        self.assertTrue(verifyObject(IReactorFromThreads, reactor))
        called: list[int] = []
        reactor.callFromThread(called.append, 1)
        self.assertEqual(called, [1])

    def test_thread_pool(self) -> None:
        """
        :class:`FakeThreadPool` runs its work only when told, and reports
        results and failures as a ``ThreadPool`` does.
        """
        pool = FakeThreadPool()
        outcomes: list[tuple[bool, object]] = []
        pool.callInThreadWithCallback(lambda *o: outcomes.append(o), int, "7")
        pool.callInThreadWithCallback(lambda *o: outcomes.append(o), int, "x")
        self.assertEqual(outcomes, [])
        pool.run()
        self.assertEqual(outcomes[0], (True, 7))
        self.assertFalse(outcomes[1][0])
        self.assertEqual(pool.work, [])


class ScriptedResourceTests(SynchronousTestCase):
    """
    :class:`RecordingUpstream` (a ``ScriptedResource``) answers, hangs or
    drops as scripted, recording each request.
    """

    def test_answers(self) -> None:
        """
        By default the upstream answers with its status, headers and body.
        """
        upstream = RecordingUpstream(b"hi", 201, {b"X-A": [b"1"]})
        client = StubTreq(upstream)
        response = self.successResultOf(
            client.post("http://up.test/p?q", b"sent", headers={b"X-B": b"2"})
        )
        self.assertEqual(response.code, 201)
        self.assertEqual(response.headers.getRawHeaders(b"x-a"), [b"1"])
        self.assertEqual(self.successResultOf(client.content(response)), b"hi")
        [(method, uri, headers, body)] = upstream.requests
        self.assertEqual((method, uri, body), (b"POST", b"/p?q", b"sent"))
        self.assertEqual(headers.getRawHeaders(b"x-b"), [b"2"])

    def test_hang(self) -> None:
        """
        With ``hang`` set, requests are recorded and held unanswered.
        """
        upstream = RecordingUpstream()
        upstream.hang = True
        d = StubTreq(upstream).get("http://up.test/")
        self.assertNoResult(d)
        self.assertEqual(len(upstream.pending), 1)
        self.assertEqual(len(upstream.requests), 1)

    def test_drop(self) -> None:
        """
        With ``drop`` set, the connection is aborted: the request fails.
        """
        upstream = RecordingUpstream()
        upstream.drop = True
        d = StubTreq(upstream).get("http://up.test/")
        self.failureResultOf(d)
        self.assertEqual(len(upstream.requests), 1)


class HarnessTests(SynchronousTestCase):
    """
    The harnesses build a working gateway.
    """

    def test_gateway_harness_login(self) -> None:
        """
        The gateway harness's demo account logs in.
        """
        self.assertTrue(GatewayHarness().login(self))

    def test_channel_harness(self) -> None:
        """
        The channel harness answers a request written as bytes, with the
        gateway's JSON 404 for an unknown path.
        """
        h = ChannelHarness()
        h.send(b"GET /nowhere HTTP/1.1\r\nHost: gateway.test\r\n\r\n")
        response = h.response()
        self.assertEqual(response.code, 404)
        self.assertEqual(response.json()["code"], "NOT_FOUND")


class LayerTests(SynchronousTestCase):
    """
    :mod:`metagateway.testing` is for tests: the gateway never imports it.
    """

    def test_not_imported_by_runtime_modules(self) -> None:
        """
        No module of the gateway outside ``metagateway/testing`` imports
        ``metagateway.testing``.
        """
        root = os.path.dirname(os.path.abspath(metagateway.__file__))
        importers = []
        checked = 0
        for folder, dirs, files in os.walk(root):
            dirs[:] = [d for d in dirs if d not in ("testing", "__pycache__")]
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    tree = ast.parse(f.read(), path)
                checked += 1
                for node in ast.walk(tree):
                    if isinstance(node, ast.ImportFrom):
                        names = [node.module or ""] + [
                            (node.module or "") + "." + a.name for a in node.names
                        ]
                    elif isinstance(node, ast.Import):
                        names = [a.name for a in node.names]
                    else:
                        continue
                    if any(
                        n == "metagateway.testing"
                        or n.startswith("metagateway.testing.")
                        for n in names
                    ):
                        importers.append(path)
        self.assertGreater(checked, 20)
        self.assertEqual(importers, [])

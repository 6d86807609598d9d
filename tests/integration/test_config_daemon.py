"""
The configuration file and ``SIGHUP`` through the real daemon
(:ref:`contract-config-file`): an upstream pool with one upstream killed mid-run,
reloads under
load, a bad file on reload, secret rotation via
``GATEWAY_JWT_SECRET_FILE``, and ``--workers 2``.
"""

from __future__ import annotations

import json
from typing import Any

import jwt

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.task import deferLater
from twisted.trial.unittest import TestCase
from twisted.web.http import HTTPChannel
from twisted.web.server import Site

from metagateway.testing import SECRET, RecordingUpstream
from tests.daemon import PASSWORD, USER, http_client, serve_world, start_daemon

#: Seconds between polls.
POLL = 0.05


class KillableUpstream:
    """
    A recording upstream on loopback whose connections can all be cut at
    once, as if its process were killed.
    """

    def __init__(self, case: TestCase, body: bytes) -> None:
        self.resource = RecordingUpstream(body)
        self.site = Site(self.resource)
        self.site.protocol = HTTPChannel  # type: ignore[assignment]
        self.killed = False
        self.protocols: list[Any] = []
        build = self.site.buildProtocol

        def remember(addr: Any) -> Any:
            protocol = build(addr)
            self.protocols.append(protocol)
            return protocol

        self.site.buildProtocol = remember  # type: ignore[method-assign]
        listen: Any = reactor.listenTCP  # type: ignore[attr-defined]
        self.port: Any = listen(0, self.site, interface="127.0.0.1")
        case.addCleanup(self.kill)
        self.url = "http://127.0.0.1:%d" % (self.port.getHost().port,)

    def kill(self) -> Any:
        """
        Stop listening (connections are refused) and cut every connection.
        """
        if self.killed:
            return None
        self.killed = True
        for protocol in self.protocols:
            if protocol.transport is not None:
                protocol.transport.abortConnection()
        return self.port.stopListening()


def write(path: str, text: str) -> None:
    """
    Replace the file at ``path`` with ``text``.
    """
    with open(path, "w") as f:
        f.write(text)


def route(
    prefix: str,
    name: str,
    *upstreams: str,
    token: str = "none",  # noqa: S107 (a policy)
) -> str:
    """
    One ``[[route]]`` table.
    """
    return '[[route]]\nprefix = "%s"\nname = "%s"\nupstreams = %s\ntoken = "%s"\n' % (
        prefix,
        name,
        json.dumps(list(upstreams)),
        token,
    )


async def wait_for(child: Any, text: bytes, count: int = 1) -> None:
    """
    Wait (at most 10 s) until the child has logged ``text`` ``count`` times.
    """
    for _ in range(200):
        if child.output.count(text) >= count:
            return
        await deferLater(reactor, POLL, lambda: None)
    raise AssertionError("%r not logged:\n%s" % (text, child.output.decode()))


class ConfigDaemonTests(TestCase):
    """
    The daemon with ``--config``.
    """

    timeout = 120

    def setUp(self) -> None:
        self.accounts, self.upstream, self.upstream_url = serve_world(self)
        self.http = http_client(self)
        self.config = self.mktemp()

    async def start(self, env: dict[str, str], *options: str) -> tuple[Any, str]:
        """
        The daemon with :attr:`config` and the accounts directory.
        """
        env.setdefault("GATEWAY_JWT_SECRET", SECRET)
        return await start_daemon(
            self,
            env,
            "--accounts-dir",
            self.accounts.path,
            "--config",
            self.config,
            *options,
        )

    async def get(self, url: str, **kw: Any) -> tuple[int, bytes]:
        """
        GET ``url``: status and body.
        """
        response = await self.http.get(url, **kw)
        return response.code, await response.content()

    def test_pool_one_killed(self) -> Deferred[None]:
        """
        Two upstreams, one killed mid-run: every request still succeeds,
        and both served before.
        """

        async def test() -> None:
            one = KillableUpstream(self, b"one")
            two = KillableUpstream(self, b"two")
            write(self.config, route("/svc", "SVC", one.url, two.url))
            _, base = await self.start({})
            bodies = []
            for i in range(60):
                if i == 20:
                    await one.kill()
                code, body = await self.get(base + "/svc/x")
                self.assertEqual(code, 200, body)
                bodies.append(body)
            self.assertEqual(set(bodies[:20]), {b"one", b"two"})
            self.assertEqual(set(bodies[21:]), {b"two"})

        return Deferred.fromCoroutine(test())

    def test_sighup_under_load(self) -> Deferred[None]:
        """
        Five reloads (each changing the routes) during a load loop: no
        request fails, no connection is dropped, the gateway keeps running.
        """

        async def test() -> None:
            second = KillableUpstream(self, b"second")
            write(self.config, route("/svc", "SVC", self.upstream_url))
            child, base = await self.start({})
            failures: list[Any] = []
            done = [0]

            async def loop() -> None:
                client = http_client(self)
                for _ in range(100):
                    try:
                        response = await client.get(base + "/svc/x")
                        await response.content()
                        if response.code != 200:
                            failures.append(response.code)
                    except Exception as e:  # noqa: BLE001 - counted
                        failures.append(e)
                    done[0] += 1

            async def reloads() -> None:
                for i in range(5):
                    await deferLater(reactor, 0.1, lambda: None)
                    upstreams = [self.upstream_url] + (
                        [second.url] if i % 2 == 0 else []
                    )
                    write(
                        self.config,
                        route("/svc", "SVC", *upstreams)
                        + route("/n%d" % i, "N%d" % i, second.url),
                    )
                    child.signal("HUP")
                    await wait_for(child, b"Reloaded", i + 1)

            await gatherResults(
                [Deferred.fromCoroutine(loop()) for _ in range(4)]
                + [Deferred.fromCoroutine(reloads())]
            )
            self.assertEqual(failures, [])
            self.assertEqual(done[0], 400)
            self.assertIsNone(child.exit_code)
            self.assertEqual((await self.get(base + "/n4/x"))[0], 200)

        return Deferred.fromCoroutine(test())

    def test_bad_file_on_reload(self) -> Deferred[None]:
        """
        An invalid file on reload: one log line, the old routes stay.
        """

        async def test() -> None:
            write(self.config, route("/svc", "SVC", self.upstream_url))
            child, base = await self.start({})
            write(self.config, route("/svc", "SVC", self.upstream_url) + "tokn = 1\n")
            child.signal("HUP")
            await wait_for(child, b"Reload refused; the running configuration stays")
            self.assertIn(b"route[0].tokn: unknown key", child.output)
            self.assertEqual((await self.get(base + "/svc/x"))[0], 200)
            self.assertIsNone(child.exit_code)

        return Deferred.fromCoroutine(test())

    def test_secret_rotation(self) -> Deferred[None]:
        """
        A new secret in ``GATEWAY_JWT_SECRET_FILE``, then ``SIGHUP``: new
        tokens are signed with it, and the old ones still verify.
        """

        async def test() -> None:
            secret_file = self.mktemp()
            write(secret_file, SECRET + "\n")
            write(
                self.config,
                route("/svc", "SVC", self.upstream_url, token="required"),
            )
            child, base = await self.start({"GATEWAY_JWT_SECRET_FILE": secret_file})

            async def login() -> str:
                response = await self.http.post(
                    base + "/auth/login",
                    json.dumps({"username": USER, "password": PASSWORD}).encode(),
                )
                body = json.loads(await response.content())
                self.assertEqual(response.code, 200, body)
                return str(body["token"])

            old = await login()
            new_secret = "rotated-" + SECRET
            write(secret_file, new_secret + "\n")
            child.signal("HUP")
            await wait_for(child, b"Reloaded")
            new = await login()
            jwt.decode(
                new, new_secret, algorithms=["HS256"], audience="metacogna-clients"
            )
            for token in (old, new):
                code, body = await self.get(
                    base + "/svc/x", headers={"Authorization": "Bearer " + token}
                )
                self.assertEqual(code, 200, body)

        return Deferred.fromCoroutine(test())

    def test_workers_reload(self) -> Deferred[None]:
        """
        ``--workers 2``: ``SIGHUP`` to the supervisor reloads both workers.
        """

        async def test() -> None:
            write(self.config, route("/svc", "SVC", self.upstream_url))
            child, base = await self.start({}, "--workers", "2")
            write(
                self.config,
                route("/svc", "SVC", self.upstream_url)
                + route("/new", "NEW", self.upstream_url),
            )
            # Both workers up (each logs its start) before the signal.
            await wait_for(child, b"GatewaySite starting on", 2)
            child.signal("HUP")
            await wait_for(child, b"Reloaded", 2)
            codes = []
            for _ in range(20):
                response = await http_client(self).get(
                    base + "/new/x", headers={"Connection": "close"}
                )
                await response.content()
                codes.append(response.code)
            self.assertEqual(codes, [200] * 20)
            self.assertIsNone(child.exit_code)

        return Deferred.fromCoroutine(test())

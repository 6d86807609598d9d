"""
Security state shared by real daemons (:ref:`contract-shared-state`): two ``twistd
metagateway`` daemons naming one ``redis-server``, and ``--workers 2``
without one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.trial.unittest import SkipTest, TestCase

from metagateway.testing import SECRET
from tests.daemon import (
    PASSWORD,
    USER,
    child_environ,
    http_client,
    serve_world,
    start_daemon,
)
from tests.redisserver import RedisServer, redis_problem

#: How often the tests look again, in seconds.
POLL = 0.05


class SharedStateDaemonTests(TestCase):
    """
    Two daemons sharing one Redis.
    """

    timeout = 90

    def setUp(self) -> None:
        problem = redis_problem()
        if problem is not None:
            raise SkipTest(problem)
        self.redis = RedisServer()
        self.redis.start()
        self.addCleanup(self.redis.stop)
        self.accounts, self.upstream, self.upstream_url = serve_world(self)
        self.http = http_client(self)

    async def daemon(self, *options: str) -> str:
        """
        Start a daemon sharing this test's Redis; return its base URL.
        """
        env = {"GATEWAY_JWT_SECRET": SECRET, "BUILD_SERVICE_URL": self.upstream_url}
        _, base = await start_daemon(
            self,
            env,
            "--accounts-dir",
            self.accounts.path,
            "--state-url",
            self.redis.url,
            *options,
        )
        return base

    async def login(self, base: str, password: str = PASSWORD) -> tuple[int, Any]:
        response = await self.http.post(
            base + "/auth/login",
            json.dumps({"username": USER, "password": password}).encode(),
        )
        return response.code, json.loads(await response.content())

    async def token(self, base: str) -> str:
        """
        Log in at ``base`` (waiting until its state store is reachable).
        """
        for _ in range(200):
            code, body = await self.login(base)
            if code == 200:
                return str(body["token"])
            self.assertEqual((code, body["code"]), (503, "STATE_UNAVAILABLE"))
            await deferLater(reactor, POLL, lambda: None)
        raise AssertionError("no login at %s" % (base,))

    async def status(self, url: str, token: str) -> int:
        response = await self.http.get(
            url, headers={"Authorization": "Bearer " + token}
        )
        await response.content()
        return int(response.code)

    async def logout(self, base: str, token: str) -> None:
        response = await self.http.post(
            base + "/core/logout", headers={"Authorization": "Bearer " + token}
        )
        self.assertEqual(response.code, 200)
        self.assertEqual(json.loads(await response.content()), {"success": True})

    async def refused_within(self, base: str, token: str, seconds: float) -> float:
        """
        Poll ``/build/x`` with ``token`` at ``base`` until it is refused
        (``403``); fail if that takes longer than ``seconds``.

        :return: how long it took.
        """
        start = reactor.seconds()
        while True:
            code = await self.status(base + "/build/x", token)
            elapsed = reactor.seconds() - start
            if code == 403:
                return elapsed
            self.assertEqual(code, 200)
            if elapsed > seconds:
                raise AssertionError("still accepted after %.2f s" % (elapsed,))
            await deferLater(reactor, POLL, lambda: None)

    def test_logout_everywhere(self) -> Deferred[None]:
        """
        A token logged out at one daemon is refused by the other within
        1 s, by ``/build`` and ``/core/session``.
        """

        async def test() -> None:
            a = await self.daemon()
            b = await self.daemon()
            token = await self.token(a)
            await self.token(b)
            self.assertEqual(await self.status(b + "/build/x", token), 200)
            await self.logout(a, token)
            await self.refused_within(b, token, 1.0)
            self.assertEqual(await self.status(b + "/core/session", token), 403)
            self.assertEqual(await self.status(a + "/build/x", token), 403)

        return Deferred.fromCoroutine(test())

    def test_failures_counted_across(self) -> Deferred[None]:
        """
        Wrong passwords spread over both daemons get at most
        ``--login-failures-per-user`` ``401`` answers in all, then ``429``.
        """

        async def test() -> None:
            a = await self.daemon("--login-failures-per-user", "3")
            b = await self.daemon("--login-failures-per-user", "3")
            await self.token(a)
            await self.token(b)
            codes = []
            for i in range(10):
                code, body = await self.login((a, b)[i % 2], "wrong-%d" % (i,))
                codes.append(code)
            self.assertEqual(codes, [401] * 3 + [429] * 7)

        return Deferred.fromCoroutine(test())

    def test_redis_down_and_back(self) -> Deferred[None]:
        """
        With Redis stopped, logins answer ``503 STATE_UNAVAILABLE``,
        proxying goes on, ``/core/logout`` answers ``200`` and holds at
        once where it was made; once Redis is back (empty), the other
        daemon refuses that token too. ``/health`` never minds.
        """

        async def test() -> None:
            a = await self.daemon()
            b = await self.daemon()
            token = await self.token(a)
            await self.token(b)
            self.redis.stop()
            for base, route in ((a, "AUTH"), (b, "AUTH")):
                code, body = await self.login(base)
                self.assertEqual(code, 503)
                self.assertEqual(
                    (body["code"], body["route"]), ("STATE_UNAVAILABLE", route)
                )
            response = await self.http.post(
                b + "/core/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            body = json.loads(await response.content())
            self.assertEqual((response.code, body["route"]), (503, "CORE"))
            self.assertEqual(await self.status(b + "/build/x", token), 200)
            self.assertEqual(await self.status(a + "/health", token), 200)
            await self.logout(a, token)
            self.assertEqual(await self.status(a + "/build/x", token), 403)
            self.assertEqual(await self.status(b + "/build/x", token), 200)
            self.redis.start()
            await self.refused_within(b, token, 15.0)
            await self.token(a)

        return Deferred.fromCoroutine(test())

    def test_revoke_user(self) -> Deferred[None]:
        """
        ``metagateway-admin --state-url URL revoke-user NAME`` ends NAME's
        live tokens at both daemons within 1 s; a new login works.
        """

        async def test() -> None:
            a = await self.daemon()
            b = await self.daemon()
            first = await self.token(a)
            second = await self.token(b)
            done = await deferToThread(
                subprocess.run,
                [
                    sys.executable,
                    "-m",
                    "metagateway.admin",
                    "--state-url",
                    self.redis.url,
                    "revoke-user",
                    USER,
                ],
                capture_output=True,
                env=child_environ({}),
                timeout=60,
                cwd="/",
            )
            self.assertEqual(done.returncode, 0, done.stderr)
            for base in (a, b):
                for token in (first, second):
                    await self.refused_within(base, token, 1.0)
            # Tokens issued in a later second than the revocation are good.
            await deferLater(reactor, 1.1, lambda: None)
            fresh = await self.token(b)
            self.assertEqual(await self.status(a + "/build/x", fresh), 200)

        return Deferred.fromCoroutine(test())


class WorkersStateTests(TestCase):
    """
    ``--workers 2`` without ``--state-url``: the workers share their state
    through the supervisor.
    """

    timeout = 90

    def setUp(self) -> None:
        self.accounts, self.upstream, self.upstream_url = serve_world(self)
        self.http = http_client(self)

    def test_logout_refused_by_all_workers(self) -> Deferred[None]:
        """
        After a logout, 20 of 20 requests with that token are refused,
        whichever worker answers each; failures count across workers.
        """

        async def test() -> None:
            env = {"GATEWAY_JWT_SECRET": SECRET, "BUILD_SERVICE_URL": self.upstream_url}
            _, base = await start_daemon(
                self,
                env,
                "--accounts-dir",
                self.accounts.path,
                "--workers",
                "2",
                "--login-failures-per-user",
                "4",
            )
            token: Optional[str] = None
            for _ in range(100):
                response = await self.http.post(
                    base + "/auth/login",
                    json.dumps({"username": USER, "password": PASSWORD}).encode(),
                )
                body = json.loads(await response.content())
                if response.code == 200:
                    token = body["token"]
                    break
                await deferLater(reactor, POLL, lambda: None)
            assert token is not None
            response = await self.http.post(
                base + "/core/logout", headers={"Authorization": "Bearer " + token}
            )
            self.assertEqual(response.code, 200)
            await response.content()
            await deferLater(reactor, 1.0, lambda: None)
            codes = []
            for _ in range(20):
                # A new connection each time, so both workers answer some.
                response = await http_client(self).get(
                    base + "/build/x",
                    headers={"Authorization": "Bearer " + token, "Connection": "close"},
                )
                await response.content()
                codes.append(response.code)
            self.assertEqual(codes, [403] * 20)
            codes = []
            for i in range(12):
                response = await http_client(self).post(
                    base + "/auth/login",
                    json.dumps({"username": USER, "password": "wrong-%d" % i}).encode(),
                    headers={"Connection": "close"},
                )
                await response.content()
                codes.append(response.code)
            self.assertEqual(codes, [401] * 4 + [429] * 8)

        return Deferred.fromCoroutine(test())

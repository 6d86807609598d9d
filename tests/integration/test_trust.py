"""
What upstreams can trust (:ref:`contract-assertions`), end to end: the real daemon signs
an assertion on every proxied request, which an upstream on loopback
verifies against the daemon's own JWKS with :mod:`metagateway.verify`; and
mutual TLS to an HTTPS upstream whose certificate a test CA (made at test
time) signed, and which requires a client certificate.
"""

from __future__ import annotations

import json
import os
from typing import Any, Optional

from twisted.internet import reactor
from twisted.internet.defer import Deferred, ensureDeferred, gatherResults
from twisted.internet.ssl import Certificate, CertificateOptions, PrivateCertificate
from twisted.internet.task import deferLater
from twisted.python.filepath import FilePath
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from metagateway.auth.assertion import key_id, load_key, new_key_pem
from metagateway.auth.passwords import make_record
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.testing import SECRET
from metagateway.verify import (
    InvalidAssertion,
    KeySet,
    TwistedAssertionVerifier,
    assertion_kid,
    verify_assertion,
)
from tests.daemon import ChildProcess, http_client, start_daemon
from tests.integration.test_config_daemon import wait_for
from tests.tlsfiles import make_pki

USER, PASSWORD = "operator", "s3cret-pass"


class VerifyingUpstream(Resource):
    """
    An upstream that answers only requests whose assertion verifies
    against the gateway's JWKS (401 otherwise), echoing the claims.

    :ivar verifier: set once the gateway's address is known.
    :ivar verified: the assertions verified.
    :ivar tokens: the assertions verified, as received; each answer names
        the key that signed it in ``X-Assertion-Kid``.
    :ivar refused: why each refused request was refused.
    """

    isLeaf = True

    def __init__(self) -> None:
        super().__init__()
        self.verifier: Optional[TwistedAssertionVerifier] = None
        self.verified: list[Any] = []
        self.tokens: list[str] = []
        self.refused: list[str] = []

    def render(self, request: Request) -> Any:
        assert self.verifier is not None
        d = self.verifier.verify_request(request)

        def ok(assertion: Any) -> None:
            self.verified.append(assertion)
            request.setHeader(b"Content-Type", b"application/json")
            token = (request.getHeader(b"X-Gateway-Assertion") or b"").decode()
            self.tokens.append(token)
            kid = assertion_kid(token)
            request.setHeader(b"X-Assertion-Kid", (kid or "").encode("ascii"))
            request.write(json.dumps(dict(assertion.claims)).encode())
            request.finish()

        def refused(failure: Any) -> None:
            failure.trap(InvalidAssertion)
            self.refused.append(str(failure.value))
            request.setResponseCode(401)
            request.write(b"no assertion")
            request.finish()

        d.addCallbacks(ok, refused)
        return NOT_DONE_YET


class AssertionDaemonTests(TestCase):
    """
    The daemon's assertions, verified by an upstream.
    """

    timeout = 60

    def setUp(self) -> None:
        self.accounts = FilePath(self.mktemp())
        DirectoryCredentialStore(self.accounts).store(
            make_record(USER, PASSWORD, "admin")
        )
        self.upstream = VerifyingUpstream()
        port = reactor.listenTCP(0, Site(self.upstream), interface="127.0.0.1")  # type: ignore[arg-type]
        self.addCleanup(port.stopListening)
        self.upstream_url = "http://127.0.0.1:%d" % (port.getHost().port,)  # type: ignore[attr-defined]
        self.key = self.mktemp()
        with open(self.key, "wb") as f:
            f.write(new_key_pem())
        self.http = http_client(self)
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.agent = Agent(reactor, pool=pool)

    def test_every_assertion_verifies(self) -> Deferred[None]:
        """
        Anonymous and logged-in requests, on two routes, with and without a
        forged ``X-Gateway-Assertion``: every one reaches the upstream with
        an assertion that verifies (signature, ``aud``, ``exp``, method,
        path) against the key fetched from the daemon's JWKS; the claims
        name the user. A request straight to the upstream with the forged
        header is refused by it.
        """

        async def go() -> None:
            child, base = await start_daemon(
                self,
                {
                    "GATEWAY_JWT_SECRET": SECRET,
                    "GATEWAY_ASSERTION_KEY_FILE": self.key,
                    "BUILD_SERVICE_URL": self.upstream_url + "/svc",
                    "KV_SERVICE_URL": self.upstream_url,
                },
                "--accounts-dir",
                self.accounts.path,
            )
            self.upstream.verifier = TwistedAssertionVerifier(
                self.agent,
                base + "/.well-known/jwks.json",
                ["BUILD", "KV"],
                reactor,  # type: ignore[arg-type]
            )
            jwks = await self.http.get(base + "/.well-known/jwks.json")
            self.assertEqual(jwks.code, 200)
            self.assertEqual(
                jwks.headers.getRawHeaders(b"cache-control"), [b"max-age=300"]
            )
            self.assertEqual(len(json.loads(await jwks.content())["keys"]), 1)
            login = await self.http.post(
                base + "/auth/login",
                json.dumps({"username": USER, "password": PASSWORD}).encode(),
            )
            token = json.loads(await login.content())["token"]
            forged = {"X-Gateway-Assertion": "eyJhbGciOiJub25lIn0.e30."}
            cases = [
                ("GET", "/kv/a?x=1", {}, "anonymous", "KV", "/a"),
                ("POST", "/kv/b/c", forged, "anonymous", "KV", "/b/c"),
                (
                    "PUT",
                    "/build/x",
                    {"Authorization": "Bearer " + token},
                    USER,
                    "BUILD",
                    "/svc/x",
                ),
                (
                    "DELETE",
                    "/build/y/z",
                    dict(forged, Authorization="Bearer " + token),
                    USER,
                    "BUILD",
                    "/svc/y/z",
                ),
            ] * 3
            for i, (method, path, headers, sub, aud, signed_path) in enumerate(cases):
                request_id = "trust-%d" % (i,)
                response = await self.http.request(
                    method,
                    base + path,
                    headers=dict(headers, **{"X-Request-Id": request_id}),
                    data=b"x",
                )
                body = await response.content()
                self.assertEqual(
                    response.code, 200, (path, body, self.upstream.refused)
                )
                claims = json.loads(body)
                self.assertEqual(
                    (claims["sub"], claims["aud"], claims["method"], claims["path"]),
                    (sub, aud, method, signed_path),
                )
                self.assertEqual(claims["exp"] - claims["iat"], 60)
                self.assertEqual(claims["jti"], request_id)
            self.assertEqual(self.upstream.refused, [])
            self.assertEqual(len(self.upstream.verified), len(cases))
            direct = await self.http.get(self.upstream_url + "/svc/x", headers=forged)
            await direct.content()
            self.assertEqual(direct.code, 401)
            self.assertEqual(len(self.upstream.refused), 1)
            await self.stop(child)

        return ensureDeferred(go())

    def test_rotation_by_sighup(self) -> Deferred[None]:
        """
        A new key in ``GATEWAY_ASSERTION_KEY_FILE`` and ``SIGHUP`` while
        four clients send requests: every request is verified by the
        upstream against the daemon's JWKS (no failure during the
        overlap), those sent after the reload carry the new key's ``kid``,
        and the JWKS then lists the new key and the old one, which still
        verifies the assertions signed before the reload.
        """

        async def go() -> None:
            old_kid = key_id(load_key(self.key).public_key())
            child, base = await start_daemon(
                self,
                {
                    "GATEWAY_JWT_SECRET": SECRET,
                    "GATEWAY_ASSERTION_KEY_FILE": self.key,
                    "KV_SERVICE_URL": self.upstream_url,
                },
                "--accounts-dir",
                self.accounts.path,
            )
            jwks_url = base + "/.well-known/jwks.json"
            # refresh_interval=0: the reload may come within a second of
            # the upstream's first fetch, when a new kid waits for that
            # second to pass (unit-tested in test_verify); here every
            # request must verify.
            self.upstream.verifier = TwistedAssertionVerifier(
                self.agent,
                jwks_url,
                "KV",
                reactor,  # type: ignore[arg-type]
                refresh_interval=0,
            )
            failures: list[Any] = []
            # (sent once the reload was logged, the answer's kid)
            seen: list[tuple[bool, str]] = []
            reloaded = [False]
            sent = [0]

            async def loop(client: Any, n: int) -> None:
                for i in range(n):
                    after = reloaded[0]
                    sent[0] += 1
                    try:
                        response = await client.get(base + "/kv/x%d" % (i,))
                        body = await response.content()
                    except Exception as e:  # noqa: BLE001 - counted
                        failures.append(e)
                        continue
                    if response.code != 200:
                        failures.append((response.code, body))
                        continue
                    kid = response.headers.getRawHeaders(b"x-assertion-kid")[0]
                    seen.append((after, kid.decode("ascii")))

            async def rotate() -> None:
                while sent[0] < 40:
                    await deferLater(reactor, 0.01, lambda: None)
                replacement = self.key + ".new"
                with open(replacement, "wb") as f:
                    f.write(new_key_pem())
                os.replace(replacement, self.key)
                child.signal("HUP")
                await wait_for(child, b"Reloaded")
                reloaded[0] = True

            clients = [http_client(self) for _ in range(4)]
            await gatherResults(
                [Deferred.fromCoroutine(loop(c, 40)) for c in clients]
                + [Deferred.fromCoroutine(rotate())]
            )
            new_kid = key_id(load_key(self.key).public_key())
            self.assertNotEqual(new_kid, old_kid)
            self.assertEqual(failures, [])
            self.assertEqual(self.upstream.refused, [])
            self.assertEqual(len(seen), 160)
            self.assertEqual(len(self.upstream.verified), 160)
            self.assertIn(b"Assertion key reloaded", child.output)
            before = [kid for after, kid in seen if not after]
            after = [kid for after, kid in seen if after]
            self.assertIn(old_kid, before)
            self.assertTrue(after, "no request sent after the reload")
            self.assertEqual(set(after), {new_kid})
            self.assertLessEqual(set(before), {old_kid, new_kid})
            jwks = await self.http.get(jwks_url)
            document = await jwks.content()
            self.assertEqual(
                [key["kid"] for key in json.loads(document)["keys"]],
                [new_kid, old_kid],
            )
            # An assertion signed with the old key before the reload (the
            # first request's; it has not expired) still verifies against
            # the JWKS published after it.
            first = self.upstream.tokens[0]
            self.assertEqual(assertion_kid(first), old_kid)
            verified = verify_assertion(
                first, KeySet.from_json(document), "KV", "GET", "/x0"
            )
            self.assertEqual(verified.route, "KV")
            await self.stop(child)

        return ensureDeferred(go())

    async def stop(self, child: ChildProcess) -> None:
        """
        Stop the daemon and wait for it.
        """
        child.signal("TERM")
        await child.ended


class HelloResource(Resource):
    """
    Answers ``hello over mTLS``, with the client certificate's subject.
    """

    isLeaf = True

    def render(self, request: Request) -> bytes:
        peer = request.transport.getPeerCertificate()  # type: ignore[union-attr]
        subject = peer.get_subject().CN if peer is not None else None
        return b"hello over mTLS from %s" % (str(subject).encode(),)


class MutualTLSDaemonTests(TestCase):
    """
    The daemon reaching an HTTPS upstream that requires a client
    certificate issued by a private CA.
    """

    timeout = 60

    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())
        self.accounts = FilePath(self.mktemp())
        self.accounts.makedirs()
        with open(self.pki.server, "rb") as f:
            server = PrivateCertificate.loadPEM(f.read())
        with open(self.pki.ca, "rb") as f:
            ca = Certificate.loadPEM(f.read())
        options = CertificateOptions(
            privateKey=server.privateKey.original,
            certificate=server.original,
            verify=True,
            caCerts=[ca.original],
            requireCertificate=True,
        )
        port = reactor.listenSSL(  # type: ignore[attr-defined]
            0, Site(HelloResource()), options, interface="127.0.0.1"
        )
        self.addCleanup(port.stopListening)
        self.upstream_url = "https://localhost:%d" % (port.getHost().port,)
        self.http = http_client(self)

    async def fetch(self, *options: str) -> tuple[int, bytes, ChildProcess]:
        """
        Start a daemon with ``options``, ask it for ``/kv/hello`` once, and
        stop it: the status, the body and the child.
        """
        child, base = await start_daemon(
            self,
            {"GATEWAY_JWT_SECRET": SECRET, "KV_SERVICE_URL": self.upstream_url},
            "--accounts-dir",
            self.accounts.path,
            *options,
        )
        response = await self.http.get(base + "/kv/hello")
        body = await response.content()
        child.signal("TERM")
        await child.ended
        return response.code, body, child

    def test_served_with_client_certificate(self) -> Deferred[None]:
        """
        With ``--upstream-ca`` and ``--upstream-client-cert`` the upstream
        sees the gateway's certificate and answers.
        """

        async def go() -> None:
            code, body, child = await self.fetch(
                "--upstream-ca",
                self.pki.ca,
                "--upstream-client-cert",
                self.pki.client,
            )
            self.assertEqual(
                (code, body), (200, b"hello over mTLS from gateway"), child.output
            )

        return ensureDeferred(go())

    def test_route_files(self) -> Deferred[None]:
        """
        A configuration file whose route names its own ``upstream_ca`` and
        ``upstream_client_cert`` (relative to the file) reaches the upstream
        with them, the daemon having no ``--upstream-*`` option; another
        route to the same upstream, naming neither, is refused the
        handshake, although the first route's connection is kept alive.
        """

        async def go() -> None:
            config = os.path.join(os.path.dirname(self.pki.ca), "gateway.toml")
            with open(config, "w") as f:
                f.write(
                    '[[route]]\nprefix = "/mtls"\nname = "MTLS"\ntoken = "none"\n'
                    "upstreams = [%s]\nupstream_ca = %s\n"
                    "upstream_client_cert = %s\n"
                    '[[route]]\nprefix = "/plain"\nname = "PLAIN"\ntoken = "none"\n'
                    "upstreams = [%s]\n"
                    % (
                        json.dumps(self.upstream_url),
                        json.dumps(os.path.basename(self.pki.ca)),
                        json.dumps(os.path.basename(self.pki.client)),
                        json.dumps(self.upstream_url),
                    )
                )
            child, base = await start_daemon(
                self,
                {"GATEWAY_JWT_SECRET": SECRET},
                "--accounts-dir",
                self.accounts.path,
                "--config",
                config,
            )
            for _ in range(2):
                response = await self.http.get(base + "/mtls/hello")
                body = await response.content()
                self.assertEqual(
                    (response.code, body),
                    (200, b"hello over mTLS from gateway"),
                    child.output,
                )
            response = await self.http.get(base + "/plain/hello")
            body = await response.content()
            self.assertEqual(response.code, 502, body)
            self.assertEqual(json.loads(body)["code"], "UPSTREAM_UNAVAILABLE")
            response = await self.http.get(base + "/mtls/hello")
            self.assertEqual(response.code, 200, await response.content())
            child.signal("TERM")
            await child.ended

        return ensureDeferred(go())

    def test_refused_without_client_certificate(self) -> Deferred[None]:
        """
        Without a client certificate (or with one the upstream's CA did not
        issue), the upstream refuses the handshake: ``502
        UPSTREAM_UNAVAILABLE``, and a log line that says so.
        """

        async def go() -> None:
            for extra in ([], ["--upstream-client-cert", self.pki.rogue_client]):
                code, body, child = await self.fetch(
                    "--upstream-ca", self.pki.ca, *extra
                )
                self.assertEqual(code, 502, body)
                self.assertEqual(json.loads(body)["code"], "UPSTREAM_UNAVAILABLE")
                self.assertIn(b"refused our TLS handshake", child.output, child.output)

        return ensureDeferred(go())

    def test_untrusted_upstream(self) -> Deferred[None]:
        """
        Without ``--upstream-ca``, the private CA's certificate is not
        trusted (verification stays on): ``502``, and a log line naming
        the certificate.
        """

        async def go() -> None:
            code, body, child = await self.fetch(
                "--upstream-client-cert", self.pki.client
            )
            self.assertEqual(code, 502, body)
            self.assertIn(b"certificate was not accepted", child.output, child.output)

        return ensureDeferred(go())

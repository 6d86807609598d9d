"""
``--upstream-ca`` and ``--upstream-client-cert`` (:ref:`contract-assertions`): the files
read at start, refused in one line when unusable, and the TLS policy they
make; the options and variables through the daemon's ``makeService``; and
a route's own ``upstream_ca`` and ``upstream_client_cert``
(:ref:`contract-config-file`).
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.internet.defer import Deferred
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import URI, BrowserLikePolicyForHTTPS
from twisted.web.http_headers import Headers

from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.credentials.memory import MemoryCredentialStore
from metagateway.daemon.tap import Options, makeService
from metagateway.gateway import Gateway
from metagateway.proxy.upstream import (
    PoolPartition,
    UpstreamAgent,
    UpstreamTLSPolicy,
    load_client_certificate,
    load_trust_root,
    upstream_tls_policy,
)
from metagateway.routes import Route
from metagateway.testing import EnvironmentMixin, FakeAgent, make_config
from tests.tlsfiles import TestPKI, make_pki


class TLSFilesTests(SynchronousTestCase):
    """
    The PEM files are read once, at start, and refused with their option,
    path and reason.
    """

    def setUp(self) -> None:
        self.pki: TestPKI = make_pki(self.mktemp())

    def refused(self, call: object, path: str, reason: str) -> None:
        """
        Assert ``call(path)`` raises a one-line ``ConfigurationError``.
        """
        e = self.assertRaises(ConfigurationError, call, path)
        self.assertIn(path, str(e))
        self.assertIn(reason, str(e))
        self.assertNotIn("\n", str(e))

    def test_default_policy(self) -> None:
        """
        Without either file the policy is a browser's (system trust).
        """
        self.assertIsInstance(
            upstream_tls_policy(None, None), BrowserLikePolicyForHTTPS
        )

    def test_policy(self) -> None:
        """
        With the files, the policy's connections carry the CA and client
        certificate, for the host asked.
        """
        policy = upstream_tls_policy(self.pki.ca, self.pki.client)
        assert isinstance(policy, UpstreamTLSPolicy)
        self.assertIsNotNone(policy.trust_root)
        assert policy.client_certificate is not None
        self.assertEqual(policy.client_certificate.getSubject().commonName, b"gateway")
        creator = policy.creatorForNetloc(b"localhost", 443)
        self.assertEqual(creator._hostname, "localhost")  # type: ignore[attr-defined]
        only_ca = upstream_tls_policy(self.pki.ca, None)
        assert isinstance(only_ca, UpstreamTLSPolicy)
        self.assertIsNone(only_ca.client_certificate)

    def test_bad_ca(self) -> None:
        """
        A CA bundle that is missing, or holds no certificate, is refused.
        """
        self.refused(load_trust_root, self.mktemp(), "cannot be read")
        self.refused(
            load_trust_root, self.pki.client_cert_only[:-4] + "x", "cannot be read"
        )
        junk = self.mktemp()
        with open(junk, "w") as f:
            f.write("junk")
        self.refused(load_trust_root, junk, "no PEM certificate")

    def test_bad_client_cert(self) -> None:
        """
        A client certificate without its key, or with another's key, is
        refused.
        """
        self.refused(load_client_certificate, self.pki.client_cert_only, "private key")
        mixed = self.mktemp()
        with (
            open(self.pki.client_cert_only, "rb") as cert,
            open(self.pki.rogue_client, "rb") as rogue,
        ):
            key = rogue.read().split(b"-----END CERTIFICATE-----\n", 1)[1]
            data = cert.read() + key
        with open(mixed, "wb") as f:
            f.write(data)
        self.refused(load_client_certificate, mixed, "not the certificate's")
        self.assertEqual(
            load_client_certificate(self.pki.client).getSubject().commonName,
            b"gateway",
        )


class TLSOptionsTests(EnvironmentMixin, SynchronousTestCase):
    """
    The options, their variables, and a refused start.
    """

    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())
        self.accounts = self.mktemp()
        import os

        os.makedirs(self.accounts)

    def test_options_and_variables(self) -> None:
        """
        ``--upstream-ca`` and ``--upstream-client-cert`` win over
        ``METAGATEWAY_UPSTREAM_CA`` and ``METAGATEWAY_UPSTREAM_CLIENT_CERT``;
        ``GATEWAY_ASSERTION_KEY_FILE`` is read from the environment.
        """
        environ = {
            "GATEWAY_JWT_SECRET": "x" * 40,
            "METAGATEWAY_UPSTREAM_CA": "/env/ca.pem",
            "METAGATEWAY_UPSTREAM_CLIENT_CERT": "/env/client.pem",
            "GATEWAY_ASSERTION_KEY_FILE": "/env/key.pem",
        }
        options = Options()
        options.parseOptions(["--accounts-dir", "/a", "--upstream-ca", "/opt/ca.pem"])
        config = GatewayConfig.from_options(dict(options), environ)
        self.assertEqual(
            (
                config.upstream_ca,
                config.upstream_client_cert,
                config.assertion_key_file,
            ),
            ("/opt/ca.pem", "/env/client.pem", "/env/key.pem"),
        )
        bare = GatewayConfig.from_options(
            {"accounts-dir": "/a"}, {"GATEWAY_JWT_SECRET": "x"}
        )
        self.assertEqual(
            (bare.upstream_ca, bare.upstream_client_cert, bare.assertion_key_file),
            (None, None, None),
        )

    def refused_start(
        self, argv: list[str], environ: dict[str, str], reason: str
    ) -> None:
        """
        Assert the daemon refuses to start: exit 1, one line on stderr.
        """
        self.use_environ(dict({"GATEWAY_JWT_SECRET": "x" * 40}, **environ))
        stderr = self.capture_stderr()
        options = Options()
        options.parseOptions(["--accounts-dir", self.accounts] + argv)
        reactor = MemoryReactorClock()
        e = self.assertRaises(SystemExit, makeService, options, reactor)
        self.assertEqual(e.code, 1)
        lines = stderr.getvalue().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(reason, lines[0])
        self.assertEqual(reactor.tcpServers, [])

    def test_refused_start(self) -> None:
        """
        An unusable CA bundle, client certificate or assertion key refuses
        the start with one line.
        """
        missing = self.mktemp()
        self.refused_start(["--upstream-ca", missing], {}, "--upstream-ca")
        self.refused_start(
            ["--upstream-client-cert", self.pki.client_cert_only],
            {},
            "--upstream-client-cert",
        )
        self.refused_start(
            [],
            {"GATEWAY_ASSERTION_KEY_FILE": self.pki.ca},
            "GATEWAY_ASSERTION_KEY_FILE",
        )

    def test_started(self) -> None:
        """
        With usable files the daemon starts (its port bound).
        """
        from metagateway.auth.assertion import new_key_pem

        key = self.mktemp()
        with open(key, "wb") as f:
            f.write(new_key_pem())
        self.use_environ(
            {"GATEWAY_JWT_SECRET": "x" * 40, "GATEWAY_ASSERTION_KEY_FILE": key}
        )
        options = Options()
        options.parseOptions(
            [
                "--accounts-dir",
                self.accounts,
                "--listen",
                "tcp:0",
                "--upstream-ca",
                self.pki.ca,
                "--upstream-client-cert",
                self.pki.client,
            ]
        )
        reactor = MemoryReactorClock()
        makeService(options, reactor)
        self.assertEqual(len(reactor.tcpServers), 1)


class RecordingPool:
    """
    A connection pool recording the keys connections are asked for, and
    giving none.

    :ivar keys: each key asked for, in order.
    """

    persistent = True

    def __init__(self) -> None:
        self.keys: list[Any] = []

    def getConnection(self, key: Any, endpoint: Any) -> Deferred[Any]:
        """
        Record ``key``; the connection never comes.
        """
        self.keys.append(key)
        return Deferred()


class RouteTLSTests(SynchronousTestCase):
    """
    A route's own ``upstream_ca`` and ``upstream_client_cert``
    (the configuration file's ``[[route]]`` keys): its proxy sends through an
    agent with a TLS policy made from them, whose connections are kept
    apart from the other routes'.
    """

    def setUp(self) -> None:
        self.pki = make_pki(self.mktemp())
        self.reactor = MemoryReactorClock()

    def gateway(self, *routes: Route, **settings: Any) -> Gateway:
        """
        A gateway (building its own agent) with ``routes``.
        """
        return Gateway(
            make_config(routes=routes, **settings),
            self.reactor,
            store=MemoryCredentialStore([]),
        )

    def route(
        self,
        name: str,
        upstream_ca: Optional[str] = None,
        upstream_client_cert: Optional[str] = None,
    ) -> Route:
        """
        A route named ``name`` to an ``https://`` upstream, with its own
        TLS files, if given.
        """
        return Route(
            name.lower().encode("ascii"),
            name,
            "none",
            ("https://localhost:8443",),
            upstream_ca=upstream_ca,
            upstream_client_cert=upstream_client_cert,
        )

    def policy(self, gateway: Gateway, name: str) -> UpstreamTLSPolicy:
        """
        The TLS policy of route ``name``'s agent.
        """
        agent = gateway.proxies[name].agent
        assert isinstance(agent, UpstreamAgent)
        policy = agent.endpoints.policy
        assert isinstance(policy, UpstreamTLSPolicy)
        return policy

    def test_route_policy(self) -> None:
        """
        A route naming both files gets an agent of its own, with their
        trust root and client certificate; a route naming neither sends
        through the gateway's agent, with the gateway's policy (here a
        browser's); routes naming the same files share one agent.
        """
        gateway = self.gateway(
            self.route(
                "OWN", upstream_ca=self.pki.ca, upstream_client_cert=self.pki.client
            ),
            self.route(
                "SAME", upstream_ca=self.pki.ca, upstream_client_cert=self.pki.client
            ),
            self.route("PLAIN"),
        )
        self.assertIs(gateway.proxies["PLAIN"].agent, gateway.agent)
        self.assertIsInstance(gateway.upstream_tls, BrowserLikePolicyForHTTPS)
        own = gateway.proxies["OWN"].agent
        self.assertIsNot(own, gateway.agent)
        self.assertIs(gateway.proxies["SAME"].agent, own)
        policy = self.policy(gateway, "OWN")
        self.assertIsNotNone(policy.trust_root)
        assert policy.client_certificate is not None
        self.assertEqual(policy.client_certificate.getSubject().commonName, b"gateway")

    def test_gateway_defaults(self) -> None:
        """
        A route naming one of the files takes the other from the gateway's
        ``--upstream-ca`` / ``--upstream-client-cert``.
        """
        gateway = self.gateway(
            self.route("CA", upstream_ca=self.pki.ca),
            self.route("CERT", upstream_client_cert=self.pki.rogue_client),
            upstream_ca=self.pki.other_ca,
            upstream_client_cert=self.pki.client,
        )
        ca = self.policy(gateway, "CA")
        assert ca.client_certificate is not None
        self.assertEqual(ca.client_certificate.getSubject().commonName, b"gateway")
        cert = self.policy(gateway, "CERT")
        assert cert.client_certificate is not None
        self.assertEqual(cert.client_certificate.getSubject().commonName, b"rogue")
        self.assertIsNotNone(cert.trust_root)
        self.assertIsNot(gateway.proxies["CA"].agent, gateway.proxies["CERT"].agent)

    def test_connections_kept_apart(self) -> None:
        """
        A route's agent asks the gateway's pool for connections under a key
        tagged with its files, by its own path and through the stock
        ``Agent`` it falls back on: a connection opened with another TLS
        policy to the same upstream is never reused for it.
        """
        gateway = self.gateway(
            self.route(
                "OWN", upstream_ca=self.pki.ca, upstream_client_cert=self.pki.client
            )
        )
        agent = gateway.proxies["OWN"].agent
        assert isinstance(agent, UpstreamAgent)
        partition = agent.pool
        assert isinstance(partition, PoolPartition)
        self.assertIs(partition.pool, gateway.pool)
        recording = RecordingPool()
        partition.pool = recording  # type: ignore[assignment]
        url = b"https://localhost:8443/x"
        agent.request(b"GET", url, Headers({b"Host": [b"localhost:8443"]}))
        agent.request(b"GET", url)  # no Host: the stock Agent
        tag = ("tls", self.pki.ca, self.pki.client)
        self.assertEqual(recording.keys, [(tag, (b"https", b"localhost", 8443))] * 2)
        self.assertTrue(partition.persistent)

    def test_endpoint_uses_route_policy(self) -> None:
        """
        The route's ``https://`` endpoint connects with TLS settings from
        the route's policy (for the upstream's host name).
        """
        gateway = self.gateway(
            self.route(
                "OWN", upstream_ca=self.pki.ca, upstream_client_cert=self.pki.client
            )
        )
        agent = gateway.proxies["OWN"].agent
        assert isinstance(agent, UpstreamAgent)
        asked: list[tuple[bytes, int]] = []
        policy = agent.endpoints.policy
        creator = policy.creatorForNetloc

        def recording(host: bytes, port: int) -> Any:
            asked.append((host, port))
            return creator(host, port)

        policy.creatorForNetloc = recording  # type: ignore[method-assign,assignment]
        agent.endpoints.endpointForURI(URI.fromBytes(b"https://localhost:8443/"))
        self.assertEqual(asked, [(b"localhost", 8443)])

    def test_given_agent_serves_every_route(self) -> None:
        """
        An agent given to the gateway (a test's) serves every route, with
        or without files of its own.
        """
        agent = FakeAgent()
        gateway = Gateway(
            make_config(
                routes=(
                    self.route("OWN", upstream_ca=self.pki.ca),
                    self.route("PLAIN"),
                )
            ),
            self.reactor,
            store=MemoryCredentialStore([]),
            agent=agent,
        )
        self.assertIs(gateway.proxies["OWN"].agent, agent)
        self.assertIs(gateway.proxies["PLAIN"].agent, agent)

    def test_reload(self) -> None:
        """
        A reload reads the route's files again (a new agent with the new
        files); one whose file has become unusable is refused, and the
        routes in force stay.
        """
        gateway = self.gateway(self.route("OWN", upstream_ca=self.pki.ca))
        before = gateway.proxies["OWN"].agent
        gateway.reload(
            make_config(
                routes=(
                    self.route(
                        "OWN",
                        upstream_ca=self.pki.ca,
                        upstream_client_cert=self.pki.client,
                    ),
                )
            )
        )
        after = gateway.proxies["OWN"].agent
        self.assertIsNot(after, before)
        assert self.policy(gateway, "OWN").client_certificate is not None
        gone = self.mktemp()
        error = self.assertRaises(
            ConfigurationError,
            gateway.reload,
            make_config(routes=(self.route("OWN", upstream_ca=gone),)),
        )
        self.assertIn(gone, str(error))
        self.assertIs(gateway.proxies["OWN"].agent, after)

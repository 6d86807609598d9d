"""
``--upstream-ca`` and ``--upstream-client-cert`` (:ref:`contract-assertions`): the files
read at start, refused in one line when unusable, and the TLS policy they
make; the options and variables through the daemon's ``makeService``.
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.client import BrowserLikePolicyForHTTPS

from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.daemon.tap import Options, makeService
from metagateway.proxy.upstream import (
    UpstreamTLSPolicy,
    load_client_certificate,
    load_trust_root,
    upstream_tls_policy,
)
from metagateway.testing import EnvironmentMixin
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

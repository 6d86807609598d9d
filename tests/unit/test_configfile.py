"""
Tests for :mod:`metagateway.configfile`: the configuration file's
parsing, and every message it refuses a file with (:ref:`contract-config-file`).
"""

from __future__ import annotations

import io
import json
import os

from cryptography.hazmat.primitives import serialization

from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from metagateway.admin.cli import run
from metagateway.admin.files import check_config
from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.configfile import (
    ConfigFile,
    ConfigFileError,
    load_config_file,
    parse_config,
)
from metagateway.routes import Route, builtin_routes
from tests.tlsfiles import make_pki

#: The example shipped with the project.
EXAMPLE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
    "examples",
    "gateway.toml",
)

#: The services the example's upstreams are.
EXAMPLE_SERVICES = {
    "BUILD": "http://127.0.0.1:9001",
    "KV": "http://127.0.0.1:9002",
    "CORE": "http://127.0.0.1:9003",
    "BASE": "http://127.0.0.1:9004",
}

ROUTE = '[[route]]\nprefix = "/build"\nname = "BUILD"\nupstreams = ["http://a.test"]\n'


class ParseTests(SynchronousTestCase):
    """
    Valid files.
    """

    def parse(self, text: str, environ: dict[str, str] | None = None) -> object:
        """
        Parse ``text`` as ``g.toml``.
        """
        return parse_config(text.encode("utf-8"), "g.toml", environ or {})

    def test_defaults(self) -> None:
        """
        A route with only a prefix, a name and upstreams: token required,
        accept its name, CORE and AUTH, the prefix stripped, the gateway's
        timeout and body limit; CORS ``*``.
        """
        loaded = parse_config(ROUTE.encode(), "g.toml", {})
        self.assertEqual(
            loaded.routes,
            (
                Route(
                    b"build",
                    "BUILD",
                    "required",
                    ("http://a.test",),
                    ("BUILD", "CORE", "AUTH"),
                    True,
                    None,
                    None,
                ),
            ),
        )
        self.assertEqual(loaded.allow_origins, ("*",))
        self.assertEqual(loaded.path, "g.toml")
        self.assertEqual(len(loaded.digest), 64)

    def test_everything(self) -> None:
        """
        Every key, several upstreams, a two-segment prefix, a list of
        origins.
        """
        loaded = parse_config(
            b"""
[cors]
allow_origins = ["https://app.example.com", "http://localhost:3000"]

[[route]]
prefix = "/api/v1/"
name = "API_V1"
upstreams = ["http://127.0.0.1:9001", "https://api.test/base/"]
token = "none"
accept = ["API_V1", "CORE"]
strip_prefix = false
timeout = 2.5
max_body = 1024
""",
            "g.toml",
            {},
        )
        self.assertEqual(
            loaded.routes,
            (
                Route(
                    b"api/v1",
                    "API_V1",
                    "none",
                    ("http://127.0.0.1:9001", "https://api.test/base/"),
                    ("API_V1", "CORE"),
                    False,
                    2.5,
                    1024,
                ),
            ),
        )
        self.assertEqual(
            loaded.allow_origins, ("https://app.example.com", "http://localhost:3000")
        )

    def test_upstream_from_environment(self) -> None:
        """
        A route without ``upstreams`` takes its ``<NAME>_SERVICE_URL``, or
        has none (``502 MISSING_TARGET``).
        """
        text = b'[[route]]\nprefix = "/kv"\nname = "KV"\n'
        with_url = parse_config(text, "g.toml", {"KV_SERVICE_URL": "http://kv.test"})
        self.assertEqual(with_url.routes[0].upstreams, ("http://kv.test",))
        self.assertEqual(parse_config(text, "g.toml", {}).routes[0].upstreams, ())

    def test_accept_names_other_routes(self) -> None:
        """
        ``accept`` may name a route defined later in the file.
        """
        loaded = parse_config(
            (
                ROUTE + 'accept = ["OTHER"]\n[[route]]\nprefix = "/o"\nname = "OTHER"\n'
            ).encode(),
            "g.toml",
            {},
        )
        self.assertEqual(loaded.routes[0].accept, ("OTHER",))

    def test_example_is_the_builtin_table(self) -> None:
        """
        ``examples/gateway.toml`` reproduces :ref:`contract-proxy`'s table: the same
        routes, policies and defaults as the gateway without a file.
        """
        loaded = load_config_file(EXAMPLE, {})
        self.assertEqual(loaded.routes, builtin_routes(EXAMPLE_SERVICES))
        self.assertEqual(loaded.allow_origins, ("*",))
        environ = {
            "GATEWAY_JWT_SECRET": "s",
            "METAGATEWAY_ACCOUNTS_DIR": "/accounts",
        }
        environ.update(
            {"%s_SERVICE_URL" % (name,): url for name, url in EXAMPLE_SERVICES.items()}
        )
        without = GatewayConfig.from_environ(environ)
        with_file = GatewayConfig.from_options({"config": EXAMPLE}, environ)
        self.assertEqual(with_file.route_table(), without.route_table())
        self.assertEqual(with_file.config_file, EXAMPLE)
        self.assertEqual(without.routes, ())


#: (file text, the message refusing it); ``{R}`` is a valid route table.
REFUSALS = [
    ("a = 1\nx = \n", "g.toml: invalid TOML: Invalid value (at line 2, column 5)"),
    ("", "g.toml: no [[route]]: the file must define at least one route"),
    ("[cors]\n", "g.toml: no [[route]]: the file must define at least one route"),
    (
        "routes = 1\n" + ROUTE,
        "g.toml: routes: unknown key (known: cors, route)",
    ),
    ("route = 1\n", "g.toml: route: must be an array of tables, [[route]]"),
    ("cors = 1\n" + ROUTE, "g.toml: cors: must be a table, [cors]"),
    (
        "[cors]\norigins = []\n" + ROUTE,
        "g.toml: cors.origins: unknown key (known: allow_origins)",
    ),
    (
        "[cors]\nallow_origins = []\n" + ROUTE,
        'g.toml: cors.allow_origins: must be a non-empty list of origins, or ["*"]',
    ),
    (
        '[cors]\nallow_origins = "*"\n' + ROUTE,
        'g.toml: cors.allow_origins: must be a non-empty list of origins, or ["*"]',
    ),
    (
        "[cors]\nallow_origins = [1]\n" + ROUTE,
        "g.toml: cors.allow_origins[0]: must be a string",
    ),
    (
        '[cors]\nallow_origins = ["*", "http://a.test"]\n' + ROUTE,
        'g.toml: cors.allow_origins: "*" must be alone in the list',
    ),
    (
        '[cors]\nallow_origins = ["https://a.test/"]\n' + ROUTE,
        "g.toml: cors.allow_origins[0]: 'https://a.test/' is not an origin like "
        "https://app.example.com[:port] (scheme and host, no path)",
    ),
    (
        ROUTE + "tokn = 'none'\n",
        "g.toml: route[0].tokn: unknown key (known: prefix, name, upstreams, "
        "token, accept, strip_prefix, timeout, max_body, upstream_ca, "
        "upstream_client_cert)",
    ),
    ('[[route]]\nprefix = "/x"\n', 'g.toml: route[0]: missing key "name"'),
    (
        '[[route]]\nprefix = "/x"\nname = "lower"\n',
        "g.toml: route[0].name: 'lower' is not a route name (A-Z, 0-9 and _, "
        "at most 64)",
    ),
    ('[[route]]\nname = "X"\n', 'g.toml: route[0] (X): missing key "prefix"'),
    (
        '[[route]]\nname = "X"\nprefix = "x"\n',
        "g.toml: route[0] (X).prefix: must be a path starting with /, not 'x'",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/a/../b"\n',
        "g.toml: route[0] (X).prefix: '/a/../b' is not a path prefix like /build "
        "or /api/v1 (segments of A-Z a-z 0-9 . _ ~ -)",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/"\n',
        "g.toml: route[0] (X).prefix: '/' is not a path prefix like /build "
        "or /api/v1 (segments of A-Z a-z 0-9 . _ ~ -)",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/auth/x"\n',
        "g.toml: route[0] (X).prefix: /auth is the gateway's own (§4)",
    ),
    (
        ROUTE + 'token = "maybe"\n',
        'g.toml: route[0] (BUILD).token: must be "required", "optional" or '
        "\"none\", not 'maybe'",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = []\n',
        "g.toml: route[0] (X).upstreams: must be a non-empty list of URLs",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = [1]\n',
        "g.toml: route[0] (X).upstreams[0]: must be a string",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["ftp://a"]\n',
        "g.toml: route[0] (X).upstreams[0]: 'ftp://a' must start with http:// or "
        "https://",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["http://a b"]\n',
        "g.toml: route[0] (X).upstreams[0]: 'http://a b' must be ASCII without spaces",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["http://a:x"]\n',
        "g.toml: route[0] (X).upstreams[0]: 'http://a:x': Port could not be cast "
        "to integer value as 'x'",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["http://a:0"]\n',
        "g.toml: route[0] (X).upstreams[0]: 'http://a:0': port 0",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["http:///p"]\n',
        "g.toml: route[0] (X).upstreams[0]: 'http:///p' names no host",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["http://a/?q"]\n',
        "g.toml: route[0] (X).upstreams[0]: 'http://a/?q' must have no user, "
        "query or fragment",
    ),
    (
        '[[route]]\nname = "X"\nprefix = "/x"\nupstreams = ["http://a", "http://a"]\n',
        "g.toml: route[0] (X).upstreams[1]: 'http://a' is listed twice",
    ),
    (
        ROUTE + "accept = []\n",
        "g.toml: route[0] (BUILD).accept: must be a non-empty list of route names",
    ),
    (
        ROUTE + 'accept = ["NOPE"]\n',
        "g.toml: route[0] (BUILD).accept[0]: 'NOPE' is no token route (AUTH, KV, "
        "BUILD, CORE, BASE, WEBHOOK, or a route of this file)",
    ),
    (
        ROUTE + 'strip_prefix = "yes"\n',
        "g.toml: route[0] (BUILD).strip_prefix: must be true or false",
    ),
    (
        ROUTE + "timeout = -1\n",
        "g.toml: route[0] (BUILD).timeout: must be a number of seconds, 0 or "
        "more (0: no limit)",
    ),
    (
        ROUTE + "timeout = true\n",
        "g.toml: route[0] (BUILD).timeout: must be a number of seconds, 0 or "
        "more (0: no limit)",
    ),
    (
        ROUTE + "timeout = inf\n",
        "g.toml: route[0] (BUILD).timeout: must be a number of seconds, 0 or "
        "more (0: no limit)",
    ),
    (
        ROUTE + "max_body = 1.5\n",
        "g.toml: route[0] (BUILD).max_body: must be a whole number of bytes, 0 "
        "or more (0: no limit)",
    ),
    (
        ROUTE + '[[route]]\nprefix = "/b"\nname = "BUILD"\n',
        "g.toml: route[1].name: 'BUILD' names another route already",
    ),
    (
        ROUTE + '[[route]]\nprefix = "/build/"\nname = "B2"\n',
        "g.toml: route[1].prefix: /build is the prefix of route BUILD already",
    ),
]


class RefusalTests(SynchronousTestCase):
    """
    Every refusal names the file, the key or line, and the reason, in one
    line.
    """

    def test_refusals(self) -> None:
        """
        Each file of :data:`REFUSALS` is refused with its message.
        """
        for text, message in REFUSALS:
            with self.assertRaises(ConfigFileError, msg=text) as caught:
                parse_config(text.encode("utf-8"), "g.toml", {})
            self.assertEqual(str(caught.exception), message)
            self.assertNotIn("\n", message)

    def test_not_utf8(self) -> None:
        """
        A file that is not UTF-8 is refused, naming the byte.
        """
        with self.assertRaises(ConfigFileError) as caught:
            parse_config(b"# \xff\n", "g.toml", {})
        self.assertEqual(str(caught.exception), "g.toml: not UTF-8 text (byte 2)")

    def test_bad_service_variable(self) -> None:
        """
        A route taking its upstream from a variable that is not a URL.
        """
        with self.assertRaises(ConfigFileError) as caught:
            parse_config(
                b'[[route]]\nprefix = "/kv"\nname = "KV"\n',
                "g.toml",
                {"KV_SERVICE_URL": "kv.test"},
            )
        self.assertEqual(
            str(caught.exception),
            "g.toml: route[0] (KV): KV_SERVICE_URL must start with http:// or https://",
        )

    def test_unreadable(self) -> None:
        """
        A file that cannot be read.
        """
        path = self.mktemp()
        with self.assertRaises(ConfigFileError) as caught:
            load_config_file(path, {})
        self.assertEqual(
            str(caught.exception),
            "%s: cannot be read: No such file or directory" % path,
        )

    def test_start_refused(self) -> None:
        """
        ``--config`` or ``METAGATEWAY_CONFIG`` naming an invalid file
        refuses the configuration with the same message.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ROUTE + 'token = "maybe"\n')
        environ = {"GATEWAY_JWT_SECRET": "s", "METAGATEWAY_ACCOUNTS_DIR": "/a"}
        message = (
            '%s: route[0] (BUILD).token: must be "required", "optional" or '
            "\"none\", not 'maybe'" % (path,)
        )
        with self.assertRaises(ConfigurationError) as caught:
            GatewayConfig.from_options({"config": path}, environ)
        self.assertEqual(str(caught.exception), message)
        with self.assertRaises(ConfigurationError) as caught:
            GatewayConfig.from_environ(dict(environ, METAGATEWAY_CONFIG=path))
        self.assertEqual(str(caught.exception), message)


class RouteTLSTests(SynchronousTestCase):
    """
    A route's own ``upstream_ca`` and ``upstream_client_cert``: paths,
    relative to the file's directory, checked when the file is loaded.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        self.pki = make_pki(os.path.join(self.directory, "pki"))
        self.path = os.path.join(self.directory, "g.toml")

    def load(self, ca: str | None, cert: str | None) -> ConfigFile:
        """
        Write and load a file whose one route names ``ca`` and ``cert``.
        """
        text = ROUTE
        if ca is not None:
            text += "upstream_ca = %s\n" % (json.dumps(ca),)
        if cert is not None:
            text += "upstream_client_cert = %s\n" % (json.dumps(cert),)
        with open(self.path, "w") as f:
            f.write(text)
        return load_config_file(self.path, {})

    def refused(
        self, ca: str | None, cert: str | None, key: str, path: str, reason: str
    ) -> None:
        """
        Assert the file is refused with one line naming the configuration
        file, the route's ``key``, the PEM file ``path`` and ``reason``.
        """
        with self.assertRaises(ConfigFileError) as caught:
            self.load(ca, cert)
        self.assertEqual(
            str(caught.exception),
            "%s: route[0] (BUILD).%s: %s%s" % (self.path, key, path, reason),
        )

    def test_unset(self) -> None:
        """
        Without either key the route leaves both to the gateway's options.
        """
        (route,) = self.load(None, None).routes
        self.assertEqual((route.upstream_ca, route.upstream_client_cert), (None, None))

    def test_paths(self) -> None:
        """
        Absolute paths are kept; relative ones are taken from the file's
        directory (not the working directory); either key may be alone.
        """
        (route,) = self.load(self.pki.ca, self.pki.client).routes
        self.assertEqual(
            (route.upstream_ca, route.upstream_client_cert),
            (self.pki.ca, self.pki.client),
        )
        relative_ca = os.path.relpath(self.pki.ca, self.directory)
        self.assertEqual(
            relative_ca, os.path.join("pki", os.path.basename(self.pki.ca))
        )
        (route,) = self.load(relative_ca, None).routes
        self.assertEqual(
            (route.upstream_ca, route.upstream_client_cert), (self.pki.ca, None)
        )
        relative_cert = os.path.relpath(self.pki.client, self.directory)
        (route,) = self.load(None, relative_cert).routes
        self.assertEqual(
            (route.upstream_ca, route.upstream_client_cert), (None, self.pki.client)
        )

    def test_refusals(self) -> None:
        """
        A file that cannot be read, a CA bundle without a certificate, a
        client file without its key, with another certificate's key, or
        with an encrypted key, and a value that is not a path: each refused
        in one line naming the file, the key and the reason.
        """
        missing = os.path.join(self.directory, "missing.pem")
        self.refused(
            "missing.pem",
            None,
            "upstream_ca",
            missing,
            " cannot be read: No such file or directory",
        )
        self.refused(
            None,
            missing,
            "upstream_client_cert",
            missing,
            " cannot be read: No such file or directory",
        )
        junk = os.path.join(self.directory, "junk.pem")
        with open(junk, "w") as f:
            f.write("junk\n")
        self.refused(junk, None, "upstream_ca", junk, ": no PEM certificate in it")
        self.refused(
            None,
            self.pki.client_cert_only,
            "upstream_client_cert",
            self.pki.client_cert_only,
            ": needs a PEM certificate and its private key in one file",
        )
        with open(self.pki.client_cert_only, "rb") as f:
            certificate = f.read()
        with open(self.pki.rogue_client, "rb") as f:
            rogue_key = f.read().split(b"-----END CERTIFICATE-----\n", 1)[1]
        mixed = os.path.join(self.directory, "mixed.pem")
        with open(mixed, "wb") as f:
            f.write(certificate + rogue_key)
        self.refused(
            None,
            mixed,
            "upstream_client_cert",
            mixed,
            ": the private key is not the certificate's",
        )
        key = serialization.load_pem_private_key(rogue_key, password=None)
        encrypted = os.path.join(self.directory, "encrypted.pem")
        with open(encrypted, "wb") as f:
            f.write(
                certificate
                + key.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.BestAvailableEncryption(b"pass"),
                )
            )
        self.refused(
            None,
            encrypted,
            "upstream_client_cert",
            encrypted,
            ": the key is encrypted; give an unencrypted key",
        )
        for value in ("", 1):
            with open(self.path, "w") as f:
                f.write(ROUTE + "upstream_ca = %s\n" % (json.dumps(value),))
            with self.assertRaises(ConfigFileError) as caught:
                load_config_file(self.path, {})
            self.assertEqual(
                str(caught.exception),
                "%s: route[0] (BUILD).upstream_ca: must be the path of a PEM file"
                % (self.path,),
            )

    def test_check_config(self) -> None:
        """
        ``check-config`` refuses a file whose route names an unusable file,
        with the same message.
        """
        self.load(None, None)
        with open(self.path, "a") as f:
            f.write('upstream_ca = "missing.pem"\n')
        stdout, stderr = io.StringIO(), io.StringIO()
        status = self.successResultOf(
            run_command(["check-config", self.path], stdout, stderr)
        )
        self.assertEqual(status, 1)
        self.assertEqual(
            stderr.getvalue(),
            "metagateway-admin: %s: route[0] (BUILD).upstream_ca: %s cannot be "
            "read: No such file or directory\n"
            % (self.path, os.path.join(self.directory, "missing.pem")),
        )
        self.assertEqual(stdout.getvalue(), "")


class SecretFileTests(SynchronousTestCase):
    """
    ``GATEWAY_JWT_SECRET_FILE``.
    """

    environ = {"METAGATEWAY_ACCOUNTS_DIR": "/a", "GATEWAY_JWT_SECRET": "env"}

    def write(self, data: bytes) -> str:
        """
        A file holding ``data``.
        """
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(data)
        return path

    def test_first_line(self) -> None:
        """
        The secret is the file's first line, stripped; it wins over
        ``GATEWAY_JWT_SECRET``.
        """
        path = self.write(b"  file-secret \nsecond line\n")
        config = GatewayConfig.from_environ(
            dict(self.environ, GATEWAY_JWT_SECRET_FILE=path)
        )
        self.assertEqual(config.jwt_secret, "file-secret")
        self.assertEqual(config.jwt_secret_file, path)

    def test_refusals(self) -> None:
        """
        A file that cannot be read, an empty first line, or one that is
        not UTF-8.
        """
        missing = self.mktemp()
        empty = self.write(b"\nsecret\n")
        binary = self.write(b"\xff\n")
        for path, message in [
            (
                missing,
                "GATEWAY_JWT_SECRET_FILE: cannot read %s: No such file or "
                "directory" % (missing,),
            ),
            (empty, "GATEWAY_JWT_SECRET_FILE: the first line of %s is empty" % empty),
            (
                binary,
                "GATEWAY_JWT_SECRET_FILE: the first line of %s is not UTF-8"
                % (binary,),
            ),
        ]:
            with self.assertRaises(ConfigurationError) as caught:
                GatewayConfig.from_environ(
                    dict(self.environ, GATEWAY_JWT_SECRET_FILE=path)
                )
            self.assertEqual(str(caught.exception), message)


class CheckConfigTests(SynchronousTestCase):
    """
    ``metagateway-admin check-config FILE``.
    """

    def test_valid(self) -> None:
        """
        A valid file: exit 0 and one line naming its routes.
        """
        stdout, stderr = io.StringIO(), io.StringIO()
        status = self.successResultOf(
            run_command(["check-config", EXAMPLE], stdout, stderr)
        )
        self.assertEqual(status, 0)
        self.assertEqual(
            stdout.getvalue(),
            "%s: valid: 4 route(s) (/build BUILD, /kv KV, /core CORE, /hq BASE), "
            "CORS origins *\n" % (EXAMPLE,),
        )
        self.assertEqual(stderr.getvalue(), "")

    def test_invalid(self) -> None:
        """
        An invalid file: exit 1 and the message a refused start gives.
        """
        path = self.mktemp()
        with open(path, "w") as f:
            f.write(ROUTE + "tmeout = 3\n")
        stdout, stderr = io.StringIO(), io.StringIO()
        status = self.successResultOf(
            run_command(["check-config", path], stdout, stderr)
        )
        self.assertEqual(status, 1)
        environ = {"GATEWAY_JWT_SECRET": "s", "METAGATEWAY_ACCOUNTS_DIR": "/a"}
        with self.assertRaises(ConfigurationError) as caught:
            GatewayConfig.from_options({"config": path}, environ)
        self.assertEqual(
            stderr.getvalue(), "metagateway-admin: %s\n" % (caught.exception,)
        )
        self.assertEqual(stdout.getvalue(), "")

    def test_function(self) -> None:
        """
        :func:`check_config` raises the refusal for the caller to report.
        """
        with self.assertRaises(Exception) as caught:
            check_config(self.mktemp(), {}, io.StringIO())
        self.assertIn("cannot be read", str(caught.exception))


def run_command(
    argv: list[str], stdout: io.StringIO, stderr: io.StringIO
) -> Deferred[int]:
    """
    ``metagateway-admin`` with ``argv``, as a Deferred of its status.
    """
    return Deferred.fromCoroutine(run(None, argv, {}, io.StringIO(), stdout, stderr))

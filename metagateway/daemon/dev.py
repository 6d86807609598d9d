"""
``--dev``: the embedded default a new user starts with.

A generated signing secret, a temporary accounts directory holding a demo
admin with a random password, a generated assertion key (:ref:`contract-assertions`),
loopback echo upstreams for every service URL that is unset (each shows
the assertion it got, verified), and copy-paste ``curl`` lines.
"""

from __future__ import annotations

import json
import os
import secrets
import shlex
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any, MutableMapping, Optional, Sequence

from twisted.application.service import Service
from twisted.internet.address import UNIXAddress
from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from metagateway.auth.assertion import (
    AssertionKeyError,
    load_key,
    new_key_pem,
    public_jwk,
)
from metagateway.auth.passwords import make_record
from metagateway.config import SERVICE_VARIABLES
from metagateway.credentials.directory import DirectoryCredentialStore
from metagateway.daemon.sockets import endpoint_kind
from metagateway.verify import InvalidAssertion, KeySet, verify_assertion

DEMO_USER = "demo-admin"


class EchoResource(Resource):
    """
    A stand-in upstream that answers every request with a JSON description
    of what it received, and of its ``X-Gateway-Assertion`` checked as an
    upstream would check it (:mod:`metagateway.verify`).

    :param name: the service name reported in the answer (the route).
    :param keys: the gateway's public keys; without them the assertion is
        not checked.
    """

    isLeaf = True

    def __init__(self, name: str, keys: Optional[KeySet] = None) -> None:
        super().__init__()
        self.name = name
        self.keys = keys

    def assertion(self, request: IRequest) -> Optional[dict[str, Any]]:
        """
        The request's assertion, verified: its claims, or why it failed.
        """
        token = request.getHeader(b"x-gateway-assertion")
        if token is None or self.keys is None:
            return None
        try:
            verified = verify_assertion(
                token.decode("latin-1"),
                self.keys,
                self.name,
                request.method.decode("latin-1"),
                request.path.decode("latin-1"),
            )
        except InvalidAssertion as e:
            return {"verified": False, "error": str(e)}
        return {"verified": True, "claims": dict(verified.claims)}

    def render(self, request: IRequest) -> bytes:
        """
        Describe the request back.
        """
        body = request.content.read() if request.content is not None else b""
        document: dict[str, Any] = {
            "service": self.name,
            "method": request.method.decode("latin-1"),
            "uri": request.uri.decode("latin-1"),
            "headers": {
                name.decode("latin-1"): [v.decode("latin-1") for v in values]
                for name, values in request.requestHeaders.getAllRawHeaders()
            },
            "bodyLength": len(body),
            "assertion": self.assertion(request),
        }
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(document, indent=2).encode("utf-8") + b"\n"


@dataclass
class DevSetup:
    """
    What ``--dev`` prepared, to print once the gateway listens and to
    clean up when it stops.

    :ivar password: the demo user's password.
    :ivar accounts: the accounts directory holding the demo user.
    :ivar temporary: whether ``accounts`` was made for this run (and is
        removed when it stops).
    :ivar notes: lines describing what was set up.
    :ivar key_file: the assertion key generated for this run (removed
        when it stops), if one was.
    """

    password: str
    accounts: str
    temporary: bool
    notes: list[str]
    key_file: Optional[str] = None

    def remove_accounts(self) -> None:
        """
        Remove the accounts directory if it was made for this run, and the
        assertion key if it was generated.
        """
        if self.temporary:
            shutil.rmtree(self.accounts, ignore_errors=True)
            self.temporary = False
        if self.key_file is not None:
            try:
                os.remove(self.key_file)
            except OSError:
                pass
            self.key_file = None

    def lines(self, listening: Sequence[tuple[str, Any]]) -> list[str]:
        """
        The lines to print: what was set up, the demo user, and ``curl``
        lines for the first endpoint listened on.

        :param listening: each ``--listen`` description with the address
            it was bound to (its ``getHost()``).
        """
        description, address = listening[0]
        curl, base = curl_target(description, address)
        return [
            "metagateway --dev: a demo setup, never for production.",
            *self.notes,
            "",
            "Demo user: %s   password: %s" % (DEMO_USER, self.password),
            "",
            "Try:",
            "  TOKEN=$(%s -s -X POST %s/auth/login "
            "-H 'Content-Type: application/json' "
            '-d \'{"username":"%s","password":"%s"}\' '
            "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')"
            % (curl, base, DEMO_USER, self.password),
            '  %s -s %s/build/hello -H "Authorization: Bearer $TOKEN"' % (curl, base),
            "  %s -s %s/kv/hello" % (curl, base),
            "",
            "Upstreams verify X-Gateway-Assertion with the keys at:",
            "  %s -s %s/.well-known/jwks.json" % (curl, base),
            "",
        ]


class DevCleanup(Service):
    """
    Removes ``--dev``'s temporary accounts directory when the daemon stops.

    :param setup: what ``--dev`` prepared.
    """

    def __init__(self, setup: DevSetup) -> None:
        self.setup = setup

    def stopService(self) -> None:
        """
        Remove the temporary accounts directory.
        """
        super().stopService()
        self.setup.remove_accounts()


def prepare_dev(
    options: MutableMapping[str, Any], environ: MutableMapping[str, str], reactor: Any
) -> DevSetup:
    """
    Fill ``options`` and ``environ`` with the dev defaults, starting echo
    upstreams on loopback for unset service URLs.

    :return: what was prepared; nothing is printed yet.
    """
    notes = []
    if not environ.get("GATEWAY_JWT_SECRET"):
        environ["GATEWAY_JWT_SECRET"] = secrets.token_urlsafe(48)
        notes.append("Generated a signing secret for this run.")
    if not options.get("listen") and not environ.get("METAGATEWAY_LISTEN"):
        options["listen"] = ["tcp:8080:interface=127.0.0.1"]
    password = secrets.token_urlsafe(12)
    accounts = options.get("accounts-dir") or environ.get("METAGATEWAY_ACCOUNTS_DIR")
    temporary = not accounts
    if not accounts:
        accounts = options["accounts-dir"] = tempfile.mkdtemp(prefix="metagateway-dev-")
    DirectoryCredentialStore(FilePath(accounts)).store(
        make_record(DEMO_USER, password, "admin")
    )
    notes.append("Accounts directory: %s" % (accounts,))
    key_file = None
    if not environ.get("GATEWAY_ASSERTION_KEY_FILE"):
        fd, key_file = tempfile.mkstemp(prefix="metagateway-dev-", suffix=".pem")
        with os.fdopen(fd, "wb") as f:
            f.write(new_key_pem())
        environ["GATEWAY_ASSERTION_KEY_FILE"] = key_file
        notes.append("Generated an assertion key for this run: %s" % (key_file,))
    keys = _key_set(environ["GATEWAY_ASSERTION_KEY_FILE"])
    for route, variable in SERVICE_VARIABLES.items():
        if environ.get(variable):
            continue
        echo = EchoResource(route, keys)
        port = reactor.listenTCP(0, Site(echo), interface="127.0.0.1")
        environ[variable] = "http://127.0.0.1:%d" % (port.getHost().port,)
        notes.append("Echo upstream for %s at %s" % (variable, environ[variable]))
    return DevSetup(password, accounts, temporary, notes, key_file)


def _key_set(path: str) -> Optional[KeySet]:
    """
    The public half of the key in ``path``, for the echo upstreams; ``None``
    when it cannot be read (the start then refuses it in one line).
    """
    try:
        key = load_key(path)
    except AssertionKeyError:
        return None
    return KeySet({"keys": [public_jwk(key.public_key())]})


def curl_target(description: str, address: Any) -> tuple[str, str]:
    """
    How ``curl`` reaches a gateway listening on ``description``, bound to
    ``address``: the command (with ``--unix-socket`` for a UNIX socket,
    ``-k`` for TLS, whose certificate the demo does not check) and the base
    URL.

    :param description: the ``--listen`` endpoint description.
    :param address: the bound port's ``getHost()``.
    """
    if isinstance(address, UNIXAddress):
        name = address.name
        path = name.decode("utf-8", "replace") if isinstance(name, bytes) else name
        path = path or ""
        return "curl --unix-socket %s" % (shlex.quote(path),), "http://localhost"
    host = getattr(address, "host", "127.0.0.1")
    if host in ("0.0.0.0", "", None):
        host = "127.0.0.1"
    elif host in ("::", "::0"):
        host = "::1"
    if ":" in host:
        host = "[%s]" % (host.split("%")[0],)
    port = getattr(address, "port", 8080)
    if endpoint_kind(description) == "ssl":
        return "curl -k", "https://%s:%d" % (host, port)
    return "curl", "http://%s:%d" % (host, port)

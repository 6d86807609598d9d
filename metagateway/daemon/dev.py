"""
``--dev``: the embedded default a new user starts with.

A generated signing secret, a temporary accounts directory holding a demo
admin with a random password, loopback echo upstreams for every service
URL that is unset, and copy-paste ``curl`` lines.
"""

from __future__ import annotations

import json
import secrets
import tempfile
from typing import Any, MutableMapping

from twisted.python.filepath import FilePath
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Site

from metagateway.auth.passwords import make_record
from metagateway.config import SERVICE_VARIABLES
from metagateway.credentials.directory import DirectoryCredentialStore

DEMO_USER = "demo-admin"


class EchoResource(Resource):
    """
    A stand-in upstream that answers every request with a JSON description
    of what it received.

    :param name: the service name reported in the answer.
    """

    isLeaf = True

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

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
        }
        request.setHeader(b"Content-Type", b"application/json")
        return json.dumps(document, indent=2).encode("utf-8") + b"\n"


def prepare_dev(
    options: MutableMapping[str, Any], environ: MutableMapping[str, str], reactor: Any
) -> list[str]:
    """
    Fill ``options`` and ``environ`` with the dev defaults, starting echo
    upstreams on loopback for unset service URLs.

    :return: lines to print for the user.
    """
    lines = ["metagateway --dev: a demo setup, never for production."]
    if not environ.get("GATEWAY_JWT_SECRET"):
        environ["GATEWAY_JWT_SECRET"] = secrets.token_urlsafe(48)
        lines.append("Generated a signing secret for this run.")
    if not options.get("listen") and not environ.get("METAGATEWAY_LISTEN"):
        options["listen"] = ["tcp:8080:interface=127.0.0.1"]
    password = secrets.token_urlsafe(12)
    accounts = options.get("accounts-dir") or environ.get("METAGATEWAY_ACCOUNTS_DIR")
    if not accounts:
        accounts = options["accounts-dir"] = tempfile.mkdtemp(prefix="metagateway-dev-")
    DirectoryCredentialStore(FilePath(accounts)).store(
        make_record(DEMO_USER, password, "admin")
    )
    lines.append("Accounts directory: %s" % (accounts,))
    for route, variable in SERVICE_VARIABLES.items():
        if environ.get(variable):
            continue
        port = reactor.listenTCP(0, Site(EchoResource(route)), interface="127.0.0.1")
        environ[variable] = "http://127.0.0.1:%d" % (port.getHost().port,)
        lines.append("Echo upstream for %s at %s" % (variable, environ[variable]))
    listen = options.get("listen") or environ["METAGATEWAY_LISTEN"].split(",")
    base = gateway_url(listen[0])
    lines += [
        "",
        "Demo user: %s   password: %s" % (DEMO_USER, password),
        "",
        "Try:",
        "  TOKEN=$(curl -s -X POST %s/auth/login -H 'Content-Type: application/json' "
        '-d \'{"username":"%s","password":"%s"}\' '
        "| python3 -c 'import json,sys; print(json.load(sys.stdin)[\"token\"])')"
        % (base, DEMO_USER, password),
        '  curl -s %s/build/hello -H "Authorization: Bearer $TOKEN"' % (base,),
        "  curl -s %s/kv/hello" % (base,),
        "",
    ]
    return lines


def gateway_url(description: str) -> str:
    """
    A URL reaching a ``tcp:``/``ssl:`` endpoint description from this host.
    """
    parts = description.split(":")
    kind = parts[0] if len(parts) > 1 else "tcp"
    port = "8080"
    host = "127.0.0.1"
    for part in parts[1:]:
        if part.isdigit() and port == "8080":
            port = part
        elif part.startswith("port="):
            port = part[len("port=") :]
        elif part.startswith("interface="):
            host = part[len("interface=") :] or host
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    scheme = "https" if kind == "ssl" else "http"
    return "%s://%s:%s" % (scheme, host, port)

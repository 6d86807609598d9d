"""
The configuration file (:ref:`contract-config-file`): a TOML file of ``[[route]]``
tables and a ``[cors]`` table, read into :class:`~metagateway.routes.Route`
objects and a list of allowed origins.

Every refusal is one line naming the file, the key (or, for a TOML syntax
error, the line) and the reason. A key this module does not know is an
error: a typo must not silently change a route's security policy.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import Any, Mapping, Optional
from urllib.parse import urlsplit

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover (PyPy 3.9)
    import tomli as tomllib

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization

from metagateway.routes import TOKEN_POLICIES, TOKEN_ROUTES, Route, default_accept

#: The keys a ``[[route]]`` table may hold.
ROUTE_KEYS = (
    "prefix",
    "name",
    "upstreams",
    "token",
    "accept",
    "strip_prefix",
    "timeout",
    "max_body",
    "upstream_ca",
    "upstream_client_cert",
)

#: A route name: what a token's ``route`` claim may say.
_NAME = re.compile(r"\A[A-Z0-9_]{1,64}\Z")

#: One segment of a route prefix.
_SEGMENT = re.compile(r"\A[A-Za-z0-9._~-]+\Z")

#: First path segments the gateway's own endpoints hold (§4).
RESERVED_PREFIXES = ("auth", "health", "webhooks")

#: An origin: scheme, host, optional port; no path.
_ORIGIN = re.compile(r"\Ahttps?://([A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?\Z")


class ConfigFileError(ValueError):
    """
    The file cannot be read or is not a valid configuration; the message
    is one line naming the file, the key or line, and the reason.
    """


@dataclass(frozen=True)
class ConfigFile:
    """
    What a configuration file says.

    :ivar path: the file, as named.
    :ivar routes: its routes, in the file's order.
    :ivar allow_origins: the ``[cors] allow_origins`` list (``("*",)``
        by default).
    :ivar digest: the SHA-256 of the file's bytes, in hex.
    """

    path: str
    routes: tuple[Route, ...]
    allow_origins: tuple[str, ...]
    digest: str


def load_config_file(path: str, environ: Mapping[str, str]) -> ConfigFile:
    """
    Read and check the configuration file at ``path``.

    :param environ: the environment: a route without ``upstreams`` takes
        the URL of its ``<NAME>_SERVICE_URL`` variable, if set.
    :raises ConfigFileError: when it cannot be read or is invalid.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ConfigFileError(
            "%s: cannot be read: %s" % (path, e.strerror or e)
        ) from None
    return parse_config(data, path, environ)


def parse_config(data: bytes, path: str, environ: Mapping[str, str]) -> ConfigFile:
    """
    Check the bytes of a configuration file.

    :param path: how messages name the file.
    :param environ: as for :func:`load_config_file`.
    :raises ConfigFileError: when it is invalid.
    """
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ConfigFileError(
            "%s: not UTF-8 text (byte %d)" % (path, e.start)
        ) from None
    try:
        document = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError("%s: invalid TOML: %s" % (path, e)) from None
    return _Checker(path, environ).file(document, data)


class _Checker:
    """
    Checks a parsed file, naming the file in every refusal.
    """

    def __init__(self, path: str, environ: Mapping[str, str]) -> None:
        self.path = path
        self.environ = environ

    def fail(self, where: str, reason: str) -> ConfigFileError:
        """
        The refusal of the value at ``where``.
        """
        return ConfigFileError("%s: %s: %s" % (self.path, where, reason))

    def unknown(
        self, table: Mapping[str, Any], known: tuple[str, ...], where: str
    ) -> None:
        """
        Refuse the first key of ``table`` not in ``known``.
        """
        for key in table:
            if key not in known:
                raise self.fail(
                    "%s%s" % (where, key),
                    "unknown key (known: %s)" % (", ".join(known),),
                )

    def file(self, document: Mapping[str, Any], data: bytes) -> ConfigFile:
        """
        The whole file.
        """
        self.unknown(document, ("cors", "route"), "")
        origins = self.cors(document.get("cors", {}))
        tables = document.get("route")
        if tables is None:
            raise ConfigFileError(
                "%s: no [[route]]: the file must define at least one route"
                % (self.path,)
            )
        if not isinstance(tables, list) or not all(
            isinstance(table, dict) for table in tables
        ):
            raise self.fail("route", "must be an array of tables, [[route]]")
        names = {table.get("name") for table in tables}
        routes: list[Route] = []
        for index, table in enumerate(tables):
            route = self.route(table, "route[%d]" % (index,), names)
            for earlier in routes:
                if earlier.name == route.name:
                    raise self.fail(
                        "route[%d].name" % (index,),
                        "%r names another route already" % (route.name,),
                    )
                if earlier.prefix == route.prefix:
                    raise self.fail(
                        "route[%d].prefix" % (index,),
                        "/%s is the prefix of route %s already"
                        % (route.prefix.decode("ascii"), earlier.name),
                    )
            routes.append(route)
        return ConfigFile(
            self.path, tuple(routes), origins, hashlib.sha256(data).hexdigest()
        )

    def cors(self, table: Any) -> tuple[str, ...]:
        """
        The ``[cors]`` table's origins.
        """
        if not isinstance(table, dict):
            raise self.fail("cors", "must be a table, [cors]")
        self.unknown(table, ("allow_origins",), "cors.")
        origins = table.get("allow_origins", ["*"])
        where = "cors.allow_origins"
        if not isinstance(origins, list) or not origins:
            raise self.fail(where, 'must be a non-empty list of origins, or ["*"]')
        for index, origin in enumerate(origins):
            if not isinstance(origin, str):
                raise self.fail("%s[%d]" % (where, index), "must be a string")
            if origin == "*":
                if len(origins) != 1:
                    raise self.fail(where, '"*" must be alone in the list')
                continue
            if not _ORIGIN.match(origin):
                raise self.fail(
                    "%s[%d]" % (where, index),
                    "%r is not an origin like https://app.example.com[:port] "
                    "(scheme and host, no path)" % (origin,),
                )
        return tuple(origins)

    def route(self, table: Mapping[str, Any], where: str, names: set[Any]) -> Route:
        """
        One ``[[route]]`` table.

        :param names: the names of every route of the file.
        """
        self.unknown(table, ROUTE_KEYS, where + ".")
        name = table.get("name")
        if name is None:
            raise self.fail(where, 'missing key "name"')
        if not isinstance(name, str) or not _NAME.match(name):
            raise self.fail(
                where + ".name",
                "%r is not a route name (A-Z, 0-9 and _, at most 64)" % (name,),
            )
        where = "%s (%s)" % (where, name)
        prefix = self.prefix(table, where)
        token = table.get("token", "required")
        if token not in TOKEN_POLICIES:
            raise self.fail(
                where + ".token",
                'must be "required", "optional" or "none", not %r' % (token,),
            )
        return Route(
            prefix=prefix,
            name=name,
            token=token,
            upstreams=self.upstreams(table, where, name),
            accept=self.accept(table, where, name, names),
            strip_prefix=self.flag(table, where, "strip_prefix"),
            timeout=self.timeout(table, where),
            max_body=self.max_body(table, where),
            upstream_ca=self.upstream_ca(table, where),
            upstream_client_cert=self.upstream_client_cert(table, where),
        )

    def prefix(self, table: Mapping[str, Any], where: str) -> bytes:
        """
        The route's ``prefix``, as its segments joined by ``/``.
        """
        prefix = table.get("prefix")
        if prefix is None:
            raise self.fail(where, 'missing key "prefix"')
        where += ".prefix"
        if not isinstance(prefix, str) or not prefix.startswith("/"):
            raise self.fail(where, "must be a path starting with /, not %r" % (prefix,))
        segments = prefix.strip("/").split("/")
        if not all(
            _SEGMENT.match(segment) and segment not in (".", "..")
            for segment in segments
        ):
            raise self.fail(
                where,
                "%r is not a path prefix like /build or /api/v1 (segments of "
                "A-Z a-z 0-9 . _ ~ -)" % (prefix,),
            )
        if segments[0] in RESERVED_PREFIXES:
            raise self.fail(where, "/%s is the gateway's own (§4)" % (segments[0],))
        return "/".join(segments).encode("ascii")

    def upstreams(
        self, table: Mapping[str, Any], where: str, name: str
    ) -> tuple[str, ...]:
        """
        The route's ``upstreams``; without it, ``<NAME>_SERVICE_URL``'s.
        """
        urls = table.get("upstreams")
        if urls is None:
            variable = "%s_SERVICE_URL" % (name,)
            url = self.environ.get(variable, "").strip()
            if not url:
                return ()
            if not url.startswith(("http://", "https://")):
                raise self.fail(
                    where, "%s must start with http:// or https://" % (variable,)
                )
            return (url,)
        where += ".upstreams"
        if not isinstance(urls, list) or not urls:
            raise self.fail(where, "must be a non-empty list of URLs")
        for index, url in enumerate(urls):
            reason = _bad_url(url)
            if reason is not None:
                raise self.fail("%s[%d]" % (where, index), reason)
            if urls.index(url) != index:
                raise self.fail(
                    "%s[%d]" % (where, index), "%r is listed twice" % (url,)
                )
        return tuple(urls)

    def accept(
        self, table: Mapping[str, Any], where: str, name: str, names: set[Any]
    ) -> tuple[str, ...]:
        """
        The route's ``accept`` list; by default its name, ``CORE``, ``AUTH``.
        """
        accept = table.get("accept")
        if accept is None:
            return default_accept(name)
        where += ".accept"
        if not isinstance(accept, list) or not accept:
            raise self.fail(where, "must be a non-empty list of route names")
        for index, item in enumerate(accept):
            if not isinstance(item, str) or (
                item not in TOKEN_ROUTES and item not in names
            ):
                raise self.fail(
                    "%s[%d]" % (where, index),
                    "%r is no token route (%s, or a route of this file)"
                    % (item, ", ".join(TOKEN_ROUTES)),
                )
        return tuple(accept)

    def flag(self, table: Mapping[str, Any], where: str, key: str) -> bool:
        """
        A true-or-false key, true by default.
        """
        value = table.get(key, True)
        if not isinstance(value, bool):
            raise self.fail("%s.%s" % (where, key), "must be true or false")
        return value

    def timeout(self, table: Mapping[str, Any], where: str) -> Optional[float]:
        """
        The route's ``timeout``, if given.
        """
        value = table.get("timeout")
        if value is None:
            return None
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value < 0
        ):
            raise self.fail(
                where + ".timeout",
                "must be a number of seconds, 0 or more (0: no limit)",
            )
        return float(value)

    def max_body(self, table: Mapping[str, Any], where: str) -> Optional[int]:
        """
        The route's ``max_body``, if given.
        """
        value = table.get("max_body")
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(
                where + ".max_body",
                "must be a whole number of bytes, 0 or more (0: no limit)",
            )
        return value

    def pem_file(
        self, table: Mapping[str, Any], where: str, key: str
    ) -> Optional[tuple[str, bytes]]:
        """
        The path and bytes of the PEM file ``key`` names, if it names one;
        a relative path is taken from the configuration file's directory.
        """
        value = table.get(key)
        if value is None:
            return None
        where = "%s.%s" % (where, key)
        if not isinstance(value, str) or not value:
            raise self.fail(where, "must be the path of a PEM file")
        path = os.path.join(os.path.dirname(os.path.abspath(self.path)), value)
        try:
            with open(path, "rb") as f:
                return path, f.read(4 * 1024 * 1024)
        except OSError as e:
            raise self.fail(
                where, "%s cannot be read: %s" % (path, e.strerror or e)
            ) from None

    def upstream_ca(self, table: Mapping[str, Any], where: str) -> Optional[str]:
        """
        The route's ``upstream_ca``, if given: a PEM bundle of certificates
        (``--upstream-ca``'s meaning, for this route).
        """
        found = self.pem_file(table, where, "upstream_ca")
        if found is None:
            return None
        path, data = found
        try:
            x509.load_pem_x509_certificates(data)
        except ValueError:
            raise self.fail(
                where + ".upstream_ca", "%s: no PEM certificate in it" % (path,)
            ) from None
        return path

    def upstream_client_cert(
        self, table: Mapping[str, Any], where: str
    ) -> Optional[str]:
        """
        The route's ``upstream_client_cert``, if given: a PEM file with a
        certificate and its private key (``--upstream-client-cert``'s
        meaning, for this route).
        """
        found = self.pem_file(table, where, "upstream_client_cert")
        if found is None:
            return None
        path, data = found
        where += ".upstream_client_cert"
        if b"PRIVATE KEY-----" not in data or b"CERTIFICATE-----" not in data:
            raise self.fail(
                where,
                "%s: needs a PEM certificate and its private key in one file" % (path,),
            )
        try:
            certificate = x509.load_pem_x509_certificates(data)[0]
            key = serialization.load_pem_private_key(data, password=None)
        except TypeError:
            raise self.fail(
                where, "%s: the key is encrypted; give an unencrypted key" % (path,)
            ) from None
        except (ValueError, UnsupportedAlgorithm) as e:
            raise self.fail(
                where, "%s: unusable certificate or key: %s" % (path, e)
            ) from None
        if _public_der(key.public_key()) != _public_der(certificate.public_key()):
            raise self.fail(
                where, "%s: the private key is not the certificate's" % (path,)
            )
        return path


def _public_der(key: Any) -> bytes:
    """
    A public key's DER SubjectPublicKeyInfo, to compare two keys.
    """
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER,
            serialization.PublicFormat.SubjectPublicKeyInfo,
        )
    )


def _bad_url(url: Any) -> Optional[str]:
    """
    Why ``url`` cannot be an upstream, or ``None`` if it can.
    """
    if not isinstance(url, str):
        return "must be a string"
    if not url.startswith(("http://", "https://")):
        return "%r must start with http:// or https://" % (url,)
    if not url.isascii() or any(c.isspace() for c in url):
        return "%r must be ASCII without spaces" % (url,)
    try:
        parts = urlsplit(url)
        if parts.port == 0:
            return "%r: port 0" % (url,)
    except ValueError as e:
        return "%r: %s" % (url, e)
    if not parts.hostname:
        return "%r names no host" % (url,)
    if "@" in parts.netloc or parts.query or parts.fragment:
        return "%r must have no user, query or fragment" % (url,)
    return None

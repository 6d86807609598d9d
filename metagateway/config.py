"""
The gateway's configuration: one frozen object, built in code or from
command-line options and an environment mapping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Optional
from urllib.parse import unquote, urlsplit

from metagateway.addresses import TrustedProxies
from metagateway.configfile import ConfigFileError, load_config_file
from metagateway.routes import Route, builtin_routes

#: Route name -> the environment variable naming its upstream.
SERVICE_VARIABLES = {
    "BUILD": "BUILD_SERVICE_URL",
    "KV": "KV_SERVICE_URL",
    "CORE": "CORE_SERVICE_URL",
    "BASE": "BASE_SERVICE_URL",
}


#: Seconds each call to the R2 credential store may take, retries included.
STORE_TIMEOUT = 5.0

#: How many times a failed call to the R2 credential store is repeated.
STORE_RETRIES = 2

#: The refusal when neither credential store is configured.
NO_STORE = (
    "no credential store: give --accounts-dir (or METAGATEWAY_ACCOUNTS_DIR) "
    "or set R2_ENDPOINT_URL"
)


class ConfigurationError(Exception):
    """
    The configuration cannot run a gateway; the message names what is
    missing or wrong, in one line.
    """


@dataclass(frozen=True)
class R2Settings:
    """
    Where the R2 (S3-compatible) credential store is, and how to sign.

    :ivar endpoint_url: the endpoint, such as ``https://<acct>.r2.cloudflarestorage.com``.
    :ivar access_key_id: the access key id.
    :ivar secret_access_key: the secret key.
    :ivar bucket: the bucket (path-style addressing).
    :ivar region: the SigV4 region.
    """

    endpoint_url: str
    access_key_id: str
    secret_access_key: str = field(repr=False)
    bucket: str = "metacogna-accounts"
    region: str = "auto"

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> R2Settings:
        """
        Read the ``R2_*`` variables.

        :raises ConfigurationError: naming every missing variable.
        """
        names = ("R2_ENDPOINT_URL", "R2_ACCESS_KEY_ID", "R2_SECRET_ACCESS_KEY")
        values = {name: environ.get(name, "") for name in names}
        missing = [name for name in names if not values[name]]
        if missing:
            raise ConfigurationError(
                "%s %s not set (needed for the R2 credential store)"
                % (" and ".join(missing), "is" if len(missing) == 1 else "are")
            )
        endpoint = values["R2_ENDPOINT_URL"]
        if not endpoint.startswith(("http://", "https://")):
            raise ConfigurationError(
                "R2_ENDPOINT_URL must start with http:// or https://"
            )
        return cls(
            endpoint_url=endpoint,
            access_key_id=values["R2_ACCESS_KEY_ID"],
            secret_access_key=values["R2_SECRET_ACCESS_KEY"],
            bucket=environ.get("R2_BUCKET") or "metacogna-accounts",
            region=environ.get("R2_REGION") or "auto",
        )


@dataclass(frozen=True)
class StateSettings:
    """
    Where the shared security state is (:ref:`contract-shared-state`): a Redis server.

    :ivar host: the server's host name or address.
    :ivar port: its port.
    :ivar db: the database number.
    :ivar password: the password (``AUTH``), if any.
    :ivar username: the ACL user name, if any.
    :ivar tls: ``rediss://``: TLS, the server's certificate checked
        against the system's trust roots.
    """

    host: str
    port: int = 6379
    db: int = 0
    password: Optional[str] = field(default=None, repr=False)
    username: Optional[str] = None
    tls: bool = False

    @classmethod
    def from_url(cls, url: str, name: str = "--state-url") -> StateSettings:
        """
        Read ``redis://[[user]:password@]host[:port][/db]`` or ``rediss://...``.

        :param name: how errors name the setting.
        :raises ConfigurationError: for anything else.
        """
        try:
            parts = urlsplit(url.strip())
            port = parts.port
        except ValueError as e:
            raise ConfigurationError("%s: %s" % (name, e)) from None
        if parts.scheme not in ("redis", "rediss") or not parts.hostname:
            raise ConfigurationError(
                "%s must look like redis://[:password@]host:port[/db] or "
                "rediss://..." % (name,)
            )
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ConfigurationError(
                "%s: the database must be a number, not %r" % (name, path)
            )
        if parts.query or parts.fragment:
            raise ConfigurationError("%s takes no query or fragment" % (name,))
        return cls(
            host=parts.hostname,
            port=port or 6379,
            db=int(path) if path else 0,
            password=unquote(parts.password) if parts.password is not None else None,
            username=unquote(parts.username) if parts.username else None,
            tls=parts.scheme == "rediss",
        )

    def display(self) -> str:
        """
        The URL without its password, for logs.
        """
        host = "[%s]" % (self.host,) if ":" in self.host else self.host
        return "%s://%s:%d/%d" % (
            "rediss" if self.tls else "redis",
            host,
            self.port,
            self.db,
        )


@dataclass(frozen=True)
class GitHubSettings:
    """
    GitHub OAuth code-exchange settings.
    """

    client_id: Optional[str] = None
    client_secret: Optional[str] = field(default=None, repr=False)
    token_url: str = "https://github.com/login/oauth/access_token"  # noqa: S105
    api_url: str = "https://api.github.com"


@dataclass(frozen=True)
class GatewayConfig:
    """
    Everything a gateway needs to run.

    :ivar jwt_secret: the HMAC key tokens are signed with.
    :ivar previous_secrets: former keys, accepted for verification only.
    :ivar services: route name (``BUILD``, ``KV``, ``CORE``, ``BASE``) to
        upstream base URL; a missing route answers ``502 MISSING_TARGET``.
    :ivar accounts_dir: the local credential store's directory, if used.
    :ivar r2: the R2 credential store's settings, if used.
    :ivar listen: server endpoint descriptions (the daemon only).
    :ivar upstream_timeout: seconds to wait for an upstream's headers.
    :ivar clock_skew: seconds of leeway on ``exp``, ``iat``, ``nbf``.
    :ivar login_failures_per_user: failures per username per window; 0 = off.
    :ivar login_failures_per_address: failures per address per window; 0 = off.
    :ivar login_window: the sliding window in seconds.
    :ivar trusted_proxies: peer addresses and networks (CIDR) whose
        ``X-Forwarded-For`` is believed.
    :ivar max_body: the largest request body proxied, in bytes; 0 = no limit.
    :ivar auth_max_body: the largest body the auth endpoints read.
    :ivar github: GitHub OAuth settings.
    :ivar notion_webhook_secret: the shared secret for ``/webhooks/notion``.
    :ivar store_cache_ttl: seconds a looked-up record is reused; 0 = off.
    :ivar store_timeout: seconds each call to the R2 store may take,
        retries included; past it the login answers ``503``.
    :ivar store_retries: how many times a failed R2 call (connection
        error, ``5xx``) is repeated within ``store_timeout``.
    :ivar drain_timeout: seconds in-flight requests get to finish on stop.
    :ivar websocket_idle_timeout: seconds a joined WebSocket may pass no
        byte either way before it is closed; 0 for no limit.
    :ivar max_header_bytes: the largest request head (request line and
        headers), in bytes; past it ``431``.
    :ivar max_headers: the most header lines in a request; past it ``431``.
    :ivar state: the shared security state's store (``--state-url``);
        ``None``: held in this process (or by the supervisor of
        ``--workers``).
    :ivar routes: the proxied routes (:ref:`contract-config-file`); empty
        for the built-in table (:ref:`contract-proxy`), with
        :attr:`services` as upstreams (see :meth:`route_table`).
    :ivar allow_origins: the origins CORS lets read answers; ``("*",)``
        for any (§4).
    :ivar config_file: the configuration file the routes came from, if
        any (``--config``); a reload reads it again.
    :ivar config_digest: the SHA-256 of that file's bytes, in hex.
    :ivar jwt_secret_file: the file the secret was read from, if any
        (``GATEWAY_JWT_SECRET_FILE``); a reload reads it again.
    :ivar assertion_key_file: the PEM EC P-256 key upstream assertions
        are signed with (``GATEWAY_ASSERTION_KEY_FILE``); ``None``: no
        assertion.
    :ivar upstream_ca: a PEM bundle upstream certificates must chain to
        (``--upstream-ca``); ``None``: the system's trust roots.
    :ivar upstream_client_cert: a PEM file with the certificate and key
        presented to ``https://`` upstreams (``--upstream-client-cert``).
    """

    jwt_secret: str = field(repr=False)
    previous_secrets: tuple[str, ...] = field(default=(), repr=False)
    services: Mapping[str, str] = field(default_factory=dict)
    accounts_dir: Optional[str] = None
    r2: Optional[R2Settings] = None
    listen: tuple[str, ...] = ("tcp:8080",)
    upstream_timeout: float = 30.0
    clock_skew: float = 0.0
    login_failures_per_user: int = 5
    login_failures_per_address: int = 20
    login_window: float = 60.0
    trusted_proxies: tuple[str, ...] = ()
    max_body: int = 0
    auth_max_body: int = 64 * 1024
    github: GitHubSettings = field(default_factory=GitHubSettings)
    notion_webhook_secret: Optional[str] = field(default=None, repr=False)
    store_cache_ttl: float = 5.0
    store_timeout: float = STORE_TIMEOUT
    store_retries: int = STORE_RETRIES
    drain_timeout: float = 30.0
    websocket_idle_timeout: float = 300.0
    max_header_bytes: int = 16384
    max_headers: int = 100
    state: Optional[StateSettings] = None
    routes: tuple[Route, ...] = ()
    allow_origins: tuple[str, ...] = ("*",)
    config_file: Optional[str] = None
    config_digest: str = ""
    jwt_secret_file: Optional[str] = None

    def route_table(self) -> tuple[Route, ...]:
        """
        The routes proxied: :attr:`routes`, or §5's table on
        :attr:`services` when there are none.
        """
        return self.routes or builtin_routes(self.services)

    assertion_key_file: Optional[str] = None
    upstream_ca: Optional[str] = None
    upstream_client_cert: Optional[str] = None

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> GatewayConfig:
        """
        Build a configuration from environment variables alone: what the
        daemon does when no option is given.

        :param environ: the environment, such as ``os.environ``.
        :raises ConfigurationError: as :meth:`from_options`.
        """
        return cls.from_options({}, environ)

    @classmethod
    def from_options(
        cls, options: Mapping[str, object], environ: Mapping[str, str]
    ) -> GatewayConfig:
        """
        Build a configuration from parsed options and environment variables.

        An option given on the command line wins over its variable.

        :param options: option name (as in ``--accounts-dir``, without
            dashes, e.g. ``accounts-dir``) to value; ``None`` or absent when
            not given.
        :param environ: the environment.
        :raises ConfigurationError: when the secret or store is missing, or
            a value is malformed.
        """
        read = _Reader(options, environ)
        secret, accounts_dir, r2 = _secret_and_store(read)
        file_settings = _config_file(read)
        return cls(
            jwt_secret=secret,
            previous_secrets=_previous_secrets(environ),
            services=_services(environ),
            accounts_dir=accounts_dir,
            r2=r2,
            listen=_listen(options, environ),
            trusted_proxies=_trusted_proxies(read),
            github=_github(environ),
            notion_webhook_secret=environ.get("NOTION_WEBHOOK_SECRET") or None,
            **_limits(read),
            state=_state(read),
            jwt_secret_file=environ.get("GATEWAY_JWT_SECRET_FILE") or None,
            **file_settings,
            assertion_key_file=environ.get("GATEWAY_ASSERTION_KEY_FILE") or None,
            upstream_ca=_path(read, "upstream-ca", "METAGATEWAY_UPSTREAM_CA"),
            upstream_client_cert=_path(
                read, "upstream-client-cert", "METAGATEWAY_UPSTREAM_CLIENT_CERT"
            ),
        )


class _Reader:
    """
    Reads one setting: the option if given, else its environment variable,
    else the default; numbers checked as they are read.

    :param options: the parsed options.
    :param environ: the environment.
    """

    def __init__(self, options: Mapping[str, object], environ: Mapping[str, str]):
        self.options = options
        self.environ = environ

    def pick(self, option: str, variable: str, default: object) -> object:
        """
        The option's value, else the variable's (unless empty), else
        ``default``.
        """
        value = self.options.get(option)
        if value is not None:
            return value
        text = self.environ.get(variable)
        if text is not None and text != "":
            return text
        return default

    def number(self, option: str, variable: str, default: float) -> float:
        """
        A finite, non-negative number.

        :raises ConfigurationError: naming the option and variable.
        """
        raw = self.pick(option, variable, default)
        try:
            value = float(raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise ConfigurationError(
                "--%s / %s must be a number, not %r" % (option, variable, raw)
            ) from None
        if value != value or value < 0 or value == float("inf"):
            raise ConfigurationError(
                "--%s / %s must be a non-negative number" % (option, variable)
            )
        return value

    def positive(self, option: str, variable: str, default: float) -> float:
        """
        A finite number above zero.

        :raises ConfigurationError: naming the option and variable.
        """
        value = self.number(option, variable, default)
        if value == 0:
            raise ConfigurationError(
                "--%s / %s must be more than 0" % (option, variable)
            )
        return value

    def count(self, option: str, variable: str, default: int) -> int:
        """
        A whole, non-negative number.

        :raises ConfigurationError: naming the option and variable.
        """
        value = self.number(option, variable, default)
        if value != int(value):
            raise ConfigurationError(
                "--%s / %s must be a whole number" % (option, variable)
            )
        return int(value)


def _secret_and_store(read: _Reader) -> tuple[str, Optional[str], Optional[R2Settings]]:
    """
    The signing secret, and the accounts directory or R2 settings.

    :raises ConfigurationError: one line naming everything missing.
    """
    secret_file = read.environ.get("GATEWAY_JWT_SECRET_FILE")
    if secret_file:
        secret = read_secret_file(secret_file)
    else:
        secret = read.environ.get("GATEWAY_JWT_SECRET", "")
    accounts_dir = read.pick("accounts-dir", "METAGATEWAY_ACCOUNTS_DIR", None)
    no_store = not accounts_dir and not read.environ.get("R2_ENDPOINT_URL")
    if not secret:
        # One line naming everything missing, not just the first.
        raise ConfigurationError(
            "GATEWAY_JWT_SECRET is not set" + ("; " + NO_STORE if no_store else "")
        )
    if no_store:
        raise ConfigurationError(NO_STORE)
    if accounts_dir:
        return secret, str(accounts_dir), None
    return secret, None, R2Settings.from_environ(read.environ)


def read_secret_file(path: str) -> str:
    """
    The signing secret in ``GATEWAY_JWT_SECRET_FILE``: its first line,
    without surrounding whitespace.

    :raises ConfigurationError: when it cannot be read or the line is empty.
    """
    try:
        with open(path, "rb") as f:
            first = f.readline()
    except OSError as e:
        raise ConfigurationError(
            "GATEWAY_JWT_SECRET_FILE: cannot read %s: %s" % (path, e.strerror or e)
        ) from None
    try:
        secret = first.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise ConfigurationError(
            "GATEWAY_JWT_SECRET_FILE: the first line of %s is not UTF-8" % (path,)
        ) from None
    if not secret:
        raise ConfigurationError(
            "GATEWAY_JWT_SECRET_FILE: the first line of %s is empty" % (path,)
        )
    return secret


def _config_file(read: _Reader) -> dict[str, Any]:
    """
    The :class:`GatewayConfig` fields ``--config`` / ``METAGATEWAY_CONFIG``
    sets, if either is given.

    :raises ConfigurationError: when the file cannot be read or is
        invalid; the message names the file, the key or line, and why.
    """
    path = read.pick("config", "METAGATEWAY_CONFIG", None)
    if not path:
        return {}
    try:
        loaded = load_config_file(str(path), read.environ)
    except ConfigFileError as e:
        raise ConfigurationError(str(e)) from None
    return {
        "routes": loaded.routes,
        "allow_origins": loaded.allow_origins,
        "config_file": loaded.path,
        "config_digest": loaded.digest,
    }


def _previous_secrets(environ: Mapping[str, str]) -> tuple[str, ...]:
    """
    ``GATEWAY_JWT_PREVIOUS_SECRETS``, split on commas.
    """
    return tuple(
        s.strip()
        for s in environ.get("GATEWAY_JWT_PREVIOUS_SECRETS", "").split(",")
        if s.strip()
    )


def _listen(
    options: Mapping[str, object], environ: Mapping[str, str]
) -> tuple[str, ...]:
    """
    The ``--listen`` options, else ``METAGATEWAY_LISTEN`` split on commas,
    else ``tcp:8080``.
    """
    listen_option = options.get("listen")
    if listen_option and isinstance(listen_option, str):
        return (listen_option,)
    if listen_option and isinstance(listen_option, (list, tuple)):
        return tuple(str(description) for description in listen_option)
    listen_env = environ.get("METAGATEWAY_LISTEN", "")
    return tuple(part.strip() for part in listen_env.split(",") if part.strip()) or (
        "tcp:8080",
    )


def _services(environ: Mapping[str, str]) -> dict[str, str]:
    """
    Route name to upstream URL, for every ``*_SERVICE_URL`` set.

    :raises ConfigurationError: for a URL that is not ``http(s)://``.
    """
    services = {}
    for route, variable in SERVICE_VARIABLES.items():
        url = environ.get(variable, "").strip()
        if not url:
            continue
        if not url.startswith(("http://", "https://")):
            raise ConfigurationError(
                "%s must start with http:// or https://" % (variable,)
            )
        services[route] = url
    return services


def _trusted_proxies(read: _Reader) -> tuple[str, ...]:
    """
    ``--trusted-proxies``, split on commas.

    :raises ConfigurationError: for an entry that is neither an address
        nor a network.
    """
    raw = read.pick("trusted-proxies", "METAGATEWAY_TRUSTED_PROXIES", "")
    trusted = tuple(part.strip() for part in str(raw).split(",") if part.strip())
    try:
        TrustedProxies(trusted)
    except ValueError as e:
        raise ConfigurationError(
            "--trusted-proxies / METAGATEWAY_TRUSTED_PROXIES: %s" % (e,)
        ) from None
    return trusted


def _github(environ: Mapping[str, str]) -> GitHubSettings:
    """
    The ``GITHUB_*`` variables.
    """
    return GitHubSettings(
        client_id=environ.get("GITHUB_CLIENT_ID") or None,
        client_secret=environ.get("GITHUB_CLIENT_SECRET") or None,
        token_url=environ.get("GITHUB_OAUTH_TOKEN_URL")
        or "https://github.com/login/oauth/access_token",
        api_url=environ.get("GITHUB_API_URL") or "https://api.github.com",
    )


def _state(read: _Reader) -> Optional[StateSettings]:
    """
    Where the shared security state is, from ``--state-url`` /
    ``METAGATEWAY_STATE_URL``; ``None`` when neither is set.

    :raises ConfigurationError: for a URL that is not ``redis://`` or
        ``rediss://``.
    """
    url = read.pick("state-url", "METAGATEWAY_STATE_URL", None)
    if not url:
        return None
    return StateSettings.from_url(str(url), "--state-url / METAGATEWAY_STATE_URL")


def _path(read: _Reader, option: str, variable: str) -> Optional[str]:
    """
    A file's path from ``--option`` or its variable; ``None`` when unset.
    """
    value = read.pick(option, variable, None)
    return str(value) if value else None


def _limits(read: _Reader) -> dict[str, Any]:
    """
    The numeric settings, by :class:`GatewayConfig` field name.

    :raises ConfigurationError: for a value that is not a non-negative
        number (or, for counts, a whole one).
    """
    number, count = read.number, read.count
    return {
        "upstream_timeout": number(
            "upstream-timeout", "METAGATEWAY_UPSTREAM_TIMEOUT", 30.0
        ),
        "clock_skew": number("clock-skew", "METAGATEWAY_CLOCK_SKEW", 0.0),
        "login_failures_per_user": count(
            "login-failures-per-user", "METAGATEWAY_LOGIN_FAILURES_PER_USER", 5
        ),
        "login_failures_per_address": count(
            "login-failures-per-address",
            "METAGATEWAY_LOGIN_FAILURES_PER_ADDRESS",
            20,
        ),
        "login_window": number("login-window", "METAGATEWAY_LOGIN_WINDOW", 60.0),
        "max_body": count("max-body", "METAGATEWAY_MAX_BODY", 0),
        "store_cache_ttl": number(
            "store-cache-ttl", "METAGATEWAY_STORE_CACHE_TTL", 5.0
        ),
        "store_timeout": read.positive(
            "store-timeout", "METAGATEWAY_STORE_TIMEOUT", STORE_TIMEOUT
        ),
        "store_retries": count(
            "store-retries", "METAGATEWAY_STORE_RETRIES", STORE_RETRIES
        ),
        "drain_timeout": number("drain-timeout", "METAGATEWAY_DRAIN_TIMEOUT", 30.0),
        "websocket_idle_timeout": number(
            "websocket-idle-timeout", "METAGATEWAY_WEBSOCKET_IDLE_TIMEOUT", 300.0
        ),
        "max_header_bytes": count(
            "max-header-bytes", "METAGATEWAY_MAX_HEADER_BYTES", 16384
        ),
        "max_headers": count("max-headers", "METAGATEWAY_MAX_HEADERS", 100),
    }

"""
The listening sockets of ``--workers N``, held by the supervisor: endpoint
descriptions taken apart (:func:`endpoint_kind`, :func:`offset_endpoint`,
:func:`tcp_address`), and the sockets bound once at start and handed to
each worker (:class:`HeldSocket`, :func:`bind_sockets`; one
``SO_REUSEPORT`` socket per worker per TCP listener where the system has
it, else one shared socket).
"""

from __future__ import annotations

import re
import socket
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from metagateway.config import ConfigurationError

log = Logger(namespace="metagateway.daemon.sockets")

#: Endpoint types a parent can bind for its workers.
SHAREABLE_ENDPOINTS = ("tcp", "tcp6", "unix")


def _split_endpoint(description: str) -> list[str]:
    """
    Split an endpoint description on the colons that are not escaped.
    """
    parts = [""]
    escaped = False
    for char in description:
        if escaped:
            parts[-1] += char
            escaped = False
        elif char == "\\":
            parts[-1] += char
            escaped = True
        elif char == ":":
            parts.append("")
        else:
            parts[-1] += char
    return parts


def endpoint_kind(description: str) -> str:
    """
    The type of an endpoint description (``tcp``, ``unix`` ...), lower-cased.
    """
    return _split_endpoint(description)[0].strip().lower()


def offset_endpoint(description: str, offset: int) -> str:
    """
    The endpoint worker number ``offset`` serves its metrics on: a
    ``tcp:``, ``tcp6:`` or ``ssl:`` endpoint's port plus ``offset`` (port
    ``0`` stays ``0``: each worker gets a free port), or a ``unix:`` path
    with ``-<offset>`` added.

    :raises ConfigurationError: for other endpoint types.
    """
    parts = _split_endpoint(description)
    kind = parts[0].strip().lower()
    if kind in ("tcp", "tcp6", "ssl"):
        for i, part in enumerate(parts[1:], 1):
            name, equals, value = part.partition("=")
            if not equals and i == 1:
                port, prefix = name, ""
            elif equals and name == "port":
                port, prefix = value, "port="
            else:
                continue
            try:
                number = int(port)
            except ValueError:
                break
            if number:
                parts[i] = prefix + str(number + offset)
            return ":".join(parts)
    elif kind == "unix":
        for i, part in enumerate(parts[1:], 1):
            name, equals, value = part.partition("=")
            if not equals and i == 1:
                parts[i] = "%s-%d" % (part, offset)
                return ":".join(parts)
            if equals and name == "address":
                parts[i] = "address=%s-%d" % (value, offset)
                return ":".join(parts)
    raise ConfigurationError(
        "--metrics-listen with --workers needs a tcp:PORT, ssl:PORT or unix:PATH "
        "endpoint (worker k serves on PORT+k), not %r" % (description,)
    )


class _Unused(Factory):
    """
    The factory a parent's held ports are opened with; the parent never
    accepts, so it never builds a protocol.
    """

    protocol = Protocol
    noisy = False

    def logPrefix(self) -> str:
        return "metagateway workers"


@dataclass
class HeldSocket:
    """
    A listening socket the parent holds open for its workers, or one per
    worker (``SO_REUSEPORT``).

    :ivar fd: its file descriptor in the parent (the first worker's, with
        one per worker).
    :ivar family: its address family.
    :ivar port: the listening port, closed by :meth:`close`.
    :ivar own: one listening socket per worker (worker ``k`` gets
        ``own[k]``), all bound to one port with ``SO_REUSEPORT``; empty
        when the workers share ``fd``.
    :ivar backlog: the listen queue of each of ``own``.
    """

    fd: int
    family: int
    port: Optional[IListeningPort] = None
    own: Sequence[Any] = ()
    backlog: int = 50
    paused: set[int] = field(default_factory=set)

    def fd_for(self, index: int) -> int:
        """
        The descriptor worker ``index`` inherits.
        """
        return int(self.own[index].fileno()) if self.own else self.fd

    def pause(self, index: int) -> None:
        """
        Worker ``index`` is down: take its own socket out of the port's
        group (``shutdown``; it stays bound), so that the kernel sends new
        connections to the other workers. Shared sockets need nothing.
        """
        if index < len(self.own) and index not in self.paused:
            try:
                self.own[index].shutdown(socket.SHUT_RDWR)
            except OSError:
                return
            self.paused.add(index)

    def resume(self, index: int) -> None:
        """
        Worker ``index`` starts again: its own socket listens again.
        """
        if index in self.paused:
            self.paused.discard(index)
            self.own[index].listen(self.backlog)

    def close(self) -> Optional[Deferred[None]]:
        """
        Stop listening (the workers keep their own copies open).
        """
        for own in self.own:
            own.close()
        if self.port is None:
            return None
        return self.port.stopListening()  # type: ignore[no-any-return]


def reuse_port_supported() -> bool:
    """
    Whether the kernel spreads connections over sockets sharing a port
    with ``SO_REUSEPORT`` (Linux; other systems accept the option without
    spreading, or lack it).
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def _unescape(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text)


def tcp_address(description: str) -> tuple[int, str, int, int]:
    """
    The address family, interface, port and backlog of a ``tcp:`` or
    ``tcp6:`` endpoint description, as Twisted reads them.

    :raises ConfigurationError: when the port is missing or malformed.
    """
    parts = _split_endpoint(description)
    kind = parts[0].strip().lower()
    interface = "::" if kind == "tcp6" else ""
    port: Optional[int] = None
    backlog = 50
    try:
        for i, part in enumerate(parts[1:], 1):
            name, equals, value = part.partition("=")
            if not equals and i == 1:
                port = int(name)
            elif name == "port":
                port = int(value)
            elif name == "interface":
                interface = _unescape(value)
            elif name == "backlog":
                backlog = int(value)
    except ValueError:
        port = None
    if port is None:
        raise ConfigurationError("bad --listen %r: no port" % (description,))
    family = socket.AF_INET6 if kind == "tcp6" or ":" in interface else socket.AF_INET
    return family, interface, port, backlog


def bind_reuse_port(
    description: str,
    count: int,
    make_socket: Callable[[int, int], Any] = socket.socket,
) -> HeldSocket:
    """
    Bind ``count`` listening sockets to the port of the ``tcp:`` or
    ``tcp6:`` endpoint ``description``, with ``SO_REUSEPORT``: one per
    worker.

    A socket without ``SO_REUSEPORT`` is bound first (and closed), so that
    a port any other socket listens on is refused, as a plain listen
    would refuse it, and port ``0`` picks one free port for them all.

    :raises CannotListenError: when the port cannot be bound.
    """
    family, interface, port, backlog = tcp_address(description)
    shown = interface or "any"
    probe = make_socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((interface, port))
        port = int(probe.getsockname()[1])
    except OSError as e:
        raise CannotListenError(shown, port, e) from None
    finally:
        probe.close()
    own: list[Any] = []
    try:
        for _ in range(count):
            own.append(make_socket(family, socket.SOCK_STREAM))
            own[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            own[-1].setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            own[-1].bind((interface, port))
            own[-1].listen(backlog)
            # A worker's reactor adopts it as it is: accepting must not
            # block (the flag belongs to the socket, shared with the child).
            own[-1].setblocking(False)
    except OSError as e:
        for sock in own:
            sock.close()
        raise CannotListenError(shown, port, e) from None
    return HeldSocket(own[0].fileno(), family, None, own, backlog)


def bind_sockets(
    reactor: Any,
    descriptions: Sequence[str],
    workers: int = 1,
    reuse_port: bool = False,
    make_socket: Callable[[int, int], Any] = socket.socket,
) -> list[HeldSocket]:
    """
    Listen on every endpoint in ``descriptions`` without accepting.

    :param workers: how many workers will serve them.
    :param reuse_port: give each worker a socket of its own per TCP
        endpoint (:func:`bind_reuse_port`); ``unix:`` ones are shared.
    :param make_socket: makes those sockets (tests).

    :raises ConfigurationError: for an endpoint type that cannot be shared.
    :raises twisted.internet.error.CannotListenError: when one cannot be
        bound (the sockets already bound are closed first).
    """
    held: list[HeldSocket] = []
    for description in descriptions:
        if endpoint_kind(description) not in SHAREABLE_ENDPOINTS:
            raise ConfigurationError(
                "--workers needs tcp:, tcp6: or unix: --listen endpoints "
                "(terminate TLS in front), not %r" % (description,)
            )
    try:
        for description in descriptions:
            if reuse_port and endpoint_kind(description) in ("tcp", "tcp6"):
                held.append(bind_reuse_port(description, workers, make_socket))
                continue
            result: list[Any] = []
            serverFromString(reactor, description).listen(_Unused()).addBoth(
                result.append
            )
            if isinstance(result[0], Failure):
                result[0].raiseException()
            port = result[0]
            port.stopReading()
            address = port.getHost()
            if isinstance(address, IPv4Address):
                family = socket.AF_INET
            elif isinstance(address, IPv6Address):
                family = socket.AF_INET6
            else:
                family = socket.AF_UNIX
            held.append(HeldSocket(port.fileno(), family, port))
    except BaseException:
        for socket_ in held:
            socket_.close()
        raise
    return held

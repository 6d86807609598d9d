"""
The worker's side of ``--workers N``: serving the listening sockets it
inherited (:class:`AdoptedPortService`, :func:`adopt_sockets`), and
watching its parent through standard input (:class:`ParentWatch`).
"""

from __future__ import annotations

import os
import socket
from typing import Any, Optional

from zope.interface import implementer

from twisted.application.service import MultiService, Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort, IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure

from metagateway.daemon.workers import ProcessSettings

log = Logger(namespace="metagateway.daemon.adopted")


class AdoptedPortService(Service):
    """
    Serves a listening socket inherited from the parent.

    :param reactor: adopts the socket.
    :param fd: the inherited file descriptor (closed once adopted: the
        port holds its own duplicate).
    :param family: its address family.
    :param factory: the factory serving it.
    """

    def __init__(self, reactor: Any, fd: int, family: int, factory: Any) -> None:
        self.reactor = reactor
        self.fd = fd
        self.family = family
        self.factory = factory
        self.port: Optional[IListeningPort] = None

    def startService(self) -> None:
        """
        Adopt the socket and start accepting.
        """
        super().startService()
        self.port = self.reactor.adoptStreamPort(self.fd, self.family, self.factory)
        os.close(self.fd)

    def stopService(self) -> Optional[Deferred[None]]:
        """
        Stop accepting.

        A UNIX socket is only no longer read: closing it as a port would
        remove its file, which the parent and the other workers still use
        (the parent removes it last).
        """
        super().stopService()
        if self.port is None:
            return None
        port, self.port = self.port, None
        if self.family == getattr(socket, "AF_UNIX", None):
            port.stopReading()  # type: ignore[attr-defined]
            return None
        return port.stopListening()  # type: ignore[no-any-return]


@implementer(IReadDescriptor)
class ParentWatch:
    """
    Stops the reactor when standard input (a pipe from the parent) reaches
    end of file: the parent is gone.

    :param reactor: the reactor to stop.
    :param fd: the pipe's file descriptor.
    """

    def __init__(self, reactor: Any, fd: int = 0) -> None:
        self.reactor = reactor
        self.fd = fd
        self.gone = False

    def fileno(self) -> int:
        return self.fd

    def logPrefix(self) -> str:
        return "ParentWatch"

    def doRead(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except BlockingIOError:
            return None
        except OSError:
            data = b""
        if not data:
            self.reactor.removeReader(self)
            self._parent_gone()
        return None

    def connectionLost(self, reason: Failure) -> None:
        """
        The pipe hung up (the reactor has already stopped watching it).
        """
        self._parent_gone()

    def stop_watching(self) -> None:
        """
        Stop watching: this process is shutting down anyway.
        """
        if not self.gone:
            self.gone = True
            self.reactor.removeReader(self)

    def _parent_gone(self) -> None:
        if self.gone:
            return
        self.gone = True
        log.warn("The workers' parent is gone; stopping")
        if self.reactor.running:
            self.reactor.stop()


def adopt_sockets(
    reactor: Any, settings: ProcessSettings, factory: Any, parent: MultiService
) -> None:
    """
    In a worker: serve ``factory`` on the inherited listening sockets.
    """
    for fd, family in settings.sockets:
        AdoptedPortService(reactor, fd, family, factory).setServiceParent(parent)

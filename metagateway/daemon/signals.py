"""
Stopping once: the daemon's processes ignore ``SIGTERM`` and ``SIGINT``
after the first.

Twisted's handlers call ``reactor.stop()`` on every such signal, and a
second call while the reactor is already stopping raises
``ReactorNotRunning``, logged with a traceback. A second signal is
ordinary: ``kill`` of the whole process group of ``--workers N`` reaches
each worker from the shell and again from the supervisor, which passes its
own on; an operator or a service manager may repeat one while in-flight
requests drain. The first signal stops the process as before (the drain,
then the exit); later ones change nothing, and the supervisor still ends a
worker that outlives the drain with ``SIGKILL``.
"""

from __future__ import annotations

import signal
from typing import Any

#: The signals Twisted's reactor stops on.
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def stop_once(reactor: Any) -> None:
    """
    Once ``reactor`` runs (and has installed its own handlers), make its
    stop signals act once: the first is handled as Twisted handles it,
    and from then on both are ignored.
    """

    def first(number: int, frame: Any, handlers: dict[int, Any]) -> None:
        for signum in STOP_SIGNALS:
            signal.signal(signum, signal.SIG_IGN)
        handlers[number](number, frame)

    def install() -> None:
        handlers: dict[int, Any] = {
            int(signum): signal.getsignal(signum) for signum in STOP_SIGNALS
        }
        for signum, handler in handlers.items():
            if callable(handler):
                signal.signal(
                    signum, lambda number, frame: first(number, frame, handlers)
                )

    reactor.callWhenRunning(install)

"""
Garbage-collector settings for the daemon's serving processes.

CPython frees most of a request's objects by reference counting the moment
the answer is sent; its cycle collector still runs every 700 net
allocations of container objects, and each run walks every young object
still alive. Under load that is dozens of objects per in-flight request,
walked again and again for nothing: measured on the benchmark
(``docs/performance.rst``), it was about a tenth of the gateway's CPU per
request. A first-generation threshold far above what the in-flight
requests hold keeps the collector for real garbage, and freezing what
start-up allocated (modules, routes, configuration) keeps the rare full
collections from walking it.

Only ``twistd metagateway`` does this, for the processes that serve
(:class:`CollectorTuning` in its service tree): a program that embeds the
gateway keeps its own settings. Interpreters without these knobs (PyPy's
collector works differently) are left alone.
"""

from __future__ import annotations

import gc
import platform
from typing import Optional

from twisted.application.service import Service

#: Net container allocations between first-generation collections.
FIRST_GENERATION = 50_000

#: Collections of one generation between collections of the next.
OLDER_GENERATIONS = (10, 10)


def tunable() -> bool:
    """
    Whether this interpreter's collector has the knobs set here.
    """
    return platform.python_implementation() == "CPython" and hasattr(gc, "freeze")


class CollectorTuning(Service):
    """
    Raises the collector's thresholds and freezes start-up objects while
    running; puts the previous thresholds back when stopped.
    """

    name = "collector"

    def __init__(self) -> None:
        self._previous: Optional[tuple[int, int, int]] = None

    def startService(self) -> None:
        """
        Collect what start-up left over, freeze the rest, raise the
        thresholds.
        """
        Service.startService(self)
        if not tunable():
            return
        self._previous = gc.get_threshold()
        gc.collect()
        gc.freeze()
        gc.set_threshold(FIRST_GENERATION, *OLDER_GENERATIONS)

    def stopService(self) -> None:
        """
        Put the previous thresholds back, and let the frozen objects be
        collected again.
        """
        Service.stopService(self)
        if self._previous is not None:
            gc.set_threshold(*self._previous)
            gc.unfreeze()
            self._previous = None

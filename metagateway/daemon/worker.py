"""
One worker process of ``--workers N``: ``python -m metagateway.daemon.worker``.

The supervisor (:mod:`metagateway.daemon.workers`) starts it with the
parent's options and the listening sockets as inherited file descriptors;
it runs a whole gateway on them until SIGTERM or until its parent goes
away (end of file on standard input).
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from twisted.application.service import IService
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver

from metagateway.daemon.adopted import ParentWatch
from metagateway.daemon.signals import stop_once
from metagateway.daemon.tap import Options, makeService

log = Logger(namespace="metagateway.daemon.worker")


def main(argv: Optional[list[str]] = None) -> None:
    """
    Run one worker: ``python -m metagateway.daemon.worker [options]``, started by
    the parent with the sockets and its place in the environment.
    """
    from twisted.internet import reactor  # the worker's own process: the global one

    globalLogBeginner.beginLoggingTo(
        [textFileLogObserver(sys.stdout)], redirectStandardIO=False
    )
    options = Options()
    options.parseOptions(sys.argv[1:] if argv is None else argv)
    service: IService = makeService(options, reactor, reload_signal=True)
    service.privilegedStartService()
    service.startService()
    reactor.addSystemEventTrigger("before", "shutdown", service.stopService)
    watch = ParentWatch(reactor, 0)
    try:
        os.set_blocking(0, False)
        reactor.addReader(watch)
    except (OSError, ValueError):
        log.warn("Cannot watch the parent through standard input")
    else:
        reactor.addSystemEventTrigger("before", "shutdown", watch.stop_watching)
    # The whole group's SIGTERM arrives twice: from the shell, and passed
    # on by the supervisor.
    stop_once(reactor)
    reactor.run()


if __name__ == "__main__":
    main()

"""
``SIGHUP``: reload the configuration file and ``GATEWAY_JWT_SECRET_FILE``
(:ref:`contract-config-file`).

The daemon's options and environment are read again exactly as at start
(so the file, and the secret's file, are read again); a valid result is
put in force with :meth:`metagateway.gateway.Gateway.reload`, atomically;
an invalid one is refused with one log line and the running configuration
stays. ``SIGHUP`` never stops the gateway.

With ``--workers``, the supervisor passes ``SIGHUP`` on to every worker,
and each reloads itself (:meth:`WorkerSupervisor.reload
<metagateway.daemon.workers.WorkerSupervisor.reload>`).
"""

from __future__ import annotations

import signal
from typing import Any, Callable, Mapping

from twisted.logger import Logger

from metagateway.config import ConfigurationError, GatewayConfig
from metagateway.gateway import Gateway

log = Logger(namespace="metagateway.daemon.reload")


class Reloader:
    """
    Reloads one gateway from the daemon's options and environment.

    :param gateway: the gateway to reload.
    :param settings: the parsed options, as at start.
    :param environ: the environment, as at start.
    """

    def __init__(
        self,
        gateway: Gateway,
        settings: Mapping[str, Any],
        environ: Mapping[str, str],
    ) -> None:
        self.gateway = gateway
        self.settings = dict(settings)
        self.environ = dict(environ)

    def reload(self) -> bool:
        """
        Read the configuration again and put it in force.

        :return: whether it was put in force; if not, one line was logged
            and the running configuration stays.
        """
        try:
            config = GatewayConfig.from_options(self.settings, self.environ)
            self.gateway.reload(config)
        except ConfigurationError as e:
            self.gateway.reloads.observe("error")
            log.error(
                "Reload refused; the running configuration stays: {why}",
                why=str(e),
            )
            return False
        except Exception:
            self.gateway.reloads.observe("error")
            log.failure("Reload failed; the running configuration stays")
            return False
        log.info(
            "Reloaded: {routes} route(s){source}",
            routes=len(config.route_table()),
            source=(
                " from %s (sha256 %s)" % (config.config_file, config.config_digest)
                if config.config_file
                else ""
            ),
        )
        return True


def on_sighup(reactor: Any, action: Callable[[], object]) -> None:
    """
    Call ``action`` on ``reactor``'s thread each time the process gets
    ``SIGHUP`` (whose default would end it).
    """

    def handler(signum: int, frame: Any) -> None:
        reactor.callFromThread(action)

    signal.signal(signal.SIGHUP, handler)

"""
What a shared state store's connection reports to the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StateStats:
    """
    The figures of one process's link to the shared state store.

    :ivar connected: whether the store is reachable now.
    :ivar reconnects: how many times the link was made again after the
        first time.
    :ivar revocations_seen: revocations received from the store (by
        message or by a reload).
    :ivar pubsub_lag: seconds between the publication and the arrival of
        the last revocation message (by the two processes' clocks).
    """

    connected: bool = False
    reconnects: int = 0
    revocations_seen: int = 0
    pubsub_lag: float = 0.0

    def samples(self, labels: str) -> list[str]:
        """
        These figures in the Prometheus text format.

        :param labels: the labels every sample carries, braces included
            (``""`` for none).
        """
        lines: list[str] = []

        def family(name: str, kind: str, help_text: str, value: str) -> None:
            lines.append("# HELP %s %s" % (name, help_text))
            lines.append("# TYPE %s %s" % (name, kind))
            lines.append("%s%s %s" % (name, labels, value))

        family(
            "metagateway_state_connected",
            "gauge",
            "Whether the shared state store is reachable (1) or not (0).",
            "1" if self.connected else "0",
        )
        family(
            "metagateway_state_reconnects_total",
            "counter",
            "Times the link to the shared state store was made again.",
            "%d" % (self.reconnects,),
        )
        family(
            "metagateway_state_revocations_seen_total",
            "counter",
            "Revocations received from the shared state store.",
            "%d" % (self.revocations_seen,),
        )
        family(
            "metagateway_state_pubsub_lag_seconds",
            "gauge",
            "Delay of the last revocation message received, in seconds.",
            repr(float(self.pubsub_lag)),
        )
        return lines

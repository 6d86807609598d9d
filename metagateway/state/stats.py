"""
What a shared state store's connection reports to the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class StateStats:
    """
    The figures of one process's link to the shared state store.

    :ivar shared: whether the state is shared beyond this process at all
        (``False`` for the in-process default: nothing else is reported).
    :ivar connected: whether the store is reachable now.
    :ivar reconnects: how many times the link was made again after the
        first time.
    :ivar revocations_seen: revocations received from the store (by
        message or by a reload).
    :ivar pubsub_lag: seconds between the publication and the arrival of
        the last revocation message (by the two processes' clocks).
    """

    shared: bool = True
    connected: bool = False
    reconnects: int = 0
    revocations_seen: int = 0
    pubsub_lag: float = 0.0

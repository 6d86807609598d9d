"""
The ``twistd metagateway`` plugin.
"""

from twisted.application.service import ServiceMaker

metagateway = ServiceMaker(
    "metagateway",
    "metagateway.daemon.tap",
    "An API gateway: JWT logins, per-route token checks, streaming proxy.",
    "metagateway",
)

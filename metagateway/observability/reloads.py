"""
What configuration reloads report to the metrics (:ref:`contract-config-file`).
"""

from __future__ import annotations

from typing import Optional


class ReloadStats:
    """
    The reloads of one gateway: how many, by result, and what is loaded.

    :ivar results: reloads by result (``success``, ``error``).
    :ivar loaded_at: when the configuration in force was loaded (POSIX
        time); ``None`` until a first one is noted.
    :ivar digest: the SHA-256 of the configuration file in force, in hex
        (``""`` without a file).
    """

    def __init__(self) -> None:
        self.results: dict[str, int] = {"success": 0, "error": 0}
        self.loaded_at: Optional[float] = None
        self.digest = ""

    def loaded(self, when: float, digest: str) -> None:
        """
        Note the configuration in force: loaded at ``when``, from a file
        whose SHA-256 is ``digest``.
        """
        self.loaded_at = when
        self.digest = digest

    def observe(self, result: str) -> None:
        """
        Count one reload: ``success`` or ``error``.
        """
        self.results[result] = self.results.get(result, 0) + 1

    def samples(self, labels: str) -> list[str]:
        """
        These figures in the Prometheus text format.

        :param labels: labels every sample carries first, each as
            ``key="value",``, or ``""``.
        """
        braces = "{%s}" % (labels.rstrip(","),) if labels else ""
        lines = [
            "# HELP metagateway_config_reloads_total Configuration reloads "
            "(SIGHUP) by result (success, error).",
            "# TYPE metagateway_config_reloads_total counter",
        ]
        for result, count in sorted(self.results.items()):
            lines.append(
                'metagateway_config_reloads_total{%sresult="%s"} %d'
                % (labels, result, count)
            )
        lines.append(
            "# HELP metagateway_config_loaded_timestamp_seconds When the "
            "configuration in force was loaded."
        )
        lines.append("# TYPE metagateway_config_loaded_timestamp_seconds gauge")
        lines.append(
            "metagateway_config_loaded_timestamp_seconds%s %r"
            % (braces, float(self.loaded_at or 0.0))
        )
        lines.append(
            "# HELP metagateway_config_info The configuration file in force, "
            "by the SHA-256 of its bytes (empty without a file)."
        )
        lines.append("# TYPE metagateway_config_info gauge")
        lines.append('metagateway_config_info{%ssha256="%s"} 1' % (labels, self.digest))
        return lines

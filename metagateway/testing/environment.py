"""
Swapping the process environment and standard error for the length of a
test, for code that reads settings from ``os.environ`` (the daemon's
``--*`` options and ``METAGATEWAY_*`` variables).
"""

from __future__ import annotations

import io
import os
import sys


class EnvironmentMixin:
    """
    Swap ``os.environ`` and ``sys.stderr`` for the length of a test; mix
    into a trial ``TestCase`` (the swaps are undone by ``addCleanup``).
    """

    def use_environ(self, environ: dict[str, str]) -> None:
        """
        Make ``environ`` the whole environment until the test ends.
        """
        saved = dict(os.environ)
        os.environ.clear()
        os.environ.update(environ)

        def restore() -> None:
            os.environ.clear()
            os.environ.update(saved)

        self.addCleanup(restore)  # type: ignore[attr-defined]

    def accounts_dir(self) -> str:
        """
        A new, empty accounts directory for the test.

        :return: its path.
        """
        path: str = self.mktemp()  # type: ignore[attr-defined]
        os.makedirs(path)
        return path

    def capture_stderr(self) -> io.StringIO:
        """
        Send ``sys.stderr`` to a buffer until the test ends.

        :return: the buffer.
        """
        captured = io.StringIO()
        saved = sys.stderr
        sys.stderr = captured
        self.addCleanup(setattr, sys, "stderr", saved)  # type: ignore[attr-defined]
        return captured

"""
How ``metagateway-admin`` fails: one line on stderr and an exit status,
never a traceback.
"""

from __future__ import annotations

from typing import TextIO

from metagateway.credentials.interfaces import StoreUnavailable

#: Exit status for a failure the command reports.
EXIT_FAILURE = 1

#: Exit status for a malformed command line.
EXIT_USAGE = 2

#: The name failures start with.
PROGRAM = "metagateway-admin"


class AdminError(Exception):
    """
    A failure to report on one line, then exit with ``status``.

    :ivar status: the exit status.
    """

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def report_failure(error: BaseException, stderr: TextIO) -> int:
    """
    Write the one line a failed command ends with, and return its exit
    status. Never a traceback.
    """
    if isinstance(error, AdminError):
        stderr.write("%s: %s\n" % (PROGRAM, error))
        return error.status
    if isinstance(error, StoreUnavailable):
        stderr.write(
            "%s: the credential store could not answer: %s\n" % (PROGRAM, error)
        )
    elif isinstance(error, KeyboardInterrupt):
        stderr.write("%s: interrupted\n" % (PROGRAM,))
        return 130
    else:
        stderr.write("%s: unexpected error: %s\n" % (PROGRAM, type(error).__name__))
    return EXIT_FAILURE

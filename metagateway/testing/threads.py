"""
Work that the gateway sends to threads (password hashing), run when the
test says instead.
"""

from __future__ import annotations

from typing import Any, Callable

from zope.interface import implementer

from twisted.internet.interfaces import IReactorFromThreads
from twisted.python.failure import Failure


class FakeThreadPool:
    """
    A started thread pool whose work runs when the test says
    (:meth:`run`), standing in for ``twisted.python.threadpool.ThreadPool``
    as ``deferToThreadPool`` uses it.

    :ivar work: the queued ``(on_result, f, args)``.
    """

    started = True

    def __init__(self) -> None:
        self.work: list[
            tuple[Callable[..., None], Callable[..., Any], tuple[Any, ...]]
        ] = []

    def callInThreadWithCallback(
        self, on_result: Callable[..., None], f: Callable[..., Any], *args: Any
    ) -> None:
        """
        Queue ``f(*args)``; ``on_result(success, result)`` gets its outcome.
        """
        self.work.append((on_result, f, args))

    def run(self) -> None:
        """
        Run the queued work, as the pool's threads would.
        """
        work, self.work = self.work, []
        for on_result, f, args in work:
            try:
                result = f(*args)
            except BaseException:
                on_result(False, Failure())
            else:
                on_result(True, result)


@implementer(IReactorFromThreads)
class ImmediateReactor:
    """
    Takes results back from the pool's threads at once.
    """

    def callFromThread(
        self, callable: Callable[..., Any], *args: object, **kwargs: object
    ) -> None:
        """
        Call ``callable(*args, **kwargs)`` now.
        """
        callable(*args, **kwargs)

"""
metagateway's tests.

Run with ``python -b``: a ``BytesWarning`` raised in our own modules is an
error; the one third-party ``BytesWarning`` is silenced, narrowly.

trial re-emits a warning caught during a test with ``warn_explicit`` and
no module name, so the filters see the module as the source file's path
without ``.py`` (``/…/twisted/web/http_headers``), not as the dotted name;
each pattern below matches both spellings.
"""

import os
import re
import warnings
from importlib.util import find_spec


def _ours(dotted: str, folder: str) -> str:
    """
    A filter pattern for package ``dotted`` and its modules, by dotted
    name or by path under ``folder``.
    """
    return r"(%s(\..*)?|%s[\\/].*)$" % (re.escape(dotted), re.escape(folder))


_package = find_spec("metagateway")
assert _package is not None and _package.origin is not None
warnings.filterwarnings(
    "error",
    category=BytesWarning,
    module=_ours("metagateway", os.path.dirname(_package.origin)),
)
warnings.filterwarnings(
    "error",
    category=BytesWarning,
    module=_ours("tests", os.path.dirname(os.path.abspath(__file__))),
)
# Twisted's header-name cache (``_NameEncoder.encode``) keeps ``str`` and
# ``bytes`` names as keys of one dict, and an ASCII str and its bytes hash
# alike, so looking one up compares it with the other. Twisted names headers
# both ways itself (``http.py`` sets "Transfer-Encoding" as a str), as do
# treq's callers: the comparison is Twisted's, harmless, not ours to fix.
warnings.filterwarnings(
    "ignore",
    category=BytesWarning,
    module=r"(twisted\.web\.http_headers|.*[\\/]twisted[\\/]web[\\/]http_headers)$",
)
# txredisapi builds a set of ``str`` and ``bytes`` reply names when it is
# imported (``SubscriberProtocol._sub_unsub_reponses``); their equal hashes
# make Python compare them once. Its code, harmless, not ours to fix.
warnings.filterwarnings(
    "ignore",
    category=BytesWarning,
    module=r"(txredisapi|.*[\\/]txredisapi)$",
)

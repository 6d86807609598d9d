"""
metagateway's tests.

``BytesWarning`` raised in our own modules is an error (run with
``python -b``); Twisted's own code is left alone.
"""

import warnings

warnings.filterwarnings("error", category=BytesWarning, module=r"metagateway(\..*)?$")
warnings.filterwarnings("error", category=BytesWarning, module=r"tests(\..*)?$")
# Twisted's header-name cache compares bytes with str by design.
warnings.filterwarnings(
    "ignore", category=BytesWarning, module=r"twisted\.web\.http_headers"
)

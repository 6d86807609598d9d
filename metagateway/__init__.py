"""
metagateway: an API gateway on Twisted.

It issues HS256 tokens at ``/auth/login`` and ``/auth/guest``, checks them
per route, strips the route prefix and proxies requests to upstream
services, answering every failure in one JSON error shape.
"""

__version__ = "0.1.0"

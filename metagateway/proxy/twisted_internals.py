"""
Where the proxy depends on private behaviour of Twisted's HTTP client.

Everything here uses a name Twisted does not publish (a leading
underscore, or a module such as ``twisted.web._newclient``) or relies on
how a public class works inside. Each use says why it is needed;
``tests/unit/test_twisted_client_internals.py`` checks every one of them
(it exists, its signature, what it does) and fails naming the hook and the
Twisted version when an upgrade changes it. Nothing else in
:mod:`metagateway.proxy` reaches into Twisted's client.

The server side has its own such module, ``metagateway.http.twisted_internals``.
"""

from __future__ import annotations

from typing import Any, Hashable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IStreamClientEndpoint

# Why: the Agent hands the pool's connection this object; UpstreamAgent
# does the same without re-parsing the URL (see pool_request).
from twisted.web._newclient import Request

# Why: the only way to choose the protocol (and the log noise) of the
# pool's connections is to give the pool another factory (see
# use_gateway_factory).
from twisted.web.client import HTTPConnectionPool, _HTTP11ClientFactory
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IResponse


class GatewayClientFactory(_HTTP11ClientFactory):
    """
    The pool's connection factory, without a log line per connection.

    Why: ``_HTTP11ClientFactory`` is private, and so is the pool's
    ``_factory`` attribute that names it; Twisted documents neither, but
    the pool offers no other way to stop its factories logging "Starting
    factory" for every upstream connection.
    """

    noisy = False


def use_gateway_factory(pool: HTTPConnectionPool) -> None:
    """
    Have ``pool`` make its connections with :class:`GatewayClientFactory`.

    Why: ``HTTPConnectionPool._factory`` is a private class attribute,
    called as ``_factory(quiescentCallback, metadata)`` for each new
    connection; setting it on the instance is the only hook.
    """
    pool._factory = GatewayClientFactory


def pool_request(
    pool: HTTPConnectionPool,
    key: Hashable,
    endpoint: IStreamClientEndpoint,
    method: bytes,
    target: bytes,
    headers: Headers,
    body: Optional[IBodyProducer],
) -> Deferred[IResponse]:
    """
    Send one request over a connection of ``pool``, as ``Agent`` does once
    it has parsed the URL: take a connection for ``key`` (or open one on
    ``endpoint``) and hand it a ``twisted.web._newclient.Request``.

    Why: ``Agent`` offers no entry point below the URL parsing that the
    proxy does not need (it sends to a few fixed origins, with ``Host``
    already set). ``Request``'s public constructor checks the method and
    the target as ``Agent``'s private ``Request._construct`` does;
    ``getConnection`` fires with an ``HTTP11ClientProtocol`` (or the
    pool's retrying wrapper), whose ``request`` takes that ``Request``.

    :param key: the pool key: ``(scheme, host, port)``.
    :param target: the request target (path and query).
    :return: what ``IAgent.request`` returns.
    :raises ValueError: for a method or target ``Request`` refuses (in the
        returned Deferred).
    """
    persistent = pool.persistent

    def connected(protocol: Any) -> Deferred[IResponse]:
        return protocol.request(  # type: ignore[no-any-return]
            Request(method, target, headers, body, persistent)
        )

    return pool.getConnection(key, endpoint).addCallback(connected)

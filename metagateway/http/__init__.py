"""
The HTTP/1.1 layer: :mod:`~metagateway.http.body` (the request body
producer), :mod:`~metagateway.http.channel` (the channel),
:mod:`~metagateway.http.request` (the streaming request),
:mod:`~metagateway.http.site` (the gateway's root resource and ``Site``) and
:mod:`~metagateway.http.drain` (requests in flight).
"""

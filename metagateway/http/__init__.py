"""
The HTTP/1.1 layer: :mod:`~metagateway.http.body` (the request body
producer), :mod:`~metagateway.http.channel` (the channel),
:mod:`~metagateway.http.request` (the streaming request),
:mod:`~metagateway.http.site` (the gateway's root resource and ``Site``),
:mod:`~metagateway.http.drain` (requests in flight), and
:mod:`~metagateway.http.twisted_internals` (the one place it relies on
Twisted's private or undocumented server-side behaviour).
"""

"""
The proxy: the ``ReverseProxyResource`` subclass, one exchange with an
upstream, and the webhook fan-out.
"""

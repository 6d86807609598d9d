"""
The HTTP/1.1 layer: the channel, the streaming request, the site and
the gateway's root resource.
"""

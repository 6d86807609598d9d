"""
Integration tests: the real daemon, real upstreams and an S3-compatible
server on loopback.
"""

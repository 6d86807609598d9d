"""
Unit tests: fakes and in-memory transports, no sockets, no sleeps.
"""

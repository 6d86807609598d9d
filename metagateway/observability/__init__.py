"""
Observability: the access log, Prometheus metrics and the garbage
collector's tuning.
"""

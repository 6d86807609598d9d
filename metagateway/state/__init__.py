"""
The security state gateways share: revoked tokens, per-user revocations
and login failure counters, in one process (:mod:`.memory`), among the
workers of one supervisor (:mod:`.supervisor`), or in Redis (:mod:`.redis`).
"""

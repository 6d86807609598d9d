"""
The proxy: the route's resource (:mod:`.resource`), the header rules
(:mod:`.headers`), the upstream client and pool (:mod:`.upstream`), the
private Twisted client behaviour it relies on (:mod:`.twisted_internals`),
and the webhook fan-out (:mod:`.webhooks`).
"""

"""
Credential stores: where account records live.
"""

"""
Authentication: the Klein app for the auth endpoints, tokens, password
checks, the login throttle and GitHub sign-in.
"""

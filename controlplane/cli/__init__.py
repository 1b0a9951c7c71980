"""The ``flotilla`` command line.

Exit codes: 0 ok, 1 user error (bad manifest, conflict, not found), 2 usage,
3 server unavailable.
"""

"""Scanning: the scan of one object (clamd, integrity, content policy, archive inspection), quarantine,
the SHA-256 blocklist, rescans after a signature update and admins' verdict decisions.
"""

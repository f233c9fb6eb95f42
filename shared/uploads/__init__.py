"""Uploads: the status model and its transitions, presign's service (create, sign, complete, abort,
download), per-user limits, the SigV4 signer, the Uppy Companion protocol, and the facts storage
reports about each object (the metadata function).
"""

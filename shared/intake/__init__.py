"""Intake: storage webhooks (MinIO, SeaweedFS) in, typed CloudEvents out to the broker.
"""

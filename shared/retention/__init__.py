"""Retention and reconciliation: the expire pass, the reconcile pass (lost notifications), and the
resumable cursors both use.
"""

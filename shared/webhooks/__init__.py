"""Signed webhooks for subscribers outside Knative (docs/webhooks.md).

`model.py` (public event types, endpoints, messages, Standard Webhooks signing), `registry.py` (the
admin's endpoint registry, audited), `dispatch.py` (attempts, fan-out of an event, the retry sweep),
`log.py` (the delivery log and replays). Outbound HTTP and its SSRF guard: shared/platform/egress.py.
"""

-- Disabled webhook endpoints (docs/webhooks.md "Disabled endpoints"; shared/webhooks/disabling.py).
--
-- Standard Webhooks 1.0.0, "Delivery success and failure": a receiver answering `410 Gone` is "no longer
-- interested in receiving webhooks from this source. Sender should disable the webhook endpoint, and stop
-- sending it messages." The webhooks function sets disabled_at when it gets one; an admin can too
-- (PATCH /admin/webhooks/{id} {"enabled": false}), and only an admin enables it again. Unlike deleted_at,
-- a disabled endpoint is still listed and can come back with its secret and filters unchanged.
-- The reason says who or what disabled it: "answered 410 Gone to msg_… at …", "disabled by carol at …".
ALTER TABLE webhook_endpoints
    ADD COLUMN disabled_at     timestamptz,
    ADD COLUMN disabled_reason text,
    ADD CONSTRAINT webhook_endpoints_disabled_has_reason CHECK ((disabled_at IS NULL) = (disabled_reason IS NULL));

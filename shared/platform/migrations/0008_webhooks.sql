-- Signed webhooks for subscribers outside Knative (docs/webhooks.md; shared/webhooks/).
--
-- webhook_endpoints: the registered receivers (admin API, audited). `secret` signs every delivery;
-- after a rotation `previous_secret` keeps signing too until `previous_secret_expires_at`, so a
-- receiver can switch keys without losing a delivery (Standard Webhooks: "zero downtime secret
-- rotation", space-separated signatures). Secrets are stored as the receiver must hold them
-- (HMAC is symmetric): docs/webhooks.md says why, and what protects them.
-- A deleted endpoint keeps its row (deleted_at) so the delivery log still names it.
CREATE TABLE webhook_endpoints (
    id                          uuid        PRIMARY KEY,
    url                         text        NOT NULL,
    event_types                 text[]      NOT NULL DEFAULT '{}',  -- empty: every public type
    description                 text,
    secret                      text        NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    created_by                  text        NOT NULL,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now(),
    deleted_at                  timestamptz
);
CREATE INDEX webhook_endpoints_active ON webhook_endpoints (created_at) WHERE deleted_at IS NULL;

-- Each public CloudEvent the webhooks function received, once, as the exact body it signs and sends:
-- retries and replays send the same bytes under the same webhook-id.
CREATE TABLE webhook_events (
    message_id   text        PRIMARY KEY,  -- webhook-id: msg_ + digest(source, id), no '.' (the spec asks)
    event_id     text        NOT NULL,     -- the CloudEvent's id
    event_source text        NOT NULL,
    event_type   text        NOT NULL,
    occurred_at  timestamptz NOT NULL,     -- the CloudEvent's time: what replays by time range select on
    received_at  timestamptz NOT NULL DEFAULT now(),
    payload      text        NOT NULL
);
CREATE INDEX webhook_events_occurred ON webhook_events (occurred_at);
CREATE INDEX webhook_events_event_id ON webhook_events (event_id);

-- One row per (endpoint, event): its state, and when the retry sweep tries it next.
CREATE TABLE webhook_deliveries (
    endpoint_id     uuid        NOT NULL REFERENCES webhook_endpoints (id),
    message_id      text        NOT NULL REFERENCES webhook_events (message_id),
    state           text        NOT NULL CHECK (state IN ('pending', 'delivered', 'failed')),
    attempts        integer     NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    last_attempt_at timestamptz,
    last_status     integer,
    last_error      text,
    delivered_at    timestamptz,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (endpoint_id, message_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE state = 'pending';
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_id);

-- Every attempt, appended: the delivery log an operator reads (`dropgate-dev webhooks deliveries`).
CREATE TABLE webhook_attempts (
    id           bigserial   PRIMARY KEY,
    endpoint_id  uuid        NOT NULL,
    message_id   text        NOT NULL,
    attempt      integer     NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    status       integer,      -- the receiver's HTTP status; NULL when no answer
    error        text,         -- why it failed: timeout, refused address, non-2xx...
    duration_ms  integer     NOT NULL,
    FOREIGN KEY (endpoint_id, message_id) REFERENCES webhook_deliveries (endpoint_id, message_id)
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (endpoint_id, message_id, attempt);

-- The notification outbox: every notice and state change owed to an
-- account is written here once, under a key derived from its cause, then
-- delivered by the controller with retries. A restart finds what is still
-- pending here: nothing is lost, and the key keeps anything from being
-- queued twice.
CREATE TABLE notifications (
    id BIGSERIAL PRIMARY KEY,
    once_key TEXT NOT NULL UNIQUE,
    account TEXT NOT NULL,
    -- email or webhook
    channel TEXT NOT NULL,
    -- The e-mail address or the webhook's URL, as configured when queued.
    recipient TEXT NOT NULL,
    -- What is delivered (JSON: subject, text and the event).
    message TEXT NOT NULL,
    -- pending, delivered or failed
    state TEXT NOT NULL,
    attempts BIGINT NOT NULL DEFAULT 0,
    -- When it is next tried; while an attempt runs, when the attempt is
    -- given up for lost (a crashed sender's claim runs out).
    next_attempt_at BIGINT NOT NULL,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    delivered_at BIGINT
);
CREATE INDEX notifications_due ON notifications (state, next_attempt_at);
CREATE INDEX notifications_by_state ON notifications (state, id);

-- How far each outbound feed got (the billing webhook's position in the
-- billing events).
CREATE TABLE feed_positions (
    feed TEXT PRIMARY KEY,
    position BIGINT NOT NULL
);

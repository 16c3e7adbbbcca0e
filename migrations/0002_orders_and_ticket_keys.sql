-- tenant-edge shared store, version 2: the orders every host placed (the account's order budget
-- and the per-registered-domain budget are counted here, so the hosts share them as they share
-- the account) and the session-ticket keys (so a session resumes on any host).

-- One row per order placed with the ACME account. `failed` orders still count against the
-- account's budget (the CA counts them), not against the registered domain's (nothing was
-- issued).
CREATE TABLE tenant_edge_orders (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    registered text NOT NULL,
    renewal boolean NOT NULL,
    failed boolean NOT NULL DEFAULT false
);
CREATE INDEX tenant_edge_orders_at ON tenant_edge_orders (at);
CREATE INDEX tenant_edge_orders_registered_at ON tenant_edge_orders (registered, at);

-- One session-ticket key per rotation period (unix time divided by the rotation), created by
-- the first host that needs it. `material` is 80 bytes (name, HMAC key, AES key), or, when
-- `key_nonce` is set, its AES-256-GCM ciphertext followed by the 16-byte tag. Keys older than
-- two periods are deleted: resumed sessions stay forward-secret.
CREATE TABLE tenant_edge_ticket_keys (
    period bigint PRIMARY KEY,
    material bytea NOT NULL,
    key_nonce bytea NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- tenant-edge shared store, version 1: certificates, ACME accounts, challenges, issuance locks.
-- Applied by `SharedStore::migrate` inside a transaction holding an advisory lock; recorded in
-- tenant_edge_schema_migrations. Every table is prefixed tenant_edge_ so it can sit beside the
-- application's (Rails) tables in the same database.

-- One row per name. `bundle` is the PEM bundle (private key + leaf + intermediates), or, when
-- `key_nonce` is set, its AES-256-GCM ciphertext followed by the 16-byte tag (AAD = name).
-- `meta` is informational (issuer and dates); the bundle is the source of truth.
CREATE TABLE tenant_edge_certificates (
    name text PRIMARY KEY,
    bundle bytea NOT NULL,
    key_nonce bytea NULL,
    meta jsonb NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- One ACME account per directory URL; the first host to register wins (insert-if-absent).
-- `credentials` is encrypted like certificate bundles when a key is configured (AAD = directory).
CREATE TABLE tenant_edge_acme_accounts (
    directory text PRIMARY KEY,
    credentials bytea NOT NULL,
    key_nonce bytea NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- Challenge responses published by the host that placed the order, read by whichever host the
-- CA's validation request reaches. kind = 'http-01' (id = token, value = key authorization) or
-- 'tls-alpn-01' (id = name, value = PEM key + challenge certificate).
CREATE TABLE tenant_edge_challenges (
    kind text NOT NULL,
    id text NOT NULL,
    value bytea NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (kind, id)
);
CREATE INDEX tenant_edge_challenges_expires_at ON tenant_edge_challenges (expires_at);

-- Issuance locks as lease rows: one ACME order per name across hosts. A row whose expires_at
-- has passed is free for anyone to take (its holder died or stalled).
CREATE TABLE tenant_edge_locks (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires_at timestamptz NOT NULL
);

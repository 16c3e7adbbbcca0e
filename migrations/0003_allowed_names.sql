-- tenant-edge shared store, version 3: the names a dynamic source (the application's database,
-- an ask URL) allowed, so that every host, a new one included, keeps serving them when the
-- source cannot answer (stale-if-error), across restarts. A definitive no deletes the row.
CREATE TABLE tenant_edge_allowed (
    name text PRIMARY KEY,
    source text NOT NULL,
    at timestamptz NOT NULL
);
CREATE INDEX tenant_edge_allowed_at ON tenant_edge_allowed (at);

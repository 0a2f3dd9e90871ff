-- Provider keys, encrypted at rest (AES-256-GCM; the key is derived per credential from the
-- server's ASH_CREDENTIAL_KEY and `salt`). Column names follow the reference system's schema.
CREATE TABLE credentials (
    id             TEXT PRIMARY KEY,
    tenant_id      TEXT NOT NULL DEFAULT 'default',
    type           TEXT NOT NULL,
    encrypted_key  TEXT NOT NULL,
    iv             TEXT NOT NULL,
    auth_tag       TEXT NOT NULL,
    salt           TEXT NOT NULL,
    label          TEXT NOT NULL DEFAULT '',
    active         INTEGER NOT NULL DEFAULT 1,
    created_at     TEXT NOT NULL,
    last_used_at   TEXT
);
CREATE INDEX credentials_by_tenant ON credentials (tenant_id, created_at);

-- The credential a session's sandboxes get, applied again at every cold start.
ALTER TABLE sessions ADD COLUMN credential_id TEXT;

-- Column names and types follow the reference system's schema so data can move between them.
CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL DEFAULT 'default',
    name        TEXT NOT NULL,
    version     INTEGER NOT NULL DEFAULT 1,
    path        TEXT NOT NULL,
    env         TEXT NOT NULL DEFAULT '{}',
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    UNIQUE (tenant_id, name)
);

CREATE TABLE sessions (
    id                 TEXT PRIMARY KEY,
    tenant_id          TEXT NOT NULL DEFAULT 'default',
    agent_name         TEXT NOT NULL,
    sandbox_id         TEXT NOT NULL,
    status             TEXT NOT NULL,
    runner_id          TEXT,
    parent_session_id  TEXT,
    env                TEXT NOT NULL DEFAULT '{}',
    created_at         TEXT NOT NULL,
    last_active_at     TEXT NOT NULL
);
CREATE INDEX sessions_by_tenant_agent ON sessions (tenant_id, agent_name, created_at);

CREATE TABLE messages (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL DEFAULT 'default',
    session_id  TEXT NOT NULL,
    role        TEXT NOT NULL,
    content     TEXT NOT NULL,
    sequence    INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (session_id, sequence)
);

CREATE TABLE api_keys (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL DEFAULT 'default',
    key_hash    TEXT NOT NULL UNIQUE,
    label       TEXT NOT NULL DEFAULT '',
    created_at  TEXT NOT NULL
);

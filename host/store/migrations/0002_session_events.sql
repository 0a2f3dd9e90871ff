-- The session's event log: every SSE frame a client sees, in order. The log is the truth;
-- streams are views of it, so a client can replay exactly what it missed.
CREATE TABLE session_events (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL DEFAULT 'default',
    session_id  TEXT NOT NULL,
    type        TEXT NOT NULL,
    data        TEXT,
    sequence    INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    UNIQUE (session_id, sequence)
);
CREATE INDEX session_events_by_type ON session_events (session_id, type, sequence);

-- The runners of a cluster: which exist, where they are reached, their capacity and load,
-- and when each was last heard from, in the database's own clock (heartbeat_at is set by
-- now() on the database, never by a machine's clock). generation grows with each
-- registration of an id, so a heartbeat from a process that has been replaced is told so.
CREATE TABLE runners (
    id            TEXT COLLATE "C" PRIMARY KEY,
    address       TEXT NOT NULL,
    generation    BIGINT NOT NULL,
    capacity      BIGINT NOT NULL,
    sandboxes     BIGINT NOT NULL,
    running       BIGINT NOT NULL,
    state         TEXT NOT NULL,
    -- The last placement on it: for a second after, a heartbeat may raise sandboxes but not
    -- lower it (the runner may have counted before that session's sandbox was there).
    claimed_at    TIMESTAMPTZ NOT NULL,
    registered_at TIMESTAMPTZ NOT NULL,
    heartbeat_at  TIMESTAMPTZ NOT NULL
);

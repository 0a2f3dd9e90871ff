-- The storage port (ash-core `Storage`, WIT `ash:storage`): documents with revisions, their
-- secondary index entries, and append-only streams. Keys compare bytewise (BINARY), as the
-- port requires; the same tables exist in Postgres (migrations-postgres/).
CREATE TABLE documents (
    collection TEXT NOT NULL,
    key        TEXT NOT NULL,
    revision   INTEGER NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (collection, key)
) WITHOUT ROWID;

CREATE TABLE document_index (
    collection TEXT NOT NULL,
    name       TEXT NOT NULL,
    value      TEXT NOT NULL,
    key        TEXT NOT NULL,
    PRIMARY KEY (collection, name, value, key)
) WITHOUT ROWID;
CREATE INDEX document_index_by_key ON document_index (collection, key);

-- A stream's last sequence number: appends take their numbers from it in one statement.
CREATE TABLE streams (
    stream TEXT PRIMARY KEY,
    last   INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE stream_entries (
    stream   TEXT NOT NULL,
    sequence INTEGER NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (stream, sequence)
) WITHOUT ROWID;

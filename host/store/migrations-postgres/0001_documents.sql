-- The storage port on Postgres (and CockroachDB's Postgres wire protocol): the same tables as
-- SQLite's 0004_documents.sql. Keys are COLLATE "C" so they compare bytewise, as the port
-- requires, whatever the database's locale.
CREATE TABLE documents (
    collection TEXT COLLATE "C" NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    revision   BIGINT NOT NULL,
    data       TEXT NOT NULL,
    PRIMARY KEY (collection, key)
);

CREATE TABLE document_index (
    collection TEXT COLLATE "C" NOT NULL,
    name       TEXT COLLATE "C" NOT NULL,
    value      TEXT COLLATE "C" NOT NULL,
    key        TEXT COLLATE "C" NOT NULL,
    PRIMARY KEY (collection, name, value, key)
);
CREATE INDEX document_index_by_key ON document_index (collection, key);

CREATE TABLE streams (
    stream TEXT COLLATE "C" PRIMARY KEY,
    last   BIGINT NOT NULL
);

CREATE TABLE stream_entries (
    stream   TEXT COLLATE "C" NOT NULL,
    sequence BIGINT NOT NULL,
    data     TEXT NOT NULL,
    PRIMARY KEY (stream, sequence)
);

-- The server's records move onto the storage port's tables (0004): every row of the first
-- relational tables becomes the document or stream entry the server now writes (the layout is
-- in host/store/src/records.rs and log.rs; the JSON field names here are those of its record
-- types), then the old tables go. One migration is one transaction: it happens whole or not.

INSERT INTO documents (collection, key, revision, data)
SELECT 'agents', tenant_id || '/' || name, 1, json_object(
    'id', id, 'tenantId', tenant_id, 'name', name, 'version', version, 'path', path,
    'env', json(env), 'createdAt', created_at, 'updatedAt', updated_at)
FROM agents;

-- A session whose log ends in anything but `done` was in a turn when the server stopped.
CREATE TEMP TABLE open_turns AS
SELECT e.session_id AS id FROM session_events e
JOIN (SELECT session_id, MAX(sequence) AS last FROM session_events GROUP BY session_id) m
  ON e.session_id = m.session_id AND e.sequence = m.last
WHERE e.type != 'done';

INSERT INTO documents (collection, key, revision, data)
SELECT 'sessions', tenant_id || '/' || id, 1, json_object(
    'id', id, 'tenantId', tenant_id, 'agentName', agent_name, 'sandboxId', sandbox_id,
    'status', status, 'runnerId', runner_id, 'parentSessionId', parent_session_id,
    'env', json(env), 'credentialId', credential_id, 'createdAt', created_at,
    'lastActiveAt', last_active_at,
    'turnOpen', json(CASE WHEN id IN (SELECT id FROM open_turns) THEN 'true' ELSE 'false' END))
FROM sessions;

INSERT INTO document_index (collection, name, value, key)
SELECT 'sessions', 'agent', tenant_id || '/' || agent_name, tenant_id || '/' || id FROM sessions
UNION ALL
SELECT 'sessions', 'status', tenant_id || '/' || status, tenant_id || '/' || id FROM sessions
UNION ALL
SELECT 'sessions', 'turn', 'open', tenant_id || '/' || id FROM sessions
WHERE id IN (SELECT id FROM open_turns);

INSERT INTO documents (collection, key, revision, data)
SELECT 'api-keys', key_hash, 1, json_object(
    'id', id, 'tenantId', tenant_id, 'label', label, 'createdAt', created_at)
FROM api_keys;

INSERT INTO documents (collection, key, revision, data)
SELECT 'credentials', tenant_id || '/' || id, 1, json_object(
    'id', id, 'tenantId', tenant_id, 'type', type, 'label', label,
    'active', json(CASE WHEN active THEN 'true' ELSE 'false' END),
    'createdAt', created_at, 'lastUsedAt', last_used_at,
    'sealed', json_object('ciphertext', encrypted_key, 'nonce', iv, 'tag', auth_tag, 'salt', salt))
FROM credentials;

INSERT INTO streams (stream, last)
SELECT 'messages/' || session_id, MAX(sequence) FROM messages GROUP BY session_id;
INSERT INTO stream_entries (stream, sequence, data)
SELECT 'messages/' || session_id, sequence, json_object(
    'id', id, 'tenantId', tenant_id, 'role', role, 'content', content, 'createdAt', created_at)
FROM messages;

INSERT INTO streams (stream, last)
SELECT 'events/' || session_id, MAX(sequence) FROM session_events GROUP BY session_id;
INSERT INTO stream_entries (stream, sequence, data)
SELECT 'events/' || session_id, sequence, json_object(
    'id', id, 'tenantId', tenant_id, 'type', type, 'data', data, 'createdAt', created_at)
FROM session_events;

DROP TABLE open_turns;
DROP TABLE agents;
DROP TABLE sessions;
DROP TABLE messages;
DROP TABLE session_events;
DROP TABLE api_keys;
DROP TABLE credentials;

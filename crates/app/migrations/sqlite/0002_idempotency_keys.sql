-- Idempotency keys of POST /api/posts: each key with the post it stored and the hash of
-- the request (SHA-256 of author, NUL, body), written in the post's own transaction.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key     TEXT    NOT NULL PRIMARY KEY,
    post_id      INTEGER NOT NULL,
    request_hash TEXT    NOT NULL,
    created_at   TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS idempotency_keys_created_at ON idempotency_keys (created_at);

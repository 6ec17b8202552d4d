-- Idempotency keys of POST /api/posts: each key with the post it stored and the hash of
-- the request (SHA-256 of author, NUL, body), written in the post's own transaction.
-- Keys compare exactly (ascii_bin): `abc` and `ABC` are two keys.
CREATE TABLE IF NOT EXISTS idempotency_keys (
    idem_key     VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NOT NULL PRIMARY KEY,
    post_id      BIGINT       NOT NULL,
    request_hash CHAR(64)     CHARACTER SET ascii NOT NULL,
    created_at   DATETIME(3)  NOT NULL,
    KEY idempotency_keys_created_at (created_at)
) ENGINE = InnoDB;

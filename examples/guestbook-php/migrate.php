<?php
// The release step: creates the guestbook's table on the primary (DATABASE_URL).
// Idempotent: safe to run before every rollout. Exits non-zero, with the reason on
// stderr, when it cannot.
//
//   php migrate.php

declare(strict_types=1);

require __DIR__ . '/lib/db.php';

const DEADLINE_SECONDS = 30.0;
const RETRY_EVERY_SECONDS = 0.25;

const SCHEMA = <<<'SQL'
CREATE TABLE IF NOT EXISTS guestbook_entries (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    name VARCHAR(64) NOT NULL,
    message VARCHAR(2000) NOT NULL,
    -- The Idempotency-Key of the request that stored the row. Keys compare exactly
    -- (ascii_bin), not case-insensitively like the table's text columns.
    request_key VARCHAR(128) CHARACTER SET ascii COLLATE ascii_bin NULL UNIQUE,
    created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
SQL;

function say(string $line): void
{
    fwrite(STDERR, "migrate: $line\n");
}

try {
    $cfg = db_config('writer');
} catch (DbConfigError $e) {
    say('error: ' . $e->getMessage());
    exit(2);
}

$where = db_describe($cfg);
$start = microtime(true);
$attempt = 0;
$lastError = '';
while (true) {
    $attempt++;
    try {
        // Not persistent: a one-shot script has no pool to keep.
        $pdo = db_connect($cfg, false);
        if ($attempt > 1) {
            say(sprintf('connected to %s after %.1f s (attempt %d)', $where, microtime(true) - $start, $attempt));
        }
        $pdo->exec(SCHEMA);
        $pdo = null;
        say("table guestbook_entries is ready on $where");
        exit(0);
    } catch (PDOException $e) {
        $pdo = null;
        if (!db_is_connection_error($e)) {
            // Wrong password, unknown database, no privilege, bad SQL: waiting won't help.
            say("error: $where: " . $e->getMessage());
            exit(1);
        }
        // Connection refused or lost: the primary may be starting or failing over.
        // CREATE TABLE IF NOT EXISTS is safe to send again.
        $elapsed = microtime(true) - $start;
        if ($elapsed + RETRY_EVERY_SECONDS > DEADLINE_SECONDS) {
            say(sprintf('error: could not reach %s in %.0f s (%d attempts): %s', $where, DEADLINE_SECONDS, $attempt, $e->getMessage()));
            exit(1);
        }
        if ($e->getMessage() !== $lastError || $attempt % 20 === 1) {
            say(sprintf('waiting for %s (%.1f s, attempt %d): %s', $where, $elapsed, $attempt, $e->getMessage()));
            $lastError = $e->getMessage();
        }
        usleep((int) (RETRY_EVERY_SECONDS * 1e6));
    }
}

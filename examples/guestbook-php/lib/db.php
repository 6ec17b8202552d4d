<?php
// Database helpers shared by public/index.php and migrate.php: where the database is
// (from the 12-factor environment), how to connect, and which errors mean "the
// connection is gone" (worth a reconnect) rather than "the query is wrong".

declare(strict_types=1);

/** A DATABASE_URL (or the DB_* pieces) that cannot be used. */
final class DbConfigError extends RuntimeException
{
}

/**
 * Parses mysql://USER:PASS@HOST:PORT/DB into the pieces PDO needs.
 *
 * User and password are percent-decoded with rawurldecode(): in a URL's user-info a
 * '+' is a literal plus, not a space (urldecode() would turn it into one).
 *
 * @return array{host:string,port:int,user:string,password:string,dbname:string}
 */
function db_parse_url(string $url, string $var): array
{
    $parts = parse_url($url);
    if ($parts === false || ($parts['scheme'] ?? '') !== 'mysql' || !isset($parts['host'])) {
        throw new DbConfigError("$var is not a mysql://USER:PASS@HOST:PORT/DB URL");
    }
    $dbname = rawurldecode(ltrim($parts['path'] ?? '', '/'));
    if ($dbname === '') {
        throw new DbConfigError("$var names no database (expected mysql://USER:PASS@HOST:PORT/DB)");
    }
    return [
        // parse_url keeps the brackets of an IPv6 literal; the DSN wants the bare address.
        'host' => trim($parts['host'], '[]'),
        'port' => (int) ($parts['port'] ?? 3306),
        'user' => rawurldecode($parts['user'] ?? ''),
        'password' => rawurldecode($parts['pass'] ?? ''),
        'dbname' => $dbname,
    ];
}

/**
 * The writer ('writer': DATABASE_URL, the current primary) or reader ('reader':
 * DATABASE_READ_URL, the replicas) endpoint. Falls back to the DB_* pieces when the URL
 * is not set, and the reader falls back to the writer.
 *
 * @return array{host:string,port:int,user:string,password:string,dbname:string}
 */
function db_config(string $role): array
{
    $var = $role === 'reader' ? 'DATABASE_READ_URL' : 'DATABASE_URL';
    $url = getenv($var); // not $_ENV: php.ini's variables_order usually leaves it empty
    if (is_string($url) && $url !== '') {
        return db_parse_url($url, $var);
    }
    $host = getenv('DB_HOST');
    $port = getenv($role === 'reader' ? 'DB_READ_PORT' : 'DB_PORT');
    if (is_string($host) && $host !== '' && is_string($port) && $port !== '') {
        return [
            'host' => $host,
            'port' => (int) $port,
            'user' => (string) getenv('DB_USER'),
            'password' => (string) getenv('DB_PASSWORD'),
            'dbname' => (string) getenv('DB_NAME'),
        ];
    }
    if ($role === 'reader') {
        return db_config('writer');
    }
    throw new DbConfigError('DATABASE_URL is not set (expected mysql://USER:PASS@HOST:PORT/DB)');
}

/** host:port/db, for log lines (never the password). */
function db_describe(array $cfg): string
{
    return sprintf('%s:%d/%s', $cfg['host'], $cfg['port'], $cfg['dbname']);
}

/**
 * A new PDO handle. With $persistent, PHP keeps the connection open after the request,
 * in a per-process pool keyed by DSN, user and password, and hands it back (after a
 * ping) to the next `new PDO` with the same key.
 */
function db_connect(array $cfg, bool $persistent): PDO
{
    $dsn = sprintf(
        'mysql:host=%s;port=%d;dbname=%s;charset=utf8mb4',
        $cfg['host'],
        $cfg['port'],
        $cfg['dbname']
    );
    // PHP 8.4 moved the driver's constants to Pdo\Mysql (the old names are deprecated in 8.5).
    $initCommand = defined('Pdo\Mysql::ATTR_INIT_COMMAND')
        ? constant('Pdo\Mysql::ATTR_INIT_COMMAND')
        : constant('PDO::MYSQL_ATTR_INIT_COMMAND');
    return new PDO($dsn, $cfg['user'], $cfg['password'], [
        PDO::ATTR_PERSISTENT => $persistent,
        PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION,
        PDO::ATTR_TIMEOUT => 5, // connect timeout, seconds
        PDO::ATTR_DEFAULT_FETCH_MODE => PDO::FETCH_ASSOC,
        // Emulated prepares: one round trip per query and no server-side statement
        // tied to a connection that a failover may close.
        PDO::ATTR_EMULATE_PREPARES => true,
        // Runs once per real connection (not when a pooled one is reused): timestamps
        // come back in UTC whatever the server's zone.
        $initCommand => "SET time_zone = '+00:00'",
    ]);
}

/** The MySQL error number of a PDOException (2006, 1062…), or 0 when it has none. */
function db_error_code(PDOException $e): int
{
    if (isset($e->errorInfo[1]) && is_int($e->errorInfo[1])) {
        return $e->errorInfo[1]; // a failed query: errorInfo = [SQLSTATE, code, message]
    }
    if (is_int($e->getCode()) && $e->getCode() > 0) {
        return $e->getCode(); // a failed connect: the code is the MySQL error number
    }
    // "SQLSTATE[HY000] [2002] Connection refused"
    return preg_match('/\[(\d{4,})\]/', $e->getMessage(), $m) === 1 ? (int) $m[1] : 0;
}

/**
 * Whether the error means the connection could not be made or was lost: the statement
 * may be retried on a new connection (if retrying it is safe).
 */
function db_is_connection_error(Throwable $e): bool
{
    if (!$e instanceof PDOException) {
        return false;
    }
    $code = db_error_code($e);
    if (in_array($code, [
        1040, // too many connections
        1053, // server shutdown in progress
        1927, // connection killed (MariaDB)
        2002, // can't connect (socket / refused)
        2003, // can't connect to server
        2005, // unknown host
        2006, // server has gone away
        2013, // lost connection during query
        2055, // lost connection (system error)
        4031, // disconnected by the server (MySQL 8 idle timeout)
    ], true)) {
        return true;
    }
    $msg = $e->getMessage();
    return stripos($msg, 'server has gone away') !== false
        || stripos($msg, 'lost connection') !== false
        || stripos($msg, 'connection refused') !== false
        || stripos($msg, 'broken pipe') !== false;
}


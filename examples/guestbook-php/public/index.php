<?php
// The guestbook: one front controller for PHP's built-in web server
// (php -S HOST:PORT -t public public/index.php, see start.sh).
//
//   GET  /healthz            200 {"ok":true,"version":…} while the reader endpoint answers
//   GET  /                   the page: newest 50 entries and a form
//   POST /entries            the form (application/x-www-form-urlencoded), 303 to /
//   POST /api/entries        {"name","message"} → 201 + Location; optional Idempotency-Key
//   GET  /api/entries        ?limit=1..200 (50), newest first, from the reader
//   GET  /api/entries/{id}   from the reader, else the writer (read-your-writes), else 404
//
// Writes go to DATABASE_URL (the primary), reads to DATABASE_READ_URL (the replicas).
// Connections are persistent: each server worker keeps one per endpoint open between
// requests. A failover may close them while they sit idle; see Db below for how a dead
// one is replaced.

declare(strict_types=1);

// Errors go to the server's log (stderr), never into a response body.
ini_set('display_errors', '0');
ini_set('log_errors', '1');
// A query that waits this long for the server is treated as a lost connection
// (mysqlnd's default is a day). Read when a connection is made.
ini_set('mysqlnd.net_read_timeout', '10');

require dirname(__DIR__) . '/lib/db.php';

const MAX_NAME = 64;          // characters
const MAX_MESSAGE = 2000;     // characters
const MAX_JSON_BODY = 65536;  // bytes
const ROW_COLUMNS = "id, name, message, DATE_FORMAT(created_at, '%Y-%m-%dT%H:%i:%s.%fZ') AS created_at";

/** An answer other than success, with its status and extra headers. */
final class HttpError extends RuntimeException
{
    /** @param array<string,string> $headers */
    public function __construct(public readonly int $status, string $message, public readonly array $headers = [])
    {
        parent::__construct($message);
    }

    public static function unavailable(string $message): self
    {
        return new self(503, $message, ['Retry-After' => '1']);
    }
}

/** APP_VERSION from the environment, else the VERSION file next to start.sh, else "1". */
function app_version(): string
{
    static $version = null;
    if ($version === null) {
        $v = getenv('APP_VERSION');
        if (!is_string($v) || trim($v) === '') {
            $file = dirname(__DIR__) . '/VERSION';
            $v = is_readable($file) ? (string) file_get_contents($file, false, null, 0, 256) : '';
        }
        // It goes into a header: visible ASCII and spaces only.
        $v = trim(preg_replace('/[^\x20-\x7E]/', '', $v) ?? '');
        $version = $v === '' ? '1' : $v;
    }
    return $version;
}

function log_line(string $message): void
{
    error_log('guestbook: ' . $message);
}

/** @param array<string,string> $headers */
function send_json(int $status, mixed $data, array $headers = []): void
{
    header('Content-Type: application/json');
    header('Cache-Control: no-store');
    foreach ($headers as $name => $value) {
        header("$name: $value");
    }
    // After the headers: header('Location: …') turns any status but 201 and 3xx into 302.
    http_response_code($status);
    echo json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE | JSON_INVALID_UTF8_SUBSTITUTE), "\n";
}

function send_error(HttpError $e): void
{
    send_json($e->status, ['error' => $e->getMessage()], $e->headers);
}

/** @param array<string,string> $headers */
function send_html(int $status, string $html, array $headers = []): void
{
    header('Content-Type: text/html; charset=utf-8');
    header('Cache-Control: no-store');
    header("Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'");
    foreach ($headers as $name => $value) {
        header("$name: $value");
    }
    http_response_code($status);
    echo $html;
}

/**
 * The request's PDO handles, one per endpoint ('writer', 'reader').
 *
 * The first handle of a request is persistent: `new PDO` takes this worker's pooled
 * connection for the same DSN/user/password, after pinging it, or opens one. The ping
 * catches a connection that the endpoint closed while it sat idle (PHP then opens a new
 * one by itself). A connection that dies after the ping fails the query instead: drop()
 * forgets the handle, and the next get() in this request opens a *non-persistent*
 * connection, so the retry cannot be handed the same pooled connection. The broken
 * pooled one fails its ping at the start of this worker's next request and is replaced.
 */
final class Db
{
    /** @var array<string,PDO> */
    private static array $handles = [];
    /** @var array<string,bool> endpoints whose pooled connection failed in this request */
    private static array $avoidPool = [];

    public static function get(string $role): PDO
    {
        if (!isset(self::$handles[$role])) {
            self::$handles[$role] = db_connect(db_config($role), !isset(self::$avoidPool[$role]));
        }
        return self::$handles[$role];
    }

    public static function drop(string $role): void
    {
        unset(self::$handles[$role]);
        self::$avoidPool[$role] = true;
    }
}

/**
 * Runs a read on an endpoint; when the connection could not be made or was lost, once
 * more on a new connection (a read is safe to repeat).
 *
 * @template T
 * @param callable(PDO):T $query
 * @return T
 */
function read_from(string $role, callable $query): mixed
{
    try {
        return $query(Db::get($role));
    } catch (PDOException $e) {
        if (!db_is_connection_error($e)) {
            throw $e;
        }
        log_line("$role: " . $e->getMessage() . '; reading again on a new connection');
        Db::drop($role);
        return $query(Db::get($role));
    }
}

/** @return array{id:int,name:string,message:string,created_at:?string} */
function entry_json(array $row): array
{
    return [
        'id' => (int) $row['id'],
        'name' => (string) $row['name'],
        'message' => (string) $row['message'],
        'created_at' => $row['created_at'] === null ? null : (string) $row['created_at'],
    ];
}

function find_entry(PDO $pdo, string $where, array $params): ?array
{
    $stmt = $pdo->prepare('SELECT ' . ROW_COLUMNS . " FROM guestbook_entries WHERE $where");
    $stmt->execute($params);
    $row = $stmt->fetch();
    return $row === false ? null : entry_json($row);
}

/** @return list<array> newest first */
function list_entries(int $limit): array
{
    return read_from('reader', function (PDO $pdo) use ($limit): array {
        $stmt = $pdo->prepare('SELECT ' . ROW_COLUMNS . ' FROM guestbook_entries ORDER BY id DESC LIMIT ?');
        $stmt->bindValue(1, $limit, PDO::PARAM_INT);
        $stmt->execute();
        return array_map('entry_json', $stmt->fetchAll());
    });
}

/**
 * Stores an entry on the writer.
 *
 * @return array{0:int,1:array} 201 and the new row, or 200 and the row a previous
 *                              request with the same Idempotency-Key stored
 */
function create_entry(string $name, string $message, ?string $key): array
{
    for ($attempt = 1; ; $attempt++) {
        $sent = false;
        try {
            $pdo = Db::get('writer');
            $sent = true;
            $pdo->prepare('INSERT INTO guestbook_entries (name, message, request_key) VALUES (?, ?, ?)')
                ->execute([$name, $message, $key]);
            $id = (int) $pdo->lastInsertId();
            break;
        } catch (PDOException $e) {
            if ($key !== null && db_error_code($e) === 1062) {
                return [200, replay($key, $name, $message)];
            }
            if (!db_is_connection_error($e) || $attempt > 1) {
                throw $e;
            }
            Db::drop('writer');
            if ($sent && $key === null) {
                // The INSERT may or may not have been committed: only the client can
                // decide whether to send it again.
                log_line('writer: ' . $e->getMessage() . '; the write without a key is not retried');
                throw HttpError::unavailable(
                    'the connection to the database was lost during the write, which may or may not '
                    . 'have been stored; send an Idempotency-Key header to make retries safe'
                );
            }
            // Nothing was sent (the connect failed), or the key makes a repeat harmless:
            // a stored first attempt comes back as a duplicate key, and is replayed.
            log_line('writer: ' . $e->getMessage() . '; writing again on a new connection');
        }
    }
    try {
        $row = read_from('writer', fn (PDO $pdo) => find_entry($pdo, 'id = ?', [$id]));
    } catch (PDOException $e) {
        $row = null;
        log_line("writer: entry $id was stored but could not be read back: " . $e->getMessage());
    }
    // The row is stored whatever happened to the read-back: never answer an error for it.
    return [201, $row ?? ['id' => $id, 'name' => $name, 'message' => $message, 'created_at' => null]];
}

/** The row stored by an earlier request with this key; 422 if that was another entry. */
function replay(string $key, string $name, string $message): array
{
    $row = read_from('writer', fn (PDO $pdo) => find_entry($pdo, 'request_key = ?', [$key]));
    if ($row === null) {
        throw HttpError::unavailable('the entry stored with this Idempotency-Key could not be read back; try again');
    }
    if ($row['name'] !== $name || $row['message'] !== $message) {
        throw new HttpError(422, 'this Idempotency-Key was already used for another entry');
    }
    return $row;
}

function char_count(string $s): int
{
    return (int) preg_match_all('/./su', $s);
}

/**
 * Trims and checks a name and message.
 *
 * @return array{0:string,1:string}
 */
function validate_entry(mixed $name, mixed $message): array
{
    if (!is_string($name) || !is_string($message)) {
        throw new HttpError(400, 'expected {"name": "…", "message": "…"} with text values');
    }
    if (preg_match('//u', $name) !== 1 || preg_match('//u', $message) !== 1) {
        throw new HttpError(400, 'name and message must be UTF-8 text');
    }
    $name = trim($name);
    $message = trim($message);
    if ($name === '') {
        throw new HttpError(400, 'name must not be empty');
    }
    if (char_count($name) > MAX_NAME) {
        throw new HttpError(400, 'name is longer than ' . MAX_NAME . ' characters');
    }
    if (preg_match('/\p{Cc}/u', $name) === 1) {
        throw new HttpError(400, 'name must not contain control characters');
    }
    if ($message === '') {
        throw new HttpError(400, 'message must not be empty');
    }
    if (char_count($message) > MAX_MESSAGE) {
        throw new HttpError(400, 'message is longer than ' . MAX_MESSAGE . ' characters');
    }
    return [$name, $message];
}

/** The Idempotency-Key header (or the form's hidden field), checked; null if none. */
function idempotency_key(?string $fromForm = null): ?string
{
    $key = $_SERVER['HTTP_IDEMPOTENCY_KEY'] ?? $fromForm;
    if ($key === null) {
        return null;
    }
    if (preg_match('/\A[\x21-\x7E]{1,128}\z/', $key) !== 1) {
        throw new HttpError(400, 'Idempotency-Key must be 1 to 128 visible ASCII characters (no spaces)');
    }
    return $key;
}

// ---------------------------------------------------------------------------------
// Handlers

function healthz(): void
{
    try {
        read_from('reader', fn (PDO $pdo) => $pdo->query('SELECT 1')->fetchColumn());
        send_json(200, ['ok' => true, 'version' => app_version()]);
    } catch (PDOException | DbConfigError $e) {
        log_line('healthz: reader: ' . $e->getMessage());
        send_json(503, ['ok' => false, 'error' => 'reader database unreachable: ' . $e->getMessage(), 'version' => app_version()]);
    }
}

function api_create(): void
{
    $key = idempotency_key();
    $raw = (string) file_get_contents('php://input', false, null, 0, MAX_JSON_BODY + 1);
    if (strlen($raw) > MAX_JSON_BODY) {
        throw new HttpError(413, 'the body is larger than ' . MAX_JSON_BODY . ' bytes');
    }
    $body = json_decode($raw, false, 16);
    if (!$body instanceof stdClass) {
        throw new HttpError(400, 'expected a JSON object {"name": "…", "message": "…"}');
    }
    [$name, $message] = validate_entry($body->name ?? null, $body->message ?? null);
    [$status, $row] = create_entry($name, $message, $key);
    send_json($status, $row, ['Location' => '/api/entries/' . $row['id']]);
}

function api_list(): void
{
    $limit = 50;
    if (isset($_GET['limit'])) {
        $l = $_GET['limit'];
        if (!is_string($l) || preg_match('/\A[0-9]{1,3}\z/', $l) !== 1 || (int) $l < 1 || (int) $l > 200) {
            throw new HttpError(400, 'limit must be a number from 1 to 200');
        }
        $limit = (int) $l;
    }
    send_json(200, list_entries($limit));
}

function api_get(string $id): void
{
    if (preg_match('/\A[1-9][0-9]{0,17}\z/', $id) !== 1) {
        throw new HttpError(404, "no entry with id $id");
    }
    $find = fn (PDO $pdo) => find_entry($pdo, 'id = ?', [(int) $id]);
    // A replica may not have applied a write made a moment ago: ask the primary before
    // answering 404 (read-your-writes).
    $row = read_from('reader', $find) ?? read_from('writer', $find);
    if ($row === null) {
        throw new HttpError(404, "no entry with id $id");
    }
    send_json(200, $row);
}

/** @param array{name?:string,message?:string} $form values to show again after an error */
function render_page(array $entries, ?string $error = null, array $form = []): string
{
    $h = fn (string $s): string => htmlspecialchars($s, ENT_QUOTES | ENT_SUBSTITUTE | ENT_HTML5, 'UTF-8');
    $items = '';
    foreach ($entries as $e) {
        $items .= sprintf(
            "<li><p class=\"meta\"><strong>%s</strong> <time datetime=\"%s\">%s</time></p><p class=\"msg\">%s</p></li>\n",
            $h($e['name']),
            $h((string) $e['created_at']),
            $h(str_replace('T', ' ', substr((string) $e['created_at'], 0, 16)) . ' UTC'),
            $h($e['message'])
        );
    }
    if ($items === '' && $error === null) {
        $items = "<li class=\"empty\">No entries yet: be the first.</li>\n";
    }
    $errorHtml = $error === null ? '' : '<p class="error" role="alert">' . $h($error) . '</p>';
    // A key per rendering of the form: submitting it twice stores one entry.
    $key = bin2hex(random_bytes(16));
    $maxName = MAX_NAME;
    $maxMessage = MAX_MESSAGE;
    $name = $h($form['name'] ?? '');
    $message = $h($form['message'] ?? '');
    $version = $h(app_version());
    return <<<HTML
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Guestbook</title>
<style>
body { font: 16px/1.5 system-ui, sans-serif; margin: 0 auto; max-width: 40rem; padding: 1rem; color: #222; }
form { display: grid; gap: .5rem; margin-bottom: 2rem; }
input, textarea { font: inherit; padding: .4rem; }
textarea { min-height: 5rem; }
button { font: inherit; justify-self: start; padding: .4rem 1rem; }
ol { list-style: none; padding: 0; }
li { border-top: 1px solid #ddd; padding: .5rem 0; }
.meta { margin: 0; color: #555; }
.msg { margin: .25rem 0 0; white-space: pre-wrap; overflow-wrap: anywhere; }
.error { background: #fee; border: 1px solid #c00; padding: .5rem; }
footer { color: #888; font-size: .8rem; margin-top: 2rem; }
</style>
</head>
<body>
<h1>Guestbook</h1>
$errorHtml
<form method="post" action="/entries">
<input type="hidden" name="idempotency_key" value="$key">
<label>Name<br><input name="name" maxlength="$maxName" required value="$name"></label>
<label>Message<br><textarea name="message" maxlength="$maxMessage" required>$message</textarea></label>
<button type="submit">Sign the guestbook</button>
</form>
<ol>
$items</ol>
<footer>version $version</footer>
</body>
</html>

HTML;
}

function page(): void
{
    try {
        send_html(200, render_page(list_entries(50)));
    } catch (PDOException | DbConfigError $e) {
        log_line('page: ' . $e->getMessage());
        send_html(503, render_page([], 'The database is unavailable; try again in a moment.'), ['Retry-After' => '1']);
    }
}

function form_post(): void
{
    $form = [
        'name' => is_string($_POST['name'] ?? null) ? $_POST['name'] : '',
        'message' => is_string($_POST['message'] ?? null) ? $_POST['message'] : '',
    ];
    try {
        $hidden = $_POST['idempotency_key'] ?? null;
        $key = idempotency_key(is_string($hidden) ? $hidden : null);
        [$name, $message] = validate_entry($_POST['name'] ?? null, $_POST['message'] ?? null);
        create_entry($name, $message, $key);
        http_response_code(303);
        header('Location: /');
        header('Cache-Control: no-store');
    } catch (HttpError | PDOException | DbConfigError $e) {
        if ($e instanceof HttpError) {
            [$status, $headers, $why] = [$e->status, $e->headers, $e->getMessage()];
        } else {
            log_line('form: ' . $e->getMessage());
            [$status, $headers, $why] = [503, ['Retry-After' => '1'], 'The database is unavailable; try again in a moment.'];
        }
        try {
            $entries = list_entries(50);
        } catch (PDOException | DbConfigError) {
            $entries = [];
        }
        send_html($status, render_page($entries, $why, $form), $headers);
    }
}

// ---------------------------------------------------------------------------------
// Routing

/**
 * Calls the handler of the path and method.
 *
 * @param array<string,callable():void> $handlers by method ('GET' also answers HEAD)
 */
function dispatch(string $method, array $handlers): void
{
    $handler = $handlers[$method] ?? ($method === 'HEAD' ? ($handlers['GET'] ?? null) : null);
    if ($handler === null) {
        $allowed = array_keys($handlers);
        if (isset($handlers['GET'])) {
            $allowed[] = 'HEAD';
        }
        throw new HttpError(405, "$method is not allowed here", ['Allow' => implode(', ', $allowed)]);
    }
    $handler();
}

function route(string $method, string $path): void
{
    if ($path === '/healthz') {
        dispatch($method, ['GET' => 'healthz']);
    } elseif ($path === '/') {
        dispatch($method, ['GET' => 'page']);
    } elseif ($path === '/entries') {
        dispatch($method, ['POST' => 'form_post']);
    } elseif ($path === '/api/entries') {
        dispatch($method, ['GET' => 'api_list', 'POST' => 'api_create']);
    } elseif (preg_match('#\A/api/entries/([^/]+)\z#', $path, $m) === 1) {
        dispatch($method, ['GET' => fn () => api_get($m[1])]);
    } else {
        throw new HttpError(404, 'not found');
    }
}

header_remove('X-Powered-By');
header('X-App-Version: ' . app_version());
$method = $_SERVER['REQUEST_METHOD'] ?? 'GET';
// Not parse_url(): it reads "//x" as a host name.
$path = explode('?', $_SERVER['REQUEST_URI'] ?? '/', 2)[0];
try {
    route($method, $path);
} catch (HttpError $e) {
    send_error($e);
} catch (PDOException $e) {
    log_line("$method $path: " . $e->getMessage());
    send_error(HttpError::unavailable('database unavailable: ' . $e->getMessage()));
} catch (DbConfigError $e) {
    log_line("$method $path: " . $e->getMessage());
    send_error(HttpError::unavailable($e->getMessage()));
} catch (Throwable $e) {
    log_line("$method $path: " . get_class($e) . ': ' . $e->getMessage() . ' at ' . $e->getFile() . ':' . $e->getLine());
    send_error(new HttpError(500, 'internal error'));
}

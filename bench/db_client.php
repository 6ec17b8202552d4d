<?php
// One benchmark client of bench/db_endpoint.py: N queries on one connection.
//   php db_client.php DSN USER PASSWORD QUERIES KIND [CA CERT KEY]
// KIND: "select1" (SELECT 1) or "point" (a primary-key lookup in guestbook_entries).
[$_, $dsn, $user, $password, $queries, $kind] = array_slice($argv, 0, 6);
$options = [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION, PDO::ATTR_EMULATE_PREPARES => true];
if (isset($argv[6])) {
    $options[PDO::MYSQL_ATTR_SSL_CA] = $argv[6];
    $options[PDO::MYSQL_ATTR_SSL_CERT] = $argv[7];
    $options[PDO::MYSQL_ATTR_SSL_KEY] = $argv[8];
    $options[PDO::MYSQL_ATTR_SSL_VERIFY_SERVER_CERT] = true;
}
$db = new PDO($dsn, $user, $password, $options);
$n = (int)$queries;
if ($kind === 'point') {
    for ($i = 0; $i < $n; $i++) {
        $db->query('SELECT id, name, message FROM guestbook_entries WHERE id = ' . (1 + $i % 100))->fetchAll();
    }
} else {
    for ($i = 0; $i < $n; $i++) {
        $db->query('SELECT 1')->fetchAll();
    }
}

-- Posts of www.foobar.com (embedded SQLite, used when mariadb-server is not installed).
CREATE TABLE IF NOT EXISTS posts (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    author     TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at TEXT    NOT NULL
);
CREATE INDEX IF NOT EXISTS posts_created_at ON posts (created_at);

-- Posts of www.foobar.com (MariaDB / MySQL). Runs on the primary; replicas get it by replication.
CREATE TABLE IF NOT EXISTS posts (
    id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
    author     VARCHAR(64)  NOT NULL,
    body       TEXT         NOT NULL,
    created_at DATETIME(3)  NOT NULL,
    KEY posts_created_at (created_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;

//! The team's own app in the app tier: the PHP example (`examples/guestbook-php`, PDO
//! with persistent connections) run by every app node through the whole stack, with
//! real MariaDB servers behind the nodes' local database endpoints.
//!
//! - writes through the VIP while the primary is SIGKILLed: none acknowledged is lost,
//!   the app's pooled connections follow (moved, not failed), and an idle session held
//!   by a real MySQL client (`mariadb`) goes on on the new primary;
//! - the app's process SIGKILLed under reads: restarted, no read failed;
//! - `hastack deploy` under reads and writes: no request failed, every node on the new
//!   version; a release that fails and a version that never gets healthy change nothing.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Options, Stack, eventually, http};

/// The example app's directory.
fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/guestbook-php")
}

/// Fails (never skips) without PHP's CLI and its MySQL driver.
fn require_php() {
    let php = common::program("php", "php-cli", "the example app is PHP");
    let modules = Command::new(&php).arg("-m").output().expect("php -m");
    assert!(
        String::from_utf8_lossy(&modules.stdout).contains("pdo_mysql"),
        "PHP has no pdo_mysql, and the example app needs it: apt-get install -y php-mysql (scripts/test.sh installs it)"
    );
}

/// A copy of the example app in `dir`, with `VERSION` set to `version`.
fn version_of_example(dir: &Path, version: &str) -> PathBuf {
    let to = dir.join(format!("v{version}"));
    let status = Command::new("cp")
        .arg("-r")
        .arg(example())
        .arg(&to)
        .status()
        .expect("cp");
    assert!(status.success());
    std::fs::write(to.join("VERSION"), version).expect("VERSION");
    to
}

/// A stack running the example app from `dir`.
fn stack_with_app(dir: &Path) -> Stack {
    stack_with_app_and(dir, "")
}

/// Like [`stack_with_app`], with `extra` appended to the topology.
fn stack_with_app_and(dir: &Path, extra: &str) -> Stack {
    require_php();
    let section = format!(
        r#"
[app]
command = ["sh", "start.sh"]
dir = "{}"
health = "/healthz"
release = ["php", "migrate.php"]
env = {{ PHP_CLI_SERVER_WORKERS = "4" }}
start_timeout_ms = 5000

[app.drill]
read = "/api/entries?limit=5"
write = "/api/entries"
body = '{{"name": "drill", "message": "{{key}}"}}'
"#,
        dir.display()
    );
    Stack::up_edited(Options { sqlite: false }, |t| {
        format!("{t}{section}{extra}")
    })
}

/// An entry posted through the VIP with an idempotency key, retried until acknowledged
/// (or `give_up`): its id, and every failed attempt.
fn post_until_acknowledged(
    stack: &Stack,
    key: &str,
    give_up: Instant,
) -> (Option<i64>, Vec<String>) {
    post_until_acknowledged_at(stack.vip(), key, give_up)
}

/// What the writers and readers of [`Load`] saw.
#[derive(Default)]
struct Seen {
    acknowledged: Vec<i64>,
    write_failures: Vec<String>,
    reads: usize,
    read_failures: Vec<String>,
    longest_gap: Duration,
}

/// A writer (idempotent posts) and a reader through the VIP, until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(stack: &Stack) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let vip = stack.vip();
        let writer = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                let mut i = 0;
                let mut last = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = format!("load-{}-{i}", std::process::id());
                    let give_up = Instant::now() + Duration::from_secs(20);
                    let (id, failures) = post_until_acknowledged_at(vip, &key, give_up);
                    let mut s = seen.lock().expect("lock");
                    s.write_failures.extend(failures);
                    if let Some(id) = id {
                        s.acknowledged.push(id);
                        s.longest_gap = s.longest_gap.max(last.elapsed());
                        last = Instant::now();
                    }
                    drop(s);
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
        };
        let reader = {
            let (stop, seen) = (stop.clone(), seen.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let r = http(vip, "GET", "/api/entries?limit=5", &[], "");
                    let mut s = seen.lock().expect("lock");
                    s.reads += 1;
                    match r {
                        Ok(r) if r.status == 200 => {}
                        Ok(r) => s.read_failures.push(format!("{} {}", r.status, r.body)),
                        Err(e) => s.read_failures.push(e.to_string()),
                    }
                    drop(s);
                    std::thread::sleep(Duration::from_millis(10));
                }
            })
        };
        Load {
            stop,
            seen,
            threads: vec![writer, reader],
        }
    }

    fn finish(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            t.join().expect("load thread");
        }
        Arc::try_unwrap(self.seen)
            .ok()
            .expect("the threads are gone")
            .into_inner()
            .expect("lock")
    }
}

fn post_until_acknowledged_at(
    vip: std::net::SocketAddr,
    key: &str,
    give_up: Instant,
) -> (Option<i64>, Vec<String>) {
    let body = format!(r#"{{"name":"load","message":"{key}"}}"#);
    let mut failures = Vec::new();
    while Instant::now() < give_up {
        match http(
            vip,
            "POST",
            "/api/entries",
            &[
                ("Idempotency-Key", key),
                ("Content-Type", "application/json"),
            ],
            &body,
        ) {
            Ok(r) if r.status == 200 || r.status == 201 => {
                return (json_of(&r.body)["id"].as_i64(), failures);
            }
            Ok(r) => failures.push(format!("{} {}", r.status, r.body)),
            Err(e) => failures.push(e.to_string()),
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    (None, failures)
}

/// The JSON object of a body (the test client does not undo chunked encoding).
fn json_of(body: &str) -> serde_json::Value {
    let (Some(start), Some(end)) = (body.find('{'), body.rfind('}')) else {
        panic!("no JSON object in {body:?}");
    };
    serde_json::from_str(&body[start..=end]).unwrap_or_else(|e| panic!("{e}: {body:?}"))
}

/// Every acknowledged entry reads back through the VIP.
fn unread(stack: &Stack, ids: &[i64]) -> Vec<i64> {
    ids.iter()
        .copied()
        .filter(|id| {
            !http(stack.vip(), "GET", &format!("/api/entries/{id}"), &[], "")
                .is_ok_and(|r| r.status == 200)
        })
        .collect()
}

/// The app node's process and endpoints, from its `/healthz`.
fn app_health(stack: &Stack, node: &str) -> serde_json::Value {
    stack.health(node).expect("app health")
}

fn endpoint(h: &serde_json::Value, name: &str) -> serde_json::Value {
    h["endpoints"]
        .as_array()
        .and_then(|a| a.iter().find(|e| e["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no {name} endpoint in {h}"))
}

/// A `mariadb` client session on an endpoint, fed statements one at a time.
struct Session {
    child: std::process::Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Session {
    fn open(stack: &Stack, address: &str) -> Session {
        let mariadb = common::program(
            "mariadb",
            "mariadb-client",
            "the idle-session test speaks to the endpoint with a real MySQL client",
        );
        let (host, port) = address.rsplit_once(':').expect("host:port");
        let password = std::fs::read_to_string(stack.state_dir().join("secrets/db-app.password"))
            .expect("the app's password");
        let mut child = Command::new(mariadb)
            .args([
                "-h",
                host,
                "-P",
                port,
                "-u",
                "foobar",
                "--skip-ssl",
                "--skip-reconnect",
                "-N",
                "-B",
                "-n",
                "foobar",
            ])
            .env("MYSQL_PWD", password.trim())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("mariadb client");
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Session { child, out }
    }

    /// Runs one statement that prints one line; that line.
    fn one(&mut self, sql: &str) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "{sql};").expect("write");
        stdin.flush().expect("flush");
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read");
        assert!(!line.is_empty(), "the session ended at `{sql}`");
        line.trim().to_string()
    }
}

impl Session {
    /// Whether `sql` fails (the client says so and ends: its connection is gone).
    fn fails(&mut self, sql: &str) -> bool {
        let stdin = self.child.stdin.as_mut().expect("stdin");
        if writeln!(stdin, "{sql};")
            .and_then(|()| stdin.flush())
            .is_err()
        {
            return true;
        }
        let mut line = String::new();
        let _ = self.out.read_line(&mut line);
        let exited = eventually("the client to end", Duration::from_secs(10), || {
            self.child.try_wait().ok().flatten()
        });
        line.is_empty() && !exited.success()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn the_teams_app_follows_a_failover_and_survives_its_own_crash() {
    let stack = stack_with_app(&example());
    let home = http(stack.vip(), "GET", "/", &[], "").expect("page");
    assert_eq!(home.status, 200, "{}", home.body);
    assert!(home.body.contains("Guestbook"), "{}", home.body);
    let (id, failures) =
        post_until_acknowledged(&stack, "first", Instant::now() + Duration::from_secs(10));
    let id = id.unwrap_or_else(|| panic!("no first post: {failures:?}"));
    let one = http(stack.vip(), "GET", &format!("/api/entries/{id}"), &[], "").expect("get");
    assert_eq!(one.status, 200);
    let path = one.header("x-served-by").expect("X-Served-By");
    assert!(
        path.contains("app"),
        "the answer came through an app node: {path}"
    );
    assert_eq!(one.header("x-app-version"), Some("1"));

    // The endpoints: the writer on the primary, the app's connections through them.
    let before = primary_name(&stack);
    let h = app_health(&stack, "app1");
    assert_eq!(h["process"]["state"], "ready", "{h}");
    assert_eq!(endpoint(&h, "writer")["target"], before.as_str(), "{h}");

    // An idle session of a real client, on app1's writer endpoint, and one that holds
    // a transaction open (it cannot move: it must be closed, so its pool reconnects).
    let writer_address = endpoint(&h, "writer")["address"]
        .as_str()
        .expect("address")
        .to_string();
    let mut idle = Session::open(&stack, &writer_address);
    let server_before = idle.one("SELECT @@server_id");
    let mut in_transaction = Session::open(&stack, &writer_address);
    in_transaction.one("BEGIN; SELECT COUNT(*) FROM guestbook_entries");

    let load = Load::start(&stack);
    std::thread::sleep(Duration::from_secs(2));
    stack.ctl_ok(&["kill", &before]);
    let after = eventually("a new primary", Duration::from_secs(30), || {
        primary_name_opt(&stack).filter(|p| *p != before)
    });
    std::thread::sleep(Duration::from_secs(3));
    let seen = load.finish();
    let lost = unread(&stack, &seen.acknowledged);
    println!(
        "primary {before} killed → {after}: {} writes acknowledged, {} lost, longest gap between acknowledgements {:.2} s, {} failed attempts ({:?}); {} reads, {} failed",
        seen.acknowledged.len(),
        lost.len(),
        seen.longest_gap.as_secs_f64(),
        seen.write_failures.len(),
        seen.write_failures.iter().take(3).collect::<Vec<_>>(),
        seen.reads,
        seen.read_failures.len()
    );
    assert!(seen.acknowledged.len() > 20, "the writer kept writing");
    assert!(lost.is_empty(), "acknowledged writes lost: {lost:?}");

    // The app's pooled connections followed the primary.
    let h = app_health(&stack, "app1");
    let writer = endpoint(&h, "writer");
    assert_eq!(writer["target"], after.as_str(), "{h}");
    assert!(
        writer["moved"].as_u64().unwrap_or(0) + writer["waits"].as_u64().unwrap_or(0) > 0,
        "the writer endpoint saw the failover: {writer}"
    );

    // The session inside a transaction was closed: its next statement finds no server.
    assert!(
        in_transaction.fails("SELECT 1"),
        "a session with an open transaction must not move to the new primary"
    );
    assert!(
        endpoint(&app_health(&stack, "app1"), "writer")["closed"]
            .as_u64()
            .unwrap_or(0)
            >= 1
    );

    // The idle session goes on, on the new primary, without an error.
    let server_after = idle.one("SELECT @@server_id");
    assert_ne!(
        server_before, server_after,
        "the session moved to another server"
    );
    let inserted = idle.one(
        "INSERT INTO guestbook_entries (name, message) VALUES ('idle', 'after the failover'); SELECT ROW_COUNT()",
    );
    assert_eq!(inserted, "1", "the idle session writes on the new primary");

    // The app's process dies under reads: the node starts it again, nothing fails.
    let pid = app_health(&stack, "app1")["process"]["pid"]
        .as_u64()
        .expect("pid") as i32;
    let load = Load::start(&stack);
    std::thread::sleep(Duration::from_millis(500));
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    )
    .expect("kill the app");
    let restarted = eventually("app1's app started again", Duration::from_secs(20), || {
        let h = app_health(&stack, "app1");
        (h["process"]["state"] == "ready" && h["process"]["pid"].as_u64() != Some(pid as u64))
            .then_some(h)
    });
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.finish();
    assert_eq!(restarted["process"]["restarts"], 1, "{restarted}");
    assert!(
        restarted["process"]["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGKILL") || e.contains("9")),
        "{restarted}"
    );
    // Only a request inside the process when it died can fail (a 502 naming the node:
    // its answer was cut); those that came while it restarted waited for it, or went
    // to app2 once the web tier saw app1 down.
    let failed: Vec<&String> = seen
        .read_failures
        .iter()
        .chain(&seen.write_failures)
        .collect();
    assert!(
        failed.len() <= 2
            && failed
                .iter()
                .all(|f| f.starts_with("502") && f.contains("app1")),
        "requests failed while the app restarted: {failed:?}"
    );
    assert!(unread(&stack, &seen.acknowledged).is_empty());
}

fn primary_name_opt(stack: &Stack) -> Option<String> {
    common::primary(stack)
}

fn primary_name(stack: &Stack) -> String {
    eventually("a primary", Duration::from_secs(30), || {
        common::primary(stack)
    })
}

#[test]
fn deploy_rolls_a_version_without_a_failed_request_and_refuses_bad_ones() {
    let versions = tempfile::tempdir().expect("tempdir");
    let v1 = version_of_example(versions.path(), "1");
    // The site's static files, which a deploy reads again.
    let site = versions.path().join("site");
    std::fs::create_dir(&site).expect("mkdir");
    std::fs::write(site.join("notice.txt"), "version 1 of the notice\n").expect("write");
    let stack = stack_with_app_and(&v1, &format!("\n[web]\nroot = \"{}\"\n", site.display()));
    let notice = || {
        http(stack.vip(), "GET", "/notice.txt", &[], "")
            .expect("notice")
            .body
    };
    assert!(notice().contains("version 1"));
    let v2 = version_of_example(versions.path(), "2");
    std::fs::write(site.join("notice.txt"), "version 2 of the notice\n").expect("write");

    let load = Load::start(&stack);
    std::thread::sleep(Duration::from_secs(1));
    let out = stack.ctl_ok(&["deploy", "--dir", v2.to_str().expect("path")]);
    std::thread::sleep(Duration::from_secs(1));
    let seen = load.finish();
    println!(
        "deploy: {out}\n{} reads, {} writes under it",
        seen.reads,
        seen.acknowledged.len()
    );
    assert!(out.contains("release: ran once"), "{out}");
    assert!(
        seen.read_failures.is_empty() && seen.write_failures.is_empty(),
        "requests failed during the deploy: {:?} {:?}",
        seen.read_failures,
        seen.write_failures
    );
    assert!(unread(&stack, &seen.acknowledged).is_empty());
    for node in ["app1", "app2"] {
        let h = app_health(&stack, node);
        assert_eq!(
            h["process"]["dir"],
            v2.to_str().expect("path"),
            "{node} runs the new version: {h}"
        );
    }
    for _ in 0..10 {
        let r = http(stack.vip(), "GET", "/api/entries", &[], "").expect("get");
        assert_eq!(r.header("x-app-version"), Some("2"), "{:?}", r.headers);
    }
    assert!(out.contains("the site's files read again"), "{out}");
    eventually(
        "every web node serving the new static files",
        Duration::from_secs(10),
        || (0..6).all(|_| notice().contains("version 2")).then_some(()),
    );

    // A release that fails: no node changes.
    let v3 = version_of_example(versions.path(), "3");
    std::fs::write(
        v3.join("migrate.php"),
        "<?php fwrite(STDERR, \"migration 3 failed: table is locked\\n\"); exit(1);\n",
    )
    .expect("write");
    let refused = stack.ctl(&["deploy", "--dir", v3.to_str().expect("path")]);
    let text = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(
        text.contains("the release failed; no node was changed")
            && text.contains("migration 3 failed"),
        "{text}"
    );

    // A version that never answers its health path: the rollout stops at the first
    // node, which runs version 2 again; the other was never touched.
    let v4 = version_of_example(versions.path(), "4");
    std::fs::write(
        v4.join("start.sh"),
        "echo 'v4 booting'; echo 'fatal: no config for v4' >&2; exec sleep 600\n",
    )
    .expect("write");
    let load = Load::start(&stack);
    let refused = stack.ctl(&["deploy", "--dir", v4.to_str().expect("path")]);
    let seen = load.finish();
    let text = String::from_utf8_lossy(&refused.stderr).into_owned();
    assert!(!refused.status.success());
    assert!(
        text.contains("did not become healthy") && text.contains("rollout stopped"),
        "{text}"
    );
    assert!(
        text.contains("fatal: no config for v4"),
        "the app's last lines are quoted: {text}"
    );
    assert!(
        seen.read_failures.is_empty() && seen.write_failures.is_empty(),
        "requests failed while a bad version was refused: {:?} {:?}",
        seen.read_failures,
        seen.write_failures
    );
    for node in ["app1", "app2"] {
        let h = eventually("app nodes on version 2", Duration::from_secs(20), || {
            stack
                .health(node)
                .filter(|h| h["process"]["state"] == "ready")
        });
        assert_eq!(
            h["process"]["dir"],
            v2.to_str().expect("path"),
            "{node}: {h}"
        );
    }
    let r = http(stack.vip(), "GET", "/api/entries", &[], "").expect("get");
    assert_eq!(r.header("x-app-version"), Some("2"));
}

#[test]
fn nodes_added_to_and_removed_from_the_file_join_and_leave_without_a_failed_request() {
    let versions = tempfile::tempdir().expect("tempdir");
    let stack = stack_with_app(&version_of_example(versions.path(), "1"));
    let original = std::fs::read_to_string(&stack.config).expect("topology");
    let scaled = original.replace(
        "[[node]]\nname = \"app2\"",
        &format!(
            "[[node]]\nname = \"app3\"\nrole = \"app\"\naddress = \"{}\"\n\n[[node]]\nname = \"web3\"\nrole = \"web\"\naddress = \"{}\"\n\n[[node]]\nname = \"app2\"",
            stack.addr(33),
            stack.addr(23)
        ),
    );
    assert_ne!(scaled, original);

    let load = Load::start(&stack);
    std::thread::sleep(Duration::from_millis(500));
    std::fs::write(&stack.config, &scaled).expect("write");
    let out = stack.ctl_ok(&["reload"]);
    assert!(
        out.contains("app3: added, serving") && out.contains("web3: added, serving"),
        "{out}"
    );
    // Both new nodes take requests through the VIP.
    eventually("web3 and app3 in answers", Duration::from_secs(10), || {
        let paths: Vec<String> = (0..20)
            .filter_map(|_| http(stack.vip(), "GET", "/api/entries", &[], "").ok())
            .filter_map(|r| r.header("x-served-by").map(str::to_string))
            .collect();
        (paths.iter().any(|p| p.contains("web3")) && paths.iter().any(|p| p.contains("app3")))
            .then_some(())
    });

    std::fs::write(&stack.config, &original).expect("write");
    let out = stack.ctl_ok(&["reload"]);
    assert!(
        out.contains("app3: drained and stopped") && out.contains("web3: drained and stopped"),
        "{out}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let seen = load.finish();
    println!(
        "scale out and in: {} reads, {} writes, {} failed",
        seen.reads,
        seen.acknowledged.len(),
        seen.read_failures.len() + seen.write_failures.len()
    );
    assert!(
        seen.read_failures.is_empty() && seen.write_failures.is_empty(),
        "requests failed while nodes came and went: {:?} {:?}",
        seen.read_failures,
        seen.write_failures
    );
    assert!(unread(&stack, &seen.acknowledged).is_empty());
    let status = stack.status();
    let names: Vec<&str> = status["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert!(
        !names.contains(&"app3") && !names.contains(&"web3"),
        "{names:?}"
    );

    // What reload cannot do it refuses, changing nothing.
    std::fs::write(
        &stack.config,
        original.replace("[[node]]\nname = \"db3\"", "[[node]]\nname = \"db4\""),
    )
    .expect("write");
    let refused = stack.ctl(&["reload"]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr);
    assert!(text.contains("needs a restart of the stack"), "{text}");
}

#[test]
fn the_drills_run_against_the_teams_app() {
    let stack = stack_with_app(&example());
    for drill in ["app-failover", "db-failover"] {
        let out = stack.ctl(&["drill", drill, "--json"]);
        let text = String::from_utf8_lossy(&out.stdout);
        println!("drill {drill}: {text}");
        assert!(
            out.status.success(),
            "drill {drill} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_str(&text).expect("JSON report");
        let rows = report["drills"].as_array().expect("drills");
        if drill == "app-failover" {
            assert_eq!(rows.len(), 2, "the app's process, then the node: {report}");
            assert!(
                rows[0]["fault"]
                    .as_str()
                    .is_some_and(|f| f.contains("app process")),
                "{report}"
            );
        }
        for row in rows {
            assert_eq!(row["writes_lost"], 0, "{row}");
            assert!(
                row["writes_acknowledged"].as_u64().unwrap_or(0) > 0,
                "{row}"
            );
        }
    }
}

#[test]
fn a_bad_app_is_refused_with_its_place_or_its_last_lines() {
    require_php();
    // A program that is not installed: `check` and `up` name the file, line and column.
    let mut stack = Stack::prepare(Options { sqlite: false });
    let text = std::fs::read_to_string(&stack.config).expect("topology");
    std::fs::write(
        &stack.config,
        format!(
            "{text}\n[app]\ncommand = [\"no-such-server-hastack\", \"--port\"]\ndir = \"{}\"\n",
            example().display()
        ),
    )
    .expect("write");
    let checked = stack.ctl(&["check"]);
    let err = String::from_utf8_lossy(&checked.stderr);
    assert!(!checked.status.success());
    assert!(
        err.contains("hastack.toml:")
            && err.contains("`no-such-server-hastack` is not found in PATH"),
        "{err}"
    );
    assert!(err.contains("help:"), "{err}");

    // An app that starts but never answers its health path: `up` names the node,
    // quotes the app's last lines and says what to fix.
    std::fs::write(
        &stack.config,
        format!(
            "{text}\n[app]\ncommand = [\"sh\", \"-c\", \"echo starting on $PORT; echo 'fatal: no such table: settings' >&2; exec sleep 600\"]\ndir = \"{}\"\nstart_timeout_ms = 2000\n",
            example().display()
        ),
    )
    .expect("write");
    stack.spawn_up();
    let status = stack.wait_exit(Duration::from_secs(240));
    assert!(!status.success());
    let out = stack.output();
    assert!(
        out.contains("app1: error") || out.contains("app2: error"),
        "the failing node is named:\n{out}"
    );
    for needle in [
        "did not answer /healthz with 2xx",
        "fatal: no such table: settings",
        "help: the app must listen on $HOST:$PORT",
    ] {
        assert!(out.contains(needle), "`{needle}` not in:\n{out}");
    }
}

//! The command line without a running stack: `config`, `check`, and the errors a user
//! meets first.

mod common;

use std::process::Command;

use common::{BIN, Options, Stack};

#[test]
fn the_printed_default_topology_checks_clean() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN).arg("config").output().expect("run");
    assert!(out.status.success());
    let file = dir.path().join("hastack.toml");
    std::fs::write(&file, &out.stdout).expect("write");
    let check = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    let text = String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&check.stderr)
    );
    assert!(
        text.contains("11 nodes (2 dns, 2 lb, 2 web, 2 app, 3 db)"),
        "{text}"
    );
}

#[test]
fn check_names_file_line_and_column_of_each_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("bad.toml");
    let text = hastack_config_default()
        .replace("priority = 100", "priority = 300")
        .replace("address = \"127.0.2.2\"", "address = \"127.0.2.1\"");
    std::fs::write(&file, &text).expect("write");
    let out = Command::new(BIN)
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let line_of = |needle: &str| {
        text.lines()
            .position(|l| l.contains(needle))
            .expect("needle")
            + 1
    };
    let shown = file.display().to_string();
    assert!(
        err.contains(&format!(
            "{shown}:{}:12: error: lb node `lb2` has priority 300, expected 1..=254",
            line_of("priority = 300")
        )),
        "{err}"
    );
    assert!(
        err.contains("same address 127.0.2.1 as node `web1`"),
        "{err}"
    );
    assert!(err.contains("help:"), "{err}");
}

#[test]
fn up_with_a_broken_config_says_where_and_starts_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("hastack.toml");
    std::fs::write(
        &file,
        hastack_config_default().replace("[vrrp]", "[vrrp]\nvrid_typo = 1"),
    )
    .expect("write");
    let out = Command::new(BIN)
        .args(["up", "--config"])
        .arg(&file)
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("unknown field `vrid_typo`"), "{err}");
    assert!(
        !dir.path().join(".hastack").exists(),
        "nothing may be started or created"
    );
}

#[test]
fn control_commands_without_a_stack_say_so() {
    let dir = tempfile::tempdir().expect("tempdir");
    let out = Command::new(BIN)
        .args(["status"])
        .current_dir(dir.path())
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no running stack"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_taken_port_fails_the_start_with_one_line_naming_the_node() {
    let mut stack = Stack::prepare(Options { sqlite: true });
    // Someone else holds web1's port.
    let web1 = std::net::SocketAddr::from((stack.addr(21), stack.web_port));
    let _squatter = std::net::TcpListener::bind(web1).expect("bind web1's port");
    stack.spawn_up();
    let status = stack.wait_exit(std::time::Duration::from_secs(60));
    assert!(!status.success());
    let out = stack.output();
    assert!(
        out.lines()
            .any(|l| l.contains("web1 failed to start") && l.contains("Address already in use")),
        "no clear line about web1:\n{out}"
    );
    assert!(out.contains("stopping what was started"), "{out}");
    // What had started (the app tier) is gone again.
    for node in ["app1", "app2"] {
        assert!(
            !common::listening(stack.admin(node)),
            "{node} still listening"
        );
    }
    assert!(!stack.state_dir().join("control.sock").exists());
}

fn hastack_config_default() -> String {
    let out = Command::new(BIN).arg("config").output().expect("run");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn check_refuses_own_certificates_that_do_not_fit() {
    use hastack_tls::pki::{Identity, Pki};
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path());
    pki.ensure(
        &[
            Identity::site("www.other.org", "127.0.0.1".parse().expect("ip")),
            Identity::node("x", "127.0.0.2".parse().expect("ip")),
        ],
        false,
    )
    .expect("certificates");
    let run = |cert: &str, key: &str| {
        let file = dir.path().join("t.toml");
        let text = format!(
            "{}\n[[tls.certificate]]\ncert = \"{cert}\"\nkey = \"{key}\"\n",
            hastack_config_default()
        );
        std::fs::write(&file, text).expect("write");
        Command::new(BIN)
            .args(["check", "--config"])
            .arg(&file)
            .output()
            .expect("run")
    };
    // A certificate for another name.
    let out = run("pki/site.crt", "pki/site.key");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("no [[tls.certificate]] of")
            && err.contains("covers the site name www.foobar.com (they hold www.other.org)"),
        "{err}"
    );
    // A key that is another certificate's.
    let out = run("pki/site.crt", "pki/nodes/x.key");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("pki/nodes/x.key: does not belong to the certificate"),
        "{err}"
    );
}

//! A datadir without the marker of a finished install is never deleted.

mod common;

use std::time::Duration;

use common::{Options, Stack, require_mariadb};

#[test]
fn a_datadir_without_the_marker_is_refused_not_wiped() {
    require_mariadb();
    let mut stack = Stack::prepare(Options { sqlite: false });
    let data = stack.state_dir().join("db/db1/data");
    std::fs::create_dir_all(&data).expect("mkdir");
    std::fs::write(data.join("ibdata1"), b"precious").expect("write");
    stack.spawn_up();
    let status = stack.wait_exit(Duration::from_secs(120));
    assert!(!status.success(), "up must fail: {}", stack.output());
    let out = stack.output();
    assert!(out.contains("hastack never deletes a datadir"), "{out}");
    assert!(
        out.contains("touch "),
        "the error says how to fix it: {out}"
    );
    assert_eq!(
        std::fs::read(data.join("ibdata1")).expect("still there"),
        b"precious"
    );
}

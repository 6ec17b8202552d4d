//! The site in a real browser: headless Chromium (Debian's `chromium`) loads the page
//! over HTTPS through the VIP, trusting the stack's internal CA; the stylesheets, the
//! images and the fingerprinted script load, the form posts through the JSON API with
//! the page's JavaScript, and the post is there after a reload.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{Options, Stack, eventually};

#[test]
fn a_person_can_read_and_post_with_a_real_browser() {
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "this test needs Chromium: install it with `apt-get install chromium` (scripts/test.sh does)"
    );
    let stack = Stack::up(Options { sqlite: true });
    eventually("the VIP", Duration::from_secs(10), || {
        stack.get("/").ok().filter(|r| r.status == 200)
    });
    let shot = stack.dir.path().join("page.png");
    // Over HTTPS, by the site's name, with the internal CA trusted the way an
    // administrator installs a CA (an NSS database, `certutil`): no certificate
    // errors are ignored.
    assert!(
        Path::new("/usr/bin/certutil").exists(),
        "this test trusts the internal CA with certutil: apt-get install libnss3-tools (scripts/test.sh does)"
    );
    let url = format!("https://www.foobar.com:{}/", stack.https_port);
    let rule = format!("MAP www.foobar.com {}", stack.addr(100));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(&url)
        .arg(&shot)
        .arg(stack.ca())
        .arg(&rule)
        .output()
        .expect("run python3");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "browser.py failed: {stderr}");
    let seen: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("browser.py prints JSON");

    assert_eq!(seen["title"], "www.foobar.com");
    assert_eq!(
        seen["button_color"], "rgb(29, 78, 216)",
        "style.css did not apply: {seen}"
    );
    assert_eq!(seen["logo_width"], 48, "logo.png did not load: {seen}");
    assert_eq!(
        seen["hero_width"], 1600,
        "the hero photo did not load: {seen}"
    );
    assert_eq!(
        seen["site_js"], "object",
        "the fingerprinted script did not run: {seen}"
    );
    let status = seen["status_after_post"].as_str().unwrap_or("");
    assert!(
        status.starts_with("posted, served by lb1, web"),
        "the page's JavaScript did not post: {seen}"
    );
    assert!(status.contains(", app"), "{seen}");
    for key in ["first_post_after_post", "first_post_after_reload"] {
        let text = seen[key].as_str().unwrap_or("");
        assert!(
            text.contains("carol") && text.contains("typed in a real browser"),
            "{key}: {seen}"
        );
    }
    let png = std::fs::read(&shot).expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"), "not a PNG screenshot");
}

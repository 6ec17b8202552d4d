//! The `[app]` section: the team's own application, run on every app node.
//!
//! Parsing checks the section's shape (a command, a directory, a health path, names
//! of environment variables). Whether the directory and the program exist is a fact of
//! the host that runs the app, not of the file: [`AppSettings::check_on_this_host`]
//! looks (on one machine at `hastack check` and `up`, on each app server at start),
//! and its errors still name the file, line and column of the value at fault.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde_spanned::Spanned;

use crate::{ConfigError, ConfigErrors};

/// Environment variables hastack sets for the app itself; `[app] env` may not set them.
pub const RESERVED_ENV: [&str; 10] = [
    "HOST",
    "PORT",
    "DATABASE_URL",
    "DATABASE_READ_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_READ_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
];

/// Where a value stood in the topology file, for errors found after parsing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    /// The topology file.
    pub file: PathBuf,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Place {
    fn error(&self, message: String, help: &str) -> ConfigError {
        ConfigError {
            file: self.file.clone(),
            line: self.line,
            column: self.column,
            message,
            help: Some(help.to_string()),
        }
    }
}

/// The team's application (`[app]`): what every app node runs behind its front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppSettings {
    /// The program and its arguments (no shell), run in `dir`.
    pub command: Vec<String>,
    /// The application's directory (absolute: relative paths are taken from the
    /// topology file's directory).
    pub dir: PathBuf,
    /// `GET` of this path must answer 2xx before the node takes traffic.
    pub health: String,
    /// Run once against the primary before a rollout (migrations).
    pub release: Option<Vec<String>>,
    /// Added to the variables hastack sets.
    pub env: Vec<(String, String)>,
    /// How long a new process may take to answer its health path.
    pub start_timeout: Duration,
    /// How long a stopping process may take to finish its requests before SIGKILL.
    pub stop_timeout: Duration,
    /// The traffic `hastack drill` sends to the app (`None`: the app has not said, and
    /// the drills refuse to guess).
    pub drill: Option<DrillTraffic>,
    /// Where `command` and `dir` stood in the file.
    pub command_at: Place,
    /// Where `dir` stood in the file.
    pub dir_at: Place,
}

/// What `hastack drill` sends to the team's app (`[app.drill]`): a read, and a write
/// whose answer names what it stored, read back by id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrillTraffic {
    /// `GET` of this path reads (e.g. `/api/entries?limit=5`).
    pub read: String,
    /// `POST` to this path writes; the answer is JSON with an `id`, and
    /// `GET {write}/{id}` reads it back.
    pub write: String,
    /// The JSON body of a write; `{key}` is replaced by a unique key (also sent as
    /// `Idempotency-Key`), which the read-back must show.
    pub body: String,
}

/// The built-in app's drill traffic.
impl Default for DrillTraffic {
    fn default() -> DrillTraffic {
        DrillTraffic {
            read: "/api/posts?limit=5".into(),
            write: "/api/posts".into(),
            body: r#"{"author": "drill", "body": "{key}"}"#.into(),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDrill {
    read: Spanned<String>,
    write: Spanned<String>,
    body: Spanned<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApp {
    command: Option<Spanned<Vec<String>>>,
    dir: Option<Spanned<String>>,
    #[serde(default = "default_health")]
    health: Spanned<String>,
    release: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    env: std::collections::BTreeMap<String, Spanned<String>>,
    #[serde(default = "default_start_timeout")]
    start_timeout_ms: Spanned<u64>,
    #[serde(default = "default_stop_timeout")]
    stop_timeout_ms: Spanned<u64>,
    drill: Option<RawDrill>,
}

fn default_health() -> Spanned<String> {
    Spanned::new(0..0, "/healthz".into())
}

fn default_start_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 30_000)
}

fn default_stop_timeout() -> Spanned<u64> {
    Spanned::new(0..0, 10_000)
}

/// The `[app]` section, checked; `None` when it has errors (pushed to `c`).
pub(crate) fn app_settings(
    section: Spanned<RawApp>,
    c: &mut crate::raw::Checker,
) -> Option<AppSettings> {
    let before = c.errors.len();
    let at = Spanned::new(section.span(), ());
    let raw = section.into_inner();
    let Some(command) = raw.command else {
        c.error(
            &at,
            "[app] has no command".into(),
            "add the argv that starts your app, e.g. command = [\"python3\", \"app.py\"]; remove [app] to run the built-in app",
        );
        return None;
    };
    if command.get_ref().is_empty() || command.get_ref()[0].trim().is_empty() {
        c.error(
            &command,
            "app.command is empty".into(),
            "give the program and its arguments, e.g. [\"python3\", \"app.py\"]",
        );
    }
    let Some(dir) = raw.dir else {
        c.error(
            &command,
            "[app] has a command but no dir".into(),
            "add dir = \"myapp\": the directory the command runs in, relative to this file",
        );
        return None;
    };
    if dir.get_ref().trim().is_empty() {
        c.error(
            &dir,
            "app.dir is empty".into(),
            "give the app's directory, relative to this file or absolute",
        );
    }
    let health = raw.health.get_ref();
    if !health.starts_with('/') || health.bytes().any(|b| !(0x21..0x7f).contains(&b)) {
        c.error(
            &raw.health,
            format!("app.health is \"{health}\", which is not a URL path"),
            "write the path your app answers 2xx on when it can serve, e.g. \"/healthz\"",
        );
    }
    if let Some(r) = &raw.release
        && (r.get_ref().is_empty() || r.get_ref()[0].trim().is_empty())
    {
        c.error(
            r,
            "app.release is empty".into(),
            "give the migration's argv, e.g. [\"python3\", \"migrate.py\"], or remove the line",
        );
    }
    let mut env = Vec::new();
    for (name, value) in raw.env {
        let valid = name.starts_with(|ch: char| ch.is_ascii_alphabetic() || ch == '_')
            && name
                .chars()
                .all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
        if !valid {
            c.error(
                &value,
                format!("app.env has \"{name}\", which is not an environment variable name"),
                "use letters, digits and '_', not starting with a digit",
            );
        } else if RESERVED_ENV.contains(&name.as_str()) {
            c.error(
                &value,
                format!("app.env sets {name}, which hastack sets for the app"),
                "remove it: hastack gives the app HOST, PORT, DATABASE_URL, DATABASE_READ_URL and the DB_* pieces",
            );
        } else if value.get_ref().contains('\0') {
            c.error(
                &value,
                format!("app.env.{name} has a NUL character"),
                "environment values cannot hold NUL",
            );
        } else {
            env.push((name, value.into_inner()));
        }
    }
    let drill = raw.drill.map(|d| {
        for (v, what) in [(&d.read, "app.drill.read"), (&d.write, "app.drill.write")] {
            if !v.get_ref().starts_with('/') || v.get_ref().bytes().any(|b| !(0x21..0x7f).contains(&b)) {
                c.error(
                    v,
                    format!("{what} is \"{}\", which is not a URL path", v.get_ref()),
                    "write the path the drill requests, e.g. \"/api/entries\"",
                );
            }
        }
        if !d.body.get_ref().contains("{key}") {
            c.error(
                &d.body,
                "app.drill.body has no {key}".into(),
                "put {key} where the write stores something the read-back can show, e.g. {\"message\": \"{key}\"}",
            );
        }
        DrillTraffic {
            read: d.read.into_inner(),
            write: d.write.into_inner().trim_end_matches('/').to_string(),
            body: d.body.into_inner(),
        }
    });
    c.positive(&raw.start_timeout_ms, "app.start_timeout_ms");
    c.positive(&raw.stop_timeout_ms, "app.stop_timeout_ms");
    if c.errors.len() > before {
        return None;
    }
    let base = c.file.parent().unwrap_or(Path::new("."));
    Some(AppSettings {
        command_at: c.place(&command),
        dir_at: c.place(&dir),
        command: command.into_inner(),
        dir: base.join(dir.get_ref()),
        health: raw.health.into_inner(),
        release: raw.release.map(Spanned::into_inner),
        env,
        start_timeout: Duration::from_millis(raw.start_timeout_ms.into_inner()),
        stop_timeout: Duration::from_millis(raw.stop_timeout_ms.into_inner()),
        drill,
    })
}

impl AppSettings {
    /// Checks, on this host, that `dir` is a directory and that the command's program
    /// (and the release's) can be run: a path is taken from `dir`, a bare name is
    /// looked up in `PATH`. The only I/O of this crate besides reading the file.
    pub fn check_on_this_host(&self) -> Result<(), ConfigErrors> {
        self.check_in(&self.dir)
    }

    /// Like [`AppSettings::check_on_this_host`], with the app's files in `dir`
    /// (a new version being deployed).
    pub fn check_in(&self, dir: &Path) -> Result<(), ConfigErrors> {
        let mut errors = Vec::new();
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => errors.push(self.dir_at.error(
                format!("app.dir {} is not a directory", dir.display()),
                "point dir at the directory that holds your app",
            )),
            Err(e) => errors.push(self.dir_at.error(
                format!("app.dir {} cannot be read: {e}", dir.display()),
                "create it, or correct the path (relative paths start at the topology file's directory)",
            )),
        }
        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        let programs = std::iter::once(("app.command", &self.command))
            .chain(self.release.iter().map(|r| ("app.release", r)));
        for (what, argv) in programs {
            let Some(program) = argv.first() else {
                continue;
            };
            if let Err(why) = find_program(program, dir) {
                errors.push(self.command_at.error(
                    format!("{what}: `{program}` {why}"),
                    "install the program, or give its path (relative to app.dir or absolute); the command runs without a shell",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigErrors(errors))
        }
    }
}

/// Where `program` is: a path (with a `/`) from `dir`, or a bare name in `PATH`.
pub fn find_program(program: &str, dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if program.contains('/') {
        let path = dir.join(program);
        return match std::fs::metadata(&path) {
            Err(_) => Err(format!("is not found ({})", path.display())),
            Ok(_) if executable(&path) => Ok(path),
            Ok(_) => Err(format!(
                "is not executable ({}: chmod +x, or run it with its interpreter)",
                path.display()
            )),
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| "is not found in PATH".to_string())
}

//! Test harness: a whole stack run by the real `hastack` binary in a temporary
//! directory, on a loopback /24 of its own with ports from the OS, so tests run in
//! parallel. Plain blocking HTTP over `TcpStream`, deadlines instead of sleeps.

#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_hastack");

/// Polls `f` until it returns Some or `deadline` passes.
pub fn eventually<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `N` distinct ports the OS says are free (all held until all are chosen, so none
/// comes back twice).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind :0"))
        .collect();
    std::array::from_fn(|i| held[i].local_addr().expect("addr").port())
}

/// A /24 in 127/8 that no other test of this run uses.
fn subnet() -> (u8, u8) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    static FIRST: std::sync::OnceLock<u8> = std::sync::OnceLock::new();
    let first = *FIRST.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        ((std::process::id() ^ nanos) % 200 + 20) as u8
    });
    (first, (n + 1) as u8)
}

/// Two dns nodes, for a test to append to the topology (`Stack::up_edited`); they are
/// at host 51 and 52 of the stack's /24.
pub fn dns_nodes(text: &str) -> String {
    let (a, b) = loopback_net(text);
    format!(
        "{text}\n[[node]]\nname = \"dns1\"\nrole = \"dns\"\naddress = \"127.{a}.{b}.51\"\n\n[[node]]\nname = \"dns2\"\nrole = \"dns\"\naddress = \"127.{a}.{b}.52\"\n"
    )
}

/// The `a.b` of the stack's 127.a.b.0/24, from the first node address in `text`.
fn loopback_net(text: &str) -> (String, String) {
    text.lines()
        .find_map(|l| l.strip_prefix("address = \"127."))
        .and_then(|rest| {
            let mut it = rest.split('.');
            Some((it.next()?.to_string(), it.next()?.to_string()))
        })
        .expect("a loopback address in the topology")
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One HTTP/1.1 request with `Connection: close`.
pub fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Resp> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: www.foobar.com\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes())?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no header end in {text:?}")))?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line in {head:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Ok(Resp {
        status,
        headers,
        body: body.to_string(),
    })
}

pub struct Options {
    /// Force the SQLite fallback by naming a mariadbd that does not exist.
    pub sqlite: bool,
}

/// Fails (never skips) when isolated mode cannot run here, saying what to install.
pub fn require_isolated() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test runs an isolated stack (network namespaces, nftables): run the tests as root (CI does)"
    );
    program("ip", "iproute2", "this test runs an isolated stack");
    program("nft", "nftables", "this test runs an isolated stack");
}

/// The program `name` (on the PATH or in the sbin directories), from Debian's package
/// `package`; fails (never skips) saying what to install, and `why` the test needs it.
pub fn program(name: &str, package: &str, why: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!(
                "`{name}` is not installed, and {why}: apt-get install -y {package} (scripts/test.sh installs it)"
            )
        })
}

/// Runs `f` on a thread inside network namespace `ns` (a name under /run/netns):
/// every socket it opens lives there.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let fd = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        nix::sched::setns(&fd, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("setns {path}: {e}"));
        f()
    })
    .join()
    .expect("netns thread")
}

/// The IPv4 addresses of network namespace `ns` (`ip -n NS -4 -o addr`).
pub fn netns_addresses(ns: &str) -> Vec<Ipv4Addr> {
    let out = Command::new("ip")
        .args(["-n", ns, "-4", "-o", "addr", "show"])
        .output()
        .expect("run ip");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            w.position(|x| x == "inet")?;
            w.next()?.split('/').next()?.parse().ok()
        })
        .collect()
}

/// The network namespaces that exist now.
pub fn namespaces() -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// A running `hastack up`.
pub struct Stack {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub net: (u8, u8),
    pub http_port: u16,
    pub https_port: u16,
    pub admin_port: u16,
    pub web_port: u16,
    pub web_https_port: u16,
    pub app_port: u16,
    /// DNS on the dns nodes (none unless a test adds them with [`dns_nodes`]).
    pub dns_port: u16,
    pub child: Option<Child>,
    pub output: Arc<Mutex<String>>,
    /// Isolated mode: nodes in 10.a.b.0/24, each in a network namespace.
    pub isolated: bool,
}

impl Stack {
    pub fn addr(&self, host: u8) -> Ipv4Addr {
        let first = if self.isolated { 10 } else { 127 };
        Ipv4Addr::new(first, self.net.0, self.net.1, host)
    }

    /// Starts an isolated stack (mode = "isolated", 10.a.b.0/24) after `edit`.
    pub fn up_isolated(edit: impl FnOnce(String) -> String) -> Stack {
        require_isolated();
        require_mariadb();
        Stack::up_edited(Options { sqlite: false }, |text| {
            let (a, b) = loopback_net(&text);
            let text = text
                .replace(
                    "mode = \"loopback\"",
                    &format!("mode = \"isolated\"\nsubnet = \"10.{a}.{b}.0/24\""),
                )
                .replace(&format!("\"127.{a}.{b}."), &format!("\"10.{a}.{b}."));
            edit(text)
        })
        .into_isolated()
    }

    fn into_isolated(mut self) -> Stack {
        self.isolated = true;
        self
    }

    /// Isolated mode: the network namespace of a node (or `client`), from `status`.
    pub fn netns(&self, node: &str) -> String {
        let st = self.status();
        if node == "client" {
            return st["client_netns"]
                .as_str()
                .expect("client_netns")
                .to_string();
        }
        st["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .find(|n| n["name"] == node)
            .and_then(|n| n["netns"].as_str())
            .unwrap_or_else(|| panic!("no netns for {node}: {st}"))
            .to_string()
    }

    pub fn vip(&self) -> SocketAddr {
        SocketAddr::from((self.addr(100), self.http_port))
    }

    /// The VIP's HTTPS address.
    pub fn vip_https(&self) -> SocketAddr {
        SocketAddr::from((self.addr(100), self.https_port))
    }

    /// The internal CA's certificate.
    pub fn ca(&self) -> PathBuf {
        self.state_dir().join("pki/ca.crt")
    }

    /// The admin address of a node (lb1=11, lb2=12, web1=21, …).
    pub fn admin(&self, node: &str) -> SocketAddr {
        SocketAddr::from((self.addr(host_of(node)), self.admin_port))
    }

    /// Writes the topology file without starting anything.
    pub fn prepare(opts: Options) -> Stack {
        let dir = tempfile::Builder::new()
            .prefix("hs")
            .tempdir_in("/tmp")
            .expect("tempdir");
        let net = subnet();
        let [
            http_port,
            admin_port,
            web,
            app,
            db,
            vrrp,
            https_port,
            web_https,
            dns,
        ] = free_ports::<9>();
        let a = |h: u8| format!("127.{}.{}.{h}", net.0, net.1);
        let mariadbd = if opts.sqlite {
            "/nonexistent/mariadbd"
        } else {
            "mariadbd"
        };
        let text = format!(
            r#"[site]
name = "www.foobar.com"
mode = "loopback"
state_dir = ".hastack"

[vip]
address = "{vip}"
port = {http_port}
https_port = {https_port}

[ports]
admin = {admin_port}
web = {web}
web_https = {web_https}
app = {app}
db = {db}
vrrp = {vrrp}
dns = {dns}

[dashboard]
address = "127.0.0.1:0"

[vrrp]
vrid = 51
advert_interval = 10

[health]
interval_ms = 100
timeout_ms = 500
rise = 2
fall = 2

[db]
mariadbd = "{mariadbd}"
semi_sync_timeout_ms = 1000

[[node]]
name = "lb1"
role = "lb"
address = "{lb1}"
priority = 150

[[node]]
name = "lb2"
role = "lb"
address = "{lb2}"
priority = 100

[[node]]
name = "web1"
role = "web"
address = "{web1}"

[[node]]
name = "web2"
role = "web"
address = "{web2}"

[[node]]
name = "app1"
role = "app"
address = "{app1}"

[[node]]
name = "app2"
role = "app"
address = "{app2}"

[[node]]
name = "db1"
role = "db"
address = "{db1}"

[[node]]
name = "db2"
role = "db"
address = "{db2}"

[[node]]
name = "db3"
role = "db"
address = "{db3}"
"#,
            vip = a(100),
            lb1 = a(11),
            lb2 = a(12),
            web1 = a(21),
            web2 = a(22),
            app1 = a(31),
            app2 = a(32),
            db1 = a(41),
            db2 = a(42),
            db3 = a(43),
        );
        let config = dir.path().join("hastack.toml");
        std::fs::write(&config, text).expect("write topology");
        Stack {
            dir,
            config,
            net,
            http_port,
            https_port,
            admin_port,
            web_port: web,
            web_https_port: web_https,
            app_port: app,
            dns_port: dns,
            child: None,
            output: Arc::new(Mutex::new(String::new())),
            isolated: false,
        }
    }

    /// Starts `hastack up`; returns once it printed "ready in", or panics with its output.
    pub fn up(opts: Options) -> Stack {
        Stack::up_edited(opts, |t| t)
    }

    /// Like [`Stack::up`], with the topology text changed by `edit` first.
    pub fn up_edited(opts: Options, edit: impl FnOnce(String) -> String) -> Stack {
        if !opts.sqlite {
            require_mariadb();
        }
        let mut s = Stack::prepare(opts);
        let text = std::fs::read_to_string(&s.config).expect("topology");
        std::fs::write(&s.config, edit(text)).expect("topology");
        s.spawn_up();
        let out = s.output.clone();
        let child = s.child.as_mut().expect("child");
        let start = Instant::now();
        loop {
            if out.lock().expect("lock").contains("ready in") {
                break;
            }
            if let Ok(Some(status)) = child.try_wait() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "hastack up exited ({status}) before ready:\n{}",
                    out.lock().expect("lock")
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(240),
                "hastack up not ready in 240 s:\n{}",
                out.lock().expect("lock")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// Spawns `hastack up` and collects its output in the background.
    pub fn spawn_up(&mut self) {
        let mut child = Command::new(BIN)
            .args(["up", "--config"])
            .arg(&self.config)
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn hastack up");
        for stream in [
            child
                .stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            child
                .stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let out = self.output.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    let mut o = out.lock().expect("lock");
                    o.push_str(&line);
                    o.push('\n');
                }
            });
        }
        self.child = Some(child);
    }

    pub fn output(&self) -> String {
        self.output.lock().expect("lock").clone()
    }

    /// Runs `hastack ARGS --config FILE` in the stack's directory.
    pub fn ctl(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(&self.config)
            .current_dir(self.dir.path())
            .output()
            .expect("run hastack")
    }

    /// Like [`Stack::ctl`], asserting success; returns stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        let out = self.ctl(args);
        assert!(
            out.status.success(),
            "hastack {args:?} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn status(&self) -> serde_json::Value {
        serde_json::from_str(&self.ctl_ok(&["status", "--json"])).expect("status json")
    }

    /// pid of every running node.
    pub fn pids(&self) -> Vec<(String, u32)> {
        let st = self.status();
        st["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .filter_map(|n| Some((n["name"].as_str()?.to_string(), n["pid"].as_u64()? as u32)))
            .collect()
    }

    /// A node's `/healthz` document, if it answers.
    pub fn health(&self, node: &str) -> Option<serde_json::Value> {
        let r = http(self.admin(node), "GET", "/healthz", &[], "").ok()?;
        serde_json::from_str(&r.body).ok()
    }

    pub fn get(&self, path: &str) -> std::io::Result<Resp> {
        http(self.vip(), "GET", path, &[], "")
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".hastack")
    }

    /// Waits for the supervisor to exit; returns its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let child = self.child.as_mut().expect("child");
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait().expect("try_wait") {
                return s;
            }
            assert!(
                start.elapsed() < deadline,
                "supervisor still running after {deadline:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The last `n` lines of a file, or nothing.
fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Stack {
    /// On a failing test, what the nodes said last: every node's log and every
    /// `mariadbd`'s error log, so that a failure seen once in CI tells its cause.
    fn print_logs(&self) {
        let state = self.state_dir();
        let mut files: Vec<PathBuf> = std::fs::read_dir(state.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect();
        files.extend(
            std::fs::read_dir(state.join("db"))
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.path().join("mariadbd.err")),
        );
        files.sort();
        for f in files.iter().filter(|f| f.exists()) {
            eprintln!("----- {} (last 60 lines)\n{}", f.display(), tail(f, 60));
        }
        eprintln!("----- hastack up\n{}", self.output());
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.print_logs();
        }
        let running = self
            .child
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)));
        if running {
            let _ = self.ctl(&["down"]);
        }
        if let Some(child) = self.child.as_mut() {
            let start = Instant::now();
            while matches!(child.try_wait(), Ok(None)) && start.elapsed() < Duration::from_secs(90)
            {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub fn host_of(node: &str) -> u8 {
    match node {
        "lb1" => 11,
        "lb2" => 12,
        "web1" => 21,
        "web2" => 22,
        "app1" => 31,
        "app2" => 32,
        "db1" => 41,
        "db2" => 42,
        "db3" => 43,
        "dns1" => 51,
        "dns2" => 52,
        other => panic!("unknown node {other}"),
    }
}

pub fn require_mariadb() {
    let found = [
        "/usr/sbin/mariadbd",
        "/usr/bin/mariadbd",
        "/usr/local/sbin/mariadbd",
    ]
    .iter()
    .any(|p| Path::new(p).exists());
    assert!(
        found,
        "this test needs MariaDB: install it with `apt-get install mariadb-server` (scripts/test.sh does)"
    );
}

/// Whether a process exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(false),
        Err(_) => false,
    }
}

/// Whether anything accepts TCP connections at `addr`.
pub fn listening(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Runs `sql` on a db node's `mariadbd` as root over its unix socket (the tests run as
/// root, as CI does); the tab-separated output, or the client's error.
pub fn sql(stack: &Stack, node: &str, sql: &str) -> Result<String, String> {
    let sock = stack.state_dir().join(format!("db/{node}/run/mysqld.sock"));
    let out = Command::new("mariadb")
        .arg("-S")
        .arg(&sock)
        // A socket needs no TLS; the client's default TLS costs each call ~25 ms.
        .arg("--skip-ssl")
        .args(["-u", "root", "-N", "-B", "--connect-timeout=2", "-e", sql])
        .output()
        .map_err(|e| format!("running the mariadb client (apt-get install mariadb-client): {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// The db node whose health says it is the writable primary.
pub fn primary(stack: &Stack) -> Option<String> {
    ["db1", "db2", "db3"]
        .into_iter()
        .find(|n| stack.health(n).is_some_and(|h| h["db_role"] == "primary"))
        .map(str::to_string)
}

/// Samples `@@read_only` of every db node until stopped; returns the most servers seen
/// writable at once and the samples taken.
pub struct WritableWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<(usize, usize)>>,
}

impl WritableWatch {
    pub fn start(stack: &Stack) -> WritableWatch {
        let socks: Vec<PathBuf> = ["db1", "db2", "db3"]
            .iter()
            .map(|n| stack.state_dir().join(format!("db/{n}/run/mysqld.sock")))
            .collect();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::spawn(move || {
            let (mut max, mut samples) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let writable = socks
                    .iter()
                    .filter(|s| {
                        Command::new("mariadb")
                            .arg("-S")
                            .arg(s)
                            .arg("--skip-ssl")
                            .args([
                                "-u",
                                "root",
                                "-N",
                                "-B",
                                "--connect-timeout=1",
                                "-e",
                                "SELECT @@global.read_only",
                            ])
                            .output()
                            .is_ok_and(|o| {
                                o.status.success()
                                    && String::from_utf8_lossy(&o.stdout).trim() == "0"
                            })
                    })
                    .count();
                max = max.max(writable);
                samples += 1;
            }
            (max, samples)
        });
        WritableWatch {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops sampling: (most writable at once, samples).
    pub fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.handle
            .take()
            .map(|h| h.join().expect("watch thread"))
            .unwrap_or((0, 0))
    }
}

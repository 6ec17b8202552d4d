//! Metrics read at scrape time, through `prometheus-client`'s [`Collector`]: the
//! process figures every node exports (the standard `process_*` names Prometheus'
//! own clients use, so existing dashboards work), and [`Gather`], the small writer a
//! node's own collector (VRRP state, the db node's replication) uses to emit values it
//! reads from shared state on each scrape.
//!
//! Nothing here writes Prometheus text by hand: every family goes through the
//! registry's encoder, so names, types and the `# EOF` trailer are the library's.

use std::fmt::Debug;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Emits the families of one scrape.
pub struct Gather<'a, 'b> {
    encoder: &'b mut DescriptorEncoder<'a>,
}

impl<'a, 'b> Gather<'a, 'b> {
    /// A gauge without labels.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) -> std::fmt::Result {
        let g = ConstGauge::new(value);
        let m = self
            .encoder
            .encode_descriptor(name, help, None, g.metric_type())?;
        g.encode(m)
    }

    /// A counter without labels (`name` without `_total`; the encoder adds it).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> std::fmt::Result {
        let c = ConstCounter::new(value);
        let m = self
            .encoder
            .encode_descriptor(name, help, None, c.metric_type())?;
        c.encode(m)
    }
}

/// Requests a node answered and how many were server errors, for its `/healthz`
/// ([`hastack_status::health::Traffic`]); two relaxed atomic additions per request.
#[derive(Debug, Default)]
pub struct TrafficCounter {
    requests: std::sync::atomic::AtomicU64,
    errors: std::sync::atomic::AtomicU64,
}

impl TrafficCounter {
    /// Counts one answer with status `status`.
    pub fn count(&self, status: u16) {
        use std::sync::atomic::Ordering::Relaxed;
        self.requests.fetch_add(1, Relaxed);
        if status >= 500 {
            self.errors.fetch_add(1, Relaxed);
        }
    }

    /// The totals so far.
    pub fn get(&self) -> hastack_status::health::Traffic {
        use std::sync::atomic::Ordering::Relaxed;
        hastack_status::health::Traffic {
            requests: self.requests.load(Relaxed),
            errors: self.errors.load(Relaxed),
        }
    }
}

/// A collector made of a function that gathers the figures of one scrape.
pub struct FnCollector<F>(pub F);

impl<F> Debug for FnCollector<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FnCollector")
    }
}

impl<F> Collector for FnCollector<F>
where
    F: Fn(&mut Gather<'_, '_>) -> std::fmt::Result + Send + Sync + 'static,
{
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        (self.0)(&mut Gather {
            encoder: &mut encoder,
        })
    }
}

/// The process's figures, read from `/proc/self` at each scrape: CPU seconds, resident
/// and virtual memory, open and maximum descriptors, start time, threads.
#[derive(Debug, Default)]
pub struct ProcessCollector;

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> std::fmt::Result {
        let Some(p) = ProcessFigures::read() else {
            return Ok(());
        };
        let mut g = Gather {
            encoder: &mut encoder,
        };
        // `process_cpu_seconds_total` is a counter of seconds (a float); the const
        // counter takes f64.
        let cpu = ConstCounter::new(p.cpu_seconds);
        let m = g.encoder.encode_descriptor(
            "process_cpu_seconds",
            "Total user and system CPU time spent in seconds.",
            None,
            cpu.metric_type(),
        )?;
        cpu.encode(m)?;
        g.gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
            p.resident_bytes as f64,
        )?;
        g.gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
            p.virtual_bytes as f64,
        )?;
        g.gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            p.start_time_seconds,
        )?;
        g.gauge(
            "process_open_fds",
            "Number of open file descriptors.",
            p.open_fds as f64,
        )?;
        if let Some(max) = p.max_fds {
            g.gauge(
                "process_max_fds",
                "Maximum number of open file descriptors.",
                max as f64,
            )?;
        }
        g.gauge(
            "process_threads",
            "Number of OS threads in the process.",
            p.threads as f64,
        )
    }
}

/// What `/proc/self` says about this process.
#[derive(Debug, Clone, PartialEq)]
pub struct ProcessFigures {
    /// User plus system CPU time.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub resident_bytes: u64,
    /// Virtual memory size.
    pub virtual_bytes: u64,
    /// Start time, Unix seconds.
    pub start_time_seconds: f64,
    /// Open descriptors.
    pub open_fds: u64,
    /// The soft descriptor limit.
    pub max_fds: Option<u64>,
    /// Threads.
    pub threads: u64,
}

impl ProcessFigures {
    /// Reads this process's figures (`None` where `/proc` is not mounted).
    pub fn read() -> Option<ProcessFigures> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
            .ok()
            .flatten()
            .filter(|t| *t > 0)
            .unwrap_or(100) as f64;
        let page = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
            .ok()
            .flatten()
            .filter(|p| *p > 0)
            .unwrap_or(4096) as u64;
        let mut p = parse_stat(&stat, &boot, ticks, page)?;
        p.open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
        p.max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .ok()
            .map(|(soft, _)| soft);
        Some(p)
    }
}

/// The figures in `/proc/self/stat` (`stat`), with the boot time from `/proc/stat`
/// (`proc_stat`), `ticks` clock ticks per second and `page` bytes per page.
fn parse_stat(stat: &str, proc_stat: &str, ticks: f64, page: u64) -> Option<ProcessFigures> {
    // The command name (field 2) is in parentheses and may hold spaces or ')'; the
    // fields after the last ')' start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field n (1-based, man proc_pid_stat) is f[n - 3].
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok());
    let utime = field(14)?;
    let stime = field(15)?;
    let threads = field(20)?;
    let start_ticks = field(22)?;
    let vsize = field(23)?;
    let rss_pages = field(24)?;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))
        .and_then(|v| v.trim().parse().ok())?;
    Some(ProcessFigures {
        cpu_seconds: (utime + stime) as f64 / ticks,
        resident_bytes: rss_pages * page,
        virtual_bytes: vsize,
        start_time_seconds: btime as f64 + start_ticks as f64 / ticks,
        open_fds: 0,
        max_fds: None,
        threads,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::registry::Registry;

    #[test]
    fn a_stat_line_with_spaces_and_parentheses_in_the_name_parses() {
        let stat = "4242 (hastack (node) x) S 1 4242 4242 0 -1 4194560 1000 0 0 0 \
                    250 150 0 0 20 0 7 0 5000 123456789 300 18446744073709551615 \
                    1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0";
        let p = parse_stat(stat, "cpu 1 2 3\nbtime 1700000000\n", 100.0, 4096).expect("figures");
        assert_eq!(p.cpu_seconds, 4.0);
        assert_eq!(p.threads, 7);
        assert_eq!(p.virtual_bytes, 123_456_789);
        assert_eq!(p.resident_bytes, 300 * 4096);
        assert_eq!(p.start_time_seconds, 1_700_000_050.0);
    }

    #[test]
    fn traffic_counts_every_answer_and_the_5xx_among_them() {
        let t = TrafficCounter::default();
        for s in [200, 404, 500, 503, 302] {
            t.count(s);
        }
        assert_eq!(
            t.get(),
            hastack_status::health::Traffic {
                requests: 5,
                errors: 2
            }
        );
    }

    #[test]
    fn a_truncated_stat_line_is_no_figures_not_a_panic() {
        assert_eq!(parse_stat("12 (x) S 1 2", "btime 1\n", 100.0, 4096), None);
        assert_eq!(parse_stat("no parenthesis", "btime 1\n", 100.0, 4096), None);
    }

    #[test]
    fn this_process_reports_its_figures_through_the_registry() {
        let mut r = Registry::default();
        r.register_collector(Box::new(ProcessCollector));
        r.register_collector(Box::new(FnCollector(|g: &mut Gather<'_, '_>| {
            g.gauge("hastack_test_up", "Up.", 1.0)?;
            g.counter("hastack_test_things", "Things.", 3)
        })));
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &r).expect("encode");
        assert!(out.contains("# TYPE process_cpu_seconds counter\nprocess_cpu_seconds_total "));
        assert!(out.contains("# TYPE process_resident_memory_bytes gauge\n"));
        assert!(out.contains("hastack_test_up 1.0\n"), "{out}");
        assert!(out.contains("hastack_test_things_total 3\n"), "{out}");
        assert!(out.ends_with("# EOF\n"));
    }
}

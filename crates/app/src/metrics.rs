//! The app node's Prometheus metrics: posts, how writes rode through a failover (refused
//! for want of a primary, retried on a new one, replayed by idempotency key), and which
//! database node served the reads.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A metric's database node.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
pub struct NodeLabel {
    /// The db node's name (`sqlite` for the embedded file).
    pub node: String,
}

impl NodeLabel {
    /// The label of node `name`.
    pub fn new(name: &str) -> NodeLabel {
        NodeLabel {
            node: name.to_string(),
        }
    }
}

/// The counters of one app node; clones share their values.
#[derive(Debug, Clone, Default)]
pub struct AppMetrics {
    /// Posts stored (not counting replays).
    pub posts_created: Counter,
    /// Writes answered 503 because no node was a writable primary.
    pub writes_refused_no_primary: Counter,
    /// Write attempts made again after one failed before it could have been stored (or
    /// with an idempotency key), usually on a new primary.
    pub writes_retried: Counter,
    /// Requests whose idempotency key had already stored their post.
    pub idempotent_replays: Counter,
    /// Reads a node could not serve that moved to another node.
    pub read_fallbacks: Counter,
    /// Reads served, by db node.
    pub reads: Family<NodeLabel, Counter>,
    /// 1 for the db node the app currently writes to, 0 for the others.
    pub primary: Family<NodeLabel, Gauge>,
    /// Requests answered and the 5xx among them, for `/healthz`.
    pub traffic: std::sync::Arc<hastack_runtime::metrics::TrafficCounter>,
}

impl AppMetrics {
    /// Registers every metric in `registry` (names start with `hastack_app_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "hastack_app_posts_created",
            "Posts stored",
            self.posts_created.clone(),
        );
        registry.register(
            "hastack_app_writes_refused_no_primary",
            "Writes answered 503 because no database node was a writable primary",
            self.writes_refused_no_primary.clone(),
        );
        registry.register(
            "hastack_app_writes_retried",
            "Write attempts repeated (on a new primary) after a failure that left nothing stored",
            self.writes_retried.clone(),
        );
        registry.register(
            "hastack_app_idempotent_replays",
            "Posts returned again for a repeated Idempotency-Key instead of being stored twice",
            self.idempotent_replays.clone(),
        );
        registry.register(
            "hastack_app_replica_fallbacks",
            "Reads a database node failed that moved to another node",
            self.read_fallbacks.clone(),
        );
        registry.register(
            "hastack_app_reads",
            "Reads served, by database node",
            self.reads.clone(),
        );
        registry.register(
            "hastack_app_db_primary",
            "1 for the database node the app writes to, 0 for the others",
            self.primary.clone(),
        );
    }
}

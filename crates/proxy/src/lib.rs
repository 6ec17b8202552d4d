//! The HTTP data plane shared by the lb and web tiers: upstream pools, round-robin
//! balancing, active and passive health checks, header rewriting and retries, and the
//! chain of layers ([`phase`]) a tier puts its own features in.
//!
//! One implementation serves both tiers: the lb forwards to web nodes and the web node
//! forwards to app nodes through the same [`Proxy`]. Architecture invariant: nothing
//! here knows which tier it runs in; the tier passes a pool and [`ProxyOptions`].

pub mod access_log;
pub mod balance;
mod body;
mod conn;
mod forward;
pub mod phase;
mod pool;

pub use access_log::AccessLog;
pub use balance::{Balance, HashOn};
pub use body::{
    BodyFault, BodyFaultError, BodyRules, BoxError, ClientBody, ProxyBody, RequestBody, Streamed,
};
pub use conn::{BODY_IDLE_TIMEOUT, BodyError, BodyStalled, MAX_DIALING, PooledBody};
pub use forward::{Proxy, ProxyOptions, X_SERVED_BY, prepend_served_by, strip_hop_by_hop};
pub use phase::{Call, Chain, Layer, Next, Reply, Upstream};
pub use pool::{
    AdminState, CheckKind, HealthCheck, NoServer, Pool, PoolOptions, PoolTls, RiseFall, Server,
    ServerSet, UnknownServer,
};

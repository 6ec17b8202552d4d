//! The operators' picture of a stack, one model for every reader.
//!
//! - [`health`]: the `/healthz` document of each role, typed; nodes write it, `status`,
//!   `top`, the dashboard and the drills read it.
//! - [`stack`]: the whole stack at one moment, and the [`Tracker`](stack::Tracker) that
//!   turns a series of pictures into rates and events (pure: time is an input).
//! - [`poll`]: takes a picture by asking every node's `/healthz` (what an lb's dashboard
//!   does; `hastack up` adds its process table).
//! - [`dashboard`]: the live dashboard, a page with its script and styles built into the
//!   binary, fed by server-sent events; served by `hastack up` and every lb's admin port.
//! - [`http`]: one-shot HTTP requests with a deadline.

pub mod dashboard;
pub mod health;
pub mod http;
pub mod poll;
pub mod stack;

pub use health::Health;
pub use stack::{NodeStatus, StackStatus, Tracker, View};

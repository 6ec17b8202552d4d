//! VRRPv3 (RFC 5798): the packet codec, a pure state machine, and the transports and
//! VIP actions that carry it between load balancers.
//!
//! - [`packet`]: bytes ⇄ [`Advert`], checksum over the IPv4 pseudo-header, the IPv4
//!   header view a raw socket needs. Decodes the adverts keepalived sends, byte for byte.
//! - [`machine`]: Initialize / Backup / Master / Fault with priorities, preemption
//!   (and its delay), skew and Master_Down_Interval. Time is an input; it does no I/O.
//! - [`auth`]: the optional HMAC tag on adverts between hastack nodes.
//! - [`transport`]: the [`Transport`] trait, UDP unicast (loopback mode) and an
//!   in-memory pair for tests; [`raw`]: IP protocol 112 on the wire (isolated, hosts).
//! - [`netif`]: the VIP as an interface address (rtnetlink); [`garp`]: gratuitous ARP.
//! - [`notify`]: the ordered notify command; [`stats`]: counters and the rejection log.
//! - [`runner`]: the loop on its own thread that drives a machine; the only part that
//!   reads a clock.

pub mod auth;
pub mod garp;
pub mod machine;
pub mod netif;
pub mod notify;
pub mod packet;
pub mod raw;
pub mod runner;
pub mod stats;
pub mod transport;

pub use machine::{Action, Config, Machine, Rejected, State};
pub use packet::{Advert, DecodeError};
pub use runner::{Health, Network, Runner, Setup, StartError, VipHook};
pub use stats::{RejectReason, Stats};
pub use transport::{ChannelTransport, RecvError, Transport, UdpTransport};

//! VRRPv3 (RFC 5798): the packet codec, a pure state machine, and the transport that
//! carries adverts between load balancers.
//!
//! - [`packet`]: bytes ⇄ [`Advert`], checksum over the IPv4 pseudo-header. Decodes the
//!   adverts keepalived sends, byte for byte.
//! - [`machine`]: Initialize / Backup / Master with priorities, preemption, skew and
//!   Master_Down_Interval. Time is an input; it does no I/O.
//! - [`runner`]: the UDP unicast transport of loopback mode and the task that drives a
//!   machine; the only part that touches sockets and clocks.

pub mod machine;
pub mod packet;
pub mod runner;

pub use machine::{Action, Config, Machine, Rejected, State};
pub use packet::{Advert, DecodeError};
pub use runner::{Stats, UdpTransport, VipHook};

//! The VIP as an interface address, through rtnetlink (isolated and hosts modes).
//!
//! [`Netlink::interface_with`] finds the interface that holds the node's address (an
//! address dump, as `ip -4 addr show to ADDR`): never a hard-coded name. The master
//! adds `VIP/prefix` there ([`Netlink::add`]) and removes it when it leaves
//! ([`Netlink::remove`]); a node removes a stale copy left by a crashed process at
//! start. Everything here acts on the network namespace of the thread that created the
//! [`Netlink`].

use std::net::{IpAddr, Ipv4Addr};

use futures_util::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressMessage, CacheInfo};
use rtnetlink::packet_route::link::LinkAttribute;

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    /// Its index.
    pub index: u32,
    /// Its name, e.g. `eth0`.
    pub name: String,
    /// Its MAC address (the Ethernet source of gratuitous ARPs).
    pub mac: [u8; 6],
}

/// A netlink failure, with what was being done.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Opening the netlink socket failed.
    #[error("netlink socket: {0}")]
    Socket(#[from] std::io::Error),
    /// The kernel refused or the request failed.
    #[error("netlink: {what}: {source}")]
    Request {
        /// What was being done.
        what: String,
        /// The cause.
        source: rtnetlink::Error,
    },
    /// No interface holds the node's address.
    #[error(
        "no interface holds {0}: the lb node's address must be configured on the interface that reaches the other lb nodes"
    )]
    NoInterface(Ipv4Addr),
    /// The interface has no Ethernet address (gratuitous ARP needs one).
    #[error("interface {0} has no Ethernet (MAC) address")]
    NoMac(String),
}

/// A route netlink connection, served by a task on the current runtime.
#[derive(Debug)]
pub struct Netlink {
    handle: rtnetlink::Handle,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Netlink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn ipv4_of(msg: &AddressMessage) -> Option<Ipv4Addr> {
    let mut address = None;
    for attr in &msg.attributes {
        match attr {
            AddressAttribute::Local(IpAddr::V4(a)) => return Some(*a),
            AddressAttribute::Address(IpAddr::V4(a)) => address = Some(*a),
            _ => {}
        }
    }
    address
}

fn request(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetError {
    let what = what.into();
    move |source| NetError::Request { what, source }
}

fn is_errno(e: &rtnetlink::Error, errno: i32) -> bool {
    match e {
        rtnetlink::Error::NetlinkError(m) => m.code.is_some_and(|c| c.get() == -errno),
        _ => false,
    }
}

impl Netlink {
    /// Opens a connection (inside a tokio runtime; the socket belongs to the calling
    /// thread's network namespace).
    pub fn connect() -> Result<Netlink, NetError> {
        let (conn, handle, _) = rtnetlink::new_connection()?;
        let task = tokio::spawn(conn);
        Ok(Netlink { handle, task })
    }

    async fn ipv4_addresses(&self, index: Option<u32>) -> Result<Vec<AddressMessage>, NetError> {
        let mut req = self.handle.address().get();
        if let Some(i) = index {
            req = req.set_link_index_filter(i);
        }
        let all: Vec<AddressMessage> = req
            .execute()
            .try_collect()
            .await
            .map_err(request("address dump"))?;
        Ok(all.into_iter().filter(|m| ipv4_of(m).is_some()).collect())
    }

    /// The interface that holds `addr`.
    pub async fn interface_with(&self, addr: Ipv4Addr) -> Result<Interface, NetError> {
        let index = self
            .ipv4_addresses(None)
            .await?
            .iter()
            .find(|m| ipv4_of(m) == Some(addr))
            .map(|m| m.header.index)
            .ok_or(NetError::NoInterface(addr))?;
        let links: Vec<_> = self
            .handle
            .link()
            .get()
            .match_index(index)
            .execute()
            .try_collect()
            .await
            .map_err(request(format!("link {index}")))?;
        let mut name = format!("if{index}");
        let mut mac = None;
        for attr in links.iter().flat_map(|l| l.attributes.iter()) {
            match attr {
                LinkAttribute::IfName(n) => name = n.clone(),
                LinkAttribute::Address(a) => mac = <[u8; 6]>::try_from(a.as_slice()).ok(),
                _ => {}
            }
        }
        let mac = mac.ok_or_else(|| NetError::NoMac(name.clone()))?;
        Ok(Interface { index, name, mac })
    }

    /// Whether `addr` is configured on interface `index`.
    pub async fn has(&self, index: u32, addr: Ipv4Addr) -> Result<bool, NetError> {
        Ok(self
            .ipv4_addresses(Some(index))
            .await?
            .iter()
            .any(|m| ipv4_of(m) == Some(addr)))
    }

    /// Adds `addr/prefix` to interface `index`, or refreshes it if it is there. With a
    /// `lifetime` (seconds), the kernel removes the address by itself unless it is
    /// refreshed in time (`ip addr add … valid_lft N preferred_lft N`).
    pub async fn add(
        &self,
        index: u32,
        addr: Ipv4Addr,
        prefix: u8,
        lifetime: Option<u32>,
    ) -> Result<(), NetError> {
        let mut req = self
            .handle
            .address()
            .add(index, IpAddr::V4(addr), prefix)
            .replace();
        if let Some(secs) = lifetime {
            let mut info = CacheInfo::default();
            info.ifa_preferred = secs;
            info.ifa_valid = secs;
            req.message_mut()
                .attributes
                .push(AddressAttribute::CacheInfo(info));
        }
        req.execute()
            .await
            .map_err(request(format!("add {addr}/{prefix}")))
    }

    /// Removes every copy of `addr` (whatever its prefix) from interface `index`;
    /// returns whether there was one.
    pub async fn remove(&self, index: u32, addr: Ipv4Addr) -> Result<bool, NetError> {
        let mut removed = false;
        for msg in self.ipv4_addresses(Some(index)).await? {
            if ipv4_of(&msg) == Some(addr) {
                match self.handle.address().del(msg).execute().await {
                    Ok(()) => removed = true,
                    Err(e) if is_errno(&e, nix::libc::EADDRNOTAVAIL) => {}
                    Err(e) => return Err(request(format!("remove {addr}"))(e)),
                }
            }
        }
        Ok(removed)
    }
}

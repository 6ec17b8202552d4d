//! The UDP transport on real sockets: adverts between two peers arrive and verify;
//! forged or damaged datagrams are rejected with a reason.

use std::net::{Ipv4Addr, SocketAddrV4};

use hastack_vrrp::runner::RecvError;
use hastack_vrrp::{Advert, DecodeError, Stats, UdpTransport};

fn free_udp(ip: Ipv4Addr) -> SocketAddrV4 {
    let s = std::net::UdpSocket::bind(SocketAddrV4::new(ip, 0)).expect("bind");
    match s.local_addr().expect("addr") {
        std::net::SocketAddr::V4(a) => a,
        other => panic!("{other}"),
    }
}

fn advert() -> Advert {
    Advert {
        vrid: 51,
        priority: 150,
        max_adver_int_cs: 10,
        addresses: vec![Ipv4Addr::new(127, 0, 0, 100)],
    }
}

/// One datagram, or a failure after 2 s: a lost datagram fails the test, never hangs it.
async fn recv(t: &UdpTransport, buf: &mut [u8]) -> Result<(Ipv4Addr, Advert), RecvError> {
    tokio::time::timeout(std::time::Duration::from_secs(2), t.recv(buf))
        .await
        .expect("no datagram within 2 s")
}

#[tokio::test]
async fn adverts_travel_between_peers_and_forgeries_are_rejected() {
    let a_ip = Ipv4Addr::new(127, 0, 77, 1);
    let b_ip = Ipv4Addr::new(127, 0, 77, 2);
    let a_addr = free_udp(a_ip);
    let b_addr = free_udp(b_ip);
    let a = UdpTransport::bind(a_addr, vec![b_addr])
        .await
        .expect("bind a");
    let b = UdpTransport::bind(b_addr, vec![a_addr])
        .await
        .expect("bind b");
    let stats = Stats::default();
    let mut buf = [0u8; 1500];

    a.send(&advert(), &stats).await;
    let (from, got) = recv(&b, &mut buf).await.expect("advert");
    assert_eq!(from, a_ip);
    assert_eq!(got, advert());

    // A datagram from an address that is not a peer.
    let stranger = tokio::net::UdpSocket::bind((Ipv4Addr::new(127, 0, 77, 9), 0))
        .await
        .expect("bind");
    stranger
        .send_to(&advert().encode(Ipv4Addr::new(127, 0, 77, 9), b_ip), b_addr)
        .await
        .expect("send");
    assert!(matches!(
        recv(&b, &mut buf).await,
        Err(RecvError::UnknownSender(_))
    ));

    // From the peer's address, but with the checksum computed for another source (a
    // forgery or a corrupted packet).
    let from_a = tokio::net::UdpSocket::bind((a_ip, 0)).await.expect("bind");
    from_a
        .send_to(&advert().encode(Ipv4Addr::new(127, 0, 77, 3), b_ip), b_addr)
        .await
        .expect("send");
    assert!(matches!(
        recv(&b, &mut buf).await,
        Err(RecvError::Decode {
            err: DecodeError::Checksum { .. },
            ..
        })
    ));

    // Garbage.
    from_a
        .send_to(b"GET / HTTP/1.1\r\n\r\n", b_addr)
        .await
        .expect("send");
    assert!(matches!(
        recv(&b, &mut buf).await,
        Err(RecvError::Decode { .. })
    ));
}

//! The UDP transport on real sockets: adverts between two peers arrive and verify;
//! forged or damaged datagrams are rejected with a reason.

use std::net::{Ipv4Addr, SocketAddrV4};

use hastack_vrrp::auth::Key;
use hastack_vrrp::{Advert, DecodeError, RecvError, RejectReason, Stats, Transport, UdpTransport};

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

    // From the peer's address but another port: any local user can bind 127.0.77.1 on
    // some port, only the peer's lb holds its VRRP port.
    let same_ip_other_port = tokio::net::UdpSocket::bind((a_ip, 0)).await.expect("bind");
    let mut forged = advert();
    forged.priority = 255;
    forged.max_adver_int_cs = 4095;
    same_ip_other_port
        .send_to(&forged.encode(a_ip, b_ip), b_addr)
        .await
        .expect("send");
    let e = recv(&b, &mut buf).await.expect_err("forged");
    assert!(matches!(e, RecvError::UnknownSender(_)), "{e}");
    assert_eq!(e.reason(), Some(RejectReason::Source));

    // From the peer's address, but with the checksum computed for another source (a
    // forgery or a corrupted packet).
    // (Sent from the peer's own VRRP port, so only the checksum is wrong.)
    drop(a);
    let from_a = tokio::net::UdpSocket::bind(a_addr).await.expect("bind");
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

#[tokio::test]
async fn with_a_key_untagged_or_wrongly_tagged_adverts_are_rejected() {
    let a_ip = Ipv4Addr::new(127, 0, 78, 1);
    let b_ip = Ipv4Addr::new(127, 0, 78, 2);
    let a_addr = free_udp(a_ip);
    let b_addr = free_udp(b_ip);
    let key = Key::new([5; 32]);
    let a = UdpTransport::bind(a_addr, vec![b_addr])
        .await
        .expect("bind a")
        .with_key(Some(key.clone()));
    let b = UdpTransport::bind(b_addr, vec![a_addr])
        .await
        .expect("bind b")
        .with_key(Some(key));
    let stats = Stats::default();
    let mut buf = [0u8; 1500];
    a.send(&advert(), &stats).await;
    assert_eq!(recv(&b, &mut buf).await.expect("tagged").1, advert());

    // The same peer without the key (a plain keepalived-style advert).
    let plain = UdpTransport::bind(a_addr, vec![b_addr]).await;
    drop(a);
    let plain = match plain {
        Ok(p) => p,
        Err(_) => UdpTransport::bind(a_addr, vec![b_addr])
            .await
            .expect("rebind a"),
    };
    plain.send(&advert(), &stats).await;
    let e = recv(&b, &mut buf).await.expect_err("untagged");
    assert_eq!(e.reason(), Some(RejectReason::Auth), "{e}");
    let wrong = plain.with_key(Some(Key::new([6; 32])));
    wrong.send(&advert(), &stats).await;
    let e = recv(&b, &mut buf).await.expect_err("wrong key");
    assert_eq!(e.reason(), Some(RejectReason::Auth), "{e}");
}

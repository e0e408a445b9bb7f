//! The reverse zones served by stratus's authoritative DNS server, asked
//! through a real resolver over UDP and TCP on 127.0.0.1, on both databases.

mod support;

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::rr::{RData, RecordType};
use stratus_controller::rdns::{ReverseDns, Served};
use stratus_core::config::{Rdns, SeededPool};
use stratus_core::ip::Family;
use stratus_core::resources::IpPool;
use stratus_core::resources::{Ipv4Block, Ipv6Block};
use stratus_store::Resources;
use stratus_store::ledger::{NewHolding, SetPtr};
use support::*;

/// A port free for both UDP and TCP on 127.0.0.1.
fn free_port() -> u16 {
    loop {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn resolver(server: SocketAddr, tcp: bool) -> TokioResolver {
    let mut connection = if tcp {
        ConnectionConfig::tcp()
    } else {
        ConnectionConfig::udp()
    };
    connection.port = server.port();
    let server = NameServerConfig::new(server.ip(), true, vec![connection]);
    let mut options = ResolverOpts::default();
    options.cache_size = 0;
    options.attempts = 1;
    options.timeout = Duration::from_secs(2);
    TokioResolver::builder_with_config(
        ResolverConfig::from_parts(None, Vec::new(), vec![server]),
        TokioRuntimeProvider::default(),
    )
    .with_options(options)
    .build()
    .unwrap()
}

/// The PTR names `resolver` finds for `address` (none: NXDOMAIN or empty).
async fn ptr_of(resolver: &TokioResolver, address: &str) -> Vec<String> {
    let ip: IpAddr = address.parse().unwrap();
    match resolver.reverse_lookup(ip).await {
        Ok(found) => found
            .answers()
            .iter()
            .filter_map(|r| match &r.data {
                RData::PTR(ptr) => Some(ptr.0.to_ascii()),
                _ => None,
            })
            .collect(),
        Err(_) => Vec::new(),
    }
}

async fn serial_of(resolver: &TokioResolver, zone: &str) -> u32 {
    let found = resolver.lookup(zone, RecordType::SOA).await.unwrap();
    found
        .answers()
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some(soa.serial),
            _ => None,
        })
        .unwrap()
}

#[tokio::test]
async fn r22_ptrs_set_and_defaults_are_served_authoritatively_and_the_serial_moves() {
    for scratch in stratus_store::testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        Resources::<IpPool>::new(h.store.clone())
            .create(&IpPool::new(
                "doc",
                SeededPool {
                    name: "doc".into(),
                    zone: "default".into(),
                    ipv4: Ipv4Block {
                        cidr: "192.0.2.0/24".into(),
                        gateway: "192.0.2.1".into(),
                        excluded: Vec::new(),
                    },
                    ipv6: Some(Ipv6Block {
                        prefix: "2001:db8:100::/48".into(),
                        gateway: "2001:db8:100::1".into(),
                        server_prefix_length: 64,
                        excluded: Vec::new(),
                    }),
                }
                .spec(),
            ))
            .await
            .unwrap();
        let ips = h.ledger.ips();
        assert!(
            ips.try_hold(&NewHolding {
                pool: "doc",
                family: Family::V4,
                slot: 7,
                address: "192.0.2.7",
                prefix_len: 32,
                holder: "uid-1",
                account: "acc-1",
                subject: "acc-1/web",
                at: 1,
                next_check_at: 2,
            })
            .await
            .unwrap()
        );
        let holding = ips.held_by("uid-1").await.unwrap()[0].id;
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = Rdns {
            listen: Some(listen.to_string()),
            default_template: Some("static-{ip-dashed}.example.net".into()),
            nameservers: vec!["ns1.example.net".into(), "ns2.example.net".into()],
            ..Rdns::default()
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let served = Served::default();
        let server = tokio::spawn(
            ReverseDns {
                config,
                ledger: h.ledger.clone(),
                pools: Resources::new(h.store.clone()),
                served: served.clone(),
                clock: h.clock.clone(),
            }
            .run(stopped),
        );
        let udp = resolver(listen, false);
        let tcp = resolver(listen, true);
        let zone = "2.0.192.in-addr.arpa.";
        let mut first_serial = 0;
        for _ in 0..100 {
            if let Ok(found) = udp.lookup(zone, RecordType::SOA).await
                && !found.answers().is_empty()
            {
                first_serial = serial_of(&udp, zone).await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(first_serial > 0, "{label}: the zone is served");

        // No PTR set: the default, for addresses of the pool only.
        assert_eq!(
            ptr_of(&udp, "192.0.2.7").await,
            ["static-192-0-2-7.example.net."],
            "{label}"
        );
        assert_eq!(
            ptr_of(&tcp, "2001:db8:100::5").await,
            ["static-2001-db8-100-0-0-0-0-5.example.net."],
            "{label}: over TCP, and IPv6"
        );
        let foreign = ptr_of(&udp, "100.64.0.1").await;
        assert!(foreign.is_empty(), "not ours: {foreign:?}");
        let ns = udp.lookup(zone, RecordType::NS).await.unwrap();
        assert_eq!(ns.answers().len(), 2, "{label}");

        // Set: served within the refresh, and the serial moves.
        assert!(
            h.ledger
                .ptrs()
                .set(&SetPtr {
                    address: "192.0.2.7",
                    hostname: Some("mail.example.com"),
                    holding_id: holding,
                    holder: "uid-1",
                    actor: "token:t",
                    at: 10,
                })
                .await
                .unwrap()
        );
        let mut answered = Vec::new();
        for _ in 0..100 {
            answered = ptr_of(&udp, "192.0.2.7").await;
            if answered == ["mail.example.com."] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answered, ["mail.example.com."], "{label}");
        assert!(serial_of(&tcp, zone).await > first_serial, "{label}");

        // Released: the PTR goes, the default answers again.
        ips.release("uid-1", 20, 1_000).await.unwrap();
        for _ in 0..100 {
            answered = ptr_of(&udp, "192.0.2.7").await;
            if answered == ["static-192-0-2-7.example.net."] {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(answered, ["static-192-0-2-7.example.net."], "{label}");
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
        assert!(served.get().serial > first_serial);
    }
}

/// Reads one length-prefixed DNS message from `stream`.
async fn read_message(stream: &mut tokio::net::TcpStream) -> hickory_resolver::proto::op::Message {
    use tokio::io::AsyncReadExt;
    let mut length = [0u8; 2];
    stream.read_exact(&mut length).await.unwrap();
    let mut bytes = vec![0u8; usize::from(u16::from_be_bytes(length))];
    stream.read_exact(&mut bytes).await.unwrap();
    hickory_resolver::proto::op::Message::from_vec(&bytes).unwrap()
}

#[tokio::test]
async fn r22_secondaries_are_notified_of_changes_and_transfer_the_zone() {
    use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
    use hickory_resolver::proto::rr::Name;
    use tokio::io::AsyncWriteExt;
    for scratch in stratus_store::testing::both().await {
        let label = scratch.label;
        let h = harness_on(scratch).await;
        // The harness's pools include 198.51.100.0/24.
        let ips = h.ledger.ips();
        assert!(
            ips.try_hold(&NewHolding {
                pool: "test",
                family: Family::V4,
                slot: 9,
                address: "198.51.100.9",
                prefix_len: 32,
                holder: "uid-9",
                account: "acc-1",
                subject: "acc-1/mx",
                at: 1,
                next_check_at: 2,
            })
            .await
            .unwrap()
        );
        let holding = ips.held_by("uid-9").await.unwrap()[0].id;
        // The secondary: hears NOTIFY on its own port and acknowledges it.
        let secondary = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let secondary_address = secondary.local_addr().unwrap();
        let (heard_tx, mut heard) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut buffer = vec![0u8; 4096];
            loop {
                let Ok((len, peer)) = secondary.recv_from(&mut buffer).await else {
                    return;
                };
                let Ok(notify) = Message::from_vec(&buffer[..len]) else {
                    continue;
                };
                let zone = notify.queries[0].name().to_ascii();
                let _ = heard_tx.send((notify.metadata.op_code, zone));
                let ack = Message::response(notify.metadata.id, OpCode::Notify);
                let _ = secondary.send_to(&ack.to_vec().unwrap(), peer).await;
            }
        });
        let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let config = Rdns {
            listen: Some(listen.to_string()),
            default_template: Some("h-{ip-dashed}.example.net".into()),
            secondaries: vec![secondary_address.to_string()],
            ..Rdns::default()
        };
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let served = Served::default();
        let server = tokio::spawn(
            ReverseDns {
                config: config.clone(),
                ledger: h.ledger.clone(),
                pools: Resources::new(h.store.clone()),
                served: served.clone(),
                clock: h.clock.clone(),
            }
            .run(stopped),
        );
        let zone = "100.51.198.in-addr.arpa.";
        for _ in 0..100 {
            if served.get().zones.zones.iter().any(|z| z == zone) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            h.ledger
                .ptrs()
                .set(&SetPtr {
                    address: "198.51.100.9",
                    hostname: Some("mx.example.com"),
                    holding_id: holding,
                    holder: "uid-9",
                    actor: "token:t",
                    at: 10,
                })
                .await
                .unwrap()
        );
        let (op_code, notified) = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let heard = heard.recv().await.unwrap();
                if heard.1 == zone {
                    return heard;
                }
            }
        })
        .await
        .expect("the secondary was notified");
        assert_eq!(
            (op_code, notified.as_str()),
            (OpCode::Notify, zone),
            "{label}"
        );

        // The secondary transfers the zone over TCP.
        let mut stream = tokio::net::TcpStream::connect(listen).await.unwrap();
        let mut request = Message::new(7, MessageType::Query, OpCode::Query);
        request.add_query(Query::query(
            Name::from_ascii(zone).unwrap(),
            RecordType::AXFR,
        ));
        let bytes = request.to_vec().unwrap();
        stream
            .write_all(&(bytes.len() as u16).to_be_bytes())
            .await
            .unwrap();
        stream.write_all(&bytes).await.unwrap();
        let mut records = Vec::new();
        let mut soas = 0;
        while soas < 2 {
            let message = read_message(&mut stream).await;
            assert_eq!(
                message.metadata.response_code,
                ResponseCode::NoError,
                "{label}"
            );
            for record in message.answers {
                match &record.data {
                    RData::SOA(_) => soas += 1,
                    RData::PTR(ptr) => records.push((record.name.to_ascii(), ptr.0.to_ascii())),
                    _ => {}
                }
            }
        }
        assert!(
            records.contains(&(
                "9.100.51.198.in-addr.arpa.".to_owned(),
                "mx.example.com.".to_owned()
            )),
            "{label}"
        );
        assert!(records.contains(&(
            "10.100.51.198.in-addr.arpa.".to_owned(),
            "h-198-51-100-10.example.net.".to_owned()
        )));
        assert_eq!(records.len(), 254, "{label}: every host of the /24, once");

        // Anyone else is refused, over TCP as over UDP.
        let refused = stratus_controller::rdns::transfer(
            &bytes,
            "192.0.2.99".parse().unwrap(),
            &served.get(),
            &config,
        )
        .unwrap();
        let refused = Message::from_vec(&refused[0]).unwrap();
        assert_eq!(refused.metadata.response_code, ResponseCode::Refused);
        let over_udp = stratus_controller::rdns::respond(&bytes, &served.get(), &config).unwrap();
        assert_eq!(
            Message::from_vec(&over_udp).unwrap().metadata.response_code,
            ResponseCode::Refused
        );
        stop.send(true).unwrap();
        server.await.unwrap().unwrap();
    }
}

/// One question to the server's answering code, as a resolver asks it.
fn ask(
    snapshot: &stratus_controller::rdns::Snapshot,
    name: &str,
    record_type: RecordType,
) -> hickory_resolver::proto::op::Message {
    use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query};
    use hickory_resolver::proto::rr::Name;
    let mut request = Message::new(42, MessageType::Query, OpCode::Query);
    request.add_query(Query::query(Name::from_ascii(name).unwrap(), record_type));
    let answer =
        stratus_controller::rdns::respond(&request.to_vec().unwrap(), snapshot, &Rdns::default())
            .unwrap();
    Message::from_vec(&answer).unwrap()
}

#[test]
fn answers_are_authoritative_negative_ones_carry_the_soa_and_nothing_is_served_before_the_zones_load()
 {
    use hickory_resolver::proto::op::ResponseCode;
    use stratus_core::rdns::{ReverseZones, reverse_zones};
    let mut zones = ReverseZones {
        zones: reverse_zones("192.0.2.0/24".parse().unwrap()),
        networks: vec!["192.0.2.0/24".parse().unwrap()],
        records: Default::default(),
        default_template: None,
    };
    zones
        .records
        .insert("192.0.2.7".parse().unwrap(), "mail.example.com".into());
    let loading = stratus_controller::rdns::Snapshot {
        zones: zones.clone(),
        serial: 0,
    };
    assert_eq!(
        ask(&loading, "7.2.0.192.in-addr.arpa.", RecordType::PTR)
            .metadata
            .response_code,
        ResponseCode::ServFail,
        "not loaded yet"
    );
    let snapshot = stratus_controller::rdns::Snapshot { zones, serial: 7 };
    let found = ask(&snapshot, "7.2.0.192.IN-ADDR.arpa.", RecordType::PTR);
    assert!(found.metadata.authoritative);
    assert_eq!(found.answers.len(), 1);
    for (name, code) in [
        ("8.2.0.192.in-addr.arpa.", ResponseCode::NXDomain),
        ("x.7.2.0.192.in-addr.arpa.", ResponseCode::NXDomain),
    ] {
        let negative = ask(&snapshot, name, RecordType::PTR);
        assert_eq!(negative.metadata.response_code, code, "{name}");
        assert!(negative.metadata.authoritative);
        assert!(negative.answers.is_empty());
        assert!(
            matches!(negative.authorities.first().map(|r| &r.data), Some(RData::SOA(soa)) if soa.serial == 7),
            "{name}: the SOA makes it cacheable"
        );
    }
    // Another type of an existing name: no data, with the SOA.
    let nodata = ask(&snapshot, "7.2.0.192.in-addr.arpa.", RecordType::A);
    assert_eq!(nodata.metadata.response_code, ResponseCode::NoError);
    assert!(nodata.answers.is_empty() && !nodata.authorities.is_empty());
    // ANY gets the PTR; another zone is refused, never resolved.
    assert_eq!(
        ask(&snapshot, "7.2.0.192.in-addr.arpa.", RecordType::ANY)
            .answers
            .len(),
        1
    );
    let foreign = ask(&snapshot, "example.com.", RecordType::A);
    assert_eq!(foreign.metadata.response_code, ResponseCode::Refused);
    assert!(!foreign.metadata.authoritative);
}

//! A DNS blacklist zone served on 127.0.0.1 for tests and benchmarks: a
//! real UDP DNS server (messages encoded by hickory-proto) answering the
//! way blacklists do: NXDOMAIN for a clean address, an A record in
//! 127.0.0.0/8 and a TXT reason for a listed one, error codes, SERVFAIL,
//! or no answer at all.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use hickory_resolver::proto::op::{Message, OpCode, ResponseCode};
use hickory_resolver::proto::rr::rdata::{A, SOA, TXT};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use stratus_core::dnsbl::query_name;
use tokio::net::UdpSocket;

/// How the zone answers about one address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ZoneEntry {
    /// An A record with this code (a listing, or an error code such as
    /// 127.255.255.254) and a TXT record with the reason.
    Answer { code: Ipv4Addr, reason: String },
    /// SERVFAIL.
    ServerFailure,
    /// No answer: the query times out.
    Silent,
}

/// TTL of every answer, positive and negative (the SOA's minimum),
/// unless the zone is started with another.
pub const ZONE_TTL: u32 = 300;

pub struct TestZone {
    zone: String,
    address: SocketAddr,
    entries: Arc<Mutex<HashMap<String, ZoneEntry>>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for TestZone {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestZone {
    /// Serves `zone` on a free UDP port of 127.0.0.1.
    pub async fn start(zone: &str) -> io::Result<Self> {
        Self::start_with_ttl(zone, ZONE_TTL).await
    }

    /// Serves `zone` with answers valid for `ttl` seconds (0: resolvers
    /// keep nothing, for tests that change listings).
    pub async fn start_with_ttl(zone: &str, ttl: u32) -> io::Result<Self> {
        let socket = UdpSocket::bind("127.0.0.1:0").await?;
        let address = socket.local_addr()?;
        let entries = Arc::new(Mutex::new(HashMap::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let zone = zone.trim_end_matches('.').to_ascii_lowercase();
        let task = tokio::spawn(serve(
            socket,
            zone.clone(),
            ttl,
            entries.clone(),
            queries.clone(),
        ));
        Ok(Self {
            zone,
            address,
            entries,
            queries,
            task,
        })
    }

    pub fn zone(&self) -> &str {
        &self.zone
    }

    /// Where the zone is served (the checker's resolver).
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Makes the zone answer `entry` about `address`.
    pub fn set(&self, address: IpAddr, entry: ZoneEntry) {
        let name = query_name(address, &self.zone);
        self.lock().insert(name, entry);
    }

    /// Lists `address` with the usual code 127.0.0.2.
    pub fn list(&self, address: IpAddr, reason: &str) {
        self.set(
            address,
            ZoneEntry::Answer {
                code: Ipv4Addr::new(127, 0, 0, 2),
                reason: reason.into(),
            },
        );
    }

    /// Makes `address` clean (NXDOMAIN) again.
    pub fn clear(&self, address: IpAddr) {
        let name = query_name(address, &self.zone);
        self.lock().remove(&name);
    }

    /// Queries received so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, ZoneEntry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }
}

async fn serve(
    socket: UdpSocket,
    zone: String,
    ttl: u32,
    entries: Arc<Mutex<HashMap<String, ZoneEntry>>>,
    queries: Arc<AtomicUsize>,
) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Ok(request) = Message::from_vec(&buffer[..len]) else {
            continue;
        };
        queries.fetch_add(1, Ordering::SeqCst);
        let entry = request.queries.first().and_then(|q| {
            let name = q.name().to_ascii().to_ascii_lowercase();
            entries
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&name)
                .cloned()
        });
        if entry == Some(ZoneEntry::Silent) {
            continue;
        }
        let response = answer(&request, &zone, ttl, entry);
        if let Ok(bytes) = response.to_vec() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

fn answer(request: &Message, zone: &str, ttl: u32, entry: Option<ZoneEntry>) -> Message {
    let id = request.metadata.id;
    let Some(query) = request.queries.first() else {
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
    };
    let name = query.name().clone();
    let ascii = name.to_ascii().to_ascii_lowercase();
    if !ascii.trim_end_matches('.').ends_with(zone) {
        return Message::error_msg(id, OpCode::Query, ResponseCode::Refused);
    }
    let mut response = Message::response(id, OpCode::Query);
    response.metadata.authoritative = true;
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_query(query.clone());
    match entry {
        Some(ZoneEntry::ServerFailure) => {
            response.metadata.response_code = ResponseCode::ServFail;
        }
        Some(ZoneEntry::Answer { code, reason }) => match query.query_type() {
            RecordType::A => {
                response.add_answer(Record::from_rdata(name, ttl, RData::A(A(code))));
            }
            RecordType::TXT => {
                response.add_answer(Record::from_rdata(
                    name,
                    ttl,
                    RData::TXT(TXT::new(vec![reason])),
                ));
            }
            _ => add_soa(&mut response, zone, ttl),
        },
        Some(ZoneEntry::Silent) | None => {
            response.metadata.response_code = ResponseCode::NXDomain;
            add_soa(&mut response, zone, ttl);
        }
    }
    response
}

/// The SOA that makes a negative answer cacheable for `ttl`.
fn add_soa(response: &mut Message, zone: &str, ttl: u32) {
    let Ok(origin) = Name::from_ascii(format!("{zone}.")) else {
        return;
    };
    let soa = SOA::new(origin.clone(), origin.clone(), 1, 3600, 600, 86_400, ttl);
    response.add_authority(Record::from_rdata(origin, ttl, RData::SOA(soa)));
}

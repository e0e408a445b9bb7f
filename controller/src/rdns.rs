//! The authoritative DNS server of the pools' reverse zones (R20–R22):
//! PTRs customers set, else the provider's default, SOA and NS at each
//! zone's apex, over UDP and TCP. It serves a snapshot of the store,
//! taken again when a PTR changes or a pool appears or goes; each new
//! snapshot moves the SOA serial. What is answered is decided by
//! `stratus_core::rdns`; this module only speaks DNS.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_resolver::proto::rr::rdata::{NS, PTR, SOA};
use hickory_resolver::proto::rr::{Name, RData, Record, RecordType};
use stratus_core::config::Rdns;
use stratus_core::rdns::{ReverseAnswer, ReverseZones, reverse_zones};
use stratus_core::resources::IpPool;
use stratus_store::Resources;
use stratus_store::ledger::Ledger;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, watch};

use crate::error::ControllerError;

/// How often the store is asked whether anything changed.
const REFRESH: Duration = Duration::from_secs(1);
/// TCP connections served at once; more wait to be accepted.
const MAX_TCP_CONNECTIONS: usize = 256;
/// A TCP client that sends nothing for this long is dropped, and one that
/// reads nothing for as long (a full window) too.
const TCP_IDLE: Duration = Duration::from_secs(10);
/// TCP connections one address may hold at once.
const MAX_TCP_CONNECTIONS_PER_PEER: usize = 16;
/// The longest a TCP connection lives, however busy.
const TCP_LIFETIME: Duration = Duration::from_secs(120);
/// PTRs read from the store per page.
const PAGE: u32 = 5_000;

/// What is served: the zones' content and their SOA serial.
#[derive(Debug, Default)]
pub struct Snapshot {
    pub zones: ReverseZones,
    pub serial: u32,
}

/// The served snapshot, swapped whole when the store changes.
#[derive(Clone, Default)]
pub struct Served(Arc<RwLock<Arc<Snapshot>>>);

impl Served {
    pub fn get(&self) -> Arc<Snapshot> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, snapshot: Snapshot) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(snapshot);
    }
}

/// The reverse DNS server: its configuration and where it reads.
pub struct ReverseDns {
    pub config: Rdns,
    pub ledger: Ledger,
    pub pools: Resources<IpPool>,
    pub served: Served,
    /// The SOA serial is the time of the snapshot, from this clock.
    pub clock: Arc<dyn stratus_core::Clock>,
}

/// What the snapshot was taken from: a new one is taken when it changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
struct Source {
    last_change: i64,
    pools: Vec<(String, String, Option<String>)>,
}

/// A reverse DNS server bound to its address, not serving yet.
pub struct BoundReverseDns {
    dns: ReverseDns,
    udp: UdpSocket,
    tcp: TcpListener,
}

impl ReverseDns {
    /// Binds `config.listen` (UDP and TCP): a port taken or not allowed
    /// is said at once.
    pub async fn bind(self) -> Result<BoundReverseDns, ControllerError> {
        let Some(listen) = self.config.listen_address() else {
            return Err(ControllerError::Config(
                "rdns.listen is not set: the DNS server has nowhere to listen".into(),
            ));
        };
        let udp = UdpSocket::bind(listen).await.map_err(|e| {
            ControllerError::Config(format!("the DNS server cannot listen on {listen}/udp: {e}"))
        })?;
        let tcp = TcpListener::bind(listen).await.map_err(|e| {
            ControllerError::Config(format!("the DNS server cannot listen on {listen}/tcp: {e}"))
        })?;
        Ok(BoundReverseDns {
            dns: self,
            udp,
            tcp,
        })
    }

    /// Binds, then serves until `shutdown`.
    pub async fn run(self, shutdown: watch::Receiver<bool>) -> Result<(), ControllerError> {
        self.bind().await?.serve(shutdown).await
    }
}

impl BoundReverseDns {
    /// Serves until `shutdown`.
    pub async fn serve(self, mut shutdown: watch::Receiver<bool>) -> Result<(), ControllerError> {
        let Self { dns, udp, tcp } = self;
        if let Ok(listen) = udp.local_addr() {
            tracing::info!(%listen, "serving the reverse zones");
        }
        let config = Arc::new(dns.config.clone());
        let udp = tokio::spawn(serve_udp(udp, dns.served.clone(), config.clone()));
        let tcp = tokio::spawn(serve_tcp(tcp, dns.served.clone(), config));
        let mut source = None;
        loop {
            if let Err(error) = dns.refresh(&mut source).await {
                tracing::warn!(%error, "the reverse zones could not be read; serving the last ones");
            }
            tokio::select! {
                _ = tokio::time::sleep(REFRESH) => {}
                _ = shutdown.changed() => break,
            }
        }
        udp.abort();
        tcp.abort();
        Ok(())
    }
}

impl ReverseDns {
    /// Takes a new snapshot when a PTR or a pool changed.
    async fn refresh(&self, source: &mut Option<Source>) -> Result<(), ControllerError> {
        let ptrs = self.ledger.ptrs();
        let mut pools: Vec<(String, String, Option<String>)> = self
            .pools
            .list(None)
            .await?
            .items
            .into_iter()
            .map(|pool| {
                (
                    pool.metadata.name.clone().unwrap_or_default(),
                    pool.spec.ipv4.cidr.clone(),
                    pool.spec.ipv6.as_ref().map(|v6| v6.prefix.clone()),
                )
            })
            .collect();
        pools.sort();
        let now = Source {
            last_change: ptrs.last_change().await?,
            pools,
        };
        if source.as_ref() == Some(&now) {
            return Ok(());
        }
        let mut records = HashMap::new();
        let mut after: Option<String> = None;
        loop {
            let page = ptrs.page(after.as_deref(), PAGE).await?;
            let full = page.len() == PAGE as usize;
            for record in page {
                if let Ok(address) = record.address.parse::<IpAddr>() {
                    records.insert(address, record.hostname.clone());
                }
                after = Some(record.address);
            }
            if !full {
                break;
            }
        }
        let mut zones = Vec::new();
        let mut networks = Vec::new();
        for (_, v4, v6) in &now.pools {
            for network in std::iter::once(v4).chain(v6.iter()) {
                if let Ok(network) = network.parse::<ipnet::IpNet>() {
                    zones.extend(reverse_zones(network));
                    networks.push(network);
                }
            }
        }
        zones.sort();
        zones.dedup();
        let previous = self.served.get().serial;
        // Time-based, moved on every new snapshot: secondaries see each
        // change, and a restart never goes back.
        let clock = u32::try_from(self.clock.now().as_second()).unwrap_or(u32::MAX);
        let serial = clock.max(previous.wrapping_add(1));
        let count = records.len();
        // The zones whose content changed: every one when the pools did.
        let before = self.served.get();
        let notified: Vec<String> = if source.as_ref().is_some_and(|s| s.pools == now.pools) {
            let mut changed: Vec<String> = records
                .iter()
                .filter(|(address, name)| before.zones.records.get(*address) != Some(*name))
                .chain(
                    before
                        .zones
                        .records
                        .iter()
                        .filter(|(address, _)| !records.contains_key(*address)),
                )
                .filter_map(|(address, _)| {
                    before
                        .zones
                        .zone_of(&stratus_core::rdns::reverse_name(*address))
                        .map(str::to_owned)
                })
                .collect();
            changed.sort();
            changed.dedup();
            changed
        } else {
            zones.clone()
        };
        self.served.set(Snapshot {
            zones: ReverseZones {
                zones,
                networks,
                records,
                default_template: self.config.default_template.clone(),
            },
            serial,
        });
        tracing::info!(
            serial,
            ptrs = count,
            pools = now.pools.len(),
            "reverse zones loaded"
        );
        if source.is_some() {
            notify_secondaries(&notified, serial, &self.config);
        }
        *source = Some(now);
        Ok(())
    }
}

async fn serve_udp(socket: UdpSocket, served: Served, config: Arc<Rdns>) {
    let mut buffer = vec![0u8; 4096];
    loop {
        let Ok((len, peer)) = socket.recv_from(&mut buffer).await else {
            continue;
        };
        let Some(response) = respond(&buffer[..len], &served.get(), &config) else {
            continue;
        };
        let mut bytes = response;
        if bytes.len() > 512 {
            // Too long for UDP without EDNS: truncated, the client asks
            // again over TCP.
            bytes = truncated(&buffer[..len]).unwrap_or_default();
        }
        if !bytes.is_empty() {
            let _ = socket.send_to(&bytes, peer).await;
        }
    }
}

async fn serve_tcp(listener: TcpListener, served: Served, config: Arc<Rdns>) {
    let permits = Arc::new(Semaphore::new(MAX_TCP_CONNECTIONS));
    let per_peer: Arc<std::sync::Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        let Ok(permit) = permits.clone().acquire_owned().await else {
            return;
        };
        let Ok((stream, peer)) = listener.accept().await else {
            continue;
        };
        let peer = peer.ip();
        {
            let mut open = per_peer.lock().unwrap_or_else(|e| e.into_inner());
            let count = open.entry(peer).or_default();
            if *count >= MAX_TCP_CONNECTIONS_PER_PEER {
                // One host never holds every connection.
                continue;
            }
            *count += 1;
        }
        let served = served.clone();
        let config = config.clone();
        let per_peer = per_peer.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ =
                tokio::time::timeout(TCP_LIFETIME, serve_connection(stream, peer, served, config))
                    .await;
            let mut open = per_peer.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(count) = open.get_mut(&peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    open.remove(&peer);
                }
            }
        });
    }
}

/// Length-prefixed messages (RFC 1035 4.2.2), one answer per question,
/// until the client goes quiet.
async fn serve_connection(
    mut stream: TcpStream,
    peer: IpAddr,
    served: Served,
    config: Arc<Rdns>,
) -> std::io::Result<()> {
    loop {
        let mut length = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut length)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut message = vec![0u8; usize::from(u16::from_be_bytes(length))];
        tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut message))
            .await
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let responses = match transfer(&message, peer, &served.get(), &config) {
            Some(messages) => messages,
            None => match respond(&message, &served.get(), &config) {
                Some(response) => vec![response],
                None => return Ok(()),
            },
        };
        for response in responses {
            let Ok(length) = u16::try_from(response.len()) else {
                return Ok(());
            };
            let mut framed = Vec::with_capacity(response.len() + 2);
            framed.extend_from_slice(&length.to_be_bytes());
            framed.extend_from_slice(&response);
            tokio::time::timeout(TCP_IDLE, stream.write_all(&framed))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        }
    }
}

/// Records per message of a zone transfer: two names of at most 255
/// bytes each, 100 of them stay well under a message's 64 KiB.
const TRANSFER_CHUNK: usize = 100;

/// The answer to a zone transfer (AXFR) request: the zone's SOA, NS and
/// every PTR (`records_of_zone`), then its SOA again, in as many messages
/// as it takes; refused to anyone but a configured secondary. `None` when
/// `request` asks no transfer.
pub fn transfer(
    request: &[u8],
    peer: IpAddr,
    snapshot: &Snapshot,
    config: &Rdns,
) -> Option<Vec<Vec<u8>>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?;
    if query.query_type() != RecordType::AXFR {
        return None;
    }
    let id = request.metadata.id;
    let refused = || {
        Message::error_msg(id, OpCode::Query, ResponseCode::Refused)
            .to_vec()
            .ok()
            .map(|bytes| vec![bytes])
    };
    let allowed = config
        .secondary_addresses()
        .iter()
        .any(|secondary| secondary.ip() == peer);
    let ascii = query.name().to_ascii().to_ascii_lowercase();
    let Some(zone) = snapshot
        .zones
        .zones
        .iter()
        .find(|zone| **zone == ascii)
        .filter(|_| allowed)
    else {
        tracing::debug!(%peer, zone = %ascii, allowed, "zone transfer refused");
        return refused();
    };
    let origin = Name::from_ascii(zone).ok()?;
    let soa = soa_record(&origin, snapshot.serial, config)?;
    let ttl = config.soa.minimum;
    let mut records = vec![soa.clone()];
    records.extend(ns_records(&origin, config));
    for (address, target) in snapshot.zones.records_of_zone(zone) {
        let (Ok(name), Ok(target)) = (
            Name::from_ascii(stratus_core::rdns::reverse_name(address)),
            Name::from_ascii(format!("{}.", target.trim_end_matches('.'))),
        ) else {
            continue;
        };
        records.push(Record::from_rdata(name, ttl, RData::PTR(PTR(target))));
    }
    records.push(soa);
    let mut messages = Vec::new();
    for chunk in records.chunks(TRANSFER_CHUNK) {
        let mut response = Message::response(id, OpCode::Query);
        response.metadata.authoritative = true;
        response.add_query(query.clone());
        for record in chunk {
            response.add_answer(record.clone());
        }
        messages.push(response.to_vec().ok()?);
    }
    tracing::info!(%peer, zone = %zone, records = records.len(), "zone transferred");
    Some(messages)
}

/// Tells every secondary that the zones changed (NOTIFY, RFC 1996): each
/// zone is sent again until it is answered, at most 3 times a second apart.
fn notify_secondaries(zones: &[String], serial: u32, config: &Rdns) {
    for secondary in config.secondary_addresses() {
        for zone in zones {
            let Ok(origin) = Name::from_ascii(zone) else {
                continue;
            };
            let Some(soa) = soa_record(&origin, serial, config) else {
                continue;
            };
            let id = unguessable_id();
            let mut notify = Message::new(id, MessageType::Query, OpCode::Notify);
            notify.metadata.authoritative = true;
            notify.add_query(Query::query(origin, RecordType::SOA));
            notify.add_answer(soa);
            let Ok(bytes) = notify.to_vec() else {
                continue;
            };
            let zone = zone.clone();
            tokio::spawn(async move {
                let bind = if secondary.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let Ok(socket) = UdpSocket::bind(bind).await else {
                    return;
                };
                let mut buffer = vec![0u8; 512];
                for _ in 0..3 {
                    if socket.send_to(&bytes, secondary).await.is_err() {
                        continue;
                    }
                    let answered =
                        tokio::time::timeout(Duration::from_secs(1), socket.recv_from(&mut buffer))
                            .await;
                    if let Ok(Ok((len, from))) = answered
                        && from == secondary
                        && Message::from_vec(&buffer[..len]).is_ok_and(|m| m.metadata.id == id)
                    {
                        tracing::debug!(%secondary, %zone, serial, "secondary notified");
                        return;
                    }
                }
                tracing::warn!(%secondary, %zone, serial, "a secondary did not acknowledge NOTIFY");
            });
        }
    }
}

/// A message id no one can guess (a NOTIFY's answer is matched on it).
fn unguessable_id() -> u16 {
    let bytes = uuid::Uuid::new_v4().into_bytes();
    u16::from_be_bytes([bytes[0], bytes[1]])
}

fn truncated(request: &[u8]) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let mut response = Message::response(request.metadata.id, OpCode::Query);
    response.metadata.truncation = true;
    response.metadata.authoritative = true;
    if let Some(query) = request.queries.first() {
        response.add_query(query.clone());
    }
    response.to_vec().ok()
}

/// The encoded answer to an encoded request; `None` for what is no DNS
/// question at all (dropped, never answered).
pub fn respond(request: &[u8], snapshot: &Snapshot, config: &Rdns) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    if request.metadata.message_type != MessageType::Query {
        return None;
    }
    let id = request.metadata.id;
    if request.metadata.op_code != OpCode::Query {
        return Message::error_msg(id, request.metadata.op_code, ResponseCode::NotImp)
            .to_vec()
            .ok();
    }
    let Some(query) = request
        .queries
        .first()
        .filter(|_| request.queries.len() == 1)
    else {
        return Message::error_msg(id, OpCode::Query, ResponseCode::FormErr)
            .to_vec()
            .ok();
    };
    let name = query.name().clone();
    let ascii = name.to_ascii().to_ascii_lowercase();
    let qtype = query.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        // Transfers only over TCP, to secondaries (`transfer`).
        return Message::error_msg(id, OpCode::Query, ResponseCode::Refused)
            .to_vec()
            .ok();
    }
    let ttl = config.soa.minimum;
    let mut response = Message::response(id, OpCode::Query);
    response.metadata.recursion_desired = request.metadata.recursion_desired;
    response.add_query(query.clone());
    if snapshot.serial == 0 {
        // Not loaded yet: a resolver asks another server or again.
        response.metadata.response_code = ResponseCode::ServFail;
        return response.to_vec().ok();
    }
    if query.query_class() != hickory_resolver::proto::rr::DNSClass::IN {
        response.metadata.response_code = ResponseCode::Refused;
        return response.to_vec().ok();
    }
    let answer = snapshot
        .zones
        .answer(&ascii, matches!(qtype, RecordType::PTR | RecordType::ANY));
    let zone = match &answer {
        ReverseAnswer::Refused => {
            response.metadata.response_code = ResponseCode::Refused;
            return response.to_vec().ok();
        }
        ReverseAnswer::Apex { zone }
        | ReverseAnswer::Ptr { zone, .. }
        | ReverseAnswer::NoData { zone }
        | ReverseAnswer::NxDomain { zone } => zone.clone(),
    };
    response.metadata.authoritative = true;
    let origin = Name::from_ascii(&zone).ok()?;
    let soa = soa_record(&origin, snapshot.serial, config)?;
    match answer {
        ReverseAnswer::Apex { .. } => match qtype {
            RecordType::SOA => {
                response.add_answer(soa);
            }
            RecordType::NS => {
                for ns in ns_records(&origin, config) {
                    response.add_answer(ns);
                }
            }
            _ => {
                response.add_authority(soa);
            }
        },
        ReverseAnswer::Ptr { target, .. } => {
            let target = Name::from_ascii(&target).ok()?;
            response.add_answer(Record::from_rdata(name, ttl, RData::PTR(PTR(target))));
        }
        ReverseAnswer::NoData { .. } => {
            response.add_authority(soa);
        }
        ReverseAnswer::NxDomain { .. } => {
            response.metadata.response_code = ResponseCode::NXDomain;
            response.add_authority(soa);
        }
        ReverseAnswer::Refused => {}
    }
    response.to_vec().ok()
}

fn fqdn(name: &str) -> Option<Name> {
    Name::from_ascii(format!("{}.", name.trim_end_matches('.'))).ok()
}

fn soa_record(origin: &Name, serial: u32, config: &Rdns) -> Option<Record> {
    let soa = SOA::new(
        fqdn(&config.soa.mname)?,
        fqdn(&config.soa.rname)?,
        serial,
        i32::try_from(config.soa.refresh).unwrap_or(i32::MAX),
        i32::try_from(config.soa.retry).unwrap_or(i32::MAX),
        i32::try_from(config.soa.expire).unwrap_or(i32::MAX),
        config.soa.minimum,
    );
    Some(Record::from_rdata(
        origin.clone(),
        config.soa.minimum,
        RData::SOA(soa),
    ))
}

fn ns_records(origin: &Name, config: &Rdns) -> Vec<Record> {
    config
        .nameserver_names()
        .iter()
        .filter_map(|name| fqdn(name))
        .map(|name| Record::from_rdata(origin.clone(), config.soa.minimum, RData::NS(NS(name))))
        .collect()
}

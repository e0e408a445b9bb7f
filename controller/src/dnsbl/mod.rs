//! The DNS blacklist checker (R20, R21): asks every configured zone about
//! an address with real DNS queries through hickory's resolver, a bounded
//! number at a time, each with a timeout. Answers are cached for their
//! TTL by the resolver. What the answers mean is decided in
//! `stratus_core::dnsbl`.

#[cfg(any(test, feature = "testing"))]
pub mod zone_server;

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use futures::future::join_all;
use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};
use stratus_core::config::{Dnsbl, DnsblZone};
use stratus_core::dnsbl::{ZoneAnswer, ZoneResult, query_name};
use tokio::sync::Semaphore;

use crate::error::ControllerError;

/// Answers the resolver keeps (a sweep of a /20 asks 4096 names per zone).
const CACHE_ENTRIES: u64 = 65_536;
/// Longest TXT reason kept.
const MAX_REASON: usize = 512;

pub struct BlacklistChecker {
    zones: Vec<DnsblZone>,
    /// None when no zone is configured: nothing is ever asked.
    resolver: Option<TokioResolver>,
    permits: Arc<Semaphore>,
    timeout: Duration,
}

impl BlacklistChecker {
    pub fn new(config: &Dnsbl) -> Result<Self, ControllerError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let resolver = if config.zones.is_empty() {
            None
        } else {
            let mut options = ResolverOpts::default();
            options.timeout = timeout;
            // Retries are ours, with backoff; one attempt per check.
            options.attempts = 1;
            options.cache_size = CACHE_ENTRIES;
            options.use_hosts_file = ResolveHosts::Never;
            options.ndots = 0;
            let provider = TokioRuntimeProvider::default();
            let builder = match config.resolver_address() {
                Some(address) => {
                    let mut connection = ConnectionConfig::udp();
                    connection.port = address.port();
                    let server = NameServerConfig::new(address.ip(), true, vec![connection]);
                    TokioResolver::builder_with_config(
                        ResolverConfig::from_parts(None, Vec::new(), vec![server]),
                        provider,
                    )
                }
                None => TokioResolver::builder(provider).map_err(|e| {
                    ControllerError::Config(format!("the system resolver cannot be read: {e}"))
                })?,
            };
            let resolver = builder
                .with_options(options)
                .build()
                .map_err(|e| ControllerError::Config(format!("the DNS blacklist resolver: {e}")))?;
            Some(resolver)
        };
        Ok(Self {
            zones: config.zones.clone(),
            resolver,
            permits: Arc::new(Semaphore::new(config.concurrency as usize)),
            timeout,
        })
    }

    /// Whether any zone is asked at all.
    pub fn is_enabled(&self) -> bool {
        self.resolver.is_some()
    }

    /// Every zone's answer about `address`.
    pub async fn ask(&self, address: IpAddr) -> Vec<ZoneResult> {
        let Some(resolver) = &self.resolver else {
            return Vec::new();
        };
        join_all(self.zones.iter().map(|zone| async move {
            ZoneResult {
                zone: zone.name.clone(),
                mode: zone.mode,
                answer: self.ask_zone(resolver, address, &zone.name).await,
            }
        }))
        .await
    }

    async fn ask_zone(&self, resolver: &TokioResolver, address: IpAddr, zone: &str) -> ZoneAnswer {
        let Ok(_permit) = self.permits.acquire().await else {
            return ZoneAnswer::Error("the checker is shutting down".into());
        };
        let name = query_name(address, zone);
        let codes = match self.lookup(resolver, &name, RecordType::A).await {
            Ok(records) => records
                .iter()
                .filter_map(|r| match r {
                    RData::A(a) => Some(Ipv4Addr::from(*a)),
                    _ => None,
                })
                .collect::<Vec<_>>(),
            Err(answer) => return answer,
        };
        match ZoneAnswer::from_codes(&codes) {
            ZoneAnswer::Listed { code, .. } => {
                // The reason is a courtesy: a listing stands without it.
                let reason = self
                    .lookup(resolver, &name, RecordType::TXT)
                    .await
                    .ok()
                    .and_then(|records| {
                        records.iter().find_map(|r| match r {
                            RData::TXT(txt) => {
                                Some(txt.to_string().chars().take(MAX_REASON).collect())
                            }
                            _ => None,
                        })
                    });
                ZoneAnswer::Listed { code, reason }
            }
            other => other,
        }
    }

    /// The records answering `name`, or what the failure means.
    async fn lookup(
        &self,
        resolver: &TokioResolver,
        name: &str,
        record_type: RecordType,
    ) -> Result<Vec<RData>, ZoneAnswer> {
        let lookup = tokio::time::timeout(
            // The resolver's own timeout, plus room for its bookkeeping.
            self.timeout + Duration::from_millis(100),
            resolver.lookup(name, record_type),
        )
        .await;
        match lookup {
            Err(_) | Ok(Err(NetError::Timeout)) => Err(ZoneAnswer::Error(format!(
                "no answer within {} ms",
                self.timeout.as_millis()
            ))),
            Ok(Ok(found)) => Ok(found
                .answers()
                .iter()
                .filter(|r| r.record_type() == record_type)
                .map(|r| r.data.clone())
                .collect()),
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(none))))
                if matches!(
                    none.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Err(ZoneAnswer::Clean)
            }
            Ok(Err(NetError::Dns(DnsError::ResponseCode(code)))) => {
                Err(ZoneAnswer::Error(format!("the zone answered {code}")))
            }
            Ok(Err(other)) => Err(ZoneAnswer::Error(other.to_string())),
        }
    }
}

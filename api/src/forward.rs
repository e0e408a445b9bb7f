//! Forward lookups of the names customers give as PTRs (R20–R22): does the
//! name resolve to the address? Asked of the resolver of the `dnsbl:`
//! section, never the system's (a provider's own resolver answers what its
//! customers' zones say, not what a host file or a split view says).

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::proto::op::ResponseCode;
use hickory_resolver::proto::rr::{RData, RecordType};

/// What a forward lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Forward {
    /// The name's addresses of the asked family (none: it has none).
    Addresses(Vec<IpAddr>),
    /// The resolver did not answer, or failed; why.
    Unknown(String),
}

/// Looks names up through one resolver.
pub struct ForwardLookup {
    resolver: TokioResolver,
    timeout: Duration,
}

impl ForwardLookup {
    /// A lookup through the resolver at `address`, each question given up
    /// after `timeout` (no cache: a customer who just fixed a record is
    /// believed at once).
    pub fn new(address: SocketAddr, timeout: Duration) -> Result<Self, String> {
        let mut options = ResolverOpts::default();
        options.timeout = timeout;
        options.attempts = 1;
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Never;
        options.ndots = 0;
        let mut connection = ConnectionConfig::udp();
        connection.port = address.port();
        let server = NameServerConfig::new(address.ip(), true, vec![connection]);
        let resolver = TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, Vec::new(), vec![server]),
            TokioRuntimeProvider::default(),
        )
        .with_options(options)
        .build()
        .map_err(|e| format!("the forward-lookup resolver: {e}"))?;
        Ok(Self { resolver, timeout })
    }

    /// The addresses of `name` of `address`'s family.
    pub async fn addresses(&self, name: &str, like: IpAddr) -> Forward {
        let record_type = if like.is_ipv4() {
            RecordType::A
        } else {
            RecordType::AAAA
        };
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        let asked = tokio::time::timeout(
            self.timeout + Duration::from_millis(100),
            self.resolver.lookup(fqdn.as_str(), record_type),
        )
        .await;
        match asked {
            Err(_) | Ok(Err(NetError::Timeout)) => Forward::Unknown(format!(
                "the resolver did not answer within {} ms",
                self.timeout.as_millis()
            )),
            Ok(Ok(found)) => Forward::Addresses(
                found
                    .answers()
                    .iter()
                    .filter_map(|record| match &record.data {
                        RData::A(a) => Some(IpAddr::V4((*a).into())),
                        RData::AAAA(aaaa) => Some(IpAddr::V6((*aaaa).into())),
                        _ => None,
                    })
                    .collect(),
            ),
            Ok(Err(NetError::Dns(DnsError::NoRecordsFound(none))))
                if matches!(
                    none.response_code,
                    ResponseCode::NXDomain | ResponseCode::NoError
                ) =>
            {
                Forward::Addresses(Vec::new())
            }
            Ok(Err(error)) => Forward::Unknown(format!("the resolver failed: {error}")),
        }
    }
}
